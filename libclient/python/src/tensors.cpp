// kvtier.Tensor: zero-copy exports of leased tensors (DLPack, read-only buffer protocol),
// decoding into caller tensors, and borrowing caller tensors for puts.
#include <pybind11/stl.h>

#include <cstring>

#include "binding.h"

namespace kvtier::python {
namespace {

// What a DLPack capsule of a leased tensor owns.
struct ExportCtx {
  std::shared_ptr<LeaseBox> box;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;
  DLManagedTensor managed{};
};

void delete_export(DLManagedTensor* self) {
  // May run on any thread, with or without the GIL (torch frees storages anywhere): only
  // C++ state here.  The last export of a released lease gives its blocks back now.
  delete static_cast<ExportCtx*>(self->manager_ctx);
}

void capsule_destructor(PyObject* cap) {
  if (PyCapsule_IsValid(cap, "used_dltensor")) return;  // a consumer owns it now
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap, "dltensor"));
  if (m != nullptr && m->deleter != nullptr) m->deleter(m);
  PyErr_Clear();
  PyErr_Restore(type, value, tb);
}

DLDataType to_dl(DType t) {
  switch (t) {
    case DType::kU8:
      return {kDLUInt, 8, 1};
    case DType::kF16:
      return {kDLFloat, 16, 1};
    case DType::kBF16:
      return {kDLBfloat, 16, 1};
    case DType::kF32:
      return {kDLFloat, 32, 1};
    case DType::kI32:
      return {kDLInt, 32, 1};
    case DType::kI64:
      return {kDLInt, 64, 1};
  }
  return {kDLUInt, 8, 1};
}

bool from_dl(DLDataType t, DType* out) {
  if (t.lanes != 1) return false;
  const std::pair<DLDataType, DType> table[] = {
      {{kDLUInt, 8, 1}, DType::kU8},      {{kDLFloat, 16, 1}, DType::kF16},
      {{kDLBfloat, 16, 1}, DType::kBF16}, {{kDLFloat, 32, 1}, DType::kF32},
      {{kDLInt, 32, 1}, DType::kI32},     {{kDLInt, 64, 1}, DType::kI64}};
  for (const auto& [dl, dt] : table)
    if (dl.code == t.code && dl.bits == t.bits) {
      *out = dt;
      return true;
    }
  return false;
}

// struct-module format of a dtype for the buffer protocol (bf16 has none).
const char* buffer_format(DType t) {
  switch (t) {
    case DType::kU8:
      return "B";
    case DType::kF16:
      return "e";
    case DType::kF32:
      return "f";
    case DType::kI32:
      return "i";
    case DType::kI64:
      return "q";
    case DType::kBF16:
      return nullptr;
  }
  return nullptr;
}

bool from_format(const char* f, Py_ssize_t itemsize, DType* out) {
  std::string s = f ? f : "B";
  if (!s.empty() && std::strchr("@=<", s[0])) s.erase(0, 1);
  if (s == "B" || s == "b" || s == "c")
    *out = DType::kU8;
  else if (s == "e")
    *out = DType::kF16;
  else if (s == "f")
    *out = DType::kF32;
  else if ((s == "i" || s == "l" || s == "q") && itemsize == 4)
    *out = DType::kI32;
  else if ((s == "l" || s == "q") && itemsize == 8)
    *out = DType::kI64;
  else
    return false;
  return dtype_size(*out) == static_cast<size_t>(itemsize);
}

std::vector<int64_t> row_major(const std::vector<uint64_t>& shape) {
  std::vector<int64_t> s(shape.size());
  int64_t step = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    s[i] = step;
    step *= static_cast<int64_t>(shape[i]);
  }
  return s;
}

std::vector<int64_t> strides_of(const TensorView& v) {
  return v.strides.empty() ? row_major(v.shape) : v.strides;
}

uint64_t elements(const std::vector<uint64_t>& shape) {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;
  return n;
}

