"""vLLM with and without kvtier: time to first token on vLLM's CPU backend for prompts of 1k,
4k and 8k tokens (8128: SmolLM2-135M-Instruct has 8192 positions; real English text), same
run, printed as ratios; and
the connector's own cost per token loaded and saved next to kvtierd's get and put time.

    KVTIERD=build/daemon/kvtierd PYTHONPATH=build/libclient/python \\
        /opt/kvtier-engine/venv/bin/python bench/vllm_bench.py [--sizes 1024,4096,8128]

Two engine processes alive at once, used one request at a time (alternating, so that both
see the same machine state):
  base   no connector: every prompt computed (TTFT = generate(max_tokens=1) wall time);
  conn   the connector on kvtierd.  Miss: the prompt under a cache_salt never seen (a tenant
         whose namespace is empty: lookup, then saves of every chunk).  Hit: the same prompt
         plus one new token under a salt whose chunks an earlier miss saved.
Each size is measured --reps times (medians; each rep a fresh salt).  vLLM's own prefix
cache is off so that every TTFT is a full computation of what kvtier does not provide.
Figures are in docs/benchmarks.md and docs/vllm.md.
"""
import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "python"))
sys.path.insert(0, str(REPO / "tests" / "engines"))

from kvtier_daemon import Daemon  # noqa: E402
from vllm_util import Engine  # noqa: E402

