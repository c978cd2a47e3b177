// Errno conversion, aligned buffers, region files and the synchronous helpers of device.h.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>

#include "tiers/disk/device.h"
#include "tiers/disk/region_files.h"

namespace kvtier {

Status errno_status(int err, std::string_view what) {
  std::string msg = std::string(what) + ": " + std::strerror(err);
  return Status(err == ENOSPC ? Errc::kNoSpace : Errc::kIo, std::move(msg));
}

AlignedBuffer::AlignedBuffer(size_t bytes)
    : size_((bytes + kDiskAlign - 1) / kDiskAlign * kDiskAlign) {
  if (size_ == 0) size_ = kDiskAlign;
  void* p = std::aligned_alloc(kDiskAlign, size_);
  if (p == nullptr) throw std::bad_alloc();
  p_.reset(static_cast<std::byte*>(p));
}
void AlignedBuffer::Free::operator()(std::byte* p) const {
  std::free(p);
}

static Result<size_t> transfer_sync(Device& dev, bool write, uint32_t region, uint64_t offset,
                                    std::span<std::byte> buf) {
  std::promise<Result<size_t>> done;
  auto fut = done.get_future();
  auto cb = [&done](Result<size_t> r) { done.set_value(std::move(r)); };
  if (write)
    dev.write(region, offset, buf, cb);
  else
    dev.read(region, offset, buf, cb);
  dev.submit();
  return fut.get();
}
Result<size_t> read_sync(Device& dev, uint32_t region, uint64_t offset, std::span<std::byte> buf) {
  return transfer_sync(dev, false, region, offset, buf);
}
Result<size_t> write_sync(Device& dev, uint32_t region, uint64_t offset,
                          std::span<const std::byte> buf) {
  return transfer_sync(dev, true, region, offset, {const_cast<std::byte*>(buf.data()), buf.size()});
}

RegionFiles::RegionFiles(const FileDeviceOptions& options) : options_(options) {
  buffered_ = !options.o_direct;
}
RegionFiles::~RegionFiles() {
  for (auto& [id, fd] : fds_) ::close(fd);
}
std::filesystem::path RegionFiles::path(uint32_t region) const {
  char name[32];
  std::snprintf(name, sizeof name, "region-%08x.kvr", region);
  return options_.dir / name;
}
Status RegionFiles::open_flags(uint32_t region, int flags) {
  std::string p = path(region);
  int fd = -1;
  if (!buffered_) {
    fd = ::open(p.c_str(), flags | O_DIRECT, 0640);
    if (fd < 0 && errno == EINVAL) buffered_ = true;  // the file system refuses O_DIRECT
  }
  if (fd < 0 && buffered_) fd = ::open(p.c_str(), flags, 0640);
  if (fd < 0) return errno_status(errno, "open " + p);
  MutexLock lock(mu_);
  if (auto it = fds_.find(region); it != fds_.end()) ::close(it->second);
  fds_[region] = fd;
  return {};
}
Status RegionFiles::create(uint32_t region, uint64_t reserve_bytes) {
  Status s = open_flags(region, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC);
  if (s && reserve_bytes > 0) {
    int rc = ::posix_fallocate(fd(region), 0, off_t(reserve_bytes));
    if (rc == ENOSPC) {
      (void)remove(region);
      return errno_status(rc, "fallocate " + path(region).string());
    }  // EOPNOTSUPP and friends: appends just extend the file
  }
  return s;
}
Status RegionFiles::open(uint32_t region) {
  return open_flags(region, O_RDWR | O_CLOEXEC);
}
Status RegionFiles::remove(uint32_t region) {
  {
    MutexLock lock(mu_);
    if (auto it = fds_.find(region); it != fds_.end()) {
      ::close(it->second);
      fds_.erase(it);
    }
  }
  std::string p = path(region);
  if (::unlink(p.c_str()) != 0 && errno != ENOENT) return errno_status(errno, "unlink " + p);
  return {};
}
std::vector<uint32_t> RegionFiles::list() const {
  std::vector<uint32_t> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(options_.dir, ec)) {
    unsigned id = 0;
    char tail = 0;
    if (std::sscanf(e.path().filename().c_str(), "region-%8x.kv%c", &id, &tail) == 2 && tail == 'r')
      out.push_back(id);
  }
  return out;
}
Result<uint64_t> RegionFiles::size(uint32_t region) {
  int f = fd(region);
  if (f < 0) return error(Errc::kNotFound, "region not open");
  struct stat st {};
  if (::fstat(f, &st) != 0) return errno_status(errno, "fstat");
  return uint64_t(st.st_size);
}
Status RegionFiles::sync(uint32_t region) {
  int f = fd(region);
  if (f < 0) return error(Errc::kNotFound, "region not open");
  if (::fdatasync(f) != 0) return errno_status(errno, "fdatasync");
  return {};
}
int RegionFiles::fd(uint32_t region) {
  MutexLock lock(mu_);
  auto it = fds_.find(region);
  return it == fds_.end() ? -1 : it->second;
}

}  // namespace kvtier