// Buffer protocol, written by hand rather than with pybind11's def_buffer so that a refusal
// (NF4, bf16, a released lease, a writable request) is a BufferError, not a C++ exception
// crossing a C callback.  Each export holds the lease.
struct BufferExport {
  std::shared_ptr<LeaseBox> box;
  std::vector<Py_ssize_t> shape, strides;
};

int tensor_getbuffer(PyObject* obj, Py_buffer* view, int flags) {
  const char* why = nullptr;
  try {
    auto& ref = py::cast<TensorRef&>(py::handle(obj));
    auto box = ref.lock();
    const TensorView& v = ref.view(*box);
    const char* fmt = buffer_format(v.dtype);
    if (flags & PyBUF_WRITABLE)
      why = "leased kvtier tensors are read-only";
    else if (!v.host_accessible)
      why = "a tensor in GPU memory has no buffer: use torch.from_dlpack()";
    else if (v.codec != Codec::kRaw)
      why = "an NF4 tensor has no buffer: use decode_into()";
    else if (fmt == nullptr)
      why = "bfloat16 has no buffer format: use torch.from_dlpack()";
    if (why == nullptr) {
      auto* ex = new BufferExport{std::move(box), {}, {}};
      const size_t item = dtype_size(v.dtype);
      for (uint64_t d : v.shape) ex->shape.push_back(static_cast<Py_ssize_t>(d));
      for (int64_t s : strides_of(v)) ex->strides.push_back(static_cast<Py_ssize_t>(s * item));
      view->obj = py::handle(obj).inc_ref().ptr();
      view->buf = const_cast<std::byte*>(v.data);
      view->len = static_cast<Py_ssize_t>(v.bytes);
      view->readonly = 1;
      view->itemsize = static_cast<Py_ssize_t>(item);
      view->format = (flags & PyBUF_FORMAT) ? const_cast<char*>(fmt) : nullptr;
      view->ndim = static_cast<int>(ex->shape.size());
      view->shape = (flags & PyBUF_ND) ? ex->shape.data() : nullptr;
      view->strides = (flags & PyBUF_STRIDES) ? ex->strides.data() : nullptr;
      view->suboffsets = nullptr;
      view->internal = ex;
      return 0;
    }
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_BufferError, e.what());
    view->obj = nullptr;
    return -1;
  }
  PyErr_SetString(PyExc_BufferError, why);
  view->obj = nullptr;
  return -1;
}

void tensor_releasebuffer(PyObject*, Py_buffer* view) {
  delete static_cast<BufferExport*>(view->internal);
  view->internal = nullptr;
}

}  // namespace

const char* dtype_str(DType t) {
  switch (t) {
    case DType::kU8:
      return "uint8";
    case DType::kF16:
      return "float16";
    case DType::kBF16:
      return "bfloat16";
    case DType::kF32:
      return "float32";
    case DType::kI32:
      return "int32";
    case DType::kI64:
      return "int64";
  }
  return "?";
}

DType dtype_from_str(const std::string& s) {
  for (DType t : {DType::kU8, DType::kF16, DType::kBF16, DType::kF32, DType::kI32, DType::kI64})
    if (s == dtype_str(t)) return t;
  throw py::type_error("unknown dtype '" + s + "'");
}

std::shared_ptr<LeaseBox> TensorRef::lock() const {
  auto b = box.lock();
  if (!b || b->closed) throw std::runtime_error("the lease of this tensor was released");
  return b;
}

const TensorView& TensorRef::view(const LeaseBox& b) const {
  const LeasedBlock& lb = b.lease.block(block);
  return (fusion ? lb.fusion : lb.tensors).at(index);
}

Borrowed::Borrowed(Borrowed&& o) noexcept
    : data(o.data),
      dtype(o.dtype),
      shape(std::move(o.shape)),
      bytes(o.bytes),
      managed_(o.managed_),
      buffer_(o.buffer_),
      has_buffer_(o.has_buffer_) {
  o.managed_ = nullptr;
  o.has_buffer_ = false;
}

