"""Time to first token of the tiny model (tests/python/tiny_model.py) for a long prompt, with
and without a kvtier hit, and the time spent inside kvtier per GB of KV next to torch.clone
of the same bytes.  Prints its figures; everything is measured in this run.

    PYTHONPATH=build/libclient/python KVTIERD=build/daemon/kvtierd \
        /usr/bin/python3 bench/python/ttft_bench.py [--tokens 4096] [--big-mib 1024]

Starts a private kvtierd (lossless namespace "bench/...", NF4 namespace "nf4/bench/...").
"kvtier time" = lookup + get (lease) + one torch tensor per leased tensor (torch.from_dlpack,
zero-copy): what it costs to have every cached KV tensor in hand as a torch tensor.  The
model then needs the chunks contiguous per layer ("assemble": one copy, or the NF4 decode).
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests/python"))
import tiny_model  # noqa: E402
from conftest import Daemon  # noqa: E402  (starts a private kvtierd)

import kvtier  # noqa: E402
from kvtier import hf  # noqa: E402


def median_time(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def kvtier_access(client, ns, keys):
    """lookup + lease + a torch tensor per leased tensor; returns (lease, tensors)."""
    n = client.lookup(ns, keys)
    lease = client.get(ns, keys[:n])
    tensors = [torch.from_dlpack(b[name]) for b in lease for name in b]
    return lease, tensors


def access_per_gb(client, ns, keys, repeat):
    lease, tensors = kvtier_access(client, ns, keys)
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    clone = median_time(lambda: [t.clone() for t in tensors], repeat)
    lease.release()
    del tensors

    def once():
        lease, ts = kvtier_access(client, ns, keys)
        del ts
        lease.release()
    access = median_time(once, repeat)
    return nbytes, access, clone, len(keys)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--big-mib", type=int, default=1024,
                   help="also lease this much synthetic KV (4 MiB blocks) for the per-GB figure")
    args = p.parse_args()
    tiny_model.deterministic(args.threads)
    model = tiny_model.TinyLM()
    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, cfg.vocab, (args.tokens,), generator=g).tolist()
    daemon = Daemon(host_bytes=(args.big_mib + 512) << 20, staging_bytes=64 << 20)
    try:
        client = kvtier.Client(daemon.socket, name="ttft-bench")
        ns, ns4 = "bench/tiny/fp32/v1", "nf4/bench/tiny/fp32/v1"
        ids = torch.tensor([prompt])

        def cold():
            logits, _ = model(ids)
            return int(logits[0, -1].argmax())
        first = cold()
        t_cold = median_time(cold, args.repeat)

        _, present = model(ids)
        t0 = time.perf_counter()
        nblocks = hf.save_prefix(client, ns, prompt, present, args.chunk)
        t_save = time.perf_counter() - t0
        hf.save_prefix(client, ns4, prompt, present, args.chunk)
        kv_bytes = sum(k.numel() * k.element_size() * 2 for k, _ in present) * \
            (nblocks * args.chunk) / args.tokens

        def warm(namespace):
            hit = hf.load_prefix(client, namespace, prompt, args.chunk, max_tokens=len(prompt) - 1)
            logits, _ = model(ids[:, hit.num_tokens:], hit.past_key_values)
            return int(logits[0, -1].argmax()), hit.num_tokens
        tok, cached = warm(ns)
        assert tok == first, "lossless hit changed the first token"
        t_warm = median_time(lambda: warm(ns), args.repeat)
        t_warm4 = median_time(lambda: warm(ns4), args.repeat)

        # Breakdown of a hit.
        keys = kvtier.chain_keys(ns, prompt, args.chunk)[: (len(prompt) - 1) // args.chunk]
        t_lookup = median_time(lambda: client.lookup(ns, keys), args.repeat * 4)

        def lease_only():
            client.get(ns, keys).release()
        t_lease = median_time(lease_only, args.repeat)
        t_access = median_time(lambda: kvtier_access(client, ns, keys)[0].release(), args.repeat)
        t_load = median_time(lambda: hf.load_prefix(client, ns, prompt, args.chunk,
                                                    max_tokens=len(prompt) - 1), args.repeat)
        t_load4 = median_time(lambda: hf.load_prefix(client, ns4, prompt, args.chunk,
                                                     max_tokens=len(prompt) - 1), args.repeat)
        hit = hf.load_prefix(client, ns, prompt, args.chunk, max_tokens=len(prompt) - 1)
        rest = ids[:, hit.num_tokens:]
        t_rest = median_time(lambda: model(rest, hit.past_key_values), args.repeat)

        print("tiny model: %d layers, d_model %d, %d heads, fp32 KV; prompt %d tokens, chunks of "
              "%d; torch %s, %d thread(s)" % (cfg.n_layers, cfg.d_model, cfg.n_heads, args.tokens,
                                             args.chunk, torch.__version__, args.threads))
        print("cached prefix %d tokens = %d blocks, %.1f MB of KV (stored in %.0f ms)" % (
            cached, nblocks, kv_bytes / 1e6, t_save * 1e3))
        print()
        print("| time to first token | ms |")
        print("|---|---:|")
        print("| no hit (prefill %d tokens) | %.1f |" % (args.tokens, t_cold * 1e3))
        print("| lossless hit (load %d tokens, prefill %d) | %.1f |" % (
            cached, args.tokens - cached, t_warm * 1e3))
        print("| NF4 hit (decode %d tokens, prefill %d) | %.1f |" % (
            cached, args.tokens - cached, t_warm4 * 1e3))
        print("| speed-up, lossless / NF4 | %.1fx / %.1fx |" % (t_cold / t_warm, t_cold / t_warm4))
        print()
        print("| lossless hit, part | ms |")
        print("|---|---:|")
        print("| lookup (1 round trip, %d keys) | %.3f |" % (len(keys), t_lookup * 1e3))
        print("| get = lease %d blocks (+ release) | %.3f |" % (len(keys), t_lease * 1e3))
        print("| lookup + lease + %d torch tensors (from_dlpack) | %.3f |" % (
            len(keys) * 2 * cfg.n_layers, t_access * 1e3))
        print("| hf.load_prefix (the above + assemble contiguous KV) | %.3f |" % (t_load * 1e3))
        print("| hf.load_prefix, NF4 (decode instead of copy) | %.3f |" % (t_load4 * 1e3))
        print("| prefill of the remaining %d tokens | %.3f |" % (rest.shape[1], t_rest * 1e3))
        print()

        rows = [("model KV", access_per_gb(client, ns, keys, args.repeat))]
        if args.big_mib:
            big = "bench/synthetic"
            bkeys = kvtier.chain_keys(big, range(args.big_mib // 4), 1)
            block = {"t.%d" % i: torch.full((512, 512), float(i)) for i in range(4)}  # 4 x 1 MiB
            for k in bkeys:
                client.put(big, k, block)
            rows.append(("synthetic, 4 MiB blocks", access_per_gb(client, big, bkeys, args.repeat)))
        print("| KV leased | blocks | GB | kvtier (lookup+lease+tensors) s/GB | torch.clone s/GB "
              "| clone / kvtier |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, (nbytes, access, clone, n) in rows:
            gb = nbytes / 1e9
            print("| %s | %d | %.3f | %.5f | %.4f | %.0fx |" % (
                name, n, gb, access / gb, clone / gb, clone / access))
    finally:
        daemon.stop()


if __name__ == "__main__":
    main()
