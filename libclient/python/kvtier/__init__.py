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
    Lease, LimitExceeded, NoSpace, NotFound, PermissionDenied, ProtocolError, Tensor,
    Unavailable, _chain_keys, _Client, default_socket_path)

import numpy as _np

__all__ = [
    "Client", "chain_keys", "Key", "Lease", "Block", "Tensor", "Error", "InvalidArgument",
    "NotFound", "NoSpace", "PermissionDenied", "ProtocolError", "Busy", "AlreadyExists",
    "IoError", "Unavailable", "Corrupt", "InternalError", "LimitExceeded",
    "default_socket_path",
]


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


class Client(_Client):
    """One connection to kvtierd.  Calls drop the GIL while they wait; a Client may be shared
    between threads (requests are serialised).

    Client(socket=None, name="", timeout_ms=30000): socket None means $KVTIER_SOCKET, else
    ./var/kvtier.sock, else /run/kvtier/kvtier.sock.  Raises kvtier.Unavailable if the
    daemon cannot be reached.
    """

    def put(self, namespace, key, tensors, nf4_layout=None):
        """Store one block: `tensors` maps names to tensors (dict, or (name, tensor) pairs) of
        numpy, torch (CPU or CUDA) or any DLPack/buffer-protocol object.  Contiguous host
        tensors are copied once, straight into the staging area.  `nf4_layout` ('row' or
        'column', or a dict name -> layout) picks NF4 scale blocks per token or per channel
        (use 'column' for keys) when the namespace is stored as NF4.
        Raises kvtier.AlreadyExists if the key is cached (blocks are immutable)."""
        items = tensors.items() if isinstance(tensors, dict) else tensors
        self._put(namespace, key, [(str(n), _host_contiguous(t)) for n, t in items], nf4_layout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        if self.closed:
            return "<kvtier.Client closed>"
        return "<kvtier.Client %s session %d>" % (self.socket_path, self.session_id)
