"""kvtier.hf with the real transformers: attention models (Llama with grouped-query attention,
Qwen2) store their DynamicCache after generate(); a second process continues another prompt
from the cached prefix, with greedy tokens equal to a run without kvtier.  Tiny random models
(hf_models.py), 16-token chunks; docs/python.md, "transformers"."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

import kvtier
from kvtier import hf

import hf_models as M
from kvtier_daemon import Daemon

SALT = "tenant-a"
KINDS = ("llama", "qwen2")
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def run(daemon):
    """This process stores prompt A (72 tokens + 4 generated) per model; a second process
    continues prompt B, which shares A's first 56 tokens (3 whole chunks)."""
    torch.set_num_threads(1)
    out = {}
    with kvtier.Client(daemon.socket, name="hf-writer") as client:
        for kind in KINDS:
            model = M.build(kind)
            ns = hf.namespace(model, salt=SALT, chunk_tokens=16)
            a, b = M.prompts()
            cache = DynamicCache(config=model.config)
            with torch.no_grad():
                seq = model.generate(a, attention_mask=torch.ones_like(a), past_key_values=cache,
                                     max_new_tokens=4, do_sample=False, pad_token_id=0)
            written = hf.save(client, ns, seq, cache)
            again = hf.save(client, ns, seq, cache)
            ref_tokens, ref_logits = M.generate(model, b)
            out[kind] = dict(ns=ns, written=written, again=again, ref_tokens=ref_tokens,
                             ref_logits=ref_logits)
    proc = subprocess.run([sys.executable, str(HERE / "hf_models.py"), "read", daemon.socket,
                           SALT, *KINDS], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    reader = json.loads(proc.stdout)
    for kind in KINDS:
        out[kind]["reader"] = reader[kind]
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_second_process_continues_from_the_cached_prefix(run, kind):
    r = run[kind]
    # generate() left 72 + 4 - 1 = 75 tokens in the cache: 4 whole chunks; then all cached.
    assert (r["written"], r["again"]) == (4, 0)
    got = r["reader"]
    assert got["namespace"] == r["ns"]  # the same model derives the same namespace anywhere
    assert got["n"] == 48  # 56 shared tokens: 3 whole chunks
    assert got["tokens"] == r["ref_tokens"]
    logits = torch.tensor(got["logits"])
    assert (logits - r["ref_logits"]).abs().max().item() < 1e-4
    # Control: the prefix matters to this model (a restore of the wrong KV would be caught).
    control = torch.tensor(got["control_logits"])
    assert got["control"] == "kv"
    assert (control - r["ref_logits"]).abs().max().item() > 0.5


def test_namespace_names_model_weights_dtype_tenant_and_chunk():
    llama = M.build("llama")
    ns = hf.namespace(llama, salt=SALT, chunk_tokens=16)
    assert ns.startswith("hf/llama/") and ns.endswith("/f32/c16/v1")
    assert hf.namespace(M.build("llama"), salt=SALT, chunk_tokens=16) == ns  # rebuilt: equal
    others = [hf.namespace(llama, salt="tenant-b", chunk_tokens=16),
              hf.namespace(M.build("llama", seed=1), salt=SALT, chunk_tokens=16),  # weights
              hf.namespace(M.build("qwen2"), salt=SALT, chunk_tokens=16),
              hf.namespace(llama, salt=SALT, chunk_tokens=32)]
    assert len(set(others + [ns])) == 5
    assert hf.namespace(llama, codec_prefix="nf4/").startswith("nf4/hf/llama/")
    assert hf.namespace(llama.to(torch.float16), salt=SALT, chunk_tokens=16).endswith("/f16/c16/v1")
    with pytest.raises(ValueError):  # save/load need the chunk size: a foreign name lacks it
        hf.load_prefix(None, "my/namespace", torch.arange(40), llama)


def test_miss_and_daemon_failure_fall_back_to_computing(client):
    model = M.build("llama")
    ns = hf.namespace(model, salt="miss", chunk_tokens=16)
    a, _ = M.prompts()
    assert hf.load_prefix(client, ns, a, model) == (None, 0)
    doomed = Daemon()
    c = kvtier.Client(doomed.socket, name="doomed")
    doomed.stop()
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(a, past_key_values=cache, use_cache=True)
    assert hf.load_prefix(c, ns, a, model) == (None, 0)  # kvtier down: the request goes on
    assert hf.save(c, ns, a, cache) == 0


def test_nf4_namespace_keys_per_token(client):
    model = M.build("qwen2")
    ns = hf.namespace(model, salt=SALT, codec_prefix="nf4/", chunk_tokens=64)
    ids = torch.randint(0, M.VOCAB, (1, 130), generator=torch.Generator().manual_seed(7))
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(ids, past_key_values=cache, use_cache=True)
    assert hf.save(client, ns, ids, cache) == 2
    with client.get(ns, kvtier.chain_keys(ns, ids[0], 64)[:1]) as lease:
        k, v = lease[0]["k"], lease[0]["v"]
        assert (k.codec, k.nf4_layout, v.codec, v.nf4_layout) == ("nf4", "row", "nf4", "row")
        assert lease[0]["kv.layers"].codec == "raw"
    restored, n = hf.load_prefix(client, ns, ids, model)
    assert n == 128
    for got, want in zip(restored.layers, cache.layers):
        for g, w in ((got.keys, want.keys[:, :, :128]), (got.values, want.values[:, :, :128])):
            rel = float((g - w).norm() / w.norm())
            assert 0.0 < rel < 0.12


def test_legacy_functions_accept_a_transformers_cache(client, request):
    ns = "test/%s" % request.node.name
    model = M.build("llama")
    ids = torch.arange(40)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(ids[None], past_key_values=cache, use_cache=True)
    assert hf.save_prefix(client, ns, ids, cache, 16) == 2
    hit = hf.load_prefix(client, ns, ids, 16)
    assert hit.num_tokens == 32
    for (k, v), layer in zip(hit.past_key_values, cache.layers):
        assert torch.equal(k, layer.keys[:, :, :32]) and torch.equal(v, layer.values[:, :, :32])


def test_sliding_window_layers(client):
    """Mistral with a 32-token window: a cache that dropped its oldest tokens cannot store
    them (save refuses), prefill stores every chunk as it goes, and the restored layers keep
    only their window."""
    model = M.build("mistral")
    ns = hf.namespace(model, salt=SALT, chunk_tokens=16)
    a, b = M.prompts()
    full = DynamicCache(config=model.config)
    with torch.no_grad():
        model(a, past_key_values=full)
    with pytest.raises(ValueError, match="sliding window"):
        hf.save(client, ns, a, full)
    cache, n = hf.prefill(client, ns, a, model)
    assert n == 64 and client.lookup(ns, kvtier.chain_keys(ns, a[0], 16)) == 4
    cache, n = hf.load_prefix(client, ns, b, model)
    assert n == 48
    held = [(layer.keys.shape[2], layer.cumulative_length) for layer in cache.layers]
    assert held == [(31, 48)] * 2  # window - 1 tokens held, 48 seen
    tokens, logits = M.generate(model, b, cache, n)
    ref_tokens, ref_logits = M.generate(model, b)
    assert tokens == ref_tokens and (logits - ref_logits).abs().max().item() < 1e-4
