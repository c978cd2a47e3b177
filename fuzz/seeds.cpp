// Writes the seed corpus of every harness: fuzz_seeds <dir> fills <dir>/<harness>/ (the
// checked-in one is fuzz/corpus/; scripts/fuzz.sh --seeds regenerates it).  Deterministic:
// the same files on every run.
//
//   session  streams of request frames built with the generated builders: every request type
//            with a body, with an empty body table (every field absent), and with the union
//            type set but no body table; realistic conversations (put, seal, lookup, get,
//            release, embeddings and search, fusion state, admin requests, bad frames)
//   config   the documented default file, the fuzz daemon's own config, and variants
//   index    index files written by SemanticIndex::save (exact and IVF, with tombstones),
//            without their trailing checksum (the harness appends it)
//   channel, disk, nf4
//            FuzzedDataProvider inputs: pseudo-random bytes of several lengths
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "fuzz/requests.h"
#include "index/semantic_index.h"

namespace fs = std::filesystem;
using namespace kvtier;
using fuzz::Bytes;

namespace {

fs::path out_dir;

void write(const std::string& harness, const std::string& name, const void* data, size_t size) {
  const fs::path dir = out_dir / harness;
  fs::create_directories(dir);
  std::ofstream f(dir / name, std::ios::binary | std::ios::trunc);
  f.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
  if (!f) {
    std::fprintf(stderr, "fuzz_seeds: cannot write %s\n", (dir / name).c_str());
    std::exit(1);
  }
}

// ---- session ----

struct Conversation {
  flatbuffers::FlatBufferBuilder fbb;
  Bytes stream;
  uint64_t id = 0;

  template <typename T>
  void add(wire::Request type, flatbuffers::Offset<T> body) {
    auto msg = wire::CreateRequestMsg(fbb, ++id, type, body.Union());
    const Bytes b = fuzz::body_of(fbb, msg);
    const Bytes f = fuzz::frame_of(b);
    stream.insert(stream.end(), f.begin(), f.end());
    fbb.Clear();
  }
  void raw(const Bytes& f) { stream.insert(stream.end(), f.begin(), f.end()); }

