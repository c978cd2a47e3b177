"""Hugging Face-style KV through kvtier: save a prompt's KV chunk by chunk under its chain
keys, and rebuild it for the longest cached prefix in another process.

Two faces (docs/python.md):

- transformers' Cache objects (transformers >= 5, kvtier/hf_cache.py), attention and state
  (Mamba) layers alike:
      ns = hf.namespace(model, salt="tenant")                # model, dtype, chunk size, tenant
      cache, n = hf.load_prefix(client, ns, input_ids, model)   # (None, 0) on a miss
      out = model.generate(input_ids, past_key_values=cache)
      hf.save(client, ns, out[0, :-1], out_cache)             # attention models
      cache, n = hf.prefill(client, ns, input_ids, model)     # computes and stores per chunk
- the legacy tuple of per-layer (K, V), each [batch, heads, seq, head_dim] (any torch, no
  transformers needed): save_prefix(...), and load_prefix(..., chunk_tokens) with an int
  fourth argument.

Legacy block format (one block per chunk of `chunk_tokens` tokens, all layers):
    "k.{layer}", "v.{layer}": [heads, chunk_tokens, head_dim], the model's dtype or `dtype`
In an NF4 namespace keys and values are quantized per token ("row" blocks of 64 channels of
one head and token; docs/nf4.md says why).
"""
from collections import namedtuple

import torch

from . import AlreadyExists, chain_keys

CachedPrefix = namedtuple("CachedPrefix", "num_tokens past_key_values")


def namespace(model, salt="", codec_prefix="", chunk_tokens=64, weights=True):
    """The namespace of a transformers model's blocks (see hf_cache.namespace)."""
    from . import hf_cache
    return hf_cache.namespace(model, salt=salt, codec_prefix=codec_prefix,
                              chunk_tokens=chunk_tokens, weights=weights)


def save(client, namespace, input_ids, cache, **kwargs):
    """Store the complete chunks of `input_ids` not cached yet from a transformers Cache
    (see hf_cache.save); returns the number of blocks written."""
    from . import hf_cache
    return hf_cache.save(client, namespace, input_ids, cache, **kwargs)


def prefill(client, namespace, input_ids, model, **kwargs):
    """Load the cached prefix, then compute and store the other complete chunks one forward
    per chunk; returns Prefix(cache, num_tokens) ready for generate (see hf_cache.prefill)."""
    from . import hf_cache
    return hf_cache.prefill(client, namespace, input_ids, model, **kwargs)


def _legacy(past_key_values):
    if hasattr(past_key_values, "to_legacy_cache"):  # transformers < 5 DynamicCache
        return past_key_values.to_legacy_cache()
    if hasattr(past_key_values, "layers"):  # transformers >= 5: one object per layer
        return tuple((layer.keys, layer.values) for layer in past_key_values.layers)
    return tuple(past_key_values)


def save_prefix(client, namespace, token_ids, past_key_values, chunk_tokens, *, batch_index=0,
                dtype=None, skip_cached=True):
    """Store the KV of every complete chunk of `token_ids` whose block is not cached yet.

    `past_key_values` must cover at least those tokens (its seq axis starts at token 0).
    Returns the number of blocks written.  Blocks already cached (by this or another process)
    are skipped: lookup() finds the cached prefix, and a put that races another writer's
    AlreadyExists is ignored."""
    kv = _legacy(past_key_values)
    keys = chain_keys(namespace, token_ids, chunk_tokens)
    if not keys:
        return 0
    seq = kv[0][0].shape[2]
    if seq < len(keys) * chunk_tokens:
        raise ValueError("past_key_values hold %d tokens, %d chunks of %d need %d" %
                         (seq, len(keys), chunk_tokens, len(keys) * chunk_tokens))
    first = client.lookup(namespace, keys) if skip_cached else 0
    layouts = {}
    for layer in range(len(kv)):
        layouts["k.%d" % layer] = "row"
        layouts["v.%d" % layer] = "row"
    written = 0
    for i in range(first, len(keys)):
        lo, hi = i * chunk_tokens, (i + 1) * chunk_tokens
        tensors = []
        for layer, (k, v) in enumerate(kv):
            for name, t in (("k.%d" % layer, k), ("v.%d" % layer, v)):
                t = t[batch_index, :, lo:hi, :]
                if dtype is not None:
                    t = t.to(dtype)
                tensors.append((name, t))
        try:
            client.put(namespace, keys[i], tensors, nf4_layout=layouts)
            written += 1
        except AlreadyExists:
            pass
    return written


