"""kvtier.hf with state-space layers: a pure Mamba2 model and a Bamba hybrid (Mamba2 layers
around an attention layer) prefill chunk by chunk, each block carrying the attention KV of its
chunk and every Mamba layer's state at the chunk's end; a second process continues another
prompt from the cached prefix with greedy tokens equal to a run without kvtier.  State stays
exact in an NF4 namespace.  docs/protocol.md, "transformers blocks"."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as T

import kvtier
from kvtier import hf

import hf_models as M

SALT = "tenant-s"
KINDS = ("mamba2", "bamba")
HERE = Path(__file__).resolve().parent


def state_of(cache, kind):
    """{layer: (conv, recurrent)} of a cache's Mamba layers (state index 0)."""
    return {i: (layer.conv_states[0][0].clone(), layer.recurrent_states[0][0].clone())
            for i, layer in enumerate(cache.layers) if hasattr(layer, "conv_states")
            and layer.is_conv_states_initialized[0]}


def stored_state(lease, block):
    b = lease[block]
    layers = torch.from_dlpack(b["state.layers"]).tolist()
    conv = torch.from_dlpack(b["conv.0.float32"]).clone().view(torch.float32).squeeze(-1)
    rec = torch.from_dlpack(b["recurrent.0.float32"]).clone().view(torch.float32).squeeze(-1)
    return {i: (conv[row], rec[row]) for row, i in enumerate(layers)}