Borrowed::~Borrowed() {
  if (managed_ != nullptr && managed_->deleter != nullptr) managed_->deleter(managed_);
  if (has_buffer_) PyBuffer_Release(&buffer_);
}

uint64_t Borrowed::elements() const {
  return python::elements(shape);
}

Borrowed borrow(py::handle obj, bool writable, const std::string& what, bool allow_device,
                std::vector<int64_t>* strides) {
  Borrowed b;
  if (py::hasattr(obj, "__dlpack__")) {
    auto dev = obj.attr("__dlpack_device__")().cast<std::pair<int, int>>();
    if (allow_device && dev.first == kDLCUDA) b.device = dev.second;
    if (dev.first != kDLCPU && dev.first != kDLCUDAHost && b.device < 0)
      throw py::value_error(what + " lives on DLPack device type " + std::to_string(dev.first) +
                            ", not in host memory: move it to the CPU first");
    py::object cap;
    try {
      cap = obj.attr("__dlpack__")();
    } catch (py::error_already_set&) {
      cap = py::object();  // e.g. numpy refuses to export read-only arrays: try the buffer
    }
    if (cap) {
      auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap.ptr(), "dltensor"));
      if (m == nullptr) throw py::error_already_set();
      PyCapsule_SetName(cap.ptr(), "used_dltensor");
      b.managed_ = m;
      const DLTensor& t = m->dl_tensor;
      if (!from_dl(t.dtype, &b.dtype))
        throw py::type_error(what + " has a dtype kvtier does not store (code " +
                             std::to_string(t.dtype.code) + ", " + std::to_string(t.dtype.bits) +
                             " bits)");
      for (int i = 0; i < t.ndim; ++i) b.shape.push_back(static_cast<uint64_t>(t.shape[i]));
      const auto want = row_major(b.shape);
      if (strides != nullptr) {
        *strides =
            t.strides != nullptr ? std::vector<int64_t>(t.strides, t.strides + t.ndim) : want;
        for (int i = 0; i < t.ndim; ++i)
          if ((*strides)[i] < 0)
            throw py::value_error(what + " has a negative stride: call .contiguous() first");
      } else if (t.strides != nullptr) {
        for (int i = 0; i < t.ndim; ++i)
          if (t.shape[i] > 1 && t.strides[i] != want[i])
            throw py::value_error(what + " is not contiguous: call .contiguous() first");
      }
      b.data = static_cast<std::byte*>(t.data) + t.byte_offset;
      b.bytes = b.elements() * dtype_size(b.dtype);
      return b;
    }
  }
  if (!PyObject_CheckBuffer(obj.ptr()))
    throw py::type_error(what + " is neither a DLPack tensor nor a buffer");
  int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
  if (PyObject_GetBuffer(obj.ptr(), &b.buffer_, flags) != 0) throw py::error_already_set();
  b.has_buffer_ = true;
  const Py_buffer& v = b.buffer_;
  if (!from_format(v.format, v.itemsize, &b.dtype))
    throw py::type_error(what + ": buffer format '" + std::string(v.format ? v.format : "B") +
                         "' is not one kvtier stores");
  if (v.ndim == 0 && v.shape == nullptr)
    b.shape.push_back(static_cast<uint64_t>(v.len / v.itemsize));
  for (int i = 0; i < v.ndim; ++i) b.shape.push_back(static_cast<uint64_t>(v.shape[i]));
  b.data = static_cast<std::byte*>(v.buf);
  b.bytes = static_cast<uint64_t>(v.len);
  if (strides != nullptr) *strides = row_major(b.shape);
  return b;
}

// GPU tier tensors are CUDA memory of their device (the host emulation's stand-in memory is
// host memory, and says so).
DLDevice dl_device(const TensorView& v) {
  if (v.host_accessible) return {kDLCPU, 0};
  return {kDLCUDA, v.device};
}