import kvtier  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(Path(sys.prefix).parent / "models" / "smollm2-135m"))
    ap.add_argument("--sizes", default="1024,4096,8128")
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--codec", default="fp16", choices=["fp16", "nf4"])
    ap.add_argument("--logs", default="/tmp/kvtier-vllm-bench")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model)
    text = Path("/usr/share/common-licenses/GPL-3").read_text()
    text += Path("/usr/share/common-licenses/Apache-2.0").read_text()
    text += Path("/usr/lib/python3.11/difflib.py").read_text()
    ids = tok(text, add_special_tokens=False)["input_ids"]
    # One prompt per size, disjoint, so no engine reuses another prompt's prefix.
    prompts, at = [], 0
    for n in sizes:
        if at + n + 1 > len(ids):
            at = 0
        prompts.append(ids[at:at + n])
        at += n
    # SmolLM2 has 8192 positions: the largest prompt plus its extra token must fit.
    config = json.loads((Path(args.model) / "config.json").read_text())
    positions = config["max_position_embeddings"]
    if max(sizes) + 1 > positions:
        sys.exit("prompts must leave room for one more token: the model has %d positions" % positions)
    max_len = min(max(sizes) + 64, positions)
    opts = dict(block_size=32, max_model_len=max_len, prefix_caching=False,
                max_num_batched_tokens=max_len)

    cached = {}

    def ttft(engine, prompt, salt):
        r = engine.generate([{"token_ids": prompt, "cache_salt": salt}], max_tokens=1)
        cached[len(prompt)] = r["outputs"][0]["cached_tokens"]
        return r["wall_s"]

    print("model %s, chunk %d tokens, %s namespace, block 32, vLLM CPU backend, %d reps"
          % (Path(args.model).name, args.chunk, args.codec, args.reps))
    d = Daemon(rules=(("", args.codec),), host_bytes=4 << 30, staging_bytes=256 << 20)
    # The connector writes its counters here (read at the end: cost per token loaded/saved).
    counters_dir = logs / "counters"
    counters_dir.mkdir(parents=True, exist_ok=True)
    for f in counters_dir.glob("*.json"):
        f.unlink()
    os.environ["KVTIER_VLLM_COUNTERS_DIR"] = str(counters_dir)
    base, store, load = ([[] for _ in sizes] for _ in range(3))
    try:
        conn = {"socket": d.socket, "chunk_tokens": args.chunk}
        with Engine(args.model, None, log=logs / "base.log", **opts) as b, \
                Engine(args.model, conn, log=logs / "conn.log", **opts) as e:
            for eng in (b, e):  # warm-up, a salt of its own
                eng.generate([{"token_ids": prompts[0][:64], "cache_salt": "warm"}],
                             max_tokens=1)
            for r in range(args.reps):
                for i, p in enumerate(prompts):
                    salt = "rep%d" % r
                    base[i].append(ttft(b, p, salt))
                    store[i].append(ttft(e, p, salt))  # a miss: nothing under this salt yet
                time.sleep(1.0)  # the saves run on the connector's background thread
                for i, p in enumerate(prompts):
                    # The same prompt plus one token: all but the last chunk's tail cached.
                    load[i].append(ttft(e, p + [p[0]], "rep%d" % r))
        with kvtier.Client(d.socket) as c:
            s1 = c.stats()
            # A miss costs one lookup round trip of the chain: timed here, same daemon.
            miss_ns = "vllm-bench/miss"
            keys = kvtier.chain_keys(miss_ns, prompts[-1], args.chunk)
            ts = []
            for _ in range(200):
                t0 = time.perf_counter()
                c.lookup(miss_ns, keys)
                ts.append(time.perf_counter() - t0)
            lookup_s = statistics.median(ts)
    finally:
        d.stop()

    print("\n| prompt tokens | TTFT no connector | TTFT connector, miss (lookup + save) "
          "| TTFT cached prefix (+1 token) | tokens loaded / computed | speed-up (no connector "
          "/ cached) | miss overhead |")
    print("|---|---|---|---|---|---|---|")
    med = statistics.median
    for n, b, s, l in zip(sizes, base, store, load):
        hit = cached.get(n + 1, 0)
        print("| %d | %.3f s | %.3f s | %.3f s | %d / %d | %.1fx | %+.1f%% |"
              % (n, med(b), med(s), med(l), hit, n + 1 - hit, med(b) / med(l),
                 100.0 * (med(s) - med(b)) / med(b)))
    print("\nper rep (base / miss / hit, s):")
    for n, b, s, l in zip(sizes, base, store, load):
        print("  %d: %s" % (n, "; ".join("%.3f / %.3f / %.3f" % t for t in zip(b, s, l))))
    print("\nlookup of a %d-key chain that misses: %.1f us p50 (%.4f%% of the %d-token TTFT)"
          % (len(keys), lookup_s * 1e6, 100.0 * lookup_s / med(base[-1]), sizes[-1]))

    c_all = _counters(counters_dir)
    tokens_loaded = c_all.get("loaded_blocks", 0) * 32
    tokens_saved = c_all.get("saved_chunks", 0) * args.chunk
    lat1 = s1["latency"]
    get_s = lat1["get"]["sum"]
    put_s = sum(lat1.get(k, {}).get("sum", 0.0)
                for k in ("put_begin", "seal", "put_batch", "seal_batch"))
    if tokens_loaded:
        print("load: %d tokens; connector %.2f us/token (lease, checksum, copy into the paged "
              "blocks); kvtierd get %.3f us/token" % (tokens_loaded,
                                                       1e6 * c_all["load_s"] / tokens_loaded,
                                                       1e6 * get_s / tokens_loaded))
    if tokens_saved:
        print("save: %d tokens; connector %.2f us/token (gather + put, off the step: %s); "
              "kvtierd put requests (begin+seal or batch) %.3f us/token"
              % (tokens_saved, 1e6 * c_all["save_s"] / tokens_saved, "background thread",
                 1e6 * put_s / tokens_saved))


def _counters(d):
    """The connector's counters, summed over the processes that wrote them
    ($KVTIER_VLLM_COUNTERS_DIR: the worker after each load and save)."""
    total = {}
    for f in Path(d).glob("*.json"):
        for k, v in json.loads(f.read_text()).items():
            total[k] = total.get(k, 0) + v
    return total


if __name__ == "__main__":
    main()