@pytest.fixture(scope="module")
def run(daemon):
    """This process prefills prompt A (72 tokens: 4 whole chunks of 16) per model, storing
    each chunk; a second process continues prompt B (shares A's first 56 tokens)."""
    torch.set_num_threads(1)
    out = {}
    with kvtier.Client(daemon.socket, name="hf-writer") as client:
        for kind in KINDS:
            model = M.build(kind)
            ns = hf.namespace(model, salt=SALT, chunk_tokens=16)
            a, b = M.prompts()
            cache, n = hf.prefill(client, ns, a, model)
            r = dict(ns=ns, n=n, state=state_of(cache, kind))
            with client.get(ns, kvtier.chain_keys(ns, a[0], 16)) as lease:
                r["found"] = [blk.found for blk in lease]
                r["layout"] = {name: (lease[3][name].dtype, lease[3][name].shape)
                               for name in lease[3]}
                r["stored_state"] = stored_state(lease, 3)
            # The cache prefill returned continues prompt A like a run without kvtier.
            r["a_tokens"], _ = M.generate(model, a, cache, n)
            r["a_ref"], _ = M.generate(model, a)
            r["ref_tokens"], r["ref_logits"] = M.generate(model, b)
            out[kind] = r
    proc = subprocess.run([sys.executable, str(HERE / "hf_models.py"), "read", daemon.socket,
                           SALT, *KINDS], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    reader = json.loads(proc.stdout)
    for kind in KINDS:
        out[kind]["reader"] = reader[kind]
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_prefill_stores_each_chunk_with_its_state(run, kind):
    r = run[kind]
    assert r["n"] == 64 and r["found"] == [True] * 4
    assert r["a_tokens"] == r["a_ref"]
    # Block 3 holds the state at token 64, where prefill's cache stopped: exactly, as bytes.
    assert r["stored_state"].keys() == r["state"].keys() and r["state"]
    for layer, (conv, rec) in r["state"].items():
        assert torch.equal(r["stored_state"][layer][0], conv)
        assert torch.equal(r["stored_state"][layer][1], rec)
    layout = r["layout"]
    assert layout["state.layers"] == ("int32", (2,))  # Mamba layers 0, 1 (mamba2) or 0, 2
    assert layout["conv.0.float32"] == ("uint8", (2, 160, 4, 4))  # conv_dim, kernel, 4 bytes
    assert layout["recurrent.0.float32"] == ("uint8", (2, 8, 16, 16, 4))  # heads, dim, state
    if kind == "bamba":
        assert layout["kv.layers"] == ("int32", (1,))
        assert layout["k"] == layout["v"] == ("float32", (1, 2, 16, 16))
    else:
        assert "k" not in layout


@pytest.mark.parametrize("kind", KINDS)
def test_second_process_continues_from_the_cached_state(run, kind):
    r = run[kind]
    got = r["reader"]
    assert got["namespace"] == r["ns"]
    assert got["n"] == 48
    assert got["tokens"] == r["ref_tokens"]
    logits = torch.tensor(got["logits"])
    # Not bit-equal: the cache-free run scans 80 tokens in one pass, the reader 48 + 32.
    assert (logits - r["ref_logits"]).abs().max().item() < 1e-4
    # Control: with the Mamba state zeroed the logits move far more than that, so a test
    # restoring the wrong state would fail.
    control = torch.tensor(got["control_logits"])
    assert got["control"] == "state"
    assert (control - r["ref_logits"]).abs().max().item() > 0.05


def test_state_stays_exact_in_an_nf4_namespace(client):
    model = M.build("bamba")
    raw_ns = hf.namespace(model, salt="nf4-check", chunk_tokens=16)
    nf4_ns = hf.namespace(model, salt="nf4-check", codec_prefix="nf4/", chunk_tokens=16)
    a, _ = M.prompts(seed=3, len_a=40)
    hf.prefill(client, raw_ns, a, model)
    hf.prefill(client, nf4_ns, a, model)
    key_raw = kvtier.chain_keys(raw_ns, a[0], 16)[1]
    key_nf4 = kvtier.chain_keys(nf4_ns, a[0], 16)[1]
    with client.get(raw_ns, [key_raw]) as want, client.get(nf4_ns, [key_nf4]) as got:
        assert got[0]["k"].codec == "nf4" and got[0]["v"].codec == "nf4"
        for name in ("state.layers", "conv.0.float32", "recurrent.0.float32"):
            assert got[0][name].codec == "raw"
            assert torch.equal(torch.from_dlpack(got[0][name]), torch.from_dlpack(want[0][name]))
    cache, n = hf.load_prefix(client, nf4_ns, a, model)
    ref, _ = hf.load_prefix(client, raw_ns, a, model)
    assert n == 32
    assert state_of(cache, "bamba").keys() == {0, 2}
    for layer, (conv, rec) in state_of(cache, "bamba").items():
        assert torch.equal(conv, state_of(ref, "bamba")[layer][0])
        assert torch.equal(rec, state_of(ref, "bamba")[layer][1])


def test_prompt_ending_on_a_chunk_boundary(client):
    """prefill stores every whole chunk but returns the cache one chunk earlier, so generate
    still has a token to start from; then the whole prompt is cached."""
    model = M.build("mamba2")
    ns = hf.namespace(model, salt="boundary", chunk_tokens=16)
    a, _ = M.prompts(seed=4, len_a=64)
    cache, n = hf.prefill(client, ns, a, model)
    assert n == 48
    assert client.lookup(ns, kvtier.chain_keys(ns, a[0], 16)) == 4
    assert M.generate(model, a, cache, n)[0] == M.generate(model, a)[0]
    cache, n = hf.prefill(client, ns, a, model)  # all cached: nothing computed
    assert n == 48


def test_save_of_a_state_cache_writes_only_where_its_state_is(client):
    model = M.build("bamba")
    ns = hf.namespace(model, salt="save", chunk_tokens=16)
    a, _ = M.prompts(seed=5, len_a=48)
    fresh = T.DynamicCache(config=model.config)
    with torch.no_grad():  # one forward over 40 tokens: no state at 16 or 32 to store
        model(a[:, :40], past_key_values=fresh)
    with pytest.raises(ValueError, match="prefill"):
        hf.save(client, ns, a[:, :40], fresh)

    hf.prefill(client, ns, a[:, :33], model)  # stores chunks 0 and 1, cache at token 32
    cache, n = hf.load_prefix(client, ns, a[:, :33], model)
    assert n == 32
    with torch.no_grad():  # to token 40: chunk 2 (32..48) is not covered yet
        model(a[:, 32:40], position_ids=torch.arange(32, 40)[None], past_key_values=cache)
    assert hf.save(client, ns, a, cache) == 0
    with torch.no_grad():
        model(a[:, 40:48], position_ids=torch.arange(40, 48)[None], past_key_values=cache)
    assert hf.save(client, ns, a, cache) == 1  # the state is at 48: chunk 2 can be stored
    assert client.lookup(ns, kvtier.chain_keys(ns, a[0], 16)) == 3


def test_blocks_without_state_end_the_usable_prefix(client):
    """A writer that keeps state only at some blocks (vLLM's align mode, docs/protocol.md) may
    store KV-only blocks: a state model resumes at the last block that has a state."""
    from kvtier import hf_cache
    model = M.build("bamba")
    ns = hf.namespace(model, salt="align", chunk_tokens=16)
    a, _ = M.prompts(seed=6, len_a=60)
    cache, n = hf.prefill(client, ns, a[:, :33], model)  # chunks 0 and 1, with state
    with torch.no_grad():
        model(a[:, 32:48], position_ids=torch.arange(32, 48)[None], past_key_values=cache)
    kv_only = hf_cache.block_tensors(cache, 32, 48, 48, with_state=False)
    assert sorted(kv_only) == ["k", "kv.layers", "v"]
    client.put(ns, kvtier.chain_keys(ns, a[0], 16)[2], kv_only)
    assert client.lookup(ns, kvtier.chain_keys(ns, a[0], 16)) == 3
    cache, n = hf.load_prefix(client, ns, a, model)
    assert n == 32 and cache.get_seq_length() == 32
    assert M.generate(model, a, cache, n)[0] == M.generate(model, a)[0]


def test_state_every_other_block(client):
    """state_every=2: one forward per two chunks, state in blocks 1 and 3 only; a prompt
    sharing 3 blocks resumes at block 1's state (32 tokens)."""
    model = M.build("bamba")
    ns = hf.namespace(model, salt="every2", chunk_tokens=16)
    a, b = M.prompts(seed=7)
    cache, n = hf.prefill(client, ns, a, model, state_every=2)
    assert n == 64
    with client.get(ns, kvtier.chain_keys(ns, a[0], 16)) as lease:
        assert ["state.layers" in blk for blk in lease] == [False, True, False, True]
        assert all("k" in blk for blk in lease)
    assert M.generate(model, a, cache, n)[0] == M.generate(model, a)[0]
    cache, n = hf.load_prefix(client, ns, b, model)
    assert client.lookup(ns, kvtier.chain_keys(ns, b[0], 16)) == 3 and n == 32
    assert M.generate(model, b, cache, n)[0] == M.generate(model, b)[0]


def test_mamba1_is_refused():
    """transformers' Mamba (v1) forward restarts its SSM scan from zero on a multi-token
    input, so a cached state could not be continued: refused, not served wrong."""
    model = T.MambaForCausalLM(T.MambaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                                             state_size=4, expand=2, conv_kernel=4))
    with pytest.raises(ValueError, match="cannot continue"):
        hf.load_prefix(None, "hf/mamba/x/f32/c16/v1", torch.arange(40), model)
