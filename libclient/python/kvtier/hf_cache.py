"""transformers Cache objects through kvtier (kvtier.hf's load_prefix/save/prefill/namespace
for the `transformers` package; docs/python.md, "transformers").

One block per chunk of `chunk_tokens` tokens (docs/protocol.md, "transformers blocks"):

    kv.layers                 i32 [n_kv]                    model layer of each row of k, v
    k, v                      cache dtype [n_kv, kv_heads, chunk, head_dim]
    state.layers              i32 [n_state]                 model layer of each row below
    conv.{s}.{dtype}          u8  [n_state, *state shape, itemsize]   conv state s at the
    recurrent.{s}.{dtype}     u8  [n_state, *state shape, itemsize]   chunk's end, as bytes

State tensors are stored as their bytes (u8, a trailing axis of the value's size) so that an
NF4 namespace keeps them exactly: NF4 applies to float tensors only.  Layers whose tensors
differ in shape or dtype form further groups, their names prefixed "g1/", "g2/", ...

Needs transformers >= 5 (per-layer Cache classes); imported by kvtier.hf on first use.
"""
import hashlib
import inspect
import json
import logging
import re
from collections import namedtuple

import torch
from transformers.cache_utils import (CacheLayerMixin, DynamicCache, DynamicLayer,
                                      DynamicSlidingWindowLayer, LinearAttentionCacheLayerMixin)

from . import AlreadyExists, Error, chain_keys

log = logging.getLogger("kvtier.hf")

FORMAT_VERSION = 1  # of the block format above; part of every namespace
Prefix = namedtuple("Prefix", "cache num_tokens")

_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16",
                torch.float64: "float64"}
_SHORT = {"float32": "f32", "float16": "f16", "bfloat16": "bf16", "float64": "f64"}
# Config fields that do not change what a layer computes (bookkeeping, output switches).
_VOLATILE = {"transformers_version", "_name_or_path", "architectures", "use_cache", "return_dict",
             "output_hidden_states", "output_attentions", "torchscript", "dtype", "torch_dtype",
             "_commit_hash", "_attn_implementation", "_attn_implementation_autoset",
             "_experts_implementation", "chunk_size_feed_forward", "tie_word_embeddings"}
# Model types whose torch forward restarts the SSM scan from zero on a multi-token input even
# when the cache holds a state (transformers 5.19 MambaMixer/JambaMambaMixer): a prefix state
# cannot be continued by more than one token, so they are refused.
_NO_MULTI_TOKEN_RESUME = {"mamba", "falcon_mamba", "jamba"}
# transformers' layer types whose cache layer holds a conv and/or recurrent state.
_STATE_LAYER_TYPES = {"linear_attention", "conv", "hybrid", "hybrid_sliding"}
_STATE_NAME = re.compile(r"^(conv|recurrent)\.(\d+)(?:\.(float32|float16|bfloat16|float64))?$")
_GROUP = re.compile(r"^(?:g(\d+)/)?(.+)$")


# --- namespaces ---------------------------------------------------------------------------

def _canonical(obj):
    if isinstance(obj, dict):
        return {k: _canonical(v) for k, v in sorted(obj.items()) if k not in _VOLATILE}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def _weights_fingerprint(model, h):
    """Feeds every parameter's name, shape, dtype and 16 values of its first row into `h`:
    two models with one config but different weights (a fine-tune, another seed) differ.  Reads 16
    values per parameter, so it costs one small copy per parameter even for a large model."""
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        h.update(("%s %s %s\n" % (name, tuple(p.shape), p.dtype)).encode())
        if p.device.type == "meta":
            continue
        head = p.detach()
        while head.dim() > 1:  # the first row: no copy of a large or strided tensor
            head = head[0]
        head = head.reshape(-1)[:16].to("cpu").contiguous()
        h.update(head.view(torch.uint8).numpy().tobytes())


