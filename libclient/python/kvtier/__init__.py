"""kvtier: Python client of the kvtier host-local KV-cache daemon.

    import kvtier, torch
    c = kvtier.Client()                                    # $KVTIER_SOCKET or the default
    keys = kvtier.chain_keys("tiny/fp32/v1", token_ids, 64)
    n = c.lookup("tiny/fp32/v1", keys)                     # longest cached prefix, in blocks
    with c.get("tiny/fp32/v1", keys[:n]) as lease:
        k0 = torch.from_dlpack(lease[0]["k.0"])            # zero-copy, READ-ONLY
        v0 = lease.tensor(0, "v.0", dtype=torch.float32)   # NF4 blocks are decoded

Leased tensors point into the daemon's read-only shared memory: never write to them (torch
1.13 and DLPack < 1.0 cannot mark them read-only; a write faults).  A tensor keeps its lease
alive, so it may outlive the `with` block.  See docs/python.md.
"""

from ._kvtier import (  # noqa: F401
    AlreadyExists, Block, Busy, Corrupt, Error, InternalError, InvalidArgument, IoError, Key,
    Lease, LimitExceeded, NoSpace, NotFound, PagedKV, PermissionDenied, ProtocolError, Tensor,
    Unavailable, _chain_keys, _Client, default_socket_path)

import collections as _collections

import numpy as _np

__all__ = [
    "Client", "chain_keys", "Key", "Lease", "Block", "Tensor", "PagedKV", "Error",
    "InvalidArgument",
    "NotFound", "NoSpace", "PermissionDenied", "ProtocolError", "Busy", "AlreadyExists",
    "IoError", "Unavailable", "Corrupt", "InternalError", "LimitExceeded",
    "default_socket_path", "SearchHit",
]

SearchHit = _collections.namedtuple("SearchHit", ["key", "score", "similarities"])
SearchHit.__doc__ = """One result of Client.search: the chunk's key, its ranking score
(sum(weight*cosine)/sum(weight)) and a dict modality -> cosine, in query order."""


def chain_keys(namespace, token_ids, chunk_tokens, include_partial=False):
    """Keys of every complete chunk of `token_ids` (list, numpy array or torch tensor of
    ints in [0, 2**32)); each key names the whole prefix up to its chunk."""
    if hasattr(token_ids, "detach"):  # torch.Tensor
        token_ids = token_ids.detach().cpu().numpy()
    arr = _np.asarray(token_ids)
    if arr.size == 0:
        arr = arr.reshape(0).astype(_np.uint32)
    if arr.ndim != 1:
        raise ValueError("token_ids must be one-dimensional")
    if arr.dtype.kind not in "iu":
        raise TypeError("token_ids must be integers, not %s" % arr.dtype)
    if arr.size and (arr.min() < 0 or arr.max() > 0xFFFFFFFF):
        raise ValueError("token ids must lie in [0, 2**32)")
    return _chain_keys(namespace, _np.ascontiguousarray(arr, dtype=_np.uint32),
                       int(chunk_tokens), bool(include_partial))


def _vector(v, what):
    """A 1-D float32 numpy array (one copy at most) from a list, numpy array or torch tensor."""
    if hasattr(v, "detach") and hasattr(v, "device"):  # torch.Tensor (CPU or CUDA)
        v = v.detach().float().cpu().numpy()
    try:
        a = _np.ascontiguousarray(v, dtype=_np.float32)
    except (TypeError, ValueError) as e:
        raise TypeError("%s: expected a 1-D float vector (%s)" % (what, e)) from None
    if a.ndim != 1:
        raise ValueError("%s: expected a 1-D vector, got shape %s" % (what, a.shape))
    return a


def _host_contiguous(t):
    """What the C++ put can read in place: host memory, C-contiguous.  Anything else costs
    one extra copy here (device -> host, or a gather)."""
    if hasattr(t, "is_contiguous") and hasattr(t, "device"):  # torch.Tensor
        t = t.detach()
        if t.device.type != "cpu":
            t = t.to("cpu")
        if not t.is_contiguous():
            t = t.contiguous()
        return t
    if isinstance(t, _np.ndarray) and not t.flags.c_contiguous:
        return _np.ascontiguousarray(t)
    return t


def _put_source(t):
    """What the C++ put reads in place: C-contiguous host memory, or C-contiguous CUDA memory
    (copied device to device into the daemon's device staging, docs/gpu.md "Device puts")."""
    if hasattr(t, "is_contiguous") and hasattr(t, "device") and t.device.type == "cuda":
        t = t.detach()
        return t if t.is_contiguous() else t.contiguous()
    return _host_contiguous(t)


