"""The vLLM connector (kvtier.vllm) end to end: real vLLM engines (CPU backend), each a fresh
process, with a real trained model (SmolLM2-135M-Instruct), sharing prefixes through one
kvtierd.

    base: an engine with no connector computes every prompt (the reference tokens);
    A:    an engine with the connector stores the prefixes (lossless and NF4 tenants);
    B:    a fresh engine gets the same prefixes with other suffixes: its scheduler reports
          the cached tokens, kvtierd counts the hits, lossless tokens equal base's; another
          cache_salt does not hit; a corrupt block and a dead kvtierd are recomputed.
"""
import mmap
import os
import re
import time
from pathlib import Path

import pytest

import kvtier
from kvtier_daemon import Daemon
from vllm_util import Engine

CHUNK = 128
MAX_TOKENS = 12


def _tokens(model_dir, path, n, skip=0):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(Path(path).read_text(), add_special_tokens=False)["input_ids"]
    assert len(ids) >= skip + n, "%s is too short" % path
    return ids[skip:skip + n]


def _shm_offset(ptr):
    """(file, offset) of the shared-memory file mapped at address `ptr` in this process."""
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= ptr < hi and len(parts) >= 6 and parts[5].startswith("/dev/shm/"):
                return parts[5], ptr - lo + int(parts[2], 16)
    raise AssertionError("address %#x is not in a /dev/shm mapping" % ptr)


def _counters(sock):
    with kvtier.Client(sock) as c:
        return c.stats()["counters"]


@pytest.fixture(scope="module")
def setup(smollm2, tmp_path_factory):
    from kvtier.vllm import KvtierVllmConfig  # noqa: F401 - importable in the venv

    logs = tmp_path_factory.mktemp("vllm-logs")
    gpl = _tokens(smollm2, "/usr/share/common-licenses/GPL-3", 3000)
    code = _tokens(smollm2, "/usr/lib/python3.11/difflib.py", 1400)
    prefix = gpl[:5 * CHUNK]  # 640 tokens: 5 chunks, 20 vLLM blocks
    prompts = {
        "p1": prefix + gpl[900:930],           # stored by A
        "p2": prefix + gpl[1200:1240],          # loaded by B (the same 640-token prefix)
        "c1": code[:600] + gpl[2000:2020],      # stored by A, corrupted, loaded by B
        "c2": code[:600] + gpl[2100:2130],
        "d1": code[700:1300] + gpl[2200:2220],  # stored by A, B asks after kvtierd died
        "d2": code[700:1300] + gpl[2300:2330],
    }
    return {"logs": logs, "prompts": prompts}