def namespace(model, salt="", codec_prefix="", chunk_tokens=64, weights=True):
    """The namespace of `model`'s cache blocks:
    "{codec_prefix}hf/{model_type}/{digest}/{dtype}/c{chunk_tokens}/v{FORMAT_VERSION}".

    The digest covers the model's config (layer counts and shapes, attention and SSM
    settings), its parameters' names, shapes and dtypes, a sample of its weights (unless
    weights=False) and `salt` (the tenant), so a cache is only served to the same model and
    tenant.  `codec_prefix` picks the daemon's [[namespace]] rule (e.g. "nf4/")."""
    if chunk_tokens <= 0:
        raise ValueError("chunk_tokens must be positive")
    config = model.config
    dtype = _DTYPE_NAMES.get(getattr(model, "dtype", None), str(getattr(model, "dtype", "")))
    h = hashlib.sha256()
    h.update(json.dumps(_canonical(config.to_dict()), sort_keys=True).encode())
    h.update(("\0dtype=%s\0format=%d\0" % (dtype, FORMAT_VERSION)).encode())
    if weights:
        _weights_fingerprint(model, h)
    h.update(b"\0salt=" + str(salt).encode())
    return "%shf/%s/%s/%s/c%d/v%d" % (codec_prefix, config.model_type, h.hexdigest()[:24],
                                     _SHORT.get(dtype, dtype), chunk_tokens, FORMAT_VERSION)


def chunk_tokens_of(namespace, chunk_tokens=None):
    """`chunk_tokens` if given, else the c{N} component namespace() put in `namespace`."""
    if chunk_tokens is not None:
        return int(chunk_tokens)
    m = re.search(r"/c(\d+)/v\d+$", namespace)
    if m is None:
        raise ValueError("namespace %r does not name its chunk size (make it with "
                         "kvtier.hf.namespace, or pass chunk_tokens=)" % namespace)
    return int(m.group(1))


# --- the cache's layers --------------------------------------------------------------------

def _token_ids(input_ids):
    """1-D CPU int64 tensor of one sequence's ids (a [1, T] batch, a 1-D tensor or a list)."""
    t = input_ids if torch.is_tensor(input_ids) else torch.as_tensor(input_ids)
    if t.dim() == 2:
        if t.shape[0] != 1:
            raise ValueError("kvtier.hf handles one sequence at a time, got a batch of %d"
                             % t.shape[0])
        t = t[0]
    if t.dim() != 1:
        raise ValueError("input_ids must be [T] or [1, T]")
    return t.detach().to("cpu", torch.int64)


def _has_kv(layer):
    return isinstance(layer, CacheLayerMixin)


def _state_indices(layer):
    """State indices of a linear-attention (Mamba) layer that hold a conv or recurrent state."""
    if not isinstance(layer, LinearAttentionCacheLayerMixin):
        return []
    return [s for s in range(layer.number_of_states)
            if layer.is_conv_states_initialized[s] or layer.is_recurrent_states_initialized[s]]


def _kv_window(layer):
    """(first token held, tokens consumed) of an attention layer: a sliding-window layer drops
    the oldest tokens."""
    held = 0 if layer.keys is None or layer.keys.numel() == 0 else layer.keys.shape[-2]
    consumed = getattr(layer, "cumulative_length", held)
    return consumed - held, consumed


def _consumed(cache, fallback):
    """Tokens the cache has consumed: its attention layers know; a pure state cache does not,
    and the caller's token count stands in."""
    for layer in cache.layers:
        if _has_kv(layer) and layer.is_initialized:
            return _kv_window(layer)[1]
    return fallback


def _pack(out, kind, entries):
    """Stacks per-layer tensors into block tensors.  `entries` is [(layer, {name: tensor})];
    layers with equal names, shapes and dtypes share a group (one, normally); group g > 0 is
    prefixed "g{g}/"."""
    groups = {}
    for layer, tensors in entries:
        sig = tuple((n, tuple(t.shape), t.dtype) for n, t in sorted(tensors.items()))
        groups.setdefault(sig, []).append((layer, tensors))
    for g, members in enumerate(groups.values()):
        prefix = "g%d/" % g if g else ""
        out[prefix + kind + ".layers"] = torch.tensor([m[0] for m in members], dtype=torch.int32)
        for name in members[0][1]:
            out[prefix + name] = torch.stack([m[1][name] for m in members]).contiguous()