class Client(_Client):
    """One connection to kvtierd.  Calls drop the GIL while they wait; a Client may be shared
    between threads (requests are serialised).

    Client(socket=None, name="", timeout_ms=30000, device=-1, busy_poll_us=0,
    request_channel=True, lookup_index=True, release_mode="deferred"): socket None
    means $KVTIER_SOCKET, else ./var/kvtier.sock, else /run/kvtier/kvtier.sock.  `device` is
    the CUDA device this process computes on: fp16/bf16 puts land in its GPU tier, and
    get(..., gpu=True) leases there.  `busy_poll_us` > 0 polls for each reply that long before
    sleeping (0: $KVTIER_BUSY_POLL_US, else off; see daemon.busy_poll_us in
    docs/operations.md); such a client passes its requests through a shared-memory request
    channel when the daemon polls too, unless `request_channel` is False (the property
    `uses_request_channel` says which).  `lookup_index` answers lookups from the daemon's
    shared lookup index (no round trip; `lookup(..., from_index=False)` asks the daemon, and
    `uses_lookup_index(namespace)` says which).  `release_mode` says how a lease's release
    reaches the daemon: "deferred" (default) sends nothing of its own, the lease ids ride on
    this client's next request (or go one-way once 64 wait, or at `flush_releases()`);
    "posted" sends a one-way release at once; "round_trip" waits for the daemon's reply
    (docs/protocol.md, "Releases without a round trip").  Raises kvtier.Unavailable if the
    daemon cannot be reached.
    """

    def put(self, namespace, key, tensors, nf4_layout=None):
        """Store one block: `tensors` maps names to tensors (dict, or (name, tensor) pairs) of
        numpy, torch (CPU or CUDA) or any DLPack/buffer-protocol object.  Contiguous host
        tensors are copied once, straight into the staging area; CUDA tensors device to
        device, as for put_batch.  `nf4_layout` ('row' or
        'column', or a dict name -> layout) picks NF4 scale blocks per token or per channel
        (use 'column' for keys) when the namespace is stored as NF4.
        Raises kvtier.AlreadyExists if the key is cached (blocks are immutable)."""
        items = tensors.items() if isinstance(tensors, dict) else tensors
        self._put(namespace, key, [(str(n), _put_source(t)) for n, t in items], nf4_layout)

    def put_batch(self, namespace, items, staging="auto", device=-1, nf4_layout=None):
        """Store many blocks in two round trips: `items` is a list of (key, tensors) pairs,
        tensors as for put().  CUDA tensors are copied device to device into the connection's
        staging in GPU memory, and an fp16/bf16 block reaches the GPU tier without a trip
        through host memory (docs/gpu.md, "Device puts"); synchronise the stream that wrote
        them first.  staging: 'auto' (device staging for CUDA tensors when the daemon has a
        pool on their device), 'host' or 'device'; device: the GPU (this process's numbering)
        for device staging and for the block's tier, -1 for the tensors' own.  Returns one
        entry per item: None, or the kvtier exception it failed with (AlreadyExists for a
        cached key, LimitExceeded when the staging area could not hold it)."""
        batch = []
        for key, tensors in items:
            pairs = tensors.items() if isinstance(tensors, dict) else tensors
            batch.append((key, [(str(n), _put_source(t)) for n, t in pairs]))
        return self._put_batch(namespace, batch, staging, device, nf4_layout)

    def put_fusion(self, namespace, key, tensors, metadata=b""):
        """Store fusion state with the cached chunk `key`: named tensors (as for put) and
        opaque `metadata` bytes.  Replaces the chunk's previous fusion state; evicted,
        demoted and restored with the chunk.  Raises kvtier.NotFound if the chunk is not
        cached (put it first)."""
        items = tensors.items() if isinstance(tensors, dict) else tensors
        if isinstance(metadata, str):
            metadata = metadata.encode()
        self._put_fusion(namespace, key, [(str(n), _host_contiguous(t)) for n, t in items],
                         bytes(metadata))

    def add_embeddings(self, namespace, embeddings):
        """Index cached chunks by embedding: `embeddings` maps keys to {modality: vector}
        (any 1-D float array-like: list, numpy, torch).  All or nothing.  Raises
        kvtier.NotFound for a chunk that is not cached, kvtier.InvalidArgument for a vector
        whose dimension differs from the modality's (fixed by its first vector in the
        namespace), NaN/Inf or a zero vector."""
        chunks = {}
        for key, vectors in embeddings.items():
            if not isinstance(vectors, dict):
                raise TypeError("add_embeddings: expected {key: {modality: vector}}")
            chunks[key] = {str(m): _vector(v, "embedding '%s'" % m) for m, v in vectors.items()}
        self._add_embeddings(namespace, chunks)

    def search(self, namespace, queries, k=5, with_fusion=False, threshold=0.0):
        """Up to `k` cached chunks whose every queried modality reaches its cosine threshold,
        best first, as a list of kvtier.SearchHit(key, score, similarities).

        `queries` is {modality: vector} (each with `threshold`, weight 1) or a list of dicts
        {"modality": m, "vector": v, "threshold": t (default `threshold`), "weight": w
        (default 1)}.  with_fusion=True returns (hits, lease): a kvtier.Lease over the best
        hit's block when it has fusion state (lease[0].fusion), else None."""
        if isinstance(queries, dict):
            queries = [{"modality": m, "vector": v} for m, v in queries.items()]
        qs = []
        for q in queries:
            if not isinstance(q, dict) or "modality" not in q:
                raise TypeError("search: each query must be a dict with 'modality' and 'vector'")
            unknown = set(q) - {"modality", "vector", "values", "threshold", "weight"}
            if unknown:
                raise TypeError("search: unknown query fields %s" % sorted(unknown))
            m = str(q["modality"])
            v = q["vector"] if "vector" in q else q.get("values")
            if v is None:
                raise TypeError("search: query '%s' has no 'vector'" % m)
            qs.append((m, _vector(v, "query '%s'" % m), float(q.get("threshold", threshold)),
                       float(q.get("weight", 1.0))))
        hits, lease = self._search(namespace, qs, int(k), bool(with_fusion))
        names = [q[0] for q in qs]
        hits = [SearchHit(key, score, dict(zip(names, sims))) for key, score, sims in hits]
        return (hits, lease) if with_fusion else hits

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        if self.closed:
            return "<kvtier.Client closed>"
        return "<kvtier.Client %s session %d>" % (self.socket_path, self.session_id)