py::capsule export_dlpack(std::shared_ptr<LeaseBox> box, const TensorView& v) {
  if (v.codec != Codec::kRaw)
    throw py::type_error("tensor '" + v.name + "' is stored " + codec_name(v.codec) +
                         ": it cannot be shared without decoding; use decode_into() or "
                         "Lease.tensor(..., out=...)");
  auto ctx = std::make_unique<ExportCtx>();
  ctx->box = std::move(box);
  for (uint64_t d : v.shape) ctx->shape.push_back(static_cast<int64_t>(d));
  ctx->strides = strides_of(v);
  DLTensor& t = ctx->managed.dl_tensor;
  // DLPack has no read-only flag before v1.0: consumers get a writable-looking tensor over a
  // PROT_READ mapping.  Writing it faults (docs/python.md).
  t.data = const_cast<std::byte*>(v.data);
  t.device = dl_device(v);
  t.ndim = static_cast<int32_t>(ctx->shape.size());
  t.dtype = to_dl(v.dtype);
  t.shape = ctx->shape.data();
  t.strides = ctx->strides.data();
  t.byte_offset = 0;
  ctx->managed.manager_ctx = ctx.get();
  ctx->managed.deleter = delete_export;
  PyObject* cap = PyCapsule_New(&ctx->managed, "dltensor", capsule_destructor);
  if (cap == nullptr) throw py::error_already_set();
  ctx.release();  // owned by the capsule now
  return py::reinterpret_steal<py::capsule>(cap);
}

namespace {

// A paged K or V cache of one layer, [blocks, block_size, heads, head_size] with non-negative
// strides and head_size contiguous, borrowed once (kvtier.PagedKV) for many scatter_rows calls.
struct PagedKV {
  std::unique_ptr<Borrowed> out;
  std::vector<int64_t> strides;  // elements

  explicit PagedKV(py::handle obj) {
    out = std::make_unique<Borrowed>(
        borrow(obj, /*writable=*/true, "out", /*allow_device=*/false, &strides));
    if (out->shape.size() != 4)
      throw py::value_error("out must be [blocks, block_size, heads, head_size], not " +
                            std::to_string(out->shape.size()) + "-dimensional");
    if (strides[3] != 1 && out->shape[3] > 1)
      throw py::value_error("out's last dimension (head_size) must be contiguous");
  }
};

// Tensor.scatter_rows: rows [row0, row0 + n * block_size) of a leased [rows, heads * head_size]
// tensor into blocks `block_ids` (n of them) of a paged cache (PagedKV): one memcpy of
// head_size elements per token and head, the NF4 tensors decoded first into a scratch of this
// thread's.  The GIL is released for the checksum, the decode and the copies.
void scatter_into(const TensorRef& r, const PagedKV& paged, const std::vector<int64_t>& block_ids,
                  uint64_t row0, bool verify) {
  auto box = r.lock();
  const TensorView& v = r.view(*box);
  const Borrowed& dst = *paged.out;
  const std::vector<int64_t>& st = paged.strides;
  const uint64_t nblocks = dst.shape[0], bs = dst.shape[1], heads = dst.shape[2], hd = dst.shape[3];
  if (!v.host_accessible)
    throw py::value_error("tensor '" + v.name + "' is in GPU memory: scatter it with torch");
  if (!v.strides.empty() && v.strides != row_major(v.shape))
    throw py::value_error("tensor '" + v.name + "' is not stored contiguously");
  if (v.shape.empty() || v.shape[0] == 0)
    throw py::value_error("tensor '" + v.name + "' has no rows");
  const uint64_t rows = v.shape[0], width = elements(v.shape) / rows;
  if (width != heads * hd)
    throw py::value_error("tensor '" + v.name + "' has rows of " + std::to_string(width) +
                          " elements, out's blocks " + std::to_string(heads) + " x " +
                          std::to_string(hd));
  if (row0 > rows || block_ids.size() * bs > rows - row0)
    throw py::value_error("rows " + std::to_string(row0) + " + " +
                          std::to_string(block_ids.size()) + " blocks of " + std::to_string(bs) +
                          " exceed tensor '" + v.name + "' (" + std::to_string(rows) + " rows)");
  for (int64_t id : block_ids)
    if (id < 0 || static_cast<uint64_t>(id) >= nblocks)
      throw py::value_error("block id " + std::to_string(id) + " outside out's " +
                            std::to_string(nblocks) + " blocks");
  if (v.codec == Codec::kRaw && dst.dtype != v.dtype)
    throw py::type_error("tensor '" + v.name + "' is " + dtype_str(v.dtype) + ", out is " +
                         dtype_str(dst.dtype));
  const uint64_t item = dtype_size(dst.dtype);
  Status status;
  {
    py::gil_scoped_release nogil;
    const std::byte* src = v.data;
    thread_local std::vector<std::byte> scratch;
    if (verify && !v.verify()) {
      status = error(Errc::kCorrupt, "tensor '" + v.name + "' fails its checksum");
    } else if (v.codec != Codec::kRaw) {
      scratch.resize(decoded_bytes(v, dst.dtype));
      status = decode(v, dst.dtype, scratch);
      src = scratch.data();
    }
    if (status) {
      for (size_t j = 0; j < block_ids.size(); ++j)
        for (uint64_t t = 0; t < bs; ++t) {
          const std::byte* from = src + ((row0 + j * bs + t) * width) * item;
          std::byte* to = dst.data + (block_ids[j] * st[0] + int64_t(t) * st[1]) * item;
          for (uint64_t h = 0; h < heads; ++h)
            std::memcpy(to + h * st[2] * item, from + h * hd * item, hd * item);
        }
    }
  }
  if (!status) throw_status(status);
}

void scatter_rows(const TensorRef& r, py::handle out, const std::vector<int64_t>& block_ids,
                  uint64_t row0, bool verify) {
  if (py::isinstance<PagedKV>(out)) {
    scatter_into(r, out.cast<const PagedKV&>(), block_ids, row0, verify);
  } else {
    const PagedKV paged(out);  // borrowed for this call
    scatter_into(r, paged, block_ids, row0, verify);
  }
}

}  // namespace