def _state_tensor(kind, s, t, state_codec):
    """A state tensor as stored: its bytes (u8, trailing axis = value size) unless the caller
    asked for the namespace's codec (then NF4 in an NF4 namespace)."""
    t = t.detach().to("cpu").contiguous()
    if state_codec == "namespace":
        return "%s.%d" % (kind, s), t
    name = _DTYPE_NAMES.get(t.dtype)
    if name is None:
        raise ValueError("cannot store a %s state" % t.dtype)
    return "%s.%d.%s" % (kind, s, name), t.view(torch.uint8).reshape(*t.shape, t.element_size())


def block_tensors(cache, lo, hi, consumed, *, batch_index=0, with_state=True,
                  state_codec="raw"):
    """The block of tokens [lo, hi): every attention layer's K and V for those tokens and, if
    with_state, every state layer's state (which must be the state at `hi`: consumed == hi)."""
    if state_codec not in ("raw", "namespace"):
        raise ValueError("state_codec must be 'raw' or 'namespace'")
    out = {}
    kv = []
    states = []
    for i, layer in enumerate(cache.layers):
        if _has_kv(layer) and layer.is_initialized:
            first, _ = _kv_window(layer)
            if lo < first:
                raise ValueError("layer %d's sliding window no longer holds tokens %d..%d "
                                 "(use kvtier.hf.prefill)" % (i, lo, hi))
            kv.append((i, {"k": layer.keys[batch_index, :, lo - first:hi - first, :],
                           "v": layer.values[batch_index, :, lo - first:hi - first, :]}))
        idx = _state_indices(layer)
        if idx and with_state:
            if consumed != hi:
                raise ValueError("the cache's state is at token %d, not at the chunk's end %d"
                                 % (consumed, hi))
            tensors = {}
            for s in idx:
                for kind, store, ok in (
                        ("conv", layer.conv_states, layer.is_conv_states_initialized),
                        ("recurrent", layer.recurrent_states,
                         layer.is_recurrent_states_initialized)):
                    if ok[s]:
                        name, t = _state_tensor(kind, s, store[s][batch_index], state_codec)
                        tensors[name] = t
            states.append((i, tensors))
    if kv:
        _pack(out, "kv", kv)
    if states:
        _pack(out, "state", states)
    return out


# NF4 scale blocks of keys: per token ("row"), like values.  Measured on SmolLM2-135M through
# kvtierd (docs/nf4.md, "Quality on a trained model"), per-token keys beat per-channel ones on
# both perplexity and top-1 agreement at the same bytes.
NF4_KEY_LAYOUT = "row"


def _layouts(tensors):
    """NF4 scale blocks: NF4_KEY_LAYOUT for keys, per token for everything else."""
    return {n: (NF4_KEY_LAYOUT if _GROUP.match(n).group(2) == "k" else "row") for n in tensors}


def has_state(cache):
    return any(_state_indices(layer) for layer in cache.layers)


def _clones(states):
    return {k: None if v is None else v.clone() for k, v in states.items()}


def _snapshot(cache):
    """What forwarding one more chunk changes: attention layers get new K/V tensors (torch.cat,
    so the old ones stay valid), state layers overwrite their buffers in place (so copy)."""
    snap = []
    for layer in cache.layers:
        s = {}
        if _has_kv(layer):
            s["kv"] = (layer.keys, layer.values, layer.is_initialized,
                       getattr(layer, "cumulative_length", None))
        if isinstance(layer, LinearAttentionCacheLayerMixin):
            s["state"] = (_clones(layer.conv_states), _clones(layer.recurrent_states),
                          dict(layer.has_previous_state))
        snap.append(s)
    return snap


