"""What NF4 would cost on Mamba state, and what chunk-by-chunk prefill costs (docs/python.md,
"transformers"); prints two tables.  Not a CTest test (a measurement, ~1 min):

    PYTHONPATH=build/libclient/python KVTIERD=build/daemon/kvtierd \\
        /opt/kvtier-engine/venv/bin/python tests/engines/hf_state_nf4.py [prompts]

Part 1, per model and storage: prompt B continues from the blocks prompt A stored (48 of 80
tokens cached), compared with a run without kvtier over 32 greedy tokens: first-step logits
max difference, teacher-forced top-1 agreement (both fed the reference's tokens), the
free-running tokens equal before the first divergence, and the stored state's relative RMS
error.  Storage: lossless; NF4 namespace with state raw (the default); NF4 namespace with
state_codec="namespace" (state quantized too).
"""
import inspect
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python"))
sys.path.insert(0, str(HERE))
from kvtier_daemon import Daemon  # noqa: E402

import kvtier  # noqa: E402
from kvtier import hf  # noqa: E402

import hf_models as M  # noqa: E402

STEPS = 32


def forward_logits(model, ids, cache=None, start=0):
    """Logits of every position of ids[:, start:], from `cache` holding ids[:, :start]."""
    kw = {}
    if cache is not None:
        params = inspect.signature(model.forward).parameters
        kw["cache_params" if "cache_params" in params else "past_key_values"] = cache
        kw["use_cache"] = True
        if "position_ids" in params:  # Bamba counts positions from 0 without them
            kw["position_ids"] = torch.arange(start, ids.shape[1])[None]
    with torch.no_grad():
        return model(ids[:, start:], **kw).logits[0]


def state_error(client, model, ns_raw, ns_q, ids):
    """Relative RMS error of the stored state of the last cached chunk, NF4 vs exact."""
    cache_q, _ = hf.load_prefix(client, ns_q, ids, model)
    cache_r, _ = hf.load_prefix(client, ns_raw, ids, model)
    num = den = 0.0
    for lq, lr in zip(cache_q.layers, cache_r.layers):
        if hasattr(lr, "conv_states") and lr.is_conv_states_initialized[0]:
            for q, r in ((lq.conv_states[0], lr.conv_states[0]),
                         (lq.recurrent_states[0], lr.recurrent_states[0])):
                num += float((q - r).pow(2).sum())
                den += float(r.pow(2).sum())
    return (num / den) ** 0.5 if den else 0.0


def measure(client, kind, prompts):
    model = M.build(kind)
    rows = {}
    storages = (("lossless", "", "raw"), ("NF4, state raw", "nf4/", "raw"),
                ("NF4, state NF4", "nf4/", "namespace"))
    for label, prefix, state_codec in storages:
        diffs, agree, free, errs = [], [], [], []
        for p in range(prompts):
            ns = hf.namespace(model, salt="m%d%s" % (p, state_codec), codec_prefix=prefix,
                              chunk_tokens=16)
            a, b = M.prompts(seed=p)
            hf.prefill(client, ns, a, model, state_codec=state_codec)
            ref_tokens, ref_logits = M.generate(model, b, new_tokens=STEPS)
            cache, n = hf.load_prefix(client, ns, b, model)
            tokens, logits = M.generate(model, b, cache, n, new_tokens=STEPS)
            diffs.append(float((logits - ref_logits).abs().max()))
            free.append(next((i for i, (x, y) in enumerate(zip(tokens, ref_tokens)) if x != y),
                             STEPS))
            # Teacher forcing: both see b + the reference's tokens.
            forced = torch.cat([b, torch.tensor([ref_tokens[:-1]])], 1)
            want = forward_logits(model, forced)[b.shape[1] - 1:].argmax(-1)
            cache, n = hf.load_prefix(client, ns, b, model)
            got = forward_logits(model, forced, cache, n)[b.shape[1] - 1 - n:].argmax(-1)
            agree.append(float((got == want).float().mean()))
            if prefix:
                raw_ns = hf.namespace(model, salt="m%draw" % p, chunk_tokens=16)
                hf.prefill(client, raw_ns, a, model)
                errs.append(state_error(client, model, raw_ns, ns, b))
        rows[label] = (diffs, agree, free, errs)
    return rows


def mmm(xs, fmt):
    if not xs:
        return "-"
    return " / ".join(fmt % v for v in (min(xs), statistics.median(xs), max(xs)))


def prefill_cost(client, kind, length=512):
    """ms: one forward over the prompt vs kvtier.hf.prefill per chunk (with its puts)."""
    model = M.build(kind)
    ids = torch.randint(0, M.VOCAB, (1, length + 1), generator=torch.Generator().manual_seed(9))
    out = {}
    with torch.no_grad():
        model(ids[:, :64])  # warm up
        t = time.perf_counter()
        model(ids[:, :length], use_cache=True)
        out["one forward"] = (time.perf_counter() - t) * 1e3
    params = inspect.signature(model.forward).parameters
    cache_kw = "cache_params" if "cache_params" in params else "past_key_values"
    for chunk in (16, 64, 256):
        cache = transformers.DynamicCache(config=model.config)
        t = time.perf_counter()
        with torch.no_grad():
            for lo in range(0, length, chunk):
                kw = {cache_kw: cache, "use_cache": True}
                if "position_ids" in params:
                    kw["position_ids"] = torch.arange(lo, lo + chunk)[None]
                model(ids[:, lo:lo + chunk], **kw)
        out["forwards of %d tokens, no kvtier" % chunk] = (time.perf_counter() - t) * 1e3
        ns = hf.namespace(model, salt="cost%d" % time.monotonic_ns(), chunk_tokens=chunk)
        t = time.perf_counter()
        hf.prefill(client, ns, ids, model)
        out["prefill, %d-token chunks" % chunk] = (time.perf_counter() - t) * 1e3
    return out


def main():
    prompts = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    torch.set_num_threads(1)
    d = Daemon(host_bytes=512 << 20)
    try:
        with kvtier.Client(d.socket, name="hf-state-nf4") as client:
            print("| model | storage | first-step logits max diff | teacher-forced top-1 | "
                  "free-running tokens equal (of %d) | state rel. RMS error |" % STEPS)
            print("|---|---|---|---|---|---|")
            for kind in ("mamba2", "bamba"):
                for label, (diffs, agree, free, errs) in measure(client, kind, prompts).items():
                    print("| %s | %s | %s | %s | %s | %s |" % (
                        kind, label, mmm(diffs, "%.2g"), mmm(agree, "%.3f"), mmm(free, "%d"),
                        mmm(errs, "%.3f")))
            print("\n(min / median / max over %d prompts; logit std ~2)\n" % prompts)
            print("| model | 512-token prompt | ms |")
            print("|---|---|---:|")
            for kind in ("llama", "mamba2", "bamba"):
                for label, ms in prefill_cost(client, kind).items():
                    print("| %s | %s | %.0f |" % (kind, label, ms))
    finally:
        d.stop()


if __name__ == "__main__":
    main()
