"""Tiny random-weight transformers models for the kvtier.hf tests, built from configs (no
download), identical in every process that builds them with the same seed.

Weights are redrawn with unit gain (N(0, gain^2/fan_in)) so that activations keep their scale
through the layers: with transformers' default init (std 0.02) a tiny model's next token
hardly depends on the prefix, and a test that restored the wrong KV or state would still pass.
With gain 2 the last logits move by several units when the prefix changes (logit std ~2).

    python hf_models.py read SOCKET MODEL... : the reader process of test_hf_*.py (see main)
"""
import inspect
import json
import math
import sys

import torch
import transformers as T

VOCAB = 512


def _config(kind):
    common = dict(vocab_size=VOCAB, hidden_size=64, max_position_embeddings=512)
    if kind == "llama":  # grouped-query attention: 4 query heads share 2 KV heads
        return T.LlamaConfig(intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, **common)
    if kind == "qwen2":
        return T.Qwen2Config(intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, **common)
    if kind == "mistral":  # sliding-window attention, a window shorter than the prompts
        return T.MistralConfig(intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, sliding_window=32, **common)
    if kind == "mamba2":  # pure state-space model
        common.pop("max_position_embeddings")
        return T.Mamba2Config(num_hidden_layers=2, state_size=16, expand=2, head_dim=16,
                              num_heads=8, n_groups=1, conv_kernel=4, chunk_size=16, **common)
    if kind == "bamba":  # hybrid: Mamba2 layers 0 and 2, attention layer 1
        return T.BambaConfig(intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                             num_key_value_heads=2, attn_layer_indices=[1], mamba_n_heads=8,
                             mamba_d_head=16, mamba_n_groups=1, mamba_d_state=16, mamba_d_conv=4,
                             mamba_expand=2, mamba_chunk_size=16, **common)
    raise ValueError(kind)


KINDS = ("llama", "qwen2", "mamba2", "bamba", "mistral")


def build(kind, seed=0, gain=2.0):
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(_config(kind)).eval()
    g = torch.Generator().manual_seed(seed * 16 + KINDS.index(kind))
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.Linear):
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g)
                                 * (gain / math.sqrt(mod.in_features)))
                if mod.bias is not None:  # Qwen2's q/k/v biases, Mamba's dt projection
                    mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.5)
            elif isinstance(mod, torch.nn.Embedding):
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g))
    return model


def prompts(seed=0, shared=56, len_a=72, len_b=80):
    """Two prompts sharing their first `shared` tokens."""
    g = torch.Generator().manual_seed(1000 + seed)
    a = torch.randint(0, VOCAB, (1, len_a), generator=g)
    b = torch.cat([a[:, :shared], torch.randint(0, VOCAB, (1, len_b - shared), generator=g)], 1)
    return a, b


def generate(model, input_ids, cache=None, n=0, new_tokens=8):
    """Greedy continuation from a cache holding the first `n` tokens: (new token ids, the
    first step's logits).  Pure state-space models take their cache as `cache_params` and only
    the tokens it has not seen; the others the whole prompt as `past_key_values`."""
    # An explicit mask: generate() would otherwise mask every token equal to pad_token_id.
    kw = dict(max_new_tokens=new_tokens, do_sample=False, output_logits=True,
              return_dict_in_generate=True, pad_token_id=0)
    with torch.no_grad():
        if "cache_params" in inspect.signature(model.forward).parameters:
            rest = input_ids[:, n:]
            out = model.generate(rest, attention_mask=torch.ones_like(rest), cache_params=cache,
                                 **kw)
            tokens = out.sequences[0, input_ids.shape[1] - n:]
        else:
            out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                                 past_key_values=cache, **kw)
            tokens = out.sequences[0, input_ids.shape[1]:]
    return tokens.tolist(), out.logits[0][0]


def zero_prefix(cache, what):
    """A control: the restored cache with its attention KV or its state zeroed ("kv"/"state")."""
    for layer in cache.layers:
        if what == "kv" and getattr(layer, "keys", None) is not None:
            layer.keys = torch.zeros_like(layer.keys)
            layer.values = torch.zeros_like(layer.values)
        if what == "state" and hasattr(layer, "conv_states"):
            for d in (layer.conv_states, layer.recurrent_states):
                for t in d.values():
                    if t is not None:
                        t.zero_()
    return cache


def read(socket, kinds, salt):
    """The second process: prompt B continued from what the first stored for prompt A."""
    import kvtier
    from kvtier import hf
    result = {}
    with kvtier.Client(socket, name="hf-reader") as client:
        for kind in kinds:
            model = build(kind)
            ns = hf.namespace(model, salt=salt, chunk_tokens=16)
            _, b = prompts()
            cache, n = hf.load_prefix(client, ns, b, model)
            tokens, logits = generate(model, b, cache, n)
            control, _ = hf.load_prefix(client, ns, b, model)
            stateful = any(hasattr(layer, "conv_states") for layer in control.layers)
            what = "state" if stateful else "kv"
            _, control_logits = generate(model, b, zero_prefix(control, what), n)
            result[kind] = {"namespace": ns, "n": n, "tokens": tokens, "logits": logits.tolist(),
                            "control_logits": control_logits.tolist(), "control": what}
    return result


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1] == "read":
        json.dump(read(sys.argv[2], sys.argv[4:], sys.argv[3]), sys.stdout)
    else:
        sys.exit("usage: hf_models.py read SOCKET SALT MODEL...")
