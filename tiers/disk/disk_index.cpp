#include "tiers/disk/disk_index.h"

#include <cstring>

namespace kvtier {
namespace {
MDB_val val(std::string_view s) {
  return {s.size(), const_cast<char*>(s.data())};
}
std::string_view view(const MDB_val& v) {
  return {static_cast<const char*>(v.mv_data), v.mv_size};
}
}  // namespace

Status lmdb_status(int rc, std::string_view what) {
  if (rc == MDB_SUCCESS) return {};
  Errc code = Errc::kIo;
  if (rc == MDB_KEYEXIST) code = Errc::kAlreadyExists;
  if (rc == MDB_NOTFOUND) code = Errc::kNotFound;
  if (rc == MDB_MAP_FULL) code = Errc::kNoSpace;
  if (rc == MDB_CORRUPTED || rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH) code = Errc::kCorrupt;
  return Status(code, "lmdb " + std::string(what) + ": " + mdb_strerror(rc));
}

Result<std::unique_ptr<DiskIndex>> DiskIndex::open(const std::filesystem::path& dir,
                                                   uint64_t map_bytes, bool sync) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return error(Errc::kIo, "create " + dir.string() + ": " + ec.message());
  std::unique_ptr<DiskIndex> ix(new DiskIndex());
  int rc = mdb_env_create(&ix->env_);
  if (rc == 0) rc = mdb_env_set_mapsize(ix->env_, map_bytes);
  if (rc == 0) rc = mdb_env_set_maxdbs(ix->env_, 4);
  if (rc == 0) rc = mdb_env_set_maxreaders(ix->env_, 1024);
  if (rc == 0) rc = mdb_env_open(ix->env_, dir.c_str(), MDB_NOTLS | (sync ? 0 : MDB_NOSYNC), 0640);
  if (rc != 0) return lmdb_status(rc, "open " + dir.string());
  ix->check_readers();  // slots left by a daemon that died
  MDB_txn* txn = nullptr;
  rc = mdb_txn_begin(ix->env_, nullptr, 0, &txn);
  if (rc == 0) rc = mdb_dbi_open(txn, "blocks", MDB_CREATE, &ix->blocks_);
  if (rc == 0) rc = mdb_dbi_open(txn, "by_region", MDB_CREATE, &ix->by_region_);
  if (rc == 0) rc = mdb_dbi_open(txn, "regions", MDB_CREATE, &ix->regions_);
  if (rc == 0) rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &ix->meta_);
  if (rc != 0) {
    if (txn) mdb_txn_abort(txn);
    return lmdb_status(rc, "open databases");
  }
  MDB_val k = val("format"), v;
  rc = mdb_get(txn, ix->meta_, &k, &v);
  uint32_t version = kDiskFormatVersion;
  if (rc == MDB_NOTFOUND) {
    MDB_val nv{sizeof version, &version};
    rc = mdb_put(txn, ix->meta_, &k, &nv, 0);
  } else if (rc == 0 && (v.mv_size != 4 || std::memcmp(v.mv_data, &version, 4) != 0)) {
    mdb_txn_abort(txn);
    return error(Errc::kCorrupt, "disk index: unknown format version in " + dir.string());
  }
  if (rc == 0)
    rc = mdb_txn_commit(txn);
  else
    mdb_txn_abort(txn);
  if (rc != 0) return lmdb_status(rc, "format record");
  return ix;
}

DiskIndex::~DiskIndex() {
  for (MDB_txn* t : idle_readers_) mdb_txn_abort(t);
  if (env_) mdb_env_close(env_);
}

int DiskIndex::check_readers() {
  int dead = 0;
  mdb_reader_check(env_, &dead);
  return dead;
}

MDB_txn* DiskIndex::take_reader() const {
  {
    MutexLock lock(pool_mu_);
    if (!idle_readers_.empty()) {
      MDB_txn* t = idle_readers_.back();
      idle_readers_.pop_back();
      if (mdb_txn_renew(t) == 0) return t;
      mdb_txn_abort(t);
    }
  }
  MDB_txn* t = nullptr;
  return mdb_txn_begin(env_, nullptr, MDB_RDONLY, &t) == 0 ? t : nullptr;
}
void DiskIndex::give_reader(MDB_txn* t) const {
  mdb_txn_reset(t);
  MutexLock lock(pool_mu_);
  if (idle_readers_.size() < 64)
    idle_readers_.push_back(t);
  else
    mdb_txn_abort(t);
}

std::optional<std::string> DiskIndex::get_block(std::string_view key) const {
  MDB_txn* t = take_reader();
  if (!t) return std::nullopt;
  MDB_val k = val(key), v;
  std::optional<std::string> out;
  if (mdb_get(t, blocks_, &k, &v) == 0) out = std::string(view(v));
  give_reader(t);
  return out;
}

