// The seam between the GPU tier and a device: pools of device memory, the copies and NF4
// kernels the tier needs, and the handles other processes import pools with.
//
// Two implementations (docs/gpu.md):
//   cuda       device memory from the CUDA VMM API (cuMemCreate with a POSIX fd handle,
//              mapped into a reserved range), exported as that fd over SCM_RIGHTS; or, for
//              drivers without VMM, one cudaMalloc'd range exported as a cudaIpcMemHandle.
//   emulation  the same interface over shared host memory (a memfd per pool), so every line
//              of tier, lease and handle logic runs on machines without a GPU.
//
// Thread-safety: a DeviceBackend and its pools are thread-safe.  Every DevicePool operation
// is complete when it returns (the CUDA backend synchronises its stream before returning), so
// a block whose bytes were written is safe to publish to importers: that is the fence.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kvtier/status.h"
#include "kvtier/types.h"
#include "kernels/nf4.h"

namespace kvtier::gpu {

enum class BackendKind : uint8_t { kCuda = 0, kEmulation = 1 };

// How a pool is exported; the numeric values are on the wire (GpuPoolInfo.handle_type).
enum class HandleType : uint8_t {
  kVmmFd = 0,    // CUDA VMM shareable POSIX fd (cuMemImportFromShareableHandle)
  kCudaIpc = 1,  // legacy cudaIpcMemHandle_t bytes (cudaIpcOpenMemHandle)
  kMemfd = 2,    // host emulation: a memfd, mapped read-only by importers
};
const char* handle_type_name(HandleType t);

// A device's UUID (cudaDeviceProp::uuid): the same in every process, whatever numbering its
// CUDA_VISIBLE_DEVICES gives (tiers/gpu/device_identity.h).
using DeviceUuid = std::array<uint8_t, 16>;

struct DeviceInfo {
  int index = 0;
  DeviceUuid uuid{};  // the emulation's: emulated_device_uuid(index)
  std::string name;   // "NVIDIA H100 80GB HBM3", "emulated device 0"
  uint64_t total_bytes = 0;
  int cc_major = 0;
  int cc_minor = 0;
  bool vmm = false;  // CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED + POSIX fd handles
};

// What a backend found when it started; the daemon logs it and reports it in stats/health.
struct ProbeReport {
  bool driver = false;     // a usable driver (the emulation reports true)
  int driver_version = 0;  // cudaDriverGetVersion, e.g. 13000; 0 for the emulation
  std::vector<DeviceInfo> devices;
  std::string message;  // one line: what was found, or why nothing usable was
};

// What an importer needs to map a pool.
struct PoolExport {
  HandleType type = HandleType::kMemfd;
  int device = 0;
  uint64_t bytes = 0;                      // size of the mapping (granularity-rounded)
  int fd = -1;                             // kVmmFd, kMemfd: a new descriptor; the receiver owns it
  std::array<std::byte, 64> ipc_handle{};  // kCudaIpc
  // The importer may write (a put's device staging, docs/gpu.md); pools of the tier are
  // exported read-only.
  bool writable = false;
  // The pool's ready events (cudaIpcEventHandle_t bytes, slot i+1 at index i): an async
  // promotion's blocks carry the slot whose event completes with it (docs/gpu.md, "Async
  // gets").  Empty for the emulation, whose device work is done before it returns.
  std::vector<std::array<std::byte, 64>> events;
};

// Ready events per pool (slots 1..kPoolEvents).
inline constexpr uint32_t kPoolEvents = 64;

// dequantize_batch_async's result: one Status per op, the event slot that completes with the
// queued work (0: the work is done already) and the batch's ticket, unique in its pool, which
// the event handler is called with.
struct AsyncBatch {
  std::vector<Status> queued;
  uint32_t event = 0;
  uint64_t ticket = 0;
};

// One dequantize_into of a batch (DevicePool::dequantize_batch).
struct DequantizeOp {
  std::span<const std::byte> encoded;
  DType out_dtype = DType::kF16;
  uint64_t offset = 0;
};

// One quantize_from of a batch (DevicePool::quantize_batch).
struct QuantizeOp {
  nf4::Params params;
  uint64_t offset = 0;
  std::span<std::byte> dst;
};

class DevicePool {
 public:
  virtual ~DevicePool() = default;
  virtual int device() const = 0;
  virtual uint64_t size() const = 0;
  virtual HandleType handle_type() const = 0;
  // Address of offset 0 in this process: a device pointer (cuda) or host pointer (emulation).
  virtual std::uintptr_t base() const = 0;
  // A handle for another process; for fd handles, a new descriptor (O_CLOEXEC) the caller
  // sends and closes.  Read-only unless `writable`: the emulation's descriptor is then opened
  // O_RDONLY, so importers cannot map it writable.  A VMM fd carries no such restriction
  // (importers choose their access: import_pool() honours PoolExport::writable).
  virtual Result<PoolExport> export_handle(bool writable = false) const = 0;

