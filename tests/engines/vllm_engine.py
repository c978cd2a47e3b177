"""One vLLM engine (CPU backend) in its own process, driven by JSON lines on stdin; each
command's result is one JSON line on stdout prefixed with "RESULT ".  Used by
tests/engines/test_vllm.py and bench/vllm_bench.py: every engine is a fresh process, as two
engines sharing kvtierd would be.

    python vllm_engine.py <model-dir> '<json options>'

options: {"connector": {...kv_connector_extra_config...} or null (no connector),
          "block_size": 32, "max_model_len": 2048, "prefix_caching": true}
commands:
    {"op": "generate", "prompts": [{"token_ids": [...], "cache_salt": "..."}],
     "max_tokens": 8, "logprobs": 5}
        -> {"outputs": [{"token_ids": [...], "logprobs": [{tok: lp}], "cached_tokens": n,
            "ttft_s": t}], "wall_s": t}
    {"op": "exit"}

Run it with LD_PRELOAD=<venv>/lib/libiomp5.so (vLLM's CPU backend wants Intel's OpenMP);
tests/engines/vllm_util.py sets the environment.
"""
import json
import os
import sys
import time


def main():
    model, opts = sys.argv[1], json.loads(sys.argv[2])
    from vllm import LLM, SamplingParams
    from vllm.config import KVTransferConfig

    kw = {}
    if opts.get("connector") is not None:
        kw["kv_transfer_config"] = KVTransferConfig(
            kv_connector="KvtierConnector", kv_connector_module_path="kvtier.vllm",
            kv_role="kv_both", kv_connector_extra_config=opts["connector"])
    t0 = time.monotonic()
    llm = LLM(model=model, dtype=opts.get("dtype", "bfloat16"),
              block_size=opts.get("block_size", 32),
              max_model_len=opts.get("max_model_len", 2048), enforce_eager=True,
              enable_prefix_caching=opts.get("prefix_caching", True),
              max_num_batched_tokens=opts.get("max_num_batched_tokens", 8192),
              seed=0, **kw)
    print("RESULT " + json.dumps({"ready": True, "load_s": time.monotonic() - t0}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "exit":
            break
        if cmd["op"] != "generate":
            print("RESULT " + json.dumps({"error": "unknown op %r" % cmd["op"]}), flush=True)
            continue
        sp = SamplingParams(max_tokens=cmd.get("max_tokens", 8), temperature=0.0,
                            logprobs=cmd.get("logprobs"), ignore_eos=True)
        prompts = []
        for p in cmd["prompts"]:
            pr = {"prompt_token_ids": p["token_ids"]}
            if p.get("cache_salt"):
                pr["cache_salt"] = p["cache_salt"]
            prompts.append(pr)
        t0 = time.monotonic()
        outs = llm.generate(prompts, sp, use_tqdm=False)
        wall = time.monotonic() - t0
        res = []
        for o in outs:
            c = o.outputs[0]
            lps = None
            if c.logprobs is not None:
                lps = [{str(t): lp.logprob for t, lp in d.items()} for d in c.logprobs]
            m = o.metrics
            ttft = None
            if m is not None and getattr(m, "first_token_latency", None):
                ttft = m.first_token_latency
            res.append({"token_ids": list(c.token_ids), "logprobs": lps,
                        "cached_tokens": o.num_cached_tokens, "ttft_s": ttft})
        print("RESULT " + json.dumps({"outputs": res, "wall_s": wall}), flush=True)
    # Shut the engine down in order: the workers' KV connectors see shutdown() (and log their
    # counters) instead of being killed with the process.
    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception as e:  # an older vLLM without it: the process exit does the rest
        print("engine shutdown: %r" % (e,), file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
