"""What the derived ModelSpec is built from, as plain JSON data (the "facts"), read from the
transformers model itself. Heavy: imports torch and transformers (through meta.py and kv.py).

The facts are cached on disk (derive/cache.py) and turned into a ModelSpec by derive/assemble.py,
which imports nothing heavy, so a repeated plan neither imports torch nor builds the model.
"""

from __future__ import annotations

import time

from vramplan.derive import kv, meta
from vramplan.trace.build import refusal

# The text config's values the assembly reads (transformers fills in its class defaults, which a
# config.json may leave out). Only plain numbers and strings are kept.
TEXT_KEYS = ("hidden_size", "vocab_size", "num_attention_heads", "num_key_value_heads", "head_dim",
             "max_position_embeddings", "tie_word_embeddings", "kv_lora_rank", "qk_nope_head_dim",
             "qk_rope_head_dim", "v_head_dim", "num_experts_per_tok", "moe_topk", "top_k",
             "num_experts", "num_local_experts", "n_routed_experts", "chunk_size", "intermediate_size",
             "hidden_act", "hidden_activation", "model_type")
FACTS_FORMAT = 1


def facts(raw: dict, model_id: str = "") -> dict:
    """Build the model on the meta device, list its parameters, prefill it on fake tensors and
    return everything assemble.py needs. Raises BadInput/BadConfig (one sentence) for a config
    transformers cannot build."""
    start = time.perf_counter()
    config, model = meta.build(raw, model_id, dtype="bf16")   # bf16: the grouped MoE kernels need it
    params = meta.parameters(model)
    prefix = meta.decoder_layers_prefix(model, config)
    head = output_embeddings(model)
    tied = meta.tied_names(model)
    try:
        layers = kv.derive_cache(model, config)
    except Exception as e:          # noqa: BLE001 - transformers cannot run this model's prefill
        raise refusal(e, model_id) from e
    return pack(config, model, params, prefix, head, tied, layers, time.perf_counter() - start)


def pack(config, model, params: list, prefix: str, head: str, tied: list, layers: list, seconds: float) -> dict:
    """The facts as JSON data."""
    text = config.get_text_config(decoder=True)
    text_values = {}
    for k in TEXT_KEYS:
        try:
            v = getattr(text, k, None)
        except Exception:       # noqa: BLE001 - a per-layer attribute that varies (dots3: heads)
            v = None
        if isinstance(v, (bool, int, float, str)):
            text_values[k] = v
    return {
        "format": FACTS_FORMAT,
        "versions": meta.library_versions(),
        "model_class": type(model).__name__,
        "layers_prefix": prefix,
        "lm_head": head,
        "tied": tied,
        "text": text_values,
        "params": [[p.name, list(p.shape), p.dtype, p.module] for p in params],
        "cache": [_layer_json(c) for c in layers],
        "seconds": round(seconds, 2),
    }


def output_embeddings(model) -> str:
    try:
        out = model.get_output_embeddings()
    except Exception:       # noqa: BLE001 - some classes raise NotImplementedError
        out = None
    if out is None:
        return ""
    for name, module in model.named_modules():
        if module is out:
            return name
    return ""


def _layer_json(c: kv.CacheLayer) -> dict:
    d = dict(vars(c))
    d["conv_shape"] = list(c.conv_shape)
    d["recurrent_shape"] = list(c.recurrent_shape)
    return d
