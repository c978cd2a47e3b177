"""kvtier inside vLLM: a KV connector (vLLM's KVConnectorBase_V1) that looks prompts up in
kvtierd, loads cached prefixes into vLLM's paged KV blocks and saves new complete chunks.

    --kv-transfer-config '{"kv_connector":"KvtierConnector","kv_connector_module_path":"kvtier.vllm",
                           "kv_role":"kv_both","kv_connector_extra_config":{"socket":"/run/kvtier/kvtier.sock"}}'

Configuration, data path, failure behaviour and figures: docs/vllm.md.  In short:

* Keys are kvtier's chain keys over the prompt's token ids, one per chunk of `chunk_tokens`
  tokens (a whole number of vLLM blocks), in a namespace made of the configured prefix, the
  model's identity and KV geometry, and a tenant part hashed from vLLM's per-request
  `cache_salt` (and LoRA adapter).  Nothing random: two engines (or hosts) with the same
  configuration agree on every key; vLLM's own block hashes are not used.
* One kvtier block per chunk holds every attention layer: "k.{i}" and "v.{i}", each
  [chunk_tokens, num_kv_heads * head_size] in the KV cache's dtype (layer i in the order of
  the model's layers).  The codec (lossless or NF4, keys per token by default) is the daemon's
  namespace rule for the prefix.
* Scheduler: one lookup round trip per new request.  Worker: the load writes leased blocks
  into the request's paged blocks before the forward (sync load); complete chunks of the
  prompt are gathered from the paged blocks after the step and put by a background thread.
* Nothing kvtier does can fail a request: a daemon that is down, a block evicted between
  lookup and load, a block of the wrong shape or a corrupt one is reported through
  get_block_ids_with_load_errors() and vLLM recomputes it (the connector sets vLLM's
  kv_load_failure_policy to "recompute").  Failures are counted and logged.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)

import kvtier

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

# Under vLLM's logger, so that VLLM_LOGGING_LEVEL and vLLM's handlers apply.
log = logging.getLogger("vllm.kvtier_connector")

# Version of the block format above; part of every namespace (a change never mixes formats).
BLOCK_FORMAT = "v1"

# ------------------------------------------------------------------------------------------
# Configuration and keys


@dataclass(frozen=True)
class KvtierVllmConfig:
    """kv_connector_extra_config, validated.  Defaults in docs/vllm.md."""
    socket: str | None = None          # None: $KVTIER_SOCKET, else kvtier's default path
    namespace: str = "vllm"            # prefix; the daemon's [[namespace]] rules match on it
    chunk_tokens: int = 256            # tokens per kvtier block; a multiple of vLLM's block
    model_id: str | None = None        # identity of the weights; default: vLLM's model name
    save: bool = True                  # put complete prompt chunks
    load: bool = True                  # look up and load cached prefixes
    timeout_ms: int = 5000             # per request to kvtierd
    verify: bool = True                # check each loaded tensor's checksum before using it
    reconnect_s: float = 2.0           # after a failure, wait this long before reconnecting
    nf4_key_layout: str = "row"        # NF4 namespaces: keys' scale blocks per token ("row")
                                       # or per channel ("column"); docs/nf4.md

    @staticmethod
    def from_extra(extra: dict[str, Any], block_size: int) -> "KvtierVllmConfig":
        known = {f for f in KvtierVllmConfig.__dataclass_fields__}
        unknown = sorted(set(extra) - known)
        if unknown:
            raise ValueError("kvtier: unknown kv_connector_extra_config keys %s (known: %s)"
                             % (unknown, sorted(known)))
        cfg = KvtierVllmConfig(**extra)
        if not isinstance(cfg.chunk_tokens, int) or cfg.chunk_tokens <= 0:
            raise ValueError("kvtier: chunk_tokens must be a positive integer")
        if cfg.chunk_tokens % block_size:
            # A chunk is a whole number of engine blocks: loads and saves move whole blocks.
            raise ValueError("kvtier: chunk_tokens (%d) must be a multiple of vLLM's block "
                             "size (%d)" % (cfg.chunk_tokens, block_size))
        if not isinstance(cfg.namespace, str) or not cfg.namespace.strip("/"):
            raise ValueError("kvtier: namespace must not be empty")
        if cfg.nf4_key_layout not in ("row", "column"):
            raise ValueError("kvtier: nf4_key_layout must be 'row' or 'column'")
        return cfg


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_")[-48:] or "model"


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class KvGeometry:
    """What a block holds, per layer: [chunk_tokens, num_kv_heads * head_size] of `dtype`."""
    layers: tuple[str, ...]            # attention layer names, in model order
    num_kv_heads: int
    head_size: int
    dtype: torch.dtype

    @property
    def row(self) -> int:
        return self.num_kv_heads * self.head_size


def geometry_from(kv_cache_config: "KVCacheConfig") -> KvGeometry:
    """The attention layers kvtier caches.  One group of full-attention layers with one
    shape (Llama, Qwen, Mistral without sliding windows...); anything else is refused in
    __init__ so that the engine runs without kvtier rather than with wrong KV."""
    from vllm.v1.kv_cache_interface import FullAttentionSpec

    groups = kv_cache_config.kv_cache_groups
    if len(groups) != 1:
        raise NotImplementedError("kvtier: %d KV cache groups (hybrid or sliding-window "
                                  "models) are not supported by this connector" % len(groups))
    spec = groups[0].kv_cache_spec
    if type(spec) is not FullAttentionSpec:
        raise NotImplementedError("kvtier: KV cache spec %s is not supported (full "
                                  "attention only)" % type(spec).__name__)
    if getattr(spec, "head_size_v", spec.head_size) != spec.head_size:
        raise NotImplementedError("kvtier: K and V head sizes differ")
    return KvGeometry(tuple(groups[0].layer_names), spec.num_kv_heads, spec.head_size,
                      spec.dtype)


def _layer_order(name: str) -> tuple:
    # "model.layers.12.self_attn.attn" sorts after "model.layers.2...".
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


class Namespaces:
    """Namespace names and chain keys: functions of the configuration alone, so that every
    engine (and host) with the same model and settings derives the same ones."""

    def __init__(self, prefix: str, model: str, revision: str | None, layers: int,
                 num_kv_heads: int, head_size: int, dtype: str, chunk_tokens: int,
                 tp_size: int = 1, tp_rank: int = 0):
        ident = _digest(model, revision, layers, num_kv_heads, head_size, dtype, tp_size)
        self.chunk_tokens = chunk_tokens
        # Keys hash the base name: every tensor-parallel rank derives the same keys and stores
        # its own shard under its own namespace.
        self.base = "%s/%s-%s/%s/kv%dx%d/c%d/%s" % (
            prefix.strip("/"), _slug(os.path.basename(model.rstrip("/"))), ident, dtype,
            num_kv_heads, head_size, chunk_tokens, BLOCK_FORMAT)
        self.rank_suffix = "/tp%dof%d" % (tp_rank, tp_size) if tp_size > 1 else ""

    @staticmethod
    def for_engine(cfg: KvtierVllmConfig, vllm_config: "VllmConfig", geo: KvGeometry,
                   tp_rank: int) -> "Namespaces":
        mc = vllm_config.model_config
        return Namespaces(cfg.namespace, cfg.model_id or mc.model, getattr(mc, "revision", None),
                          len(geo.layers), geo.num_kv_heads, geo.head_size,
                          str(geo.dtype).replace("torch.", ""), cfg.chunk_tokens,
                          vllm_config.parallel_config.tensor_parallel_size, tp_rank)

    def tenant(self, cache_salt: str | None, lora_name: str | None) -> str:
        if not cache_salt and not lora_name:
            return "shared"
        return "t" + _digest(cache_salt or "", lora_name or "")

    def of(self, cache_salt: str | None = None, lora_name: str | None = None) -> str:
        """The namespace blocks are stored in (this rank's)."""
        return "%s/%s%s" % (self.base, self.tenant(cache_salt, lora_name), self.rank_suffix)

    def keys(self, tenant_ns: str, token_ids, max_chunks: int) -> list:
        base = tenant_ns[:len(tenant_ns) - len(self.rank_suffix)] if self.rank_suffix else tenant_ns
        keys = kvtier.chain_keys(base, token_ids[:max_chunks * self.chunk_tokens],
                                 self.chunk_tokens)
        return keys[:max_chunks]


# ------------------------------------------------------------------------------------------
# Metadata: scheduler -> worker (pickled by vLLM between processes)


@dataclass
class LoadSpec:
    req_id: str
    namespace: str
    keys: list                          # kvtier.Key of chunks first_chunk .. last
    first_chunk: int                    # chunk index of keys[0]
    block_ids: list[int]                # the request's paged blocks from token 0
    start_token: int                    # first token to load (block-aligned)
    end_token: int                      # one past the last (chunk-aligned)


@dataclass
class SaveSpec:
    req_id: str
    namespace: str
    key: Any                            # kvtier.Key of the chunk
    block_ids: list[int]                # the chunk's paged blocks, in token order


@dataclass
class KvtierConnectorMetadata(KVConnectorMetadata):
    loads: list[LoadSpec] = field(default_factory=list)
    saves: list[SaveSpec] = field(default_factory=list)


# ------------------------------------------------------------------------------------------
# Connection with backoff: a dead daemon costs one failed connect per reconnect_s.


class _Link:
    def __init__(self, cfg: KvtierVllmConfig, name: str):
        self.cfg = cfg
        self.name = name
        self._client = None
        self._retry_at = 0.0
        self._mu = threading.Lock()

    def get(self):
        with self._mu:
            if self._client is not None and not self._client.closed:
                return self._client
            now = time.monotonic()
            if now < self._retry_at:
                return None
            try:
                self._client = kvtier.Client(self.cfg.socket, name=self.name,
                                             timeout_ms=self.cfg.timeout_ms)
                log.info("kvtier: connected to %s", self._client.socket_path)
                return self._client
            except kvtier.Error as e:
                self._retry_at = now + self.cfg.reconnect_s
                log.warning("kvtier: cannot reach kvtierd (%s); retrying in %.1f s", e,
                            self.cfg.reconnect_s)
                return None

    def failed(self, what: str, e: Exception):
        """A call failed: transport errors drop the connection (reconnect later)."""
        log.warning("kvtier: %s failed: %s", what, e)
        if isinstance(e, (kvtier.Unavailable, kvtier.ProtocolError)):
            with self._mu:
                if self._client is not None:
                    try:
                        self._client.close()
                    except Exception:  # noqa: BLE001 - closing a broken connection
                        pass
                self._client = None
                self._retry_at = time.monotonic() + self.cfg.reconnect_s

    def close(self):
        with self._mu:
            if self._client is not None:
                self._client.close()
                self._client = None


# ------------------------------------------------------------------------------------------
# Scheduler-side state per request


@dataclass
class _ReqState:
    namespace: str
    token_ids: list[int]                # prompt tokens
    keys: list                          # chain keys of the prompt's complete chunks
    cached_chunks: int                  # chunks kvtier held at lookup (not saved again)
    block_ids: list[int] = field(default_factory=list)
    saved_chunks: int = 0               # chunks below this are cached or queued for saving
    load: tuple[int, int] | None = None  # (start_token, end_token) to load


@dataclass
class ConnectorCounters:
    lookups: int = 0
    lookup_errors: int = 0
    lookup_tokens: int = 0              # tokens asked about
    hit_tokens: int = 0                 # tokens reported loadable (beyond vLLM's own hits)
    loaded_blocks: int = 0              # vLLM blocks written from kvtier
    load_failed_blocks: int = 0         # reported to vLLM for recomputation
    saved_chunks: int = 0
    save_errors: int = 0
    load_s: float = 0.0
    save_s: float = 0.0                 # gather (in the step) + put (background)

    def as_dict(self):
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def dump(self):
        """With $KVTIER_VLLM_COUNTERS_DIR set (benchmarks, diagnosis): the counters as JSON in
        <dir>/<pid>.json, replaced after each load and save.  Otherwise nothing."""
        d = os.environ.get("KVTIER_VLLM_COUNTERS_DIR")
        if not d:
            return
        lock = self.__dict__.setdefault("_lock", threading.Lock())
        with lock:
            path = os.path.join(d, "%d.json" % os.getpid())
            with open(path + ".tmp", "w") as f:
                json.dump(self.as_dict(), f)
            os.replace(path + ".tmp", path)


class KvtierConnector(KVConnectorBase_V1):
    """vLLM KV connector backed by kvtierd.  See the module docstring and docs/vllm.md."""

    def __init__(self, vllm_config: "VllmConfig", role: KVConnectorRole,
                 kv_cache_config: "KVCacheConfig | None" = None):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        ktc = self._kv_transfer_config
        if getattr(ktc, "kv_load_failure_policy", "recompute") != "recompute":
            # A cache must never fail a request: vLLM recomputes what kvtier could not load.
            log.info("kvtier: kv_load_failure_policy %r -> 'recompute'",
                     ktc.kv_load_failure_policy)
            ktc.kv_load_failure_policy = "recompute"
        self.block_size = vllm_config.cache_config.block_size
        self.cfg = KvtierVllmConfig.from_extra(dict(ktc.kv_connector_extra_config or {}),
                                               self.block_size)
        self.geo = geometry_from(kv_cache_config)
        from vllm.distributed.parallel_state import get_tensor_model_parallel_rank

        try:
            tp_rank = get_tensor_model_parallel_rank() if role == KVConnectorRole.WORKER else 0
        except Exception:  # noqa: BLE001 - no TP group (single process)
            tp_rank = 0
        self.ns = Namespaces.for_engine(self.cfg, vllm_config, self.geo, tp_rank)
        self.blocks_per_chunk = self.cfg.chunk_tokens // self.block_size
        self.counters = ConnectorCounters()
        self.link = _Link(self.cfg, "vllm-%s-%d" % (role.name.lower(), os.getpid()))
        # Scheduler side.
        self._reqs: dict[str, _ReqState] = {}
        # Worker side.
        self._kv: dict[str, torch.Tensor] = {}
        self._paged: dict[str, tuple] = {}  # kvtier.PagedKV of the K and V views (CPU caches)
        self._layers: list[str] = sorted(self.geo.layers, key=_layer_order)
        self._load_errors: set[int] = set()
        self._saver: _Saver | None = None
        log.info("kvtier: %s connector, namespace %s, %d-token chunks (%d blocks)",
                 role.name.lower(), self.ns.of(), self.cfg.chunk_tokens, self.blocks_per_chunk)

    # ==========================================================================================
    # Scheduler side

    def _request_namespace(self, request: "Request") -> str | None:
        """None: a request kvtier must not cache (its KV is not a function of its tokens)."""
        if request.prompt_token_ids is None or getattr(request, "prompt_embeds", None) is not None:
            return None
        if request.mm_features:
            # Placeholder tokens stand for images: equal tokens, different KV.
            return None
        lora = request.lora_request.lora_name if request.lora_request else None
        return self.ns.of(request.cache_salt, lora)

    def get_num_new_matched_tokens(self, request: "Request",
                                   num_computed_tokens: int) -> tuple[int | None, bool]:
        ns = self._request_namespace(request)
        if ns is None:
            return 0, False
        tokens = list(request.prompt_token_ids)
        st = self._reqs.get(request.request_id)
        if st is None:
            # Complete chunks of the prompt; a load never covers the last prompt token (vLLM
            # computes at least one token to sample from).
            keys = self.ns.keys(ns, tokens, len(tokens) // self.cfg.chunk_tokens)
            st = _ReqState(ns, tokens, keys, 0)
            if self.cfg.load and keys:
                cached = self._lookup(ns, keys[:(len(tokens) - 1) // self.cfg.chunk_tokens])
                st.cached_chunks = cached
            st.saved_chunks = st.cached_chunks
            self._reqs[request.request_id] = st
        hit = st.cached_chunks * self.cfg.chunk_tokens
        if not self.cfg.load or hit <= num_computed_tokens:
            return 0, False
        return hit - num_computed_tokens, False

    def _lookup(self, ns: str, keys: list) -> int:
        if not keys:
            return 0
        c = self.link.get()
        self.counters.lookups += 1
        self.counters.lookup_tokens += len(keys) * self.cfg.chunk_tokens
        if c is None:
            self.counters.lookup_errors += 1
            return 0
        try:
            return c.lookup(ns, keys)
        except kvtier.Error as e:
            self.counters.lookup_errors += 1
            self.link.failed("lookup", e)
            return 0

    def update_state_after_alloc(self, request: "Request", blocks: "KVCacheBlocks",
                                 num_external_tokens: int):
        st = self._reqs.get(request.request_id)
        if st is None or num_external_tokens <= 0:
            return
        end = st.cached_chunks * self.cfg.chunk_tokens
        start = end - num_external_tokens
        st.load = (start, end)
        self.counters.hit_tokens += num_external_tokens

    def build_connector_meta(self, scheduler_output: "SchedulerOutput") -> KVConnectorMetadata:
        meta = KvtierConnectorMetadata()
        for new in scheduler_output.scheduled_new_reqs:
            st = self._reqs.get(new.req_id)
            if st is None:
                continue
            st.block_ids = list(new.block_ids[0])
            if st.load is not None:
                meta.loads.append(self._load_spec(new.req_id, st))
            computed = new.num_computed_tokens + scheduler_output.num_scheduled_tokens.get(
                new.req_id, 0)
            self._plan_saves(new.req_id, st, computed, meta)
        cached = scheduler_output.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            st = self._reqs.get(req_id)
            if st is None:
                continue
            new_ids = cached.new_block_ids[i]
            if new_ids is not None:
                if req_id in cached.resumed_req_ids:
                    st.block_ids = list(new_ids[0])  # all of the request's blocks
                else:
                    st.block_ids.extend(new_ids[0])
            if st.load is not None and req_id in cached.resumed_req_ids:
                # Preempted, then resumed with a fresh lookup: load into its new blocks.
                meta.loads.append(self._load_spec(req_id, st))
            computed = cached.num_computed_tokens[i] + scheduler_output.num_scheduled_tokens.get(
                req_id, 0)
            self._plan_saves(req_id, st, computed, meta)
        return meta

    def _load_spec(self, req_id: str, st: _ReqState) -> LoadSpec:
        start, end = st.load
        st.load = None
        first = start // self.cfg.chunk_tokens
        last = (end - 1) // self.cfg.chunk_tokens
        return LoadSpec(req_id, st.namespace, st.keys[first:last + 1], first,
                        list(st.block_ids), start, end)

    def _plan_saves(self, req_id: str, st: _ReqState, computed: int,
                    meta: KvtierConnectorMetadata):
        """Queue every prompt chunk whose KV this step completes (and kvtier lacks)."""
        if not self.cfg.save:
            return
        c, bpc = self.cfg.chunk_tokens, self.blocks_per_chunk
        done = min(computed, len(st.token_ids)) // c
        while st.saved_chunks < min(done, len(st.keys)):
            i = st.saved_chunks
            ids = st.block_ids[i * bpc:(i + 1) * bpc]
            if len(ids) < bpc:
                break  # blocks not allocated yet (cannot happen for computed tokens)
            meta.saves.append(SaveSpec(req_id, st.namespace, st.keys[i], ids))
            st.saved_chunks += 1

    def request_finished(self, request: "Request",
                         block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        # Saves are gathered out of the paged blocks in the step that completes them, so the
        # blocks may be freed at once.
        self._reqs.pop(request.request_id, None)
        return False, None

    # ==========================================================================================
    # Worker side

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]):
        for name in self._layers:
            t = kv_caches.get(name)
            if t is None:
                raise ValueError("kvtier: no KV cache for layer %s" % name)
            self._kv[name] = _kv_views(t, self.block_size, self.geo)
        self._saver = _Saver(self.link, self.counters, key_layout=self.cfg.nf4_key_layout)

    def start_load_kv(self, forward_context: "ForwardContext", **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        assert isinstance(meta, KvtierConnectorMetadata)
        for spec in meta.loads:
            t0 = time.perf_counter()
            failed_from = self._load(spec)
            self.counters.load_s += time.perf_counter() - t0
            if failed_from is not None:
                bad = spec.block_ids[failed_from // self.block_size:spec.end_token // self.block_size]
                self._load_errors.update(bad)
                self.counters.load_failed_blocks += len(bad)
        if meta.loads:
            self.counters.dump()

    def _load(self, spec: LoadSpec) -> int | None:
        """Write tokens [start_token, end_token) of the request from kvtier into its paged
        blocks.  Returns the first token that could not be loaded, or None."""
        c = self.link.get()
        if c is None:
            return spec.start_token
        try:
            lease = c.get(spec.namespace, spec.keys)
        except kvtier.Error as e:
            self.link.failed("get", e)
            return spec.start_token
        with lease:
            ct, bs = self.cfg.chunk_tokens, self.block_size
            for j, block in enumerate(lease):
                chunk = spec.first_chunk + j
                lo = max(spec.start_token, chunk * ct)     # first token of this chunk to load
                if not block.found:
                    return lo
                row0 = lo - chunk * ct
                ids = spec.block_ids[lo // bs:(chunk + 1) * ct // bs]
                try:
                    self._write_chunk(block, row0, ids)
                except (kvtier.Error, ValueError, TypeError, KeyError, RuntimeError) as e:
                    log.warning("kvtier: block %s of %s not loaded: %s", spec.keys[j].hex(),
                                spec.namespace, e)
                    if isinstance(e, kvtier.Corrupt):
                        self._drop(c, spec.namespace, spec.keys[j])
                    return lo
                self.counters.loaded_blocks += len(ids)
        return None

    def _drop(self, c, ns: str, key):
        """A block that fails its checksum is removed (its lease still reads the old bytes),
        so that no engine loads it again; vLLM recomputes it."""
        try:
            c.remove(ns, [key])
        except kvtier.Error as e:
            self.link.failed("remove", e)

    def _write_chunk(self, block, row0: int, block_ids: list[int]):
        """Every layer's K and V rows [row0, chunk_tokens) of one leased chunk into the paged
        blocks `block_ids`.  Host-memory caches (the CPU backend): Tensor.scatter_rows copies
        (or decodes) each tensor straight out of the shared mapping into the paged blocks, with
        no intermediate tensor.  Device caches: raw tensors are copied to the device, NF4
        tensors decoded into one reused scratch first, then scattered by torch."""
        geo, bs = self.geo, self.block_size
        want = (self.cfg.chunk_tokens, geo.row)
        idx = None
        for li, name in enumerate(self._layers):
            views = self._kv[name]
            paged = self._paged.get(name)
            if paged is None and views[0].device.type == "cpu":
                # Borrowed once, for every later load's scatter_rows.
                paged = self._paged[name] = tuple(kvtier.PagedKV(v) for v in views)
            on_host = paged is not None
            if idx is None and not on_host:
                idx = torch.tensor(block_ids, dtype=torch.long, device=views[0].device)
            for kv_i, prefix in ((0, "k"), (1, "v")):
                t = block["%s.%d" % (prefix, li)]
                if tuple(t.shape) != want:
                    raise ValueError("tensor %s.%d has shape %s, expected %s" %
                                     (prefix, li, tuple(t.shape), want))
                if on_host and t.device < 0:  # kvtier.Corrupt names the tensor
                    t.scatter_rows(paged[kv_i], block_ids, row0, verify=self.cfg.verify)
                    continue
                if self.cfg.verify and not t.verify():
                    raise kvtier.Corrupt("tensor %s.%d fails its checksum" % (prefix, li))
                src = self._source(t, views[kv_i])
                views[kv_i][idx] = src[row0:].view(len(block_ids), bs, geo.num_kv_heads,
                                                   geo.head_size)

    def _source(self, t, paged: torch.Tensor) -> torch.Tensor:
        if t.codec == "raw":
            src = torch.from_dlpack(t)
            if src.dtype != paged.dtype:
                raise TypeError("stored dtype %s, KV cache %s" % (src.dtype, paged.dtype))
            return src.to(paged.device, non_blocking=True) if paged.device.type != "cpu" else src
        scratch = self._scratch(paged.dtype)
        t.decode_into(scratch)
        return scratch.to(paged.device) if paged.device.type != "cpu" else scratch

    def _scratch(self, dtype: torch.dtype) -> torch.Tensor:
        s = getattr(self, "_scratch_t", None)
        if s is None or s.dtype != dtype:
            s = torch.empty(self.cfg.chunk_tokens, self.geo.row, dtype=dtype)
            self._scratch_t = s
        return s

    def wait_for_layer_load(self, layer_name: str) -> None:
        return  # loads complete in start_load_kv, before the forward

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any,
                      **kwargs: Any) -> None:
        return  # chunks are gathered after the forward, in wait_for_save

    def wait_for_save(self):
        if not self.has_connector_metadata():
            return
        meta = self._get_connector_metadata()
        if not isinstance(meta, KvtierConnectorMetadata) or not meta.saves:
            return
        for spec in meta.saves:
            t0 = time.perf_counter()
            tensors = self._gather(spec.block_ids)
            self.counters.save_s += time.perf_counter() - t0
            self._saver.submit(spec.namespace, spec.key, tensors)

    def _gather(self, block_ids: list[int]) -> list:
        """The staging copy of a save: each layer's K and V rows of the chunk, out of the
        paged blocks into contiguous host tensors [chunk_tokens, heads * head_size] that the
        background put reads (a second, cache-resident copy where the engine's layout is not
        token-major, as on the CPU backend)."""
        tensors = []
        idx = None
        for li, name in enumerate(self._layers):
            views = self._kv[name]
            if idx is None:
                idx = torch.tensor(block_ids, dtype=torch.long, device=views[0].device)
            for kv_i, prefix in ((0, "k"), (1, "v")):
                rows = views[kv_i][idx].reshape(self.cfg.chunk_tokens, self.geo.row)
                if rows.device.type != "cpu":
                    rows = rows.to("cpu")
                tensors.append(("%s.%d" % (prefix, li), rows))
        return tensors

    def get_block_ids_with_load_errors(self) -> set[int]:
        bad, self._load_errors = self._load_errors, set()
        if bad:
            log.warning("kvtier: %d blocks not loaded; vLLM recomputes them", len(bad))
        return bad

    def shutdown(self):
        if self._saver is not None:
            self._saver.close()
        log.info("kvtier: counters %s", self.counters.as_dict())
        self.link.close()


def _kv_views(t: torch.Tensor, block_size: int, geo: KvGeometry) -> tuple:
    """vLLM's paged KV of one layer as two views (K, V), each [num_blocks, block_size,
    num_kv_heads, head_size] over the engine's memory.

    vLLM hands connectors the per-layer logical view [blocks, heads, block_size, C],
    C = 2 * head_size.  What C holds depends on the attention backend:
      * CPU_ATTN: each (block, head) page is block_size rows of K then block_size rows of V
        (the kernel views it as [2 * block_size, head_size] and splits the rows);
      * FlashAttention and the other CUDA backends: per token, K in C[:head_size] and V in
        C[head_size:].
    Anything else is refused: kvtier would store it wrongly."""
    H, D = geo.num_kv_heads, geo.head_size
    if t.dim() != 4 or t.shape[1] != H or t.shape[2] != block_size or t.shape[3] != 2 * D:
        raise NotImplementedError(
            "kvtier: paged KV of shape %s is not [blocks, %d heads, %d, 2 x %d]"
            % (tuple(t.shape), H, block_size, D))
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        if not t.is_contiguous():
            raise NotImplementedError("kvtier: CPU paged KV with strides %s" % (t.stride(),))
        pages = t.view(t.shape[0], H, 2, block_size, D)
        return pages[:, :, 0].permute(0, 2, 1, 3), pages[:, :, 1].permute(0, 2, 1, 3)
    return t[..., :D].permute(0, 2, 1, 3), t[..., D:].permute(0, 2, 1, 3)


class _Saver:
    """Puts gathered chunks on a background thread: the step does not wait for kvtierd.  The
    queue is bounded: when kvtierd is slower than the engine, the step waits (never drops
    silently, never grows without bound)."""

    def __init__(self, link: _Link, counters: ConnectorCounters, depth: int = 64,
                 key_layout: str = "row"):
        self.link = link
        self.counters = counters
        self.key_layout = key_layout
        self.q: queue.Queue = queue.Queue(depth)
        self.t = threading.Thread(target=self._run, name="kvtier-saver", daemon=True)
        self.t.start()

    def submit(self, ns, key, tensors):
        self.q.put((ns, key, tensors, time.perf_counter()))

    def _run(self):
        while True:
            # What waits is put together: one put_batch (two round trips) per namespace.
            items = [self.q.get()]
            while len(items) < 64:
                try:
                    items.append(self.q.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is None for item in items)
            items = [item for item in items if item is not None]
            if items:
                self._save(items)
            for _ in range(len(items) + (1 if stop else 0)):
                self.q.task_done()
            if stop:
                return

    def _save(self, items):
        t0 = time.perf_counter()
        c = self.link.get()
        if c is None:
            self.counters.save_errors += len(items)
        else:
            by_ns: dict = {}
            for ns, key, tensors, _ in items:
                by_ns.setdefault(ns, []).append((key, tensors))
            for ns, batch in by_ns.items():
                layouts = {name: (self.key_layout if name.startswith("k.") else "row")
                           for _, tensors in batch for name, _ in tensors}
                # Chunks the staging area could not hold with the rest go in the next batch
                # (sealed puts give their staging back); one that does not fit alone fails.
                while batch:
                    try:
                        results = c.put_batch(ns, batch, staging="host", nf4_layout=layouts)
                    except kvtier.Error as e:
                        self.counters.save_errors += len(batch)
                        self.link.failed("put", e)
                        break
                    retry = []
                    for item, r in zip(batch, results):
                        if r is None:
                            self.counters.saved_chunks += 1
                        elif isinstance(r, kvtier.LimitExceeded) and len(retry) < len(batch) - 1:
                            retry.append(item)
                        elif not isinstance(r, kvtier.AlreadyExists):  # else another was first
                            self.counters.save_errors += 1
                    batch = retry
        self.counters.save_s += time.perf_counter() - t0
        self.counters.dump()

    def flush(self):
        self.q.join()

    def close(self):
        self.q.put(None)
        self.t.join(timeout=30)
