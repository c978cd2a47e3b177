// kvtier._kvtier: the Python binding of libkvtier (kvtier/client.h).  The pure-Python
// package `kvtier` (kvtier/__init__.py) wraps it with torch/numpy conveniences.
//
// Threads: every call that waits on the daemon or copies bulk data drops the GIL; the C++
// Client serialises requests with its own mutex, so one Client may be shared by threads.
#include <pybind11/numpy.h>
#include <pybind11/operators.h>
#include <pybind11/stl.h>

#include "binding.h"

namespace kvtier::python {
namespace {

struct PyClient {
  std::shared_ptr<Client> client;  // null once closed
  std::shared_ptr<Client> get() const {
    if (!client) throw_status(error(Errc::kUnavailable, "the client is closed"));
    return client;
  }
};

struct PyBlock {
  std::weak_ptr<LeaseBox> box;
  size_t index = 0;
  std::shared_ptr<LeaseBox> lock() const { return TensorRef{box, index, 0}.lock(); }
};

struct PyLease {
  std::shared_ptr<LeaseBox> box;  // null once released by this handle
  size_t size = 0;
  std::shared_ptr<LeaseBox> lock() const {
    if (!box) throw std::runtime_error("the lease was released");
    return box;
  }
  // Closes the lease to new exports; the daemon gets the blocks back now, or when the last
  // exported tensor dies.  Returns whether that happened now.
  bool release() {
    if (!box) return false;
    box->closed = true;
    bool now = box.use_count() == 1;
    std::shared_ptr<LeaseBox> last = std::move(box);
    py::gil_scoped_release nogil;  // ~LeaseBox may send a ReleaseReq
    last.reset();
    return now;
  }
};

size_t wrap_index(long long i, size_t n) {
  if (i < 0) i += static_cast<long long>(n);
  if (i < 0 || static_cast<size_t>(i) >= n) throw py::index_error("block index out of range");
  return static_cast<size_t>(i);
}

Nf4Layout layout_from(py::handle spec, const std::string& name) {
  py::object v = py::reinterpret_borrow<py::object>(spec);
  if (py::isinstance<py::dict>(spec)) {
    py::dict d = py::reinterpret_borrow<py::dict>(spec);
    v = d.contains(name) ? py::reinterpret_borrow<py::object>(d[py::str(name)]) : py::none();
  }
  if (v.is_none()) return Nf4Layout::kRowBlocks;
  auto s = v.cast<std::string>();
  if (s == "row" || s == "per_token") return Nf4Layout::kRowBlocks;
  if (s == "column" || s == "per_channel") return Nf4Layout::kColumnBlocks;
  throw py::value_error("nf4_layout must be 'row' or 'column', not '" + s + "'");
}

py::object parse_json(const std::string& text) {
  return py::module_::import("json").attr("loads")(text);
}

template <typename F>
auto nogil(F&& f) {
  py::gil_scoped_release release;
  return f();
}

// Borrows (name, tensor) pairs or a dict for one put; `held` must outlive the use of `in`.
void borrow_tensors(py::object tensors, py::object nf4_layout, std::vector<Borrowed>& held,
                    std::vector<TensorIn>& in, bool allow_device = false) {
  py::list items;
  if (py::isinstance<py::dict>(tensors)) {
    for (auto kv : py::reinterpret_borrow<py::dict>(tensors))
      items.append(py::make_tuple(kv.first, kv.second));
  } else {
    for (auto item : tensors) items.append(item);
  }
  held.reserve(items.size());
  for (auto item : items) {
    auto pair = item.cast<py::tuple>();
    if (pair.size() != 2) throw py::type_error("tensors: expected (name, tensor) pairs");
    auto name = pair[0].cast<std::string>();
    held.push_back(borrow(pair[1], /*writable=*/false, "tensor '" + name + "'", allow_device));
    const Borrowed& b = held.back();
    in.push_back(
        TensorIn{name, b.dtype, b.shape, b.data, layout_from(nf4_layout, name), b.device, {}});
  }
}

void put(PyClient& self, const std::string& ns, const BlockKey& key, py::object tensors,
         py::object nf4_layout) {
  auto client = self.get();
  std::vector<Borrowed> held;  // destroyed with the GIL held, after the put
  std::vector<TensorIn> in;
  borrow_tensors(tensors, nf4_layout, held, in, /*allow_device=*/true);
  Status st = nogil([&] { return client->put(ns, key, in); });
  if (!st) throw_status(st);
}

// items: (key, tensors) pairs.  One entry per item: None, or the exception it failed with.
py::list put_batch(PyClient& self, const std::string& ns, py::object items,
                   const std::string& staging, int device, py::object nf4_layout) {
  auto client = self.get();
  PutOptions o;
  o.device = device;
  if (staging == "auto")
    o.staging = PutStaging::kAuto;
  else if (staging == "host")
    o.staging = PutStaging::kHost;
  else if (staging == "device")
    o.staging = PutStaging::kDevice;
  else
    throw py::value_error("staging must be 'auto', 'host' or 'device', not '" + staging + "'");
  std::vector<Borrowed> held;  // every item's: reserve() keeps the Borrowed in place
  std::vector<std::vector<TensorIn>> tensors;
  std::vector<BlockKey> keys;
  for (auto item : items) {
    auto pair = item.cast<py::tuple>();
    if (pair.size() != 2) throw py::type_error("put_batch: expected (key, tensors) pairs");
    keys.push_back(pair[0].cast<BlockKey>());
    tensors.emplace_back();
    std::vector<Borrowed> mine;
    borrow_tensors(pair[1], nf4_layout, mine, tensors.back(), /*allow_device=*/true);
    for (auto& b : mine) held.push_back(std::move(b));
  }
  std::vector<PutItem> batch;
  for (size_t i = 0; i < keys.size(); ++i) batch.push_back(PutItem{keys[i], tensors[i]});
  auto r = unwrap(nogil([&] { return client->put_batch(ns, batch, o); }));
  py::list out;
  for (const Status& st : r) out.append(st ? py::none() : exception_for(st));
  return out;
}

void put_fusion(PyClient& self, const std::string& ns, const BlockKey& key, py::object tensors,
                py::bytes metadata) {
  auto client = self.get();
  std::vector<Borrowed> held;
  std::vector<TensorIn> in;
  borrow_tensors(tensors, py::none(), held, in);
  std::string meta = metadata;
  Status st = nogil([&] { return client->put_fusion(ns, key, in, meta); });
  if (!st) throw_status(st);
}

// A Python Lease over `lease`; None for an empty one (no fusion state) when `none_if_empty`.
py::object wrap_lease(const std::shared_ptr<Client>& c, Lease lease, bool none_if_empty) {
  if (none_if_empty && lease.size() == 0) return py::none();
  auto box = std::make_shared<LeaseBox>();
  box->client = c;
  box->lease = std::move(lease);
  size_t n = box->lease.size();
  return py::cast(PyLease{std::move(box), n});
}

// Vectors arrive from kvtier/__init__.py as 1-D float32 numpy arrays.
using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
std::vector<float> to_floats(py::handle obj, const std::string& what) {
  auto a = FloatArray::ensure(obj);
  if (!a) {
    PyErr_Clear();
    throw py::type_error(what + ": expected a 1-D float vector");
  }
  if (a.ndim() != 1)
    throw py::value_error(what + ": expected a 1-D vector, got " + std::to_string(a.ndim()) +
                          " dimensions");
  return std::vector<float>(a.data(), a.data() + a.size());
}

// {key: {modality: vector}}
void add_embeddings(PyClient& self, const std::string& ns, py::dict chunks) {
  auto client = self.get();
  std::vector<ChunkEmbeddings> in;
  for (auto kv : chunks) {
    ChunkEmbeddings ce;
    ce.key = kv.first.cast<BlockKey>();
    if (!py::isinstance<py::dict>(kv.second))
      throw py::type_error("add_embeddings: expected {key: {modality: vector}}");
    for (auto mv : py::reinterpret_borrow<py::dict>(kv.second)) {
      auto modality = mv.first.cast<std::string>();
      ce.vectors.push_back(ModalityVector{
          modality, to_floats(mv.second, "embedding '" + modality + "' of " + ce.key.hex())});
    }
    in.push_back(std::move(ce));
  }
  Status st = nogil([&] { return client->add_embeddings(ns, in); });
  if (!st) throw_status(st);
}

// queries: [(modality, vector, threshold, weight)]; returns ([(key, score, [sims])], lease|None).
py::tuple search(PyClient& self, const std::string& ns, py::list queries, uint32_t k,
                 bool with_fusion) {
  auto client = self.get();
  std::vector<SearchQuery> qs;
  for (auto item : queries) {
    auto q = item.cast<py::tuple>();
    if (q.size() != 4)
      throw py::type_error("search: expected (modality, vector, threshold, weight)");
    SearchQuery sq;
    sq.modality = q[0].cast<std::string>();
    sq.values = to_floats(q[1], "query '" + sq.modality + "'");
    sq.threshold = q[2].cast<float>();
    sq.weight = q[3].cast<float>();
    qs.push_back(std::move(sq));
  }
  auto r = unwrap(nogil([&] { return client->search(ns, qs, k, with_fusion); }));
  py::list hits;
  for (const auto& h : r.hits) {
    py::list sims;
    for (float s : h.similarities) sims.append(s);
    hits.append(py::make_tuple(h.key, h.score, sims));
  }
  py::object lease = with_fusion ? wrap_lease(client, std::move(r.fusion), true) : py::none();
  return py::make_tuple(hits, lease);
}

py::object lease_tensor_of(PyLease& self, long long block, const std::string& name, py::object out,
                           py::object dtype, bool fusion) {
  auto box = self.lock();
  if (box->closed) throw std::runtime_error("the lease was released");
  size_t bi = wrap_index(block, self.size);
  const LeasedBlock& b = box->lease.block(bi);
  if (!b.found())
    throw_status(error(Errc::kNotFound,
                       "block " + std::to_string(bi) + " (" + b.key.hex() + ") is not cached"));
  const auto& list = fusion ? b.fusion : b.tensors;
  size_t ti = 0;
  while (ti < list.size() && list[ti].name != name) ++ti;
  if (ti == list.size())
    throw py::key_error(
        std::string(fusion ? "block has no fusion tensor '" : "block has no tensor '") + name +
        "'");
  const TensorView& v = list[ti];
  py::object ref = py::cast(TensorRef{box, bi, ti, fusion});
  py::module_ torch = py::module_::import("torch");
  if (v.codec == Codec::kRaw) {
    py::object t = torch.attr("from_dlpack")(ref);
    if (!out.is_none()) return out.attr("copy_")(t);
    return dtype.is_none() ? t : t.attr("to")(dtype);
  }
  if (out.is_none()) {
    py::object dt = dtype.is_none() ? torch.attr(dtype_str(v.dtype)) : dtype;
    py::tuple shape(v.shape.size());
    for (size_t i = 0; i < v.shape.size(); ++i) shape[i] = v.shape[i];
    out = torch.attr("empty")(shape, py::arg("dtype") = dt);
  }
  return ref.attr("decode_into")(out);
}

py::object lease_tensor(PyLease& self, long long block, const std::string& name, py::object out,
                        py::object dtype) {
  return lease_tensor_of(self, block, name, out, dtype, false);
}
py::object lease_fusion(PyLease& self, long long block, const std::string& name, py::object out,
                        py::object dtype) {
  return lease_tensor_of(self, block, name, out, dtype, true);
}

}  // namespace
}  // namespace kvtier::python

