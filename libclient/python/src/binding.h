// Internals of the Python module `kvtier._kvtier` shared by its translation units.
//
// Lifetime model (docs/python.md):
//   Python Client ──strong──> kvtier::Client (the connection)
//   Python Lease  ──strong──> LeaseBox ──strong──> kvtier::Client, kvtier::Lease
//   Block, Tensor ──weak────> LeaseBox          (views: raise once the lease is released)
//   DLPack capsule / buffer export ──strong──> LeaseBox
// The daemon-side release happens when the last strong reference to a LeaseBox goes: a lease
// released (or a `with` block left) while exported tensors exist is released when the last of
// them dies.  Holding the connection from the LeaseBox matters: closing the connection
// releases every pin on the daemon side while the arena stays mapped here, so memory under a
// live tensor could be reused by another block.
#pragma once

#include <pybind11/pybind11.h>

#include <Python.h>

#include <atomic>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "dlpack.h"
#include "kvtier/client.h"

namespace kvtier::python {

namespace py = pybind11;

struct LeaseBox {
  std::shared_ptr<Client> client;  // declared first: destroyed after `lease` is released
  Lease lease;
  std::atomic<bool> closed{false};
  ~LeaseBox() { (void)lease.release(); }
};

// The daemon refused or failed a call: becomes kvtier.Error (or a subclass) in Python.
struct StatusError : std::runtime_error {
  explicit StatusError(Status s) : std::runtime_error(s.to_string()), status(std::move(s)) {}
  Status status;
};

[[noreturn]] inline void throw_status(const Status& st) {
  throw StatusError(st);
}
template <typename T>
T unwrap(Result<T>&& r) {
  if (!r) throw_status(r.status());
  return std::move(r).value();
}

// A view of one tensor of one block of a lease (Python `kvtier.Tensor`).  Exports (DLPack
// capsules, buffer-protocol views) hold the lease strongly; the view itself does not.
struct TensorRef {
  std::weak_ptr<LeaseBox> box;
  size_t block = 0;
  size_t index = 0;
  bool fusion = false;  // index into LeasedBlock::fusion rather than ::tensors

  // The lease, or RuntimeError when it was released.
  std::shared_ptr<LeaseBox> lock() const;
  const TensorView& view(const LeaseBox& b) const;  // b = lock()
};

// A tensor lent by a Python object (DLPack producer or buffer exporter) for one call.
// Must be destroyed with the GIL held (producers' deleters touch Python objects).
class Borrowed {
 public:
  Borrowed() = default;
  Borrowed(Borrowed&& o) noexcept;
  Borrowed& operator=(Borrowed&&) = delete;
  ~Borrowed();

  std::byte* data = nullptr;
  DType dtype = DType::kU8;
  std::vector<uint64_t> shape;
  uint64_t bytes = 0;
  int device = -1;  // >= 0: CUDA memory of this device (borrowed with allow_device)
  uint64_t elements() const;

 private:
  friend Borrowed borrow(py::handle obj, bool writable, const std::string& what, bool allow_device,
                         std::vector<int64_t>* strides);
  DLManagedTensor* managed_ = nullptr;
  Py_buffer buffer_{};
  bool has_buffer_ = false;
};

// Borrows a host-memory, C-contiguous tensor: __dlpack__ first, then the buffer protocol; with
// `allow_device`, CUDA memory too (DLPack kDLCUDA: Borrowed::device).  With `strides`, a
// strided DLPack tensor too (non-negative strides, in elements, stored there; a buffer must
// still be C-contiguous).  Raises TypeError/ValueError naming `what` otherwise.
Borrowed borrow(py::handle obj, bool writable, const std::string& what, bool allow_device = false,
                std::vector<int64_t>* strides = nullptr);

// The kvtier exception for a failed Status, not raised (put_batch reports one per item).
py::object exception_for(const Status& st);

// DLPack capsule of a raw leased tensor; the capsule (and whoever consumes it) keeps the
// lease alive.
py::capsule export_dlpack(std::shared_ptr<LeaseBox> box, const TensorView& v);

const char* dtype_str(DType t);  // numpy/torch spelling: "float16", "bfloat16", ...
DType dtype_from_str(const std::string& s);

void register_errors(py::module_& m);
void register_tensor(py::module_& m);

}  // namespace kvtier::python