def load_prefix(client, namespace, token_ids, chunk_tokens_or_model, *, max_tokens=None,
                dtype=None, device=None, chunk_tokens=None):
    """With a transformers model as fourth argument: Prefix(cache, num_tokens), a DynamicCache
    of the longest cached prefix of `token_ids` for model.generate(..., past_key_values=cache),
    (None, 0) on a miss (see hf_cache.load_prefix; `dtype` and `device` do not apply).

    With an int `chunk_tokens` (the legacy tuple form): rebuild the KV of the longest cached
    prefix of `token_ids`.

    Looks the chain up (one round trip), leases the cached blocks, and assembles per layer
    K and V of shape [1, heads, n * chunk_tokens, head_dim] in fresh tensors (raw blocks:
    one copy out of the shared mapping; NF4 blocks: decoded).  The lease is released before
    returning, so the result is ordinary writable memory.  `max_tokens` caps the prefix (pass
    len(prompt) - 1 so that at least one token is left to prefill).  Returns
    CachedPrefix(num_tokens, past_key_values), past_key_values None on a miss."""
    if not isinstance(chunk_tokens_or_model, int):
        from . import hf_cache
        return hf_cache.load_prefix(client, namespace, token_ids, chunk_tokens_or_model,
                                    max_tokens=max_tokens, chunk_tokens=chunk_tokens)
    chunk_tokens = chunk_tokens_or_model
    keys = chain_keys(namespace, token_ids, chunk_tokens)
    if max_tokens is not None:
        keys = keys[:max(0, max_tokens) // chunk_tokens]
    n = client.lookup(namespace, keys) if keys else 0
    if n == 0:
        return CachedPrefix(0, None)
    with client.get(namespace, keys[:n]) as lease:
        found = 0
        while found < n and lease[found].found:  # a block evicted since lookup ends the prefix
            found += 1
        if found == 0:
            return CachedPrefix(0, None)
        kv = _assemble(lease, found, chunk_tokens, dtype, device)
    return CachedPrefix(found * chunk_tokens, kv)


def _assemble(lease, nblocks, chunk_tokens, dtype, device):
    first = lease[0]
    layers = sum(1 for name in first if name.startswith("k."))
    kv = []
    scratch = None
    for layer in range(layers):
        pair = []
        for prefix in ("k", "v"):
            name = "%s.%d" % (prefix, layer)
            t0 = first[name]
            heads, _, head_dim = t0.shape
            dt = dtype if dtype is not None else getattr(torch, t0.dtype)
            out = torch.empty(1, heads, nblocks * chunk_tokens, head_dim, dtype=dt)
            for j in range(nblocks):
                dst = out[0, :, j * chunk_tokens:(j + 1) * chunk_tokens, :]
                t = lease[j][name]
                if t.codec == "raw":
                    dst.copy_(torch.from_dlpack(t))  # one copy out of the shared mapping
                elif nblocks == 1:
                    t.decode_into(out)  # the slice is the whole tensor: decode in place
                else:
                    if scratch is None or scratch.dtype != dt or scratch.shape != dst.shape:
                        scratch = torch.empty(dst.shape, dtype=dt)
                    dst.copy_(t.decode_into(scratch))
            pair.append(out if device is None else out.to(device))
        kv.append(tuple(pair))
    return tuple(kv)
