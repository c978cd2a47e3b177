// The io_uring Device: submissions are queued under sq_mu_ and pushed by submit() in one
// io_uring_submit (batched); one completion thread reaps CQEs and runs the callbacks, so the
// caller never waits on I/O.  Probed at construction with a NOP round trip.
#include <liburing.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "common/mutex.h"
#include "tiers/disk/region_files.h"

#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#endif

namespace kvtier {
namespace {

// A UringOp is written by the submitting thread and used by the reaper once its CQE arrives;
// the kernel orders the two (io_uring_enter, then the CQ tail's release), which ThreadSanitizer
// cannot see.  Under TSan the submitter releases the op before its SQE is queued and the
// reaper acquires it after reaping, so the op and everything its callback captured are
// ordered for the tool too; in other builds these are empty.
inline void handoff_to_kernel([[maybe_unused]] void* op) {
#if defined(__SANITIZE_THREAD__)
  __tsan_release(op);
#endif
}
inline void handoff_from_kernel([[maybe_unused]] void* op) {
#if defined(__SANITIZE_THREAD__)
  __tsan_acquire(op);
#endif
}

struct UringOp {
  IoDone done;
  bool write = false;
};

class UringDevice final : public Device {
 public:
  explicit UringDevice(const FileDeviceOptions& options) : files_(options) {}
  Status start(uint32_t depth) {
    int rc = io_uring_queue_init(depth, &ring_, 0);
    if (rc < 0) return error(Errc::kUnavailable, std::string("io_uring refused: ") + errname(-rc));
    inited_ = true;
    // NOP round trip: some sandboxes allow setup but fail every operation.
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data(sqe, nullptr);
    rc = io_uring_submit(&ring_);
    io_uring_cqe* cqe = nullptr;
    if (rc >= 0) rc = io_uring_wait_cqe(&ring_, &cqe);
    if (rc >= 0) {
      rc = cqe->res;
      io_uring_cqe_seen(&ring_, cqe);
    }
    if (rc < 0) return error(Errc::kUnavailable, std::string("io_uring refused: ") + errname(-rc));
    reaper_ = std::thread([this] { reap(); });
    return {};
  }
  ~UringDevice() override {
    if (reaper_.joinable()) {
      {
        MutexLock lock(sq_mu_);
        io_uring_sqe* sqe = get_sqe();
        io_uring_prep_nop(sqe);
        io_uring_sqe_set_data(sqe, &stop_tag_);
        io_uring_submit(&ring_);
      }
      reaper_.join();
    }
    if (inited_) io_uring_queue_exit(&ring_);
  }
  std::string describe() const override { return "io_uring" + files_.suffix(); }
  Status create_region(uint32_t r, uint64_t b) override { return files_.create(r, b); }
  Status open_region(uint32_t r) override { return files_.open(r); }
  Status remove_region(uint32_t r) override { return files_.remove(r); }
  std::vector<uint32_t> list_regions() override { return files_.list(); }
  Result<uint64_t> region_size(uint32_t r) override { return files_.size(r); }
  Status sync(uint32_t r) override { return files_.sync(r); }
  void write(uint32_t r, uint64_t off, std::span<const std::byte> buf, IoDone done) override {
    queue(true, r, off, const_cast<std::byte*>(buf.data()), buf.size(), std::move(done));
  }
  void read(uint32_t r, uint64_t off, std::span<std::byte> buf, IoDone done) override {
    queue(false, r, off, buf.data(), buf.size(), std::move(done));
  }
  void submit() override {
    MutexLock lock(sq_mu_);
    io_uring_submit(&ring_);
  }

 private:
  static std::string errname(int err) {
    const char* n = strerrorname_np(err);
    return n ? n : std::to_string(err);
  }
  io_uring_sqe* get_sqe() {  // sq_mu_ held; a full SQ is pushed to the kernel first
    io_uring_sqe* sqe;
    while ((sqe = io_uring_get_sqe(&ring_)) == nullptr) io_uring_submit(&ring_);
    return sqe;
  }
  void queue(bool write, uint32_t r, uint64_t off, std::byte* buf, size_t n, IoDone done) {
    int fd = files_.fd(r);
    if (fd < 0) return done(error(Errc::kNotFound, "region not open"));
    auto* op = new UringOp{std::move(done), write};  // owned by the CQE until reaped
    handoff_to_kernel(op);
    MutexLock lock(sq_mu_);
    io_uring_sqe* sqe = get_sqe();
    if (write)
      io_uring_prep_write(sqe, fd, buf, unsigned(n), off);
    else
      io_uring_prep_read(sqe, fd, buf, unsigned(n), off);
    io_uring_sqe_set_data(sqe, op);
  }
  void reap() {
    for (;;) {
      io_uring_cqe* cqe = nullptr;
      int rc = io_uring_wait_cqe(&ring_, &cqe);
      if (rc == -EINTR) continue;
      if (rc < 0) std::abort();  // the ring itself failed: nothing sane left to do
      void* tag = io_uring_cqe_get_data(cqe);
      int res = cqe->res;
      io_uring_cqe_seen(&ring_, cqe);
      if (tag == &stop_tag_) return;
      if (tag == nullptr) continue;
      handoff_from_kernel(tag);
      std::unique_ptr<UringOp> op(static_cast<UringOp*>(tag));
      if (res < 0)
        op->done(errno_status(-res, op->write ? "io_uring write" : "io_uring read"));
      else
        op->done(size_t(res));
    }
  }

  RegionFiles files_;
  io_uring ring_{};  // SQ side guarded by sq_mu_; CQ side owned by reaper_
  bool inited_ = false;
  Mutex sq_mu_;
  std::thread reaper_;
  int stop_tag_ = 0;
};

}  // namespace

Result<std::unique_ptr<Device>> make_uring_device(const FileDeviceOptions& options) {
  const char* env = std::getenv("KVTIER_DISK_NO_URING");
  if (options.refuse_io_uring || (env && std::strcmp(env, "1") == 0))
    return error(Errc::kUnavailable, "io_uring refused: EPERM (simulated)");
  std::error_code ec;
  std::filesystem::create_directories(options.dir, ec);
  if (ec) return error(Errc::kIo, "create " + options.dir.string() + ": " + ec.message());
  auto dev = std::make_unique<UringDevice>(options);
  if (Status s = dev->start(std::max(8u, options.queue_depth)); !s) return s;
  return std::unique_ptr<Device>(std::move(dev));
}

}  // namespace kvtier
