"""Measures what NF4 KV does to the tiny model's logits over many prompts: the data behind
the bound test_kv_reuse.py asserts (docs/python.md, "The NF4 bound").  Not a test; run:

    PYTHONPATH=build/libclient/python KVTIERD=build/daemon/kvtierd \
        /usr/bin/python3 tests/python/nf4_sweep.py [--prompts 20] [--qk-scale 1.0]

--qk-scale multiplies the query and key projections (2.0 = attention logits 4x larger, much
sharper attention) to show how the error grows with attention sharpness.  Runs the same
roles as kv_reuse_proc.py, in this one process.
"""
import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).parent))
import kv_reuse_proc  # noqa: E402
import tiny_model  # noqa: E402
from conftest import Daemon  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--prompts", type=int, default=20)
    p.add_argument("--qk-scale", type=float, default=1.0)
    args = p.parse_args()
    tiny_model.deterministic()
    model = tiny_model.TinyLM()
    with torch.no_grad():
        for layer in model.layers:
            layer.attn.qkv.weight[: 2 * model.cfg.d_model].mul_(args.qk_scale)
    d = Daemon(host_bytes=1 << 30)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for seed in range(args.prompts):
                a = SimpleNamespace(seed=seed, model_seed=1000 + seed, len_a=320, len_b=400,
                                    shared=288, chunk=64, new_tokens=32, socket=d.socket,
                                    ref=str(Path(tmp) / "ref.pt"), kv=str(Path(tmp) / "kv.pt"))
                ref = kv_reuse_proc.reference(a, model)
                kv_reuse_proc.prefill(a, model)
                r = kv_reuse_proc.reuse(a, model)["nf4"]
                r["distinct"] = len(set(ref["tokens"]))
                rows.append(r)
                print("prompt %2d: distinct %2d first %-5s free %.3f tf %.3f first-diff %.4f "
                      "tf-diff %.4f std %.2f kv-err %.4f" % (
                          seed, r["distinct"], r["first_token_equal"], r["free_agreement"],
                          r["tf_agreement"], r["first_logits_max_diff"],
                          r["tf_logits_max_diff"], r["logit_std"], r["kv_rel_rms_err"]),
                      flush=True)
    finally:
        d.stop()
    for key in ("first_logits_max_diff", "tf_logits_max_diff", "tf_agreement", "free_agreement",
                "kv_rel_rms_err"):
        vals = [r[key] for r in rows]
        print("%-22s min %.4f median %.4f max %.4f" % (key, min(vals), statistics.median(vals),
                                                        max(vals)))
    print("first token equal in %d of %d prompts" % (sum(r["first_token_equal"] for r in rows),
                                                     len(rows)))


if __name__ == "__main__":
    main()
