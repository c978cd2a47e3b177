// The pread/pwrite Device: a pool of threads, each running one blocking transfer at a time.
// Runs where io_uring is refused (containers block it) and as the test reference.
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <deque>
#include <thread>

#include "common/mutex.h"
#include "tiers/disk/region_files.h"

namespace kvtier {
namespace {

class ThreadDevice final : public Device {
 public:
  ThreadDevice(const FileDeviceOptions& options, std::string why)
      : files_(options), why_(std::move(why)) {
    for (uint32_t i = 0; i < std::max(1u, options.threads); ++i)
      workers_.emplace_back([this] { run(); });
  }
  ~ThreadDevice() override {
    {
      MutexLock lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  std::string describe() const override {
    return "threads" + (why_.empty() ? "" : " (" + why_ + ")") + files_.suffix();
  }
  Status create_region(uint32_t r, uint64_t b) override { return files_.create(r, b); }
  Status open_region(uint32_t r) override { return files_.open(r); }
  Status remove_region(uint32_t r) override { return files_.remove(r); }
  std::vector<uint32_t> list_regions() override { return files_.list(); }
  Result<uint64_t> region_size(uint32_t r) override { return files_.size(r); }
  Status sync(uint32_t r) override { return files_.sync(r); }
  void write(uint32_t r, uint64_t off, std::span<const std::byte> buf, IoDone done) override {
    push({true, r, off, const_cast<std::byte*>(buf.data()), buf.size(), std::move(done)});
  }
  void read(uint32_t r, uint64_t off, std::span<std::byte> buf, IoDone done) override {
    push({false, r, off, buf.data(), buf.size(), std::move(done)});
  }

 private:
  struct Op {
    bool write;
    uint32_t region;
    uint64_t offset;
    std::byte* buf;
    size_t bytes;
    IoDone done;
  };
  void push(Op op) {
    {
      MutexLock lock(mu_);
      ops_.push_back(std::move(op));
    }
    cv_.notify_one();
  }
  void run() {
    for (;;) {
      Op op;
      {
        MutexLock lock(mu_);
        cv_.wait(lock, [&] {
          mu_.assert_held();  // the wait holds it when it asks
          return stop_ || !ops_.empty();
        });
        if (ops_.empty()) return;
        op = std::move(ops_.front());
        ops_.pop_front();
      }
      op.done(transfer(op));
    }
  }
  Result<size_t> transfer(const Op& op) {
    int fd = files_.fd(op.region);
    if (fd < 0) return error(Errc::kNotFound, "region not open");
    size_t done = 0;
    while (done < op.bytes) {
      ssize_t n = op.write ? ::pwrite(fd, op.buf + done, op.bytes - done, op.offset + done)
                           : ::pread(fd, op.buf + done, op.bytes - done, op.offset + done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return errno_status(errno, op.write ? "pwrite" : "pread");
      if (n == 0) break;  // end of file: a short read
      done += size_t(n);
    }
    return done;
  }

  RegionFiles files_;
  const std::string why_;
  Mutex mu_;
  CondVar cv_;
  std::deque<Op> ops_ GUARDED_BY(mu_);
  bool stop_ GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;
};

}  // namespace

Result<std::unique_ptr<Device>> make_thread_device(const FileDeviceOptions& options,
                                                   std::string why) {
  std::error_code ec;
  std::filesystem::create_directories(options.dir, ec);
  if (ec) return error(Errc::kIo, "create " + options.dir.string() + ": " + ec.message());
  return std::unique_ptr<Device>(new ThreadDevice(options, std::move(why)));
}

}  // namespace kvtier