  flatbuffers::Offset<flatbuffers::Vector<const wire::Key128*>> keys(std::vector<uint64_t> los) {
    std::vector<wire::Key128> k;
    for (uint64_t lo : los) k.emplace_back(lo, 0);
    return fbb.CreateVectorOfStructs(k);
  }
  // Tensors "k" and "v": fp16 [rows, 64], contiguous, 64-byte aligned.
  flatbuffers::Offset<wire::BlockLayout> layout(uint64_t rows,
                                                std::vector<std::string> names = {"k", "v"},
                                                uint8_t dtype = 1) {
    std::vector<flatbuffers::Offset<wire::TensorDesc>> ts;
    uint64_t off = 0;
    const uint64_t bytes = rows * 64 * dtype_size(static_cast<DType>(dtype));
    for (const auto& n : names) {
      std::vector<uint64_t> shape = {rows, 64};
      ts.push_back(wire::CreateTensorDesc(fbb, fbb.CreateString(n), dtype, fbb.CreateVector(shape),
                                          0, 0, n == "k" ? 1 : 0, off, bytes, bytes, 0));
      off = align_up(off + bytes, 64);
    }
    return wire::CreateBlockLayout(fbb, fbb.CreateVector(ts), off);
  }
  void put(const std::string& ns, uint64_t key, uint64_t rows, uint64_t put_id, uint8_t dtype = 1) {
    auto n = fbb.CreateString(ns);
    auto l = layout(rows, {"k", "v"}, dtype);
    wire::Key128 k(key, 0);
    add(wire::Request::PutBeginReq, wire::CreatePutBeginReq(fbb, n, &k, l));
    add(wire::Request::SealReq, wire::CreateSealReq(fbb, put_id));
  }
  flatbuffers::Offset<flatbuffers::Vector<float>> vec(std::vector<float> v) {
    return fbb.CreateVector(v);
  }
};

void session_seeds() {
  using R = wire::Request;
  constexpr auto kLast = static_cast<int>(R::MAX);
  // Every type three ways: a generated body, an empty body table, no body table.
  for (int t = 1; t <= kLast; ++t) {
    const auto type = static_cast<R>(t);
    const std::string name = wire::EnumNameRequest(type);
    fuzz::Gen g(static_cast<uint64_t>(t) * 7919);
    const Bytes full = fuzz::frame_of(g.request(1, type));
    write("session", "type-" + name, full.data(), full.size());
    // An empty table of each type: its fields all absent.
    {
      flatbuffers::FlatBufferBuilder fbb;
      const auto start = fbb.StartTable();
      const flatbuffers::Offset<void> empty(fbb.EndTable(start));
      const Bytes f =
          fuzz::frame_of(fuzz::body_of(fbb, wire::CreateRequestMsg(fbb, 1, type, empty)));
      write("session", "empty-" + name, f.data(), f.size());
    }
    const Bytes f = fuzz::frame_of(fuzz::no_body(1, type));
    write("session", "nobody-" + name, f.data(), f.size());
  }
  {  // a RequestMsg without a type, and a type the schema does not have
    const Bytes a = fuzz::frame_of(fuzz::no_body(1, R::NONE));
    write("session", "type-NONE", a.data(), a.size());
    const Bytes b = fuzz::frame_of(fuzz::no_body(1, static_cast<R>(200)));
    write("session", "type-unknown", b.data(), b.size());
  }
  {  // put, seal, lookup, get, release, remove
    Conversation c;
    c.add(R::HelloReq,
          wire::CreateHelloReq(c.fbb, kProtocolVersion, 1, c.fbb.CreateString("seed")));
    c.put("ns", 1, 64, 1);
    c.put("ns", 2, 64, 2);
    c.add(R::LookupReq, wire::CreateLookupReq(c.fbb, c.fbb.CreateString("ns"), c.keys({1, 2, 3})));
    c.add(R::GetReq, wire::CreateGetReq(c.fbb, c.fbb.CreateString("ns"), c.keys({1, 2, 3})));
    std::vector<uint64_t> leases = {3, 4};  // put and lease ids share one counter per session
    c.add(R::ReleaseReq, wire::CreateReleaseReq(c.fbb, c.fbb.CreateVector(leases)));
    {  // releases carried on a lookup, then a one-way release (no reply)
      std::vector<uint64_t> carried = {1, 2};
      auto body = wire::CreateLookupReq(c.fbb, c.fbb.CreateString("ns"), c.keys({1}));
      auto msg = wire::CreateRequestMsg(c.fbb, ++c.id, R::LookupReq, body.Union(),
                                        c.fbb.CreateVector(carried));
      c.raw(fuzz::frame_of(fuzz::body_of(c.fbb, msg)));
      c.fbb.Clear();
      std::vector<uint64_t> posted = {5};
      auto rel = wire::CreateReleaseReq(c.fbb, c.fbb.CreateVector(posted));
      auto one = wire::CreateRequestMsg(c.fbb, ++c.id, R::ReleaseReq, rel.Union(), 0, true);
      c.raw(fuzz::frame_of(fuzz::body_of(c.fbb, one)));
      c.fbb.Clear();
    }
    c.add(R::MapArenaReq, wire::CreateMapArenaReq(c.fbb, 0));
    c.add(R::RemoveReq, wire::CreateRemoveReq(c.fbb, c.fbb.CreateString("ns"), c.keys({2})));
    c.add(R::LookupReq, wire::CreateLookupReq(c.fbb, c.fbb.CreateString("ns"), c.keys({1, 2})));
    write("session", "conv-put-get", c.stream.data(), c.stream.size());
  }
  {  // batched puts: host staging (a cached key, two new), a seal batch with an unknown id, a
     // device put without a GPU tier, a get
    Conversation c;
    c.put("ns", 1, 64, 1);
    std::vector<flatbuffers::Offset<wire::PutItem>> items;
    for (uint64_t key : {1, 2, 3}) {
      wire::Key128 k(key, 0);
      items.push_back(wire::CreatePutItem(c.fbb, &k, c.layout(32, {"k", "v"}, 1)));
    }
    c.add(R::PutBatchReq, wire::CreatePutBatchReq(c.fbb, c.fbb.CreateString("ns"),
                                                  c.fbb.CreateVector(items), -1, 0));
    const std::vector<uint64_t> ids = {2, 3, 77};
    c.add(R::SealBatchReq, wire::CreateSealBatchReq(c.fbb, c.fbb.CreateVector(ids)));
    std::vector<flatbuffers::Offset<wire::PutItem>> dev;
    wire::Key128 k4(4, 0);
    dev.push_back(wire::CreatePutItem(c.fbb, &k4, c.layout(16, {"k"}, 1)));
    c.add(R::PutBatchReq,
          wire::CreatePutBatchReq(c.fbb, c.fbb.CreateString("ns"), c.fbb.CreateVector(dev), 0, 1));
    c.add(R::GetReq, wire::CreateGetReq(c.fbb, c.fbb.CreateString("ns"), c.keys({1, 2, 3})));
    write("session", "conv-put-batch", c.stream.data(), c.stream.size());
  }
  {  // pins: pin (with a TTL, twice: a refresh), a missing key, the GPU tier, ls, unpin, remove
    Conversation c;
    c.put("ns", 1, 64, 1);
    c.put("ns", 2, 64, 2);
    c.add(R::PinReq, wire::CreatePinReq(c.fbb, c.fbb.CreateString("ns"), c.keys({1}), 0));
    c.add(R::PinReq, wire::CreatePinReq(c.fbb, c.fbb.CreateString("ns"), c.keys({1, 2}), 50));
    c.add(R::PinReq, wire::CreatePinReq(c.fbb, c.fbb.CreateString("ns"), c.keys({1, 3}), 0));
    c.add(R::PinReq, wire::CreatePinReq(c.fbb, c.fbb.CreateString("ns"), c.keys({2}), 0, 0, -1));
    c.add(R::ListReq, wire::CreateListReq(c.fbb, c.fbb.CreateString("ns"), 0, false, true));
    c.add(R::UnpinReq, wire::CreateUnpinReq(c.fbb, c.fbb.CreateString("ns"), c.keys({1, 3})));
    c.add(R::RemoveReq, wire::CreateRemoveReq(c.fbb, c.fbb.CreateString("ns"), c.keys({2})));
    write("session", "conv-pins", c.stream.data(), c.stream.size());
  }
  {  // the other namespace rules: raw fp16, double quant, persist (no disk: fails), another domain
    Conversation c;
    c.put("fp16/a", 1, 16, 1);
    c.put("dq/b", 1, 128, 2);
    c.put("persist/c", 1, 16, 3);
    c.put("iso/d", 1, 16, 99);  // refused: no put id
    c.put("ns", 5, 16, 4, 3);   // fp32
    c.add(R::GetReq, wire::CreateGetReq(c.fbb, c.fbb.CreateString("dq/b"), c.keys({1})));
    c.add(R::MapArenaReq, wire::CreateMapArenaReq(c.fbb, 1));
    write("session", "conv-rules", c.stream.data(), c.stream.size());
  }
  {  // GPU emulation: a put that lands there, a GPU get, the pool
    Conversation c;
    c.put("fp16/a", 1, 16, 1);
    c.put("ns", 2, 16, 2);
    c.add(R::GetReq, wire::CreateGetReq(c.fbb, c.fbb.CreateString("ns"), c.keys({1, 2}), 1, 0));
    c.add(R::GetReq, wire::CreateGetReq(c.fbb, c.fbb.CreateString("fp16/a"), c.keys({1}), 1, -1));
    c.add(R::MapGpuPoolReq, wire::CreateMapGpuPoolReq(c.fbb, 0));
    c.add(R::EvictReq, wire::CreateEvictReq(c.fbb, 0, 0, true, 3));
    c.add(R::GetReq, wire::CreateGetReq(c.fbb, c.fbb.CreateString("ns"), c.keys({1, 2})));
    write("session", "conv-gpu", c.stream.data(), c.stream.size());
  }
  {  // embeddings, search, fusion state
    Conversation c;
    c.put("ns", 1, 64, 1);
    c.put("ns", 2, 64, 2);
    {
      std::vector<flatbuffers::Offset<wire::ChunkEmbeddings>> chunks;
      for (uint64_t k = 1; k <= 2; ++k) {
        std::vector<flatbuffers::Offset<wire::ModalityVector>> vs = {
            wire::CreateModalityVector(c.fbb, c.fbb.CreateString("vision"),
                                       c.vec({1.f, float(k), 0.f, 0.5f})),
            wire::CreateModalityVector(c.fbb, c.fbb.CreateString("prompt"),
                                       c.vec({0.f, 1.f, float(k)}))};
        wire::Key128 key(k, 0);
        chunks.push_back(wire::CreateChunkEmbeddings(c.fbb, &key, c.fbb.CreateVector(vs)));
      }
      c.add(R::AddEmbeddingsReq, wire::CreateAddEmbeddingsReq(c.fbb, c.fbb.CreateString("ns"),
                                                              c.fbb.CreateVector(chunks)));
    }
    {
      auto n = c.fbb.CreateString("ns");
      auto fusion = c.layout(4, {"state"});
      std::vector<uint8_t> md = {1, 2, 3};
      wire::Key128 k(1, 0);
      c.add(R::PutBeginReq,
            wire::CreatePutBeginReq(c.fbb, n, &k, fusion, true, c.fbb.CreateVector(md)));
      c.add(R::SealReq, wire::CreateSealReq(c.fbb, 4));  // lease 3 holds the chunk meanwhile
    }
    {
      wire::Key128 k(1, 0);
      c.add(R::GetFusionReq, wire::CreateGetFusionReq(c.fbb, c.fbb.CreateString("ns"), &k));
    }
    {
      std::vector<flatbuffers::Offset<wire::ModalityQuery>> qs = {
          wire::CreateModalityQuery(c.fbb, c.fbb.CreateString("vision"),
                                    c.vec({1.f, 1.f, 0.f, 0.5f}), 0.1f),
          wire::CreateModalityQuery(c.fbb, c.fbb.CreateString("prompt"), c.vec({0.f, 1.f, 1.f}),
                                    0.f, 2.f)};
      c.add(R::SearchReq, wire::CreateSearchReq(c.fbb, c.fbb.CreateString("ns"),
                                                c.fbb.CreateVector(qs), 4, true));
    }
    c.add(R::LookupReq, wire::CreateLookupReq(c.fbb, c.fbb.CreateString("ns"), c.keys({1}), true));
    c.add(R::ListReq, wire::CreateListReq(c.fbb, c.fbb.CreateString("ns"), 10, true));
    write("session", "conv-semantic", c.stream.data(), c.stream.size());
  }
  {  // admin requests, an abort, pending puts at the end
    Conversation c;
    c.put("ns", 1, 16, 1);
    {
      auto n = c.fbb.CreateString("ns");
      auto l = c.layout(16);
      wire::Key128 k(9, 0);
      c.add(R::PutBeginReq, wire::CreatePutBeginReq(c.fbb, n, &k, l));
      c.add(R::AbortReq, wire::CreateAbortReq(c.fbb, 2));
      c.add(R::PutBeginReq,
            wire::CreatePutBeginReq(c.fbb, c.fbb.CreateString("ns"), &k, c.layout(8)));
    }
    c.add(R::StatsReq, wire::CreateStatsReq(c.fbb));
    c.add(R::ClientsReq, wire::CreateClientsReq(c.fbb));
    c.add(R::HealthReq, wire::CreateHealthReq(c.fbb));
    c.add(R::ConfigReq, wire::CreateConfigReq(c.fbb));
    c.add(R::ListReq, wire::CreateListReq(c.fbb, 0, 5));
    c.add(R::EvictReq,
          wire::CreateEvictReq(c.fbb, c.fbb.CreateString("ns"), c.keys({1}), false, 1));
    c.add(R::EvictReq, wire::CreateEvictReq(c.fbb, 0, 0, true, 0));
    c.add(R::CompactReq, wire::CreateCompactReq(c.fbb));
    c.add(R::VerifyReq, wire::CreateVerifyReq(c.fbb));
    c.add(R::OpenChannelReq, wire::CreateOpenChannelReq(c.fbb));
    c.add(R::ResolveReq, wire::CreateResolveReq(c.fbb, c.fbb.CreateString("fuzz/ns")));
    c.add(R::MapIndexReq, wire::CreateMapIndexReq(c.fbb, 0));
    write("session", "conv-admin", c.stream.data(), c.stream.size());
  }
  {  // bad frames: a response kind, a doorbell with a body, a length past the limit
    Conversation c;
    c.add(R::HealthReq, wire::CreateHealthReq(c.fbb));
    Bytes resp = fuzz::frame_of(fuzz::no_body(2, R::HealthReq), FrameKind::kResponse);
    c.raw(resp);
    write("session", "bad-response-kind", c.stream.data(), c.stream.size());
    Bytes bell = fuzz::frame_of(Bytes{1, 2, 3}, FrameKind::kDoorbell);
    write("session", "bad-doorbell", bell.data(), bell.size());
    Bytes big = fuzz::frame_of({});
    const uint32_t len = 0xffffffffu;
    std::memcpy(big.data() + 8, &len, 4);
    write("session", "bad-length", big.data(), big.size());
    Bytes garbage = {'K', 'V', 'T', '1', 9, 0};
    write("session", "bad-truncated", garbage.data(), garbage.size());
  }
}

// ---- config ----

void config_seeds(const fs::path& source_dir) {
  std::ifstream def(source_dir / "config" / "kvtier.toml", std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(def)), std::istreambuf_iterator<char>());
  write("config", "kvtier.toml", text.data(), text.size());
  const char* const kSeeds[][2] = {
      {"daemon",
       "[daemon]\nsocket = \"/tmp/k.sock\"\nstate_dir = \"/tmp/k\"\nshm_prefix = \"kv-1\"\n"
       "io_threads = 4\nmax_message_bytes = \"8MiB\"\nbusy_poll_us = 50\n"
       "request_channel = false\nmax_connections = 16\ndrain_timeout_ms = 100\n"
       "log_level = \"debug\"\n"},
      {"tiers",
       "[host]\nsize = \"64MiB\"\nprefault = false\nsmall_queue_ratio = 0.25\n"
       "ghost_entries = 1000\n[disk]\nenabled = true\ndir = \"/var/tmp/kv\"\n"
       "size = \"1GiB\"\nregion_bytes = \"16MiB\"\nwrite_queue_bytes = \"32MiB\"\n"
       "io_backend = \"threads\"\no_direct = false\nthreads = 4\nreader_check_s = 5\n"
       "[gpu]\nbackend = \"emulation\"\ndevices = [0, 1]\nsize = \"256MiB\"\n"
       "handle = \"ipc\"\nsmall_queue_ratio = 0.5\n[index]\nenabled = false\n"
       "exact_max_vectors = 5\nnprobe = 8\nsave_interval_s = 1\n"},
      {"access",
       "[access]\nsocket_mode = \"0600\"\nsocket_group = \"kvtier\"\n"
       "admin_uids = [0, 1000]\nadmin_gids = [27]\n[session]\n"
       "staging_bytes = \"1MiB\"\nmax_leases = 10\nmax_pending_puts = 2\n"},
      {"namespaces",
       "[[namespace]]\nprefix = \"\"\n[[namespace]]\nprefix = \"a/\"\n"
       "allow_uids = [1000]\nallow_gids = [100]\ncodec = \"fp16\"\n"
       "nf4_double_quant = true\nfusion_codec = \"nf4\"\ndisk = \"persist\"\n"
       "compress = false\narena = \"t\"\n[[arena]]\nname = \"t\"\nsize = \"8MiB\"\n"},
      {"bad-key", "[host]\nsise = \"1GiB\"\n"},
      {"bad-size", "[host]\nsize = \"12QB\"\n[disk]\nregion_bytes = 4095\n"},
      {"bad-types",
       "[daemon]\nio_threads = \"two\"\nmax_message_bytes = -1\n[gpu]\ndevices = [-1]\n"},
      {"bad-syntax", "[daemon\nsocket = \n"},
      {"sizes",
       "[host]\nsize = 4096\n[disk]\nsize = \"1TiB\"\nregion_bytes = \"1KB\"\n"
       "write_queue_bytes = \"18446744073709551615\"\n"},
      {"dates", "[daemon]\nsocket = 1979-05-27T07:32:00Z\n[index]\nsave_interval_s = 1e3\n"},
  };
  for (const auto& [name, toml] : kSeeds) write("config", name, toml, std::strlen(toml));
}