size_t DiskIndex::scan_blocks(
    const std::string& after, size_t limit,
    const std::function<void(std::string_view, std::string_view)>& fn) const {
  MDB_txn* t = take_reader();
  if (!t) return 0;
  MDB_cursor* c = nullptr;
  size_t n = 0;
  if (mdb_cursor_open(t, blocks_, &c) == 0) {
    MDB_val k = val(after), v;
    int rc = after.empty() ? mdb_cursor_get(c, &k, &v, MDB_FIRST)
                           : mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
    if (rc == 0 && !after.empty() && view(k) == after) rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
    for (; rc == 0 && n < limit; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT), ++n)
      fn(view(k), view(v));
    mdb_cursor_close(c);
  }
  give_reader(t);
  return n;
}

std::map<uint32_t, RegionRecord> DiskIndex::regions() const {
  std::map<uint32_t, RegionRecord> out;
  MDB_txn* t = take_reader();
  if (!t) return out;
  MDB_cursor* c = nullptr;
  if (mdb_cursor_open(t, regions_, &c) == 0) {
    MDB_val k, v;
    for (int rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
      RegionRecord r;
      if (decode_region_record(view(v), r))
        out[decode_region_key(view(k))] = r;
      else
        out[decode_region_key(view(k))] = RegionRecord{0, 0, 0};  // unreadable: drop it
    }
    mdb_cursor_close(c);
  }
  give_reader(t);
  return out;
}

Result<DiskIndex::WriteTxn> DiskIndex::begin_write() {
  MDB_txn* t = nullptr;
  int rc = mdb_txn_begin(env_, nullptr, 0, &t);
  if (rc != 0) return lmdb_status(rc, "begin write");
  return WriteTxn(this, t);
}

DiskIndex::WriteTxn::~WriteTxn() {
  if (txn_) mdb_txn_abort(txn_);
}
std::optional<std::string> DiskIndex::WriteTxn::get_block(std::string_view key) {
  MDB_val k = val(key), v;
  if (mdb_get(txn_, ix_->blocks_, &k, &v) != 0) return std::nullopt;
  return std::string(view(v));
}
Status DiskIndex::WriteTxn::put_block(std::string_view key, std::string_view value,
                                      bool no_overwrite) {
  MDB_val k = val(key), v = val(value);
  return lmdb_status(mdb_put(txn_, ix_->blocks_, &k, &v, no_overwrite ? MDB_NOOVERWRITE : 0),
                     "put block");
}
void DiskIndex::WriteTxn::del_block(std::string_view key) {
  MDB_val k = val(key);
  mdb_del(txn_, ix_->blocks_, &k, nullptr);
}
void DiskIndex::WriteTxn::put_by_region(uint32_t region, uint64_t offset,
                                        std::string_view block_key) {
  std::string rk = encode_region_offset(region, offset);
  MDB_val k = val(rk), v = val(block_key);
  mdb_put(txn_, ix_->by_region_, &k, &v, 0);
}
void DiskIndex::WriteTxn::del_by_region(uint32_t region, uint64_t offset) {
  std::string rk = encode_region_offset(region, offset);
  MDB_val k = val(rk);
  mdb_del(txn_, ix_->by_region_, &k, nullptr);
}
std::vector<std::pair<uint64_t, std::string>> DiskIndex::WriteTxn::region_blocks(uint32_t region) {
  std::vector<std::pair<uint64_t, std::string>> out;
  MDB_cursor* c = nullptr;
  if (mdb_cursor_open(txn_, ix_->by_region_, &c) != 0) return out;
  std::string start = encode_region_offset(region, 0);
  MDB_val k = val(start), v;
  for (int rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); rc == 0;
       rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
    std::string_view ks = view(k);
    if (ks.size() != 12 || decode_region_key(ks) != region) break;
    uint64_t off = 0;
    for (size_t i = 4; i < 12; ++i) off = (off << 8) | uint8_t(ks[i]);
    out.emplace_back(off, std::string(view(v)));
  }
  mdb_cursor_close(c);
  return out;
}
Status DiskIndex::WriteTxn::put_region(uint32_t region, const RegionRecord& rec) {
  std::string rk = encode_region_id(region), rv = encode_region_record(rec);
  MDB_val k = val(rk), v = val(rv);
  return lmdb_status(mdb_put(txn_, ix_->regions_, &k, &v, 0), "put region");
}
void DiskIndex::WriteTxn::del_region(uint32_t region) {
  std::string rk = encode_region_id(region);
  MDB_val k = val(rk);
  mdb_del(txn_, ix_->regions_, &k, nullptr);
}
Status DiskIndex::WriteTxn::commit() {
  int rc = mdb_txn_commit(std::exchange(txn_, nullptr));
  return lmdb_status(rc, "commit");
}

}  // namespace kvtier
