"""Starting and driving vllm_engine.py processes (tests/engines/test_vllm.py,
bench/vllm_bench.py)."""
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def engine_env(socket=None):
    env = dict(os.environ)
    iomp = Path(sys.prefix) / "lib" / "libiomp5.so"
    if iomp.exists():
        env["LD_PRELOAD"] = str(iomp)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of paged KV
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env["VLLM_LOGGING_LEVEL"] = "INFO"  # the connector logs its namespace and counters
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    if socket is not None:
        env["KVTIER_SOCKET"] = socket
    return env


class Engine:
    """A fresh vLLM engine process; generate() sends one command and waits for its result."""

    def __init__(self, model, connector=None, socket=None, log=None, **opts):
        opts["connector"] = connector
        self.log = open(log, "ab") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "vllm_engine.py"), str(model), json.dumps(opts)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
            env=engine_env(socket), text=True, bufsize=1)
        self.ready = self._result()

    def _result(self):
        for line in self.proc.stdout:
            if line.startswith("RESULT "):
                return json.loads(line[len("RESULT "):])
            if self.log is not subprocess.DEVNULL:  # vLLM logs to stdout
                self.log.write(line.encode())
                self.log.flush()
        raise RuntimeError("vLLM engine exited (rc %s); see its log" % self.proc.wait())

    def generate(self, prompts, max_tokens=8, logprobs=None):
        """prompts: list of token-id lists or dicts {"token_ids", "cache_salt"}."""
        ps = [p if isinstance(p, dict) else {"token_ids": list(p)} for p in prompts]
        self.proc.stdin.write(json.dumps({"op": "generate", "prompts": ps,
                                          "max_tokens": max_tokens, "logprobs": logprobs}) + "\n")
        self.proc.stdin.flush()
        return self._result()

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(60)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        if self.log is not subprocess.DEVNULL:
            self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