using namespace kvtier;
using namespace kvtier::python;

PYBIND11_MODULE(_kvtier, m) {
  m.doc() = "Binding of libkvtier, the client of the kvtier cache daemon (use `import kvtier`).";
  register_errors(m);
  register_tensor(m);

  py::class_<BlockKey>(m, "Key", "A 128-bit chain key (docs/protocol.md).")
      .def(py::init([](uint64_t lo, uint64_t hi) {
             return BlockKey{lo, hi};
           }),
           py::arg("lo"), py::arg("hi"))
      .def_readonly("lo", &BlockKey::lo)
      .def_readonly("hi", &BlockKey::hi)
      .def("hex", &BlockKey::hex, "32 hex digits, hi then lo")
      .def_static("from_hex",
                  [](const std::string& s) {
                    auto k = BlockKey::from_hex(s);
                    if (!k) throw py::value_error("not a 32-digit hex key: '" + s + "'");
                    return *k;
                  })
      .def(py::self == py::self)
      .def(py::self < py::self)
      .def("__hash__", [](const BlockKey& k) { return BlockKeyHash{}(k); })
      .def("__repr__", [](const BlockKey& k) { return "Key('" + k.hex() + "')"; })
      .def(py::pickle([](const BlockKey& k) { return py::make_tuple(k.lo, k.hi); },
                      [](py::tuple t) {
                        return BlockKey{t[0].cast<uint64_t>(), t[1].cast<uint64_t>()};
                      }));

  m.def(
      "_chain_keys",
      [](const std::string& ns, py::array_t<uint32_t, py::array::c_style> tokens, size_t chunk,
         bool include_partial) {
        if (chunk == 0) throw py::value_error("chunk_tokens must be > 0");
        std::span<const uint32_t> t(tokens.data(), static_cast<size_t>(tokens.size()));
        return chain_keys(ns, t, chunk, include_partial);
      },
      py::arg("namespace"), py::arg("tokens"), py::arg("chunk_tokens"),
      py::arg("include_partial") = false);
  m.def("default_socket_path", &default_socket_path);

  py::class_<PyBlock>(m, "Block", "One block of a lease: tensors by name (a mapping).")
      .def_property_readonly("key",
                             [](const PyBlock& b) { return b.lock()->lease.block(b.index).key; })
      .def_property_readonly(
          "found", [](const PyBlock& b) { return b.lock()->lease.block(b.index).found(); })
      .def("names",
           [](const PyBlock& b) {
             auto box = b.lock();
             std::vector<std::string> names;
             for (const auto& t : box->lease.block(b.index).tensors) names.push_back(t.name);
             return names;
           })
      .def("__len__",
           [](const PyBlock& b) { return b.lock()->lease.block(b.index).tensors.size(); })
      .def("__contains__",
           [](const PyBlock& b, const std::string& name) {
             return b.lock()->lease.block(b.index).tensor(name) != nullptr;
           })
      .def("__getitem__",
           [](const PyBlock& b, const std::string& name) {
             auto box = b.lock();
             const auto& ts = box->lease.block(b.index).tensors;
             for (size_t i = 0; i < ts.size(); ++i)
               if (ts[i].name == name) return TensorRef{b.box, b.index, i};
             throw py::key_error(name);
           })
      .def("__iter__",
           [](const PyBlock& b) {
             auto box = b.lock();
             py::list names;
             for (const auto& t : box->lease.block(b.index).tensors) names.append(t.name);
             return py::iter(names);
           })
      .def_property_readonly(
          "fusion",
          [](const PyBlock& b) {
            auto box = b.lock();
            const auto& fs = box->lease.block(b.index).fusion;
            py::dict d;
            for (size_t i = 0; i < fs.size(); ++i)
              d[py::str(fs[i].name)] = py::cast(TensorRef{b.box, b.index, i, true});
            return d;
          },
          "the chunk's fusion tensors (put_fusion): a dict name -> kvtier.Tensor, empty if none")
      .def_property_readonly(
          "fusion_metadata",
          [](const PyBlock& b) {
            return py::bytes(b.lock()->lease.block(b.index).fusion_metadata);
          },
          "the metadata stored with the fusion tensors (bytes; b'' if none)")
      .def("__repr__", [](const PyBlock& b) {
        auto box = b.box.lock();
        if (!box || box->closed) return std::string("<kvtier.Block (lease released)>");
        const auto& lb = box->lease.block(b.index);
        std::string fusion =
            lb.fusion.empty() ? "" : ", " + std::to_string(lb.fusion.size()) + " fusion";
        return "<kvtier.Block " + lb.key.hex() +
               (lb.found() ? " " + std::to_string(lb.tensors.size()) + " tensors" + fusion + ">"
                           : " not found>");
      });

  py::class_<PyLease>(m, "Lease", R"doc(
Leased blocks, pinned in the daemon while this lease (or any tensor exported from it) lives.
A context manager: leaving `with` releases it.  release() with exported tensors still alive
defers the daemon-side release until the last of them is gone (it returns False then).)doc")
      .def("__len__", [](const PyLease& l) { return l.size; })
      .def("__getitem__",
           [](const PyLease& l, long long i) {
             auto box = l.lock();
             return PyBlock{box, wrap_index(i, l.size)};
           })
      .def_property_readonly(
          "found", [](const PyLease& l) { return l.lock()->lease.found(); },
          "number of blocks that were cached")
      .def_property_readonly("keys",
                             [](const PyLease& l) {
                               std::vector<BlockKey> keys;
                               for (const auto& b : l.lock()->lease.blocks()) keys.push_back(b.key);
                               return keys;
                             })
      .def_property_readonly("released", [](const PyLease& l) { return !l.box; })
      .def("release", &PyLease::release)
      .def(
          "wait",
          [](const PyLease& l, uintptr_t stream) {
            auto box = l.lock();
            Status st = nogil([&] { return box->lease.wait(reinterpret_cast<void*>(stream)); });
            if (!st) throw_status(st);
          },
          py::arg("stream") = 0,
          "Makes the CUDA stream (its handle, torch.cuda.Stream.cuda_stream; 0: this thread, "
          "blocking) wait until the blocks of a get(wait=False) are written.")
      .def_property_readonly(
          "ready",
          [](const PyLease& l) {
            for (const auto& b : l.lock()->lease.blocks())
              if (b.ready_event != 0) return false;
            return true;
          },
          "False while blocks of a get(wait=False) may still be being written")
      .def("tensor", &lease_tensor, py::arg("block"), py::arg("name"), py::arg("out") = py::none(),
           py::arg("dtype") = py::none(),
           "A torch tensor: zero-copy for raw tensors (read-only!); NF4 is decoded into `out` "
           "(or a new tensor of `dtype`, default the stored dtype).")
      .def("fusion", &lease_fusion, py::arg("block"), py::arg("name"), py::arg("out") = py::none(),
           py::arg("dtype") = py::none(),
           "Like tensor(), for the block's fusion tensors (put_fusion).")
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__",
           [](PyLease& l, py::args) {
             l.release();
             return false;
           })
      .def("__repr__", [](const PyLease& l) {
        if (!l.box) return std::string("<kvtier.Lease released>");
        return "<kvtier.Lease " + std::to_string(l.box->lease.found()) + "/" +
               std::to_string(l.size) + " found>";
      });

  py::class_<PyClient>(m, "_Client")
      .def(py::init([](py::object socket, const std::string& name, uint32_t timeout_ms, int device,
                       uint32_t busy_poll_us, bool request_channel, bool lookup_index,
                       const std::string& release_mode) {
             ClientOptions o;
             if (!socket.is_none()) o.socket = py::str(socket).cast<std::string>();
             o.name = name;
             o.timeout_ms = timeout_ms;
             o.device = device;
             o.busy_poll_us = busy_poll_us;
             o.request_channel = request_channel;
             o.lookup_index = lookup_index;
             if (release_mode == "deferred")
               o.release_mode = ReleaseMode::kDeferred;
             else if (release_mode == "posted")
               o.release_mode = ReleaseMode::kPosted;
             else if (release_mode == "round_trip")
               o.release_mode = ReleaseMode::kRoundTrip;
             else
               throw py::value_error("release_mode must be 'deferred', 'posted' or 'round_trip'");
             auto c = nogil([&] { return Client::connect(o); });
             return PyClient{std::shared_ptr<Client>(unwrap(std::move(c)))};
           }),
           py::arg("socket") = py::none(), py::arg("name") = "", py::arg("timeout_ms") = 30000,
           py::arg("device") = -1, py::arg("busy_poll_us") = 0, py::arg("request_channel") = true,
           py::arg("lookup_index") = true, py::arg("release_mode") = "deferred")
      .def(
          "lookup",
          [](PyClient& self, const std::string& ns, const std::vector<BlockKey>& keys,
             bool with_fusion, bool local_only, py::object from_index) -> py::object {
            auto c = self.get();
            if (!with_fusion) {
              LookupOptions o;
              o.local_only = local_only;
              if (!from_index.is_none())
                o.source = from_index.cast<bool>() ? LookupSource::kIndex : LookupSource::kDaemon;
              return py::cast(unwrap(nogil([&] { return c->lookup(ns, keys, o); })));
            }
            auto r = unwrap(nogil([&] { return c->lookup_with_fusion(ns, keys); }));
            return py::make_tuple(r.matched, wrap_lease(c, std::move(r.fusion), true));
          },
          py::arg("namespace"), py::arg("keys"), py::arg("with_fusion") = false,
          py::arg("local_only") = false, py::arg("from_index") = py::none(),
          "Number of leading keys cached.  with_fusion=True: (matched, lease) where lease is a "
          "kvtier.Lease over the last matched chunk when it has fusion state, else None.  "
          "local_only=True: this host's tiers only (the remote tier is not asked).  "
          "from_index: None = from the daemon's shared lookup index when mapped (no round "
          "trip), else from the daemon; True = from the index only (kvtier.Unavailable without "
          "one); False = from the daemon.")
      .def(
          "get_fusion",
          [](PyClient& self, const std::string& ns, const BlockKey& key) {
            auto c = self.get();
            return wrap_lease(c, unwrap(nogil([&] { return c->get_fusion(ns, key); })), false);
          },
          py::arg("namespace"), py::arg("key"),
          "A lease over the chunk's block; lease[0].fusion holds the fusion tensors.  Raises "
          "kvtier.NotFound when the chunk is not cached or has no fusion state.")
      .def("_put_fusion", &put_fusion, py::arg("namespace"), py::arg("key"), py::arg("tensors"),
           py::arg("metadata") = py::bytes(""))
      .def("_add_embeddings", &add_embeddings, py::arg("namespace"), py::arg("chunks"))
      .def("_search", &search, py::arg("namespace"), py::arg("queries"), py::arg("k"),
           py::arg("with_fusion"))
      .def(
          "get",
          [](PyClient& self, const std::string& ns, const std::vector<BlockKey>& keys, bool gpu,
             int device, bool wait) {
            auto c = self.get();
            auto box = std::make_shared<LeaseBox>();
            box->client = c;
            GetOptions o{gpu, device};
            o.async = gpu && !wait;
            box->lease = unwrap(nogil([&] { return c->get(ns, keys, o); }));
            return PyLease{box, box->lease.size()};
          },
          py::arg("namespace"), py::arg("keys"), py::arg("gpu") = false, py::arg("device") = -1,
          py::arg("wait") = true,
          "Lease blocks.  gpu=True: in GPU memory (fp16 as put; tensors export as CUDA DLPack "
          "tensors of `device`); blocks the GPU has no room for come back in host memory.  "
          "wait=False (with gpu): answered once the promotions are queued on the device; call "
          "lease.wait(stream) before reading.")
      .def_property_readonly("gpu_backend", [](PyClient& s) { return s.get()->gpu_backend(); })
      .def_property_readonly("gpu_devices", [](PyClient& s) { return s.get()->gpu_devices(); })
      .def("_put", &put, py::arg("namespace"), py::arg("key"), py::arg("tensors"),
           py::arg("nf4_layout") = py::none())
      .def("_put_batch", &put_batch, py::arg("namespace"), py::arg("items"),
           py::arg("staging") = "auto", py::arg("device") = -1, py::arg("nf4_layout") = py::none())
      .def(
          "remove",
          [](PyClient& self, const std::string& ns, const std::vector<BlockKey>& keys) {
            auto c = self.get();
            auto r = unwrap(nogil([&] { return c->remove(ns, keys); }));
            return py::dict(py::arg("removed") = r.removed, py::arg("deferred") = r.deferred);
          },
          py::arg("namespace"), py::arg("keys"))
      .def("flush_releases",
           [](PyClient& s) {
             auto c = s.get();
             if (Status st = nogil([&] { return c->flush_releases(); }); !st) throw_status(st);
           })
      .def(
          "pin",
          [](PyClient& self, const std::string& ns, const std::vector<BlockKey>& keys,
             uint64_t ttl_ms, bool gpu, int device) {
            auto c = self.get();
            PinOptions o;
            o.ttl_ms = ttl_ms;
            o.gpu = gpu;
            o.device = device;
            auto r = unwrap(nogil([&] { return c->pin(ns, keys, o); }));
            return py::dict(py::arg("pinned") = r.pinned, py::arg("refreshed") = r.refreshed,
                            py::arg("pinned_bytes") = r.pinned_bytes,
                            py::arg("quota_bytes") = r.quota_bytes);
          },
          py::arg("namespace"), py::arg("keys"), py::arg("ttl_ms") = 0, py::arg("gpu") = false,
          py::arg("device") = -1,
          "Pin cached blocks (all or nothing): they are not evicted from the host tier (or, "
          "gpu=True, the GPU tier of `device`) until unpin(), remove() or ttl_ms passes (0: no "
          "expiry; pinning again restarts it).  Pins outlive this client.  Raises "
          "kvtier.NotFound for a key that is not cached, kvtier.NoSpace past the namespace's "
          "pin quota ([[namespace]] pin_bytes).  Returns {pinned, refreshed, pinned_bytes, "
          "quota_bytes}.")
      .def(
          "unpin",
          [](PyClient& self, const std::string& ns, const std::vector<BlockKey>& keys) {
            auto c = self.get();
            return unwrap(nogil([&] { return c->unpin(ns, keys); }));
          },
          py::arg("namespace"), py::arg("keys"),
          "Drop pins; keys that are not pinned are skipped.  Returns how many were pinned.")
      .def("stats",
           [](PyClient& s) {
             auto c = s.get();
             return parse_json(unwrap(nogil([&] { return c->stats_json(); })));
           })
      .def("health",
           [](PyClient& s) {
             auto c = s.get();
             return parse_json(unwrap(nogil([&] { return c->health_json(); })));
           })
      .def("clients",
           [](PyClient& s) {
             auto c = s.get();
             return parse_json(unwrap(nogil([&] { return c->clients_json(); })));
           })
      .def("config",
           [](PyClient& s) {
             auto c = s.get();
             return parse_json(unwrap(nogil([&] { return c->config_json(); })));
           })
      .def(
          "ls",
          [](PyClient& s, const std::string& ns, uint32_t limit, bool pinned) {
            auto c = s.get();
            return parse_json(
                unwrap(nogil([&] { return c->list_json(ns, limit, false, pinned); })));
          },
          py::arg("namespace") = "", py::arg("limit") = 0, py::arg("pinned") = false)
      .def(
          "evict",
          [](PyClient& s, const std::string& ns, const std::vector<BlockKey>& keys, bool all) {
            auto c = s.get();
            auto r = unwrap(nogil([&] { return c->evict(ns, keys, all); }));
            return py::dict(py::arg("evicted") = r.evicted,
                            py::arg("skipped_leased") = r.skipped_leased,
                            py::arg("bytes") = r.bytes);
          },
          py::arg("namespace") = "", py::arg("keys") = std::vector<BlockKey>{},
          py::arg("all") = false)
      .def_property_readonly("session_id", [](PyClient& s) { return s.get()->session_id(); })
      .def(
          "uses_lookup_index",
          [](PyClient& s, const std::string& ns) {
            return nogil([&] { return s.get()->uses_lookup_index(ns); });
          },
          py::arg("namespace"),
          "Whether lookups of the namespace are answered from the shared lookup index.")
      .def_property_readonly("uses_request_channel",
                             [](PyClient& s) { return s.get()->uses_request_channel(); })
      .def_property_readonly("socket_path", [](PyClient& s) { return s.get()->socket_path(); })
      .def_property_readonly("closed", [](const PyClient& s) { return !s.client; })
      .def("close", [](PyClient& s) {
        // Leases still alive keep the connection (and their pins) until they go.
        std::shared_ptr<Client> c = std::move(s.client);
        py::gil_scoped_release nogil;
        c.reset();
      });
}
