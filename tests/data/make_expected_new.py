"""Regenerate tests/data/expected_new.json: the oracle figures for the configs bundled in issue #12.

    python tests/data/make_expected_new.py [ID ...]

Needs torch and transformers (never imported by vramplan's analytic path). For each bundled
config named in configs/models/SOURCES.md as added by issue #12:

- params: unique parameters of the model transformers builds from the config on the meta device
  (AutoModelForImageTextToText where the config has a vision_config, else AutoModelForCausalLM;
  model.parameters() yields a tied tensor once). quantization_config is dropped first, so FP8
  checkpoints count as unquantized, as the shared reference does for DeepSeek-V3 and gpt-oss.
- kv_bytes_per_token_bf16 and cache_layer_kinds: a real CPU prefill of 8 tokens through the same
  architecture with every size that the cache does not depend on shrunk (vocabulary, hidden and
  MLP widths, expert count; head counts, head dims, MLA ranks, layer count and layer types kept),
  then the bytes of every cache tensor whose length grows with the prompt, divided by 8, at 2 B
  per element. Recurrent (Mamba, linear-attention) state is fixed per sequence and left out.
"""

from __future__ import annotations

import copy
import json
import sys
from collections import Counter
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "configs" / "models"
OUT = ROOT / "tests" / "data" / "expected_new.json"
PROMPT = 8

# model_type -> the transformers config class that builds it, where the Hub's remote-code type
# differs (Kimi-K2 is DeepseekV3ForCausalLM under its own model_type, configuration_deepseek.py).
TYPE_ALIASES = {"kimi_k2": "deepseek_v3"}
# Widths that no cache tensor depends on, shrunk for the CPU prefill.
SHRINK = {
    "vocab_size": 512, "intermediate_size": 64, "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32, "moe_shared_expert_intermediate_size": 32,
    "intermediate_size_mlp": 64, "hidden_size_per_layer_input": 16, "vocab_size_per_layer_input": 512,
    "q_lora_rank": 32,
}
# Keys that give layers different kinds; without them every layer caches the same width, so the
# prefill runs LAYERS_RUN layers and the per-layer figure is multiplied back to the real count.
PATTERN_KEYS = ("layer_types", "hybrid_override_pattern", "full_attention_interval", "sliding_window_pattern",
                "no_rope_layers", "num_kv_shared_layers")
LAYERS_RUN = 2
EXPERT_KEYS = ("num_experts", "n_routed_experts", "num_local_experts")
# Where the oracle and the model card part ways, said beside the figure (kept on regeneration).
ORACLE_NOTES = {
    "mistralai--Mistral-Small-3.2-24B-Instruct-2506": (
        "transformers 5.25 ties lm_head to the embeddings here: the config sets no top-level "
        "tie_word_embeddings, Mistral3Config defaults it to True, while text_config says False. "
        "Untied (an lm_head of 131072 x 5120 more) the count is 24,011,361,280, the card's 24 B."),
}


def ids_added() -> list[str]:
    """Bundled ids whose SOURCES.md row is marked as added by issue #12."""
    rows = (MODELS / "SOURCES.md").read_text().splitlines()
    cells = [[c.strip() for c in r.split("|")[1:-1]] for r in rows if r.startswith("| `")]
    return [c[0].strip("`") for c in cells if len(c) == 4 and c[1] == "#12"]


def build_config(raw: dict):
    raw = {k: v for k, v in raw.items() if k not in ("quantization_config", "auto_map")}
    kind = TYPE_ALIASES.get(raw["model_type"], raw["model_type"])
    raw.pop("model_type")
    return AutoConfig.for_model(kind, **raw)


def is_encoder(raw: dict) -> bool:
    """An embedding encoder (architectures "XLMRobertaModel", "BertModel"): built as the bare model,
    no LM head, and holds no KV cache."""
    return any(str(a).endswith("Model") for a in raw.get("architectures") or ())


def model_class(config, raw: dict):
    if is_encoder(raw):
        return AutoModel
    return AutoModelForImageTextToText if getattr(config, "vision_config", None) is not None else AutoModelForCausalLM


def count_params(raw: dict) -> int:
    config = build_config(raw)
    with torch.device("meta"):
        model = model_class(config, raw).from_config(config)
    return sum(p.numel() for p in model.parameters())