def test_two_engines_share_a_prefix(setup, smollm2):
    P = setup["prompts"]
    logs = setup["logs"]
    opts = dict(block_size=32, max_model_len=2048)

    # Reference: no connector at all.  Floating-point results on the CPU depend on how
    # tokens are batched (GEMM shapes), so the reference repeats each computation's shape: A's
    # batch first, then the prefix reused through vLLM's own prefix cache where B reuses it
    # through kvtier, and full prefills (a fresh cache_salt) where B computes everything.
    with Engine(smollm2, None, log=logs / "base.log", **opts) as base:
        base.generate(_a_batch(P), max_tokens=4)
        ref = {}
        for name, prompt in (("p2", P["p2"]),
                             ("p2_full", {"token_ids": P["p2"], "cache_salt": "fresh-1"}),
                             ("c2_full", {"token_ids": P["c2"], "cache_salt": "fresh-2"}),
                             ("d2_full", {"token_ids": P["d2"], "cache_salt": "fresh-3"})):
            ref[name] = base.generate([prompt], max_tokens=MAX_TOKENS, logprobs=1)["outputs"][0]
            if name == "p2":
                assert ref[name]["cached_tokens"] == 5 * CHUNK  # vLLM's own prefix cache

    # kvtierd: everything lossless but the tenant whose cache_salt is "nf4-tenant": its
    # namespace (the engine's model, geometry and a digest of the salt) is stored in NF4, a
    # rule an operator writes from what kvtierctl ls shows.
    nf4_ns = _smollm2_namespaces(smollm2).of("nf4-tenant")
    d = Daemon(rules=(("", "fp16"), (nf4_ns, "nf4")), host_bytes=512 << 20)
    try:
        conn = {"socket": d.socket, "chunk_tokens": CHUNK}
        with Engine(smollm2, conn, log=logs / "a.log", **opts) as a:
            out = a.generate(_a_batch(P), max_tokens=4)
            assert all(o["cached_tokens"] == 0 for o in out["outputs"])
        c0 = _counters(d.socket)
        # 640 + 30 = 670 tokens: 5 complete chunks; 620: 4; 620: 4; 670: 5.
        assert c0["puts"] == 5 + 4 + 4 + 5, c0

        # Corrupt one byte of c1's first chunk in the host tier's shared memory.
        ns = _namespace_from_log(logs / "a.log")
        assert ns == _smollm2_namespaces(smollm2).of(None)
        keys = kvtier.chain_keys(ns, P["c1"], CHUNK)
        with kvtier.Client(d.socket) as c:
            assert c.lookup(ns, keys) == 4
            with c.get(ns, [keys[0]]) as lease:
                t = lease[0]["v.7"]
                path, off = _shm_offset(t.data_ptr + 100)
            with open(path, "r+b") as f:
                m = mmap.mmap(f.fileno(), 0)
                m[off] ^= 0x40
                m.close()

        with Engine(smollm2, conn, log=logs / "b.log", **opts) as b:
            # The shared prefix: 5 chunks = 640 tokens from kvtier, identical tokens.
            before = _counters(d.socket)
            r = b.generate([P["p2"]], max_tokens=MAX_TOKENS, logprobs=1)["outputs"][0]
            after = _counters(d.socket)
            assert r["cached_tokens"] == 5 * CHUNK
            assert after["get_hits"] - before["get_hits"] == 5
            assert r["token_ids"] == ref["p2"]["token_ids"]

            # The NF4 tenant: loads as much, tokens close to the reference (reported).
            r = b.generate([{"token_ids": P["p2"], "cache_salt": "nf4-tenant"}],
                           max_tokens=MAX_TOKENS, logprobs=1)["outputs"][0]
            assert r["cached_tokens"] == 5 * CHUNK
            with kvtier.Client(d.socket) as c:
                assert c.stats()["codec"]["nf4_tensors"] == 5 * 30 * 2
            agree, maxdiff = _agreement(ref["p2"], r)
            print("NF4 namespace: %d/%d greedy tokens equal the reference; max |logprob "
                  "difference| of the greedy token before divergence %.4f" %
                  (agree, MAX_TOKENS, maxdiff))
            assert len(r["token_ids"]) == MAX_TOKENS

            # Another tenant's salt: no hit, nothing loaded.
            before = _counters(d.socket)
            r = b.generate([{"token_ids": P["p2"], "cache_salt": "tenant-b"}],
                           max_tokens=MAX_TOKENS)["outputs"][0]
            after = _counters(d.socket)
            assert r["cached_tokens"] == 0
            assert after["lookup_hits"] == before["lookup_hits"]
            assert after["get_hits"] == before["get_hits"]
            assert r["token_ids"] == ref["p2_full"]["token_ids"]

            # A corrupt block: the first chunk fails its checksum; vLLM recomputes the prompt
            # and the answer is right.  (A failure after loaded chunks: test_vllm_parts.py.)
            r = b.generate([P["c2"]], max_tokens=MAX_TOKENS)["outputs"][0]
            assert r["token_ids"] == ref["c2_full"]["token_ids"]
            blog = (logs / "b.log").read_text()
            assert "fails its checksum" in blog
            assert re.search(r"kvtier: \d+ blocks not loaded; vLLM recomputes them", blog)
            with kvtier.Client(d.socket) as c:  # the corrupt block was removed
                assert c.lookup(ns, keys) == 0

            # kvtierd dies: lookups fail, the engine computes everything, correctly.
            d.proc.kill()
            d.proc.wait()
            r = b.generate([P["d2"]], max_tokens=MAX_TOKENS)["outputs"][0]
            assert r["cached_tokens"] == 0
            assert r["token_ids"] == ref["d2_full"]["token_ids"]
            assert "cannot reach kvtierd" in (logs / "b.log").read_text() or \
                "lookup failed" in (logs / "b.log").read_text()
    finally:
        d.stop()


def _a_batch(P):
    """What engine A computes (and the reference engine repeats), in one batch."""
    return [P["p1"], P["c1"], P["d1"], {"token_ids": P["p1"], "cache_salt": "nf4-tenant"}]


def _namespace_from_log(path):
    m = re.search(r"connector, namespace (\S+),", Path(path).read_text())
    assert m, "the connector logs its namespace at start"
    return m.group(1)


def _smollm2_namespaces(model_dir):
    """The namespaces the connector derives for SmolLM2 (30 layers, 3 KV heads of 64, bf16)
    with CHUNK-token chunks, computed here from the same function."""
    from kvtier.vllm import Namespaces

    return Namespaces("vllm", str(model_dir), None, 30, 3, 64, "bfloat16", CHUNK)


def _agreement(ref, out):
    """(greedy tokens equal before the first divergence, max |logprob difference| of the
    chosen token over those positions)."""
    n, diff = 0, 0.0
    for i, (a, b) in enumerate(zip(ref["token_ids"], out["token_ids"])):
        if a != b:
            break
        n += 1
        la, lb = ref["logprobs"][i][str(a)], out["logprobs"][i][str(b)]
        diff = max(diff, abs(la - lb))
    return n, diff