def _rewind(cache, snap):
    for layer, s in zip(cache.layers, snap):
        if "kv" in s:
            layer.keys, layer.values, layer.is_initialized, cum = s["kv"]
            if cum is not None:
                layer.cumulative_length = cum
        if "state" in s:
            conv, rec, prev = s["state"]
            for k in conv:
                if conv[k] is not None and layer.conv_states[k] is not None:
                    layer.conv_states[k].copy_(conv[k])
                if rec[k] is not None and layer.recurrent_states[k] is not None:
                    layer.recurrent_states[k].copy_(rec[k])
            layer.has_previous_state.update(prev)


# --- load ------------------------------------------------------------------------------------

def _check_model(model):
    if model.config.model_type in _NO_MULTI_TOKEN_RESUME:
        raise ValueError("%s: transformers' torch forward of this model cannot continue a "
                         "multi-token input from a cached state (its SSM scan restarts from "
                         "zero); use a Mamba2-family model" % model.config.model_type)


def _has_state_layers(model):
    """Whether the model keeps a state (Mamba, linear attention) in some layer."""
    types = getattr(model.config.get_text_config(decoder=True), "layer_types", None) or ()
    return any(t in _STATE_LAYER_TYPES for t in types)


def _groups(block):
    """{group: {name: kvtier.Tensor}} of a leased block."""
    out = {}
    for name in block:
        m = _GROUP.match(name)
        out.setdefault(int(m.group(1) or 0), {})[m.group(2)] = block[name]
    return out


def _to_torch(t, scratch):
    """A leased tensor as torch: raw -> a zero-copy view (read-only memory: copy before use),
    NF4 -> decoded into `scratch` (a dict of reusable buffers)."""
    if t.codec == "raw":
        return torch.from_dlpack(t)
    dt = getattr(torch, t.dtype)
    key = (tuple(t.shape), dt)
    if key not in scratch:
        scratch[key] = torch.empty(t.shape, dtype=dt)
    return t.decode_into(scratch[key])


def _stored_state(name, t, scratch):
    """(kind, state index, tensor) of a stored state tensor, bytes turned back into values."""
    kind, s, dtype = _STATE_NAME.match(name).groups()
    if dtype is None:  # stored in the namespace's codec
        return kind, int(s), _to_torch(t, scratch).clone()
    raw = torch.from_dlpack(t)
    return kind, int(s), raw.clone().view(getattr(torch, dtype)).squeeze(-1)


def _restore(lease, nblocks, chunk, model):
    device = model.device
    cache = DynamicCache(config=model.config)
    scratch = {}
    last = _groups(lease[nblocks - 1])
    for g, tensors in _groups(lease[0]).items():
        if "kv.layers" in tensors:
            layers = torch.from_dlpack(tensors["kv.layers"]).tolist()
            full = {}
            for name in ("k", "v"):
                n, heads, _, dim = tensors[name].shape
                dt = getattr(torch, tensors[name].dtype)
                out = torch.empty(n, heads, nblocks * chunk, dim, dtype=dt)
                for j in range(nblocks):
                    t = _groups(lease[j])[g][name]
                    out[:, :, j * chunk:(j + 1) * chunk, :].copy_(_to_torch(t, scratch))
                full[name] = out.to(device)
            for row, i in enumerate(layers):
                k, v = full["k"][row:row + 1], full["v"][row:row + 1]
                layer = cache.layers[i]
                sliding = isinstance(layer, DynamicSlidingWindowLayer)
                if isinstance(layer, DynamicLayer) and not sliding:
                    layer.lazy_initialization(k, v)  # then adopt the tensors: no second copy
                    layer.keys, layer.values = k, v
                else:  # a sliding window keeps only its last tokens: let it choose
                    layer.update(k, v)
    # The state at the prefix's end: the last block's (earlier blocks may have none).
    for g, tensors in last.items():
        if "state.layers" in tensors:
            layers = torch.from_dlpack(tensors["state.layers"]).tolist()
            for name, t in tensors.items():
                if name == "state.layers" or not _STATE_NAME.match(name):
                    continue
                kind, s, values = _stored_state(name, t, scratch)
                for row, i in enumerate(layers):
                    layer = cache.layers[i]
                    v = values[row:row + 1].to(device)
                    if kind == "conv":
                        layer.lazy_initialization(conv_states=v, state_idx=s,
                                                  conv_kernel_size=v.shape[-1])
                        layer.conv_states[s].copy_(v)
                        layer.conv_kernel_size[s] = v.shape[-1]
                    else:
                        layer.lazy_initialization(recurrent_states=v, state_idx=s)
                        layer.recurrent_states[s].copy_(v)
                    layer.has_previous_state[s] = True
    return cache