def _shrink(section: dict, hidden: bool = True) -> None:
    for key, value in SHRINK.items():
        if isinstance(section.get(key), int):
            section[key] = min(section[key], value)
    for key in EXPERT_KEYS:
        if isinstance(section.get(key), int):
            section[key] = max(2, min(section[key], section.get("num_experts_per_tok", 2)))
    if isinstance(section.get("num_experts_per_tok"), int):
        section["num_experts_per_tok"] = min(section["num_experts_per_tok"], 2)
    for key in ("top_k_experts",):
        if isinstance(section.get(key), int):
            section[key] = min(section[key], 2)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        section[key] = 0 if key == "pad_token_id" else None
    if hidden and isinstance(section.get("hidden_size"), int) and isinstance(section.get("num_attention_heads"), int):
        # the KV width is heads x head_dim; pin head_dim before the residual width shrinks
        if "qk_rope_head_dim" not in section:  # MLA widths are their own keys
            section.setdefault("head_dim", section["hidden_size"] // section["num_attention_heads"])
        section["hidden_size"] = section["num_attention_heads"] * 4   # some families check divisibility


def kv_per_token(raw: dict) -> tuple[int, dict]:
    """The prefill with the residual width shrunk too; families that derive head_dim from it
    (Qwen2.5-VL's text model) fail that run, and are run again at their real width."""
    try:
        return _kv_per_token(raw, hidden=True)
    except (RuntimeError, ValueError):
        return _kv_per_token(raw, hidden=False)


def _kv_per_token(raw: dict, hidden: bool) -> tuple[int, dict]:
    raw = copy.deepcopy(raw)
    text = raw.get("text_config", raw)
    if text is not raw:
        _shrink(text, hidden)
    _shrink(raw, hidden)
    for tower in ("vision_config", "audio_config"):
        if isinstance(raw.get(tower), dict):  # built but not run by a text prompt
            for key in ("depth", "num_hidden_layers"):
                if isinstance(raw[tower].get(key), int):
                    raw[tower][key] = 1
    layers = text.get("num_hidden_layers")
    scale = 1
    patterned = [k for k in PATTERN_KEYS if k in text and not (k == "layer_types" and len(set(text[k])) == 1)]
    if isinstance(layers, int) and layers > LAYERS_RUN and not patterned:
        if "layer_types" in text:
            text["layer_types"] = text["layer_types"][:LAYERS_RUN]
        text["num_hidden_layers"], scale = LAYERS_RUN, layers / LAYERS_RUN
    config = build_config(raw)
    torch.manual_seed(0)
    model = model_class(config, raw).from_config(config).eval()
    text_cfg = config.get_text_config()
    ids = torch.randint(0, min(text_cfg.vocab_size, 256), (1, PROMPT))
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
    cache = out.past_key_values
    kinds = Counter(type(layer).__name__ for layer in cache.layers)
    total = 0
    for layer in cache.layers:
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor) and t.dim() >= 2 and PROMPT in t.shape:
                total += t.numel() * 2
    assert total % PROMPT == 0 and (total // PROMPT * scale) == int(total // PROMPT * scale)
    if scale != 1:
        kinds = Counter({k: int(n * scale) for k, n in kinds.items()})
    return int(total // PROMPT * scale), dict(kinds)


def main(argv: list[str]) -> None:
    ids = argv or ids_added()
    data = json.loads(OUT.read_text()) if OUT.exists() else {"models": {}}
    data["_about"] = (
        f"Computed by tests/data/make_expected_new.py with transformers {transformers.__version__} and "
        f"torch {torch.__version__} from the bundled configs/models/<id>.json files added for issue #12. "
        "params: unique parameters (tied tensors once) of the model transformers builds from the config "
        "on the meta device (AutoModelForImageTextToText when the config has a vision_config, vision tower "
        "included; else AutoModelForCausalLM), with quantization_config dropped (FP8 checkpoints counted "
        "as unquantized) and no multi-token-prediction layers (transformers builds none); Kimi-K2's "
        "kimi_k2 model_type built as deepseek_v3 (its architectures entry). kv_bytes_per_token_bf16: "
        "bytes per token per sequence at 2 B per element of every cache tensor that grows with the "
        "prompt, from a real CPU prefill of 8 tokens through the same architecture with vocabulary, MLP "
        "widths and expert counts shrunk (head counts, head dims, MLA ranks, layer count and layer "
        "types kept), below any sliding window; recurrent (Mamba, linear-attention) layers hold a fixed "
        "state per sequence that is not in this figure. cache_layer_kinds: the cache layer classes of "
        "that prefill. A null field could not be computed (see notes)."
    )
    for model_id in ids:
        key = model_id.replace("/", "--", 1)
        raw = json.loads((MODELS / f"{key}.json").read_text())
        entry = data["models"].get(key, {})
        entry["params"] = count_params(raw)
        if is_encoder(raw):
            entry.update(kv_bytes_per_token_bf16=0, cache_layer_kinds={},
                         notes="an encoder (embedding model): generation holds no KV cache")
            data["models"][key] = entry
            print(key, entry, flush=True)
            continue
        try:
            entry["kv_bytes_per_token_bf16"], entry["cache_layer_kinds"] = kv_per_token(raw)
            entry.pop("notes", None)
        except Exception as e:  # recorded, not hidden: the figure stays null with the reason
            entry["kv_bytes_per_token_bf16"], entry["cache_layer_kinds"] = None, None
            entry["notes"] = f"CPU prefill failed: {type(e).__name__}: {str(e)[:200]}"
        if key in ORACLE_NOTES:
            entry["notes"] = ORACLE_NOTES[key]
        data["models"][key] = entry
        print(key, entry, flush=True)
    data["models"] = dict(sorted(data["models"].items()))
    OUT.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
