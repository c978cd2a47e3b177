"""vLLM with and without kvtier: time to first token on vLLM's CPU backend for prompts of 1k,
4k and 8k tokens (SmolLM2-135M-Instruct, real English text), same run, printed as ratios; and
the connector's own cost per token loaded and saved next to kvtierd's get and put time.

    KVTIERD=build/daemon/kvtierd PYTHONPATH=build/libclient/python \\
        /opt/kvtier-engine/venv/bin/python bench/vllm_bench.py [--sizes 1024,4096,8192]

Three fresh engine processes, one after the other:
  base   no connector: every prompt computed (TTFT = generate(max_tokens=1) wall time);
  store  the connector on an empty kvtierd: the miss path (lookup, then saves of every chunk);
  load   a fresh engine, same prompts plus one new token: the prefix comes from kvtierd.
vLLM's own prefix cache is off so that each engine's TTFT is what its first request costs.
Figures are in docs/benchmarks.md and docs/vllm.md.
"""
import argparse
import ast
import os
import re
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
    ap.add_argument("--sizes", default="1024,4096,8192")
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--codec", default="fp16", choices=["fp16", "nf4"])
    ap.add_argument("--logs", default="/tmp/kvtier-vllm-bench")
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
    opts = dict(block_size=32, max_model_len=max(sizes) + 64, prefix_caching=False,
                max_num_batched_tokens=max(sizes) + 64)

    def ttfts(engine, ps):
        out = []
        for p in ps:
            r = engine.generate([p], max_tokens=1)
            out.append(r["wall_s"])
        return out

    print("model %s, chunk %d tokens, %s namespace, block 32, vLLM CPU backend"
          % (Path(args.model).name, args.chunk, args.codec))
    with Engine(args.model, None, log=logs / "base.log", **opts) as e:
        e.generate([prompts[0][:64]], max_tokens=1)  # warm-up
        base = ttfts(e, prompts)

    d = Daemon(rules=(("", args.codec),), host_bytes=2 << 30, staging_bytes=256 << 20)
    try:
        conn = {"socket": d.socket, "chunk_tokens": args.chunk}
        with Engine(args.model, conn, log=logs / "store.log", **opts) as e:
            e.generate([prompts[0][:64]], max_tokens=1)
            store = ttfts(e, prompts)
        time.sleep(1.0)
        with kvtier.Client(d.socket) as c:
            s0 = c.stats()
        # The same prompts plus one token: everything but the last chunk's tail is cached.
        loaded_prompts = [p + [p[0]] for p in prompts]
        with Engine(args.model, conn, log=logs / "load.log", **opts) as e:
            e.generate([prompts[0][:64]], max_tokens=1)
            load = ttfts(e, loaded_prompts)
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
          "| TTFT cached prefix | speed-up (no connector / cached) | miss overhead |")
    print("|---|---|---|---|---|---|")
    for n, b, s, l in zip(sizes, base, store, load):
        print("| %d | %.3f s | %.3f s | %.3f s | %.1fx | %+.1f%% |"
              % (n, b, s, l, b / l, 100.0 * (s - b) / b))
    print("\nlookup of a %d-key chain that misses: %.1f us p50 (%.4f%% of the %d-token TTFT)"
          % (len(keys), lookup_s * 1e6, 100.0 * lookup_s / base[-1], sizes[-1]))

    store_c = _counters(logs / "store.log")
    load_c = _counters(logs / "load.log")
    tokens_loaded = load_c.get("loaded_blocks", 0) * 32
    tokens_saved = store_c.get("saved_chunks", 0) * args.chunk
    lat0, lat1 = s0["latency"], s1["latency"]
    get_s = lat1["get"]["sum"] - lat0["get"]["sum"]
    put_s = s0["latency"]["put_begin"]["sum"] + s0["latency"]["seal"]["sum"]
    if tokens_loaded:
        print("load: %d tokens; connector %.2f us/token (lease, checksum, copy into the paged "
              "blocks); kvtierd get %.3f us/token" % (tokens_loaded,
                                                       1e6 * load_c["load_s"] / tokens_loaded,
                                                       1e6 * get_s / tokens_loaded))
    if tokens_saved:
        print("save: %d tokens; connector %.2f us/token (gather + put, off the step: %s); "
              "kvtierd put_begin+seal %.3f us/token"
              % (tokens_saved, 1e6 * store_c["save_s"] / tokens_saved, "background thread",
                 1e6 * put_s / tokens_saved))


def _counters(log):
    """The connector's counters, which the worker logs at shutdown."""
    found = re.findall(r"kvtier: counters (\{.*\})", Path(log).read_text())
    return ast.literal_eval(found[-1]) if found else {}


if __name__ == "__main__":
    main()
