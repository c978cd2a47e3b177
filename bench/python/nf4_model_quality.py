"""NF4 KV quality on a trained model (issue 18, docs/nf4.md "Quality on a trained model").

SmolLM2-135M-Instruct (30 layers, 3 KV heads of 64) computes the KV of a prefix; kvtier.hf
stores it in a private kvtierd, one [[namespace]] rule per codec setting, and loads it back
(the path a transformers user takes: hf.save, then hf.load_prefix); the model then continues
from the loaded cache.  Against the same two-step computation with the model's own cache
(no kvtier), per setting and text:

  ppl      perplexity of the continuation (teacher-forced), and its change in %
  top-1    share of continuation positions whose argmax equals the reference's
  diverge  the first token where free-running greedy text differs (of --greedy tokens;
           "-" = never)
  x fp16   block bytes stored per fp16 byte of KV, inverted (2 MiB-scale blocks: see
           bench/nf4_capacity for the exact figures); for the mixed schemes, from their parts

Texts: English (/usr/share/common-licenses/GPL-3) and Python source (the stdlib's
argparse.py), --windows windows of --prefix + --cont tokens each.  Mixed schemes combine two
loaded caches tensor by tensor (K of one namespace and V of another, or whole layers).
"Per-token keys" are put with nf4_layout "row" for k (kvtier.hf puts keys per channel).

Run by hand (a few minutes on 2 cores), from the repository root after building:

    PYTHONPATH=build/libclient/python KVTIERD=build/daemon/kvtierd \\
        /opt/kvtier-engine/venv/bin/python bench/python/nf4_model_quality.py

Options: --model DIR (default /opt/kvtier-engine/models/smollm2-135m), --prefix 512,
--cont 512, --greedy 48, --windows 1, --only NAME[,NAME] (settings by name).
"""
import argparse
import copy
import math
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "python"))
from kvtier_daemon import Daemon  # noqa: E402  (finds kvtier and kvtierd in build/ too)

import kvtier  # noqa: E402
from kvtier import hf, hf_cache  # noqa: E402

CHUNK = 64

# name -> the [[namespace]] rule's NF4 keys (None: lossless) and how keys are put.
RULES = {
    "fp16": ('codec = "fp16"', "column"),
    "pt": ('codec = "nf4"\nnf4_double_quant = false', "row"),
    "pt-dq": ('codec = "nf4"', "row"),
    "pc": ('codec = "nf4"\nnf4_double_quant = false', "column"),
    "pc-dq": ('codec = "nf4"', "column"),
    "pc-dq-out4": ('codec = "nf4"\nnf4_outlier_channels = 4', "column"),
    "pt-dq-out4": ('codec = "nf4"\nnf4_outlier_channels = 4', "row"),
}

# Settings: (name, description, how to build the cache from loaded ones).
#   ("ns", rule)                        one namespace
#   ("kv", k_rule, v_rule)              K from one, V from another
#   ("layers", n, first_rule, rest)     the first n layers from one, the rest from another
SETTINGS = [
    ("fp16", "lossless (codec fp16)", ("ns", "fp16")),
    ("pt", "NF4 per-token K, no DQ", ("ns", "pt")),
    ("pt-dq", "NF4 per-token K, DQ", ("ns", "pt-dq")),
    ("pc", "NF4 per-channel K, no DQ", ("ns", "pc")),
    ("pc-dq", "NF4 per-channel K, DQ (default)", ("ns", "pc-dq")),
    ("pt-dq-out4", "NF4 per-token K, DQ, 4 outlier K ch.", ("ns", "pt-dq-out4")),
    ("pc-dq-out4", "NF4 per-channel K, DQ, 4 outlier K ch.", ("ns", "pc-dq-out4")),
    ("kfp16-vnf4", "K fp16 + V NF4 DQ", ("kv", "fp16", "pc-dq")),
    ("knf4-vfp16", "K NF4 per-channel DQ + V fp16", ("kv", "pc-dq", "fp16")),
    ("l2fp16", "first 2 layers fp16, rest NF4 pc DQ", ("layers", 2, "fp16", "pc-dq")),
    ("l4fp16", "first 4 layers fp16, rest NF4 pc DQ", ("layers", 4, "fp16", "pc-dq")),
]


