// kvtier.Error and its subclasses, one per kvtier::Errc, each also deriving from the closest
// built-in exception so that `except ValueError` / `except ConnectionError` work.
#include "binding.h"

namespace kvtier::python {
namespace {

PyObject* g_error = nullptr;
PyObject* g_by_code[16] = {};

struct ErrorClass {
  Errc code;
  const char* name;
  PyObject* builtin;  // second base, or nullptr
};

PyObject* class_for(Errc code) {
  auto i = static_cast<size_t>(code);
  return i < std::size(g_by_code) && g_by_code[i] != nullptr ? g_by_code[i] : g_error;
}

}  // namespace

py::object exception_for(const Status& st) {
  PyObject* cls = class_for(st.code());
  py::object exc =
      py::reinterpret_steal<py::object>(PyObject_CallFunction(cls, "s", st.to_string().c_str()));
  if (!exc) throw py::error_already_set();
  exc.attr("code") = py::str(errc_name(st.code()));
  exc.attr("message") = py::str(st.message());
  return exc;
}

void register_errors(py::module_& m) {
  g_error = PyErr_NewExceptionWithDoc(
      "kvtier.Error",
      "A kvtier call failed; str() is the daemon's message, .code its kvtier::Errc name "
      "(docs/protocol.md).",
      PyExc_RuntimeError, nullptr);
  m.add_object("Error", py::handle(g_error));
  const ErrorClass classes[] = {
      {Errc::kInvalidArgument, "InvalidArgument", PyExc_ValueError},
      {Errc::kNotFound, "NotFound", PyExc_LookupError},
      {Errc::kNoSpace, "NoSpace", nullptr},
      {Errc::kPermissionDenied, "PermissionDenied", PyExc_PermissionError},
      {Errc::kProtocol, "ProtocolError", nullptr},
      {Errc::kBusy, "Busy", nullptr},
      {Errc::kAlreadyExists, "AlreadyExists", nullptr},
      {Errc::kIo, "IoError", nullptr},
      {Errc::kUnavailable, "Unavailable", PyExc_ConnectionError},
      {Errc::kCorrupt, "Corrupt", nullptr},
      {Errc::kInternal, "InternalError", nullptr},
      {Errc::kLimit, "LimitExceeded", nullptr},
  };
  for (const auto& c : classes) {
    py::tuple bases = c.builtin ? py::make_tuple(py::handle(g_error), py::handle(c.builtin))
                                : py::make_tuple(py::handle(g_error));
    std::string qual = std::string("kvtier.") + c.name;
    PyObject* cls = PyErr_NewException(qual.c_str(), bases.ptr(), nullptr);
    if (cls == nullptr) throw py::error_already_set();
    g_by_code[static_cast<size_t>(c.code)] = cls;  // kept for the life of the process
    m.add_object(c.name, py::handle(cls));
  }

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const StatusError& e) {
      PyObject* cls = class_for(e.status.code());
      py::object exc = py::reinterpret_steal<py::object>(PyObject_CallFunction(cls, "s", e.what()));
      if (!exc) return;  // the constructor's error is set
      exc.attr("code") = py::str(errc_name(e.status.code()));
      exc.attr("message") = py::str(e.status.message());
      PyErr_SetObject(cls, exc.ptr());
    }
  });
}

}  // namespace kvtier::python