// ---- index ----

void index_seeds() {
  const fs::path dir =
      fs::temp_directory_path() / ("kvtier-fuzz-seeds-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  {
    IndexOptions o;
    o.dir = dir;
    o.exact_max_vectors = 24;
    auto idx = SemanticIndex::open(o).value();
    fuzz::Gen g(42);
    auto vec = [&](size_t dim) {
      std::vector<float> v(dim);
      for (auto& x : v) x = float(g.below(2000)) / 1000.f - 1.f;
      v[0] += 2.f;  // never the zero vector
      return v;
    };
    // "small": exact, 3 chunks of 4-d vectors, one removed (a tombstone until purged).
    for (uint64_t k = 1; k <= 3; ++k)
      (void)idx->add("small", BlockKey{k, 0}, {{"vision", vec(4)}, {"prompt", vec(3)}});
    idx->remove("small", BlockKey{2, 0});
    // "large": past exact_max_vectors, rebuilt as IVF,SQ8.
    for (uint64_t k = 1; k <= 60; ++k) (void)idx->add("large", BlockKey{k, k}, {{"m", vec(8)}});
    // "sparse": IVF with two distinct vectors, so most lists are empty (written "sprs").
    const std::vector<float> a = vec(8), b = vec(8);
    for (uint64_t k = 1; k <= 60; ++k)
      (void)idx->add("sparse", BlockKey{k, 0}, {{"m", k % 2 ? a : b}});
    idx->wait_for_rebuilds();
    for (uint64_t k = 1; k <= 5; ++k) idx->remove("large", BlockKey{k, k});
    if (Status st = idx->save(); !st) {
      std::fprintf(stderr, "fuzz_seeds: index save: %s\n", st.to_string().c_str());
      std::exit(1);
    }
  }
  int n = 0;
  for (const auto& f : fs::recursive_directory_iterator(dir)) {
    if (!f.is_regular_file() || f.path().extension() != ".kvidx") continue;
    std::ifstream in(f.path(), std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (bytes.size() < 8) continue;
    bytes.resize(bytes.size() - 8);  // the checksum: the harness appends a correct one
    write("index", f.path().parent_path().filename().string() + "-" + f.path().filename().string(),
          bytes.data(), bytes.size());
    ++n;
  }
  fs::remove_all(dir);
  if (n == 0) {
    std::fprintf(stderr, "fuzz_seeds: no index files were saved\n");
    std::exit(1);
  }
}

// ---- FuzzedDataProvider harnesses ----

void random_seeds(const std::string& harness, std::initializer_list<size_t> sizes) {
  uint64_t seed = 0;
  for (char ch : harness) seed = seed * 131 + static_cast<uint8_t>(ch);
  fuzz::Gen g(seed);
  int i = 0;
  for (size_t size : sizes) {
    Bytes b(size);
    for (auto& x : b) x = static_cast<uint8_t>(g.next());
    write(harness, "random-" + std::to_string(i++), b.data(), b.size());
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: fuzz_seeds <corpus dir> <source dir>\n");
    return 2;
  }
  out_dir = argv[1];
  session_seeds();
  config_seeds(argv[2]);
  index_seeds();
  random_seeds("channel", {16, 64, 200, 600, 1500, 4000, 4000, 8000});
  random_seeds("disk", {16, 64, 200, 600, 1500, 4000, 8000, 20000, 20000});
  random_seeds("nf4", {16, 64, 200, 600, 1500, 4000, 8000, 20000});
  return 0;
}