void register_tensor(py::module_& m) {
  py::class_<PagedKV>(m, "PagedKV", R"doc(
A paged K or V cache of one layer, [blocks, block_size, heads, head_size] (strided views
allowed; head_size contiguous; host memory), borrowed once for many Tensor.scatter_rows calls.
It keeps the tensor it was made from alive.)doc")
      .def(py::init([](py::handle obj) { return std::make_unique<PagedKV>(obj); }), py::arg("out"))
      .def_property_readonly("shape",
                             [](const PagedKV& p) {
                               py::tuple t(p.out->shape.size());
                               for (size_t i = 0; i < t.size(); ++i) t[i] = p.out->shape[i];
                               return t;
                             })
      .def_property_readonly("dtype",
                             [](const PagedKV& p) { return std::string(dtype_str(p.out->dtype)); });

  auto cls = py::class_<TensorRef>(m, "Tensor", py::buffer_protocol(), R"doc(
One tensor of a leased block: a read-only, zero-copy view into the daemon's shared memory.
Raw tensors export through DLPack (torch.from_dlpack, numpy.from_dlpack) and the buffer
protocol (read-only).  NF4 tensors must be decoded: decode_into(out).  Exports keep the lease
alive; never write to them (the mapping is read-only: a write faults).)doc");
  auto* type = reinterpret_cast<PyHeapTypeObject*>(cls.ptr());
  type->as_buffer.bf_getbuffer = tensor_getbuffer;
  type->as_buffer.bf_releasebuffer = tensor_releasebuffer;

  // Every accessor holds the lease for its duration (a view alone does not).
  auto prop = [&cls](const char* name, auto get, const char* doc = "") {
    cls.def_property_readonly(
        name,
        [get](const TensorRef& r) {
          auto box = r.lock();
          return get(r.view(*box));
        },
        doc);
  };
  prop("name", [](const TensorView& v) { return v.name; });
  prop("dtype", [](const TensorView& v) { return std::string(dtype_str(v.dtype)); });
  prop("shape", [](const TensorView& v) {
    py::tuple t(v.shape.size());
    for (size_t i = 0; i < t.size(); ++i) t[i] = v.shape[i];
    return t;
  });
  prop(
      "codec", [](const TensorView& v) { return std::string(codec_name(v.codec)); },
      "'raw' (zero-copy) or 'nf4' (decode_into)");
  prop("nf4_layout", [](const TensorView& v) {
    return std::string(v.nf4_layout == Nf4Layout::kColumnBlocks ? "column" : "row");
  });
  prop(
      "nbytes", [](const TensorView& v) { return v.bytes; },
      "stored bytes (NF4-encoded for NF4 tensors)");
  prop(
      "raw_bytes", [](const TensorView& v) { return v.raw_bytes; }, "bytes once decoded");
  prop("checksum", [](const TensorView& v) { return v.checksum; });
  prop("data_ptr", [](const TensorView& v) { return reinterpret_cast<uintptr_t>(v.data); });
  prop(
      "device", [](const TensorView& v) { return v.device; },
      "-1: host memory; else the GPU whose memory holds it (GPU tier leases)");

  cls.def(
         "verify",
         [](const TensorRef& r) {
           auto box = r.lock();
           py::gil_scoped_release nogil;
           return r.view(*box).verify();
         },
         "recompute the stored bytes' checksum and compare")
      .def(
          "__dlpack__",
          [](const TensorRef& r, py::object stream) {
            // Host memory, or GPU memory the daemon fenced before publishing: nothing to
            // synchronise on the consumer's stream.
            (void)stream;
            auto box = r.lock();
            return export_dlpack(box, r.view(*box));
          },
          py::arg("stream") = py::none())
      .def("__dlpack_device__",
           [](const TensorRef& r) {
             auto box = r.lock();
             DLDevice d = dl_device(r.view(*box));
             return py::make_tuple(int(d.device_type), d.device_id);
           })
      .def(
          "decode_into",
          [](const TensorRef& r, py::object out) {
            auto box = r.lock();
            const TensorView& v = r.view(*box);
            Borrowed dst = borrow(out, /*writable=*/true, "out");
            if (dst.elements() != elements(v.shape))
              throw py::value_error("out has " + std::to_string(dst.elements()) +
                                    " elements, tensor '" + v.name + "' has " +
                                    std::to_string(elements(v.shape)));
            Status st;
            {
              py::gil_scoped_release nogil;
              st = decode(v, dst.dtype, {dst.data, dst.bytes});
            }
            if (!st) throw_status(st);
            return out;
          },
          py::arg("out"),
          "Decode into `out` (any writable, contiguous host tensor of the same element count: "
          "fp16/bf16/fp32 for NF4, the stored dtype for raw tensors); returns out.")
      .def("scatter_rows", &scatter_rows, py::arg("out"), py::arg("block_ids"), py::arg("row0") = 0,
           py::arg("verify") = false,
           "Copy rows [row0, row0 + len(block_ids) * block_size) of this [rows, heads * "
           "head_size] tensor into the blocks block_ids of out, a kvtier.PagedKV or a writable "
           "host tensor [blocks, block_size, heads, head_size] (strided views allowed, "
           "head_size contiguous: vLLM's paged K or V of one layer).  NF4 tensors are decoded into "
           "out's dtype (fp16, bf16 "
           "or fp32), raw ones must have it.  verify=True checks the stored bytes' checksum "
           "first (kvtier.Corrupt).  No intermediate tensor; the GIL is released.")
      .def("__repr__", [](const TensorRef& r) {
        auto b = r.box.lock();
        if (!b || b->closed) return std::string("<kvtier.Tensor (lease released)>");
        const TensorView& v = r.view(*b);
        std::string s = "<kvtier.Tensor '" + v.name + "' " + dtype_str(v.dtype) + " [";
        for (size_t i = 0; i < v.shape.size(); ++i)
          s += (i ? ", " : "") + std::to_string(v.shape[i]);
        return s + "] " + codec_name(v.codec) + ">";
      });
}

}  // namespace kvtier::python