def load_prefix(client, namespace, input_ids, model, *, max_tokens=None, chunk_tokens=None):
    """Prefix(cache, num_tokens): a DynamicCache holding the longest cached prefix of
    `input_ids` (KV of every chunk, state at the last), on the model's device, or (None, 0) on
    a miss or when kvtier fails (the caller computes as without a cache).  At most
    `max_tokens` (default len(input_ids) - 1: generate() needs one token to start from)."""
    _check_model(model)
    chunk = chunk_tokens_of(namespace, chunk_tokens)
    ids = _token_ids(input_ids)
    limit = len(ids) - 1 if max_tokens is None else min(max_tokens, len(ids))
    keys = chain_keys(namespace, ids, chunk)[:max(0, limit) // chunk]
    if not keys:
        return Prefix(None, 0)
    try:
        n = client.lookup(namespace, keys)
        if n == 0:
            return Prefix(None, 0)
        with client.get(namespace, keys[:n]) as lease:
            found = 0
            while found < n and lease[found].found:  # evicted since lookup: the prefix ends
                found += 1
            if _has_state_layers(model):
                # A state model resumes only where a block carries the state: kvtier.hf
                # stores it in every block, a writer like vLLM's align mode only in some.
                while found > 0 and not any(n.endswith("state.layers") for n in lease[found - 1]):
                    found -= 1
            if found == 0:
                return Prefix(None, 0)
            return Prefix(_restore(lease, found, chunk, model), found * chunk)
    except Error as e:
        log.warning("kvtier: prefix lookup in %s failed (%s); computing without it", namespace, e)
        return Prefix(None, 0)


# --- save and prefill ---------------------------------------------------------------------------

def _put(client, namespace, key, tensors):
    """True if stored or already cached; False (logged) if kvtier failed."""
    try:
        client.put(namespace, key, tensors, nf4_layout=_layouts(tensors))
    except AlreadyExists:  # another writer was first: blocks are immutable, theirs is equal
        pass
    except Error as e:
        log.warning("kvtier: storing a block in %s failed (%s)", namespace, e)
        return False
    return True


def save(client, namespace, input_ids, cache, *, chunk_tokens=None, batch_index=0,
         state_codec="raw"):
    """Stores the blocks of the complete chunks of `input_ids` that are not cached yet and
    that `cache` covers (after generate: all but the last token); returns how many were
    written.

    A cache with state layers holds only the state after the last token it consumed (for a
    pure state model: len(input_ids)), so it can write only the chunk that ends there, after
    the ones before it are cached: anything else raises ValueError (kvtier.hf.prefill writes
    every chunk of a state model)."""
    chunk = chunk_tokens_of(namespace, chunk_tokens)
    ids = _token_ids(input_ids)
    consumed = _consumed(cache, len(ids))
    keys = chain_keys(namespace, ids, chunk)[:consumed // chunk]
    if not keys:
        return 0
    try:
        first = client.lookup(namespace, keys)
    except Error as e:
        log.warning("kvtier: lookup in %s failed (%s); nothing saved", namespace, e)
        return 0
    if first == len(keys):
        return 0
    stateful = has_state(cache)
    if stateful and (first < len(keys) - 1 or consumed != len(keys) * chunk):
        raise ValueError("the cache's state is at token %d: it can store only a chunk ending "
                         "there after the earlier ones (%d of %d cached); use kvtier.hf.prefill"
                         % (consumed, first, len(keys)))
    written = 0
    for i in range(first, len(keys)):
        lo, hi = i * chunk, (i + 1) * chunk
        tensors = block_tensors(cache, lo, hi, consumed, batch_index=batch_index,
                                with_state=stateful, state_codec=state_codec)
        if not _put(client, namespace, keys[i], tensors):
            break
        written += 1
    return written


def _forward_kwargs(model):
    params = inspect.signature(model.forward).parameters
    cache_kw = "cache_params" if "cache_params" in params else "past_key_values"
    return cache_kw, "position_ids" in params, "logits_to_keep" in params


def _segments(first, end, every, boundary_chunk):
    """Forward spans [i, j) of chunk indices: ending at multiples of `every` (a block there
    carries the state) and at `end`; `boundary_chunk` (the chunk that ends the prompt, or
    None) alone in its span, so that the cache can step back over just that chunk."""
    spans = []
    i = first
    while i < end:
        j = min(end, (i // every + 1) * every)
        if boundary_chunk is not None and i < boundary_chunk < j:
            j = boundary_chunk
        spans.append((i, j))
        i = j
    return spans


def prefill(client, namespace, input_ids, model, *, chunk_tokens=None, state_codec="raw",
            state_every=1):
    """Prefix(cache, num_tokens) like load_prefix, after computing and storing every complete
    chunk of `input_ids` that was not cached.  A state model's block needs the state at its
    chunk's end, and a forward yields the state only at its last token, so the model runs one
    forward per chunk; with `state_every` = k, one per k chunks, and only every k-th block
    (and the prompt's last whole chunk) carries state: a prefix then resumes at a multiple of
    k chunks.  The cache ends at the last chunk boundary before the final token, so
    `generate` has at least one token to process; when the prompt ends on a chunk boundary
    its last chunk is computed again there."""
    _check_model(model)
    if state_every < 1:
        raise ValueError("state_every must be >= 1")
    chunk = chunk_tokens_of(namespace, chunk_tokens)
    ids = _token_ids(input_ids)
    keys = chain_keys(namespace, ids, chunk)
    cache, n = load_prefix(client, namespace, ids, model, chunk_tokens=chunk)
    try:
        cached = client.lookup(namespace, keys) if keys else 0
    except Error:
        cached = len(keys)  # kvtier is down: compute what generate needs, store nothing
    end = len(keys)
    boundary = end - 1 if end * chunk == len(ids) else None
    if boundary is not None and cached == end:
        end -= 1  # the chunk that ends the prompt is stored: generate computes it
        boundary = None
    if n >= end * chunk:
        return Prefix(cache, n)
    if cache is None:
        cache = DynamicCache(config=model.config)
    cache_kw, positions, logits_to_keep = _forward_kwargs(model)
    device = model.device
    storing = True
    snapshot = None
    with torch.no_grad():
        for i, j in _segments(n // chunk, end, state_every, boundary):
            lo, hi = i * chunk, j * chunk
            if i == boundary:
                snapshot = _snapshot(cache)
            kwargs = {cache_kw: cache, "use_cache": True}
            if positions:
                kwargs["position_ids"] = torch.arange(lo, hi, device=device)[None]
            if logits_to_keep:
                kwargs["logits_to_keep"] = 1
            model(input_ids=ids[lo:hi][None].to(device), **kwargs)
            for b in range(max(i, cached), j):
                if not storing:
                    break
                with_state = b == j - 1 and (j % state_every == 0 or j >= len(keys) - 1)
                tensors = block_tensors(cache, b * chunk, (b + 1) * chunk, hi,
                                        with_state=with_state, state_codec=state_codec)
                storing = _put(client, namespace, keys[b], tensors)
    if snapshot is not None:
        _rewind(cache, snapshot)
        if end == 1:  # stepped back to the empty cache
            return Prefix(None, 0)
        return Prefix(cache, (end - 1) * chunk)
    return Prefix(cache, end * chunk)
