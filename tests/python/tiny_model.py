"""A tiny decoder-only transformer (pre-LN, RoPE, GELU MLP) with seeded random weights whose
attention takes and returns HF-style past KV: a tuple of per-layer (K, V), each
[batch, heads, seq, head_dim], K after RoPE.

The initialisation is chosen so that attention matters (q.k / sqrt(d) of order 1, not the
near-uniform attention of a 0.02-std init) and the next-token distribution is peaked (logit
std ~3, like trained LMs): a KV error then shows up in the logits instead of being hidden.
Deterministic on the CPU: call deterministic() first.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Config:
    vocab: int = 1000
    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 4
    d_ff: int = 1024
    rope_theta: float = 10000.0

    @property
    def head_dim(self):
        return self.d_model // self.n_heads


def deterministic(threads=1):
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)


def rope(x, positions, theta):
    """Rotary embedding of x [B, H, T, D] at absolute positions [T] (rotate-half form)."""
    d = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    ang = positions.to(torch.float32)[:, None] * inv[None, :]  # [T, D/2]
    cos = torch.cat([ang.cos(), ang.cos()], dim=-1).to(x.dtype)
    sin = torch.cat([ang.sin(), ang.sin()], dim=-1).to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x, past):
        B, T, _ = x.shape
        H, D = self.cfg.n_heads, self.cfg.head_dim
        q, k, v = self.qkv(x).view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)
        start = 0 if past is None else past[0].shape[2]
        pos = torch.arange(start, start + T)
        q, k = rope(q, pos, self.cfg.rope_theta), rope(k, pos, self.cfg.rope_theta)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        S = k.shape[2]
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(D)  # [B, H, T, S]
        # query t (absolute start + t) sees keys 0..start + t
        mask = torch.arange(S)[None, :] > (torch.arange(T)[:, None] + start)
        scores = scores.masked_fill(mask, float("-inf"))
        y = torch.softmax(scores, dim=-1) @ v
        y = y.transpose(1, 2).reshape(B, T, H * D)
        return self.out(y), (k, v)


class Layer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x, past):
        a, present = self.attn(self.ln1(x), past)
        x = x + a
        return x + self.down(F.gelu(self.up(self.ln2(x)))), present


class TinyLM(nn.Module):
    def __init__(self, cfg=Config(), seed=1234):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab, cfg.d_model)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab, bias=False)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            d, L = cfg.d_model, cfg.n_layers
            self.embed.weight.normal_(0, 1.0, generator=g)
            for layer in self.layers:
                layer.attn.qkv.weight.normal_(0, 1.0 / math.sqrt(d), generator=g)
                layer.attn.out.weight.normal_(0, 1.0 / math.sqrt(d * 2 * L), generator=g)
                layer.up.weight.normal_(0, 1.0 / math.sqrt(d), generator=g)
                layer.down.weight.normal_(0, 1.0 / math.sqrt(cfg.d_ff * 2 * L), generator=g)
            self.head.weight.normal_(0, 3.0 / math.sqrt(d), generator=g)
        self.eval()

    @torch.no_grad()
    def forward(self, input_ids, past_key_values=None):
        """input_ids [B, T] -> (logits [B, T, vocab], present KV tuple)."""
        x = self.embed(input_ids)
        present = []
        for i, layer in enumerate(self.layers):
            x, kv = layer(x, None if past_key_values is None else past_key_values[i])
            present.append(kv)
        return self.head(self.ln_f(x)), tuple(present)


@torch.no_grad()
def generate(model, prompt, n_new, past_key_values=None, forced=None):
    """Greedy decoding.  With past_key_values covering prompt[:p], only prompt[p:] is
    prefilled.  `forced` (a token list) feeds those tokens instead of the argmax (teacher
    forcing) so that logits can be compared step by step.  Returns (tokens, logits [n_new,
    vocab] of each step, the KV after the prompt's prefill)."""
    p = 0 if past_key_values is None else past_key_values[0][0].shape[2]
    ids = torch.tensor([prompt[p:]], dtype=torch.long)
    logits, past = model(ids, past_key_values)
    prefill_kv = past
    tokens, steps = [], []
    last = logits[0, -1]
    for i in range(n_new):
        steps.append(last)
        tok = int(last.argmax()) if forced is None else forced[i]
        tokens.append(int(last.argmax()))
        if i + 1 == n_new:
            break
        logits, past = model(torch.tensor([[tok]]), past)
        last = logits[0, -1]
    return tokens, torch.stack(steps), prefill_kv