  // Host -> pool (H2D).  `src` may be any host memory.
  virtual Status write(uint64_t offset, std::span<const std::byte> src) = 0;
  // Pool -> host (D2H).
  virtual Status read(uint64_t offset, std::span<std::byte> dst) = 0;
  // `bytes` at `src_offset` of `src` (a pool of the same backend, this one included) -> this
  // pool at `dst_offset`, device to device (a peer copy when the pools are on two devices).
  // Overlapping ranges of one pool are refused (kInvalidArgument).
  virtual Status copy_from(DevicePool& src, uint64_t src_offset, uint64_t dst_offset,
                           uint64_t bytes) = 0;
  // NF4 encoding in host memory (registered with register_host() or not) -> out_dtype elements
  // at `offset`, dequantized on the device (the kernels of kernels/nf4_cuda.h; the emulation
  // runs the CPU codec, which is byte-identical).
  virtual Status dequantize_into(std::span<const std::byte> encoded, DType out_dtype,
                                 uint64_t offset) = 0;
  // Many dequantize_into at once, one Status each: the CUDA backend decodes up to 16 tensors
  // per launch on the pool's stream and synchronises once (encodings outside registered memory
  // are copied into its staging buffer first); this default runs them one by one.
  virtual std::vector<Status> dequantize_batch(std::span<const DequantizeOp> ops) {
    std::vector<Status> out;
    out.reserve(ops.size());
    for (const DequantizeOp& op : ops)
      out.push_back(dequantize_into(op.encoded, op.out_dtype, op.offset));
    return out;
  }
  // dequantize_batch without waiting for the device: the work is queued and the returned
  // event slot completes with it; the event handler (set_event_handler) is then called with
  // the batch's ticket, once, on a thread of the backend's.  The encodings must stay in place until
  // then.  Falls back to the synchronous batch (event 0) when no handler is set, no slot is
  // free, or an encoding lies outside registered memory (the staging buffer is reused by the
  // next call).  The CUDA backend records an interprocess event; the emulation does the work
  // before it returns, takes a slot and calls the handler from this thread, so callers run
  // the same bookkeeping as on a GPU.
  virtual AsyncBatch dequantize_batch_async(std::span<const DequantizeOp> ops) {
    return {dequantize_batch(ops), 0, 0};
  }
  // Blocks the calling thread until `event`'s last recorded work is done (a later record
  // only makes it wait longer).  The emulation has nothing to wait for.
  virtual Status wait_event(uint32_t event) {
    (void)event;
    return Status::ok();
  }
  // The handler of completed batches (their tickets): it must not block or call into this pool.
  virtual void set_event_handler(std::function<void(uint64_t ticket)> handler) { (void)handler; }
  // p.rows*p.cols elements of p.dtype at `offset` -> NF4 encoding in host memory `dst`
  // (nf4::encoded_size(p) bytes), quantized on the device.  kInvalidArgument on NaN/Inf.
  // Both refuse outlier-channel encodings (the CUDA kernels do not support them) and ranges
  // outside the pool (kInvalidArgument); dequantize_into trusts the scales of an encoding that
  // passed parse_header (kernels/nf4_cuda.h).
  virtual Status quantize_from(const nf4::Params& p, uint64_t offset, std::span<std::byte> dst) = 0;
  // Many quantize_from at once, one Status each: the CUDA backend runs each step of up to 16
  // tensors in one launch and synchronises once for the batch (destinations outside registered
  // memory share its staging buffer); this default runs them one by one.  An op refused for
  // its input (NaN/Inf) fails alone.
  virtual std::vector<Status> quantize_batch(std::span<const QuantizeOp> ops) {
    std::vector<Status> out;
    out.reserve(ops.size());
    for (const QuantizeOp& op : ops) out.push_back(quantize_from(op.params, op.offset, op.dst));
    return out;
  }
};

class DeviceBackend {
 public:
  virtual ~DeviceBackend() = default;
  virtual BackendKind kind() const = 0;
  virtual const char* name() const = 0;  // "cuda" or "emulation"
  virtual const ProbeReport& probe() const = 0;
  // Registers host memory (the host tier's arena) so kernels read and write it in place;
  // optional: without it the backend stages through its own pinned buffer.  CUDA pins the
  // whole range (cudaHostRegister, mapped + portable) until the backend is destroyed, so the
  // memory must stay mapped until then: destroy the backend before the host tier.
  virtual Status register_host(std::span<std::byte> memory) = 0;
  // One pool of `bytes` (rounded up to the allocation granularity: the VMM minimum, 2 MiB for
  // legacy IPC and for the emulation) on `device`.
  // kUnavailable when the device or handle type is not supported, kNoSpace when the device
  // cannot allocate it.
  virtual Result<std::unique_ptr<DevicePool>> create_pool(int device, uint64_t bytes,
                                                          HandleType handle) = 0;
};

// Probes the CUDA driver (no driver, no device, no VMM are all reported, not fatal):
// kUnavailable with the probe's message when no device is usable, or when built without CUDA.
Result<std::unique_ptr<DeviceBackend>> make_cuda_backend();
// `devices` emulated devices of `device_bytes` (rounded up to 2 MiB) each, backed by memfds;
// the pools of one device share its bytes.
std::unique_ptr<DeviceBackend> make_emulation_backend(int devices, uint64_t device_bytes);

// The client side: a pool mapped into this process from a PoolExport (takes ownership of
// e.fd and closes it once mapped, also on failure).  Read-only where the handle type allows
// (memfd: PROT_READ; VMM: CU_MEM_ACCESS_FLAGS_PROT_READ) unless e.writable; legacy IPC maps
// read-write.
// kVmmFd maps the pool for the device that holds it, as this process numbers devices, and
// creates the CUDA primary context of the calling thread's current device if there is none;
// kCudaIpc opens it in the current device's context.  kMemfd works in every build; CUDA
// handles give kUnavailable in a build without CUDA or on a host without a driver.
// Thread-safe; import each pool once per process and keep it while any pointer into it is
// in use.
class ImportedPool {
 public:
  virtual ~ImportedPool() = default;  // unmaps
  virtual std::uintptr_t base() const = 0;
  virtual uint64_t size() const = 0;
  virtual int device() const = 0;
};
Result<std::unique_ptr<ImportedPool>> import_pool(PoolExport e);

}  // namespace kvtier::gpu