def texts(tokenizer, need):
    english = Path("/usr/share/common-licenses/GPL-3").read_text()
    code = Path(os.__file__).with_name("argparse.py").read_text()
    out = []
    for name, text in (("English (GPL-3)", english), ("Python (argparse.py)", code)):
        ids = tokenizer(text, return_tensors="pt").input_ids[0]
        if len(ids) < need:
            raise SystemExit("%s has %d tokens, need %d" % (name, len(ids), need))
        out.append((name, ids))
    return out


def layer_kv(cache):
    return [(layer.keys, layer.values) for layer in cache.layers]


def set_layer_kv(cache, kv):
    for layer, (k, v) in zip(cache.layers, kv):
        layer.keys, layer.values = k, v


def stored_ratio(client, ns, ids, outliers, esize):
    """(fp16 bytes, stored bytes) of the k and v tensors of the first block, by name.  The
    model runs in fp32, and outlier channels are stored in the source dtype: their bytes are
    counted as fp16 ones (what an fp16 model's cache would cost)."""
    keys = kvtier.chain_keys(ns, ids, CHUNK)[:1]
    out = {}
    with client.get(ns, keys) as lease:
        for name in ("k", "v"):
            t = lease[0][name]
            values = 1
            for d in t.shape:
                values *= d
            stored = t.nbytes
            if name == "k" and outliers:
                cols = t.shape[-1]
                rows = values // cols
                stored -= rows * min(outliers, cols // 16) * (esize - 2)
            out[name] = (values * 2, stored)
    return out


class Runner:
    def __init__(self, model, client, namespaces, key_layouts):
        self.model = model
        self.client = client
        self.ns = namespaces
        self.key_layouts = key_layouts

    def save_all(self, ids, prefix_cache):
        for rule, ns in self.ns.items():
            layout = self.key_layouts[rule]
            orig = hf_cache._layouts
            if layout == "row":
                hf_cache._layouts = lambda tensors: {n: "row" for n in tensors}
            try:
                hf.save(self.client, ns, ids, prefix_cache)
            finally:
                hf_cache._layouts = orig

    def load(self, rule, ids, prefix_len):
        cache, n = hf.load_prefix(self.client, self.ns[rule], ids, self.model,
                                  max_tokens=prefix_len)
        if n != prefix_len:
            raise RuntimeError("%s: loaded %d of %d tokens" % (rule, n, prefix_len))
        return cache

    def build(self, how, ids, prefix_len):
        if how[0] == "ns":
            return self.load(how[1], ids, prefix_len)
        if how[0] == "kv":
            a = self.load(how[1], ids, prefix_len)
            b = self.load(how[2], ids, prefix_len)
            set_layer_kv(a, [(ka, vb) for (ka, _), (_, vb) in zip(layer_kv(a), layer_kv(b))])
            return a
        n, first, rest = how[1], how[2], how[3]
        a = self.load(first, ids, prefix_len)
        b = self.load(rest, ids, prefix_len)
        set_layer_kv(b, [kva if i < n else kvb
                         for i, (kva, kvb) in enumerate(zip(layer_kv(a), layer_kv(b)))])
        return b


@torch.no_grad()
def continuation(model, cache, cont):
    """Logits of the continuation tokens fed on top of `cache` (mutated)."""
    return model(cont[None], past_key_values=cache, use_cache=True).logits[0].float()


@torch.no_grad()
def greedy(model, cache, first, steps):
    out, tok = [], first.view(1, 1)
    for _ in range(steps):
        logits = model(tok, past_key_values=cache, use_cache=True).logits[0, -1]
        tok = logits.argmax().view(1, 1)
        out.append(int(tok))
    return out


def nll(logits, cont):
    logp = torch.log_softmax(logits[:-1].double(), dim=-1)
    return -logp.gather(1, cont[1:, None]).squeeze(1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="/opt/kvtier-engine/models/smollm2-135m")
    p.add_argument("--prefix", type=int, default=512)
    p.add_argument("--cont", type=int, default=512)
    p.add_argument("--greedy", type=int, default=48)
    p.add_argument("--windows", type=int, default=1)
    p.add_argument("--only", default="")
    args = p.parse_args()
    if args.prefix % CHUNK:
        raise SystemExit("--prefix must be a multiple of %d" % CHUNK)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    print("model %s loaded in %.1f s (fp32 on the CPU)" % (args.model, time.time() - t0),
          file=sys.stderr)
    settings = [s for s in SETTINGS if not args.only or s[0] in args.only.split(",")]
    needed = set()
    for _, _, how in settings:
        needed.update(r for r in how[1:] if isinstance(r, str))
    rules = "\n".join('[[namespace]]\nprefix = "%s/"\n%s' % (r, RULES[r][0]) for r in sorted(needed))
    daemon = Daemon(rules=(("", "fp16"),), host_bytes=1 << 30, staging_bytes=64 << 20,
                    extra_toml=rules)
    window = args.prefix + args.cont
    text_names = []
    results = {}  # (setting, text) -> list of per-window figures
    try:
        with kvtier.Client(daemon.socket, name="nf4-quality") as client:
            namespaces = {r: hf.namespace(model, codec_prefix=r + "/", chunk_tokens=CHUNK)
                          for r in needed}
            runner = Runner(model, client, namespaces, {r: RULES[r][1] for r in needed})
            ratios = {}
            corpus = texts(tok, window * args.windows)
            text_names = [name for name, _ in corpus]
            for text_name, all_ids in corpus:
                for w in range(args.windows):
                    ids = all_ids[w * window:(w + 1) * window]
                    prefix, cont = ids[:args.prefix], ids[args.prefix:]
                    with torch.no_grad():
                        ref_cache = model(prefix[None], use_cache=True).past_key_values
                    runner.save_all(ids, ref_cache)
                    if not ratios:
                        for r, ns in namespaces.items():
                            outliers = 4 if "outlier" in RULES[r][0] else 0
                            esize = torch.finfo(model.dtype).bits // 8
                            ratios[r] = stored_ratio(client, ns, ids, outliers, esize)
                    ref_logits = continuation(model, copy.deepcopy(ref_cache), cont)
                    ref_nll = nll(ref_logits, cont)
                    ref_greedy = greedy(model, copy.deepcopy(ref_cache), cont[0], args.greedy)
                    ref_top = ref_logits[:-1].argmax(-1)
                    for name, _, how in settings:
                        c = runner.build(how, ids, args.prefix)
                        logits = continuation(model, c, cont)
                        g = greedy(model, runner.build(how, ids, args.prefix), cont[0],
                                   args.greedy)
                        div = next((i for i, (a, b) in enumerate(zip(g, ref_greedy)) if a != b),
                                   None)
                        results.setdefault((name, text_name), []).append({
                            "ref_nll": float(ref_nll.mean()),
                            "nll": float(nll(logits, cont).mean()),
                            "top1": float((logits[:-1].argmax(-1) == ref_top).double().mean()),
                            "identical": bool(torch.equal(logits, ref_logits)),
                            "diverge": div,
                        })
                    print("%s window %d done at %.0f s" % (text_name, w, time.time() - t0),
                          file=sys.stderr)
    finally:
        daemon.stop()

    def capacity(how):
        def part(rule, kind):
            fp16, stored = ratios[rule][kind]
            return (fp16, fp16 if rule == "fp16" else stored)  # fp16 codec: 2 B per value
        if how[0] == "ns":
            parts = [part(how[1], "k"), part(how[1], "v")]
        elif how[0] == "kv":
            parts = [part(how[1], "k"), part(how[2], "v")]
        else:
            n, layers = how[1], len(model.model.layers)
            parts = []
            for rule, share in ((how[2], n / layers), (how[3], 1 - n / layers)):
                for kind in "kv":
                    fp16, stored = part(rule, kind)
                    parts.append((fp16 * share, stored * share))
        return sum(f for f, _ in parts) / sum(s for _, s in parts)

    print("\n| setting | x fp16 | text | ppl (ref) | ppl | ppl change | top-1 agree | "
          "greedy diverges at | logits identical |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---|")
    for name, desc, how in settings:
        for text_name in text_names:
            rs = results[(name, text_name)]
            ref = math.exp(sum(r["ref_nll"] for r in rs) / len(rs))
            ppl = math.exp(sum(r["nll"] for r in rs) / len(rs))
            top1 = sum(r["top1"] for r in rs) / len(rs)
            div = ", ".join("-" if r["diverge"] is None else str(r["diverge"]) for r in rs)
            same = all(r["identical"] for r in rs)
            print("| %s | %.3f | %s | %.3f | %.3f | %+.2f%% | %.2f%% | %s | %s |" % (
                desc, capacity(how), text_name, ref, ppl, 100 * (ppl / ref - 1), 100 * top1,
                div, "yes" if same else "no"))
    print("\n%d settings, %d texts x %d windows of %d + %d tokens, greedy %d tokens; %.0f s"
          % (len(settings), 2, args.windows, args.prefix, args.cont, args.greedy,
             time.time() - t0))


if __name__ == "__main__":
    main()
