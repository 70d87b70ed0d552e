"""Facts read from transformers (derive/extract.py) -> a vramplan ModelSpec. Imports nothing
heavy: a cached derivation is assembled without torch.

Every parameter tensor is the model's own (name, shape, dtype), so the weights are exact for any
architecture transformers builds. What transformers does not say is inferred from names, and
labelled where it is a guess:

- the role of a tensor from its owning module's class (Embedding, *Norm, Linear, Conv1d, a
  router) and, for 3-D tensors under `experts`, "expert" (count = the expert dimension);
- vLLM's tensor-parallel split from the leaf names families share (models/_base.default_split,
  plus the fused and GPT-style names below); a linear layer whose name says nothing is counted
  whole on every GPU ("replicated", the conservative choice), and the plan says how many
  parameters that covers;
- each layer's mixer from its cache: K/V heads and dims, the window, MLA's latent (one K "head"
  of kv_lora_rank and the rope key) or a recurrent state (conv and SSM / linear-attention state).
"""

from __future__ import annotations

import re
from dataclasses import replace

from vramplan.errors import BadConfig
from vramplan.models._base import (COLUMN_NAMES, FUSED_QKV_NAMES, GENERIC_TRAITS, KV_NAMES, ROW_NAMES, Cfg,
                                   default_split, make_spec, torch_dtype)
from vramplan.models.generic import LAYOUTS, PEFT_TARGETS_OF_GENERIC
from vramplan.models.quant import parse_quantization
from vramplan.spec import Attention, LayerSpec, Mlp, ModelSpec, Recurrent, Tensor

# vLLM's parallel layers by module name (models/_base.py, shared with checkpoint reading)
_QKV, _ROW, _KV, _COLUMN = FUSED_QKV_NAMES, ROW_NAMES, KV_NAMES, COLUMN_NAMES
_TOWER = re.compile(r"^(.*?(?:vision|visual|audio|image|speech|multi_modal_projector|mm_projector)[^.]*)",
                    re.IGNORECASE)
_MLP_ROW = ("down_proj", "fc2", "c_proj", "dense_4h_to_h", "w2", "wo", "down")
_WINDOWED = {"sliding_attention": "sliding", "chunked_attention": "chunked"}
_MLP_WORDS = ("mlp", "feed_forward", "ffn", "moe", "experts", "block_sparse_moe")


def spec(raw: dict, facts: dict, model_id: str = "") -> ModelSpec:
    """The ModelSpec of this config.json from its derived facts."""
    model_type = raw.get("model_type") if isinstance(raw.get("model_type"), str) else ""
    cfg = Cfg(raw, model_id, model_type)
    text_cfg = cfg.sub("text_config") if isinstance(raw.get("text_config"), dict) else cfg
    dtype = torch_dtype(cfg, text_cfg)
    quant = parse_quantization(cfg)
    text = facts["text"]
    prefix = facts["layers_prefix"]
    cache = facts["cache"]
    n_layers = len(cache) if cache else _count_layers(facts["params"], prefix)
    head_name = facts.get("lm_head") or ""

    outer: list[Tensor] = []
    per_layer: list[list[Tensor]] = [[] for _ in range(n_layers)]
    unknown = 0
    layer_re = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.") if prefix else None
    for name, shape, pdtype, module in facts["params"]:
        t, guessed = _tensor(name, tuple(shape), pdtype, module, head_name, text)
        unknown += t.numel if guessed else 0
        m = layer_re.match(name) if layer_re else None
        if m and int(m.group(1)) < n_layers:
            per_layer[int(m.group(1))].append(t)
        else:
            outer.append(t)

    if not cache:
        raise BadConfig(f"{model_id or 'This model'}: transformers keeps no cache for {facts.get('model_class') or 'it'} "
                        f"(an encoder, or a config built as one), so there is no generation workload to plan.")
    hybrid = 0
    layers = []
    for i in range(n_layers):
        c = cache[i] if i < len(cache) else None
        mixer = _mixer(c, text) if c else None
        if c and c["k_heads"] and (c["conv_elems"] or c["recurrent_elems"]):
            hybrid += 1
        layers.append(LayerSpec(i, mixer, _mlp(per_layer[i], text), tuple(per_layer[i])))

    versions = facts.get("versions", {})
    source = f"transformers {versions.get('transformers', '')}".strip()
    if unknown:
        cfg.warn(f"Derived from {source}: {unknown:,} parameters sit in layers whose tensor-parallel split "
                 f"vramplan cannot name; each GPU is counted as holding them whole (the conservative choice).")
    if hybrid:
        cfg.warn(f"Derived from {source}: {hybrid} layers run attention and a recurrent state side by side; "
                 f"their KV cache is counted, their per-sequence recurrent state is not.")
    towers = tuple(sorted({m.group(1) for t in outer if (m := _TOWER.match(t.name))}))
    # what the generic reader knows of this family's implementations (peft's LoRA targets, fp32 norms
    # ...: models/generic.py LAYOUTS), else the generic values
    layout = LAYOUTS.get(model_type)
    base = layout.traits if layout is not None else replace(
        GENERIC_TRAITS, lora_targets=PEFT_TARGETS_OF_GENERIC.get(model_type))
    traits = replace(base, towers=towers)
    tied = bool(facts.get("tied")) or (not head_name and bool(text.get("tie_word_embeddings")))
    built = make_spec(cfg, family="derived", hidden=int(text.get("hidden_size") or 0),
                      vocab=int(text.get("vocab_size") or 0), layers=layers, tensors=outer, tied=tied,
                      dtype=dtype, quant=quant, max_pos=_int(text.get("max_position_embeddings")),
                      traits=traits)
    if hybrid:      # the one figure the derivation leaves out: the plan is labelled for it
        return replace(built, derived_from=source, confidence="approximate", assumptions=(
            f"{hybrid} layers run attention and a recurrent state side by side; their per-sequence "
            f"recurrent state is not counted.",))
    return replace(built, derived_from=source)


def _int(v) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def _count_layers(params: list, prefix: str) -> int:
    if not prefix:
        return 0
    pat = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    found = [int(m.group(1)) for p in params if (m := pat.match(p[0]))]
    return max(found) + 1 if found else 0


def _role(name: str, shape: tuple, module: str, head_name: str, text: dict) -> str:
    leaf_param = name.rsplit(".", 1)[-1]
    mod = name.rsplit(".", 1)[0] if "." in name else ""
    low = module.lower()
    if head_name and mod == head_name:
        return "lm_head" if leaf_param == "weight" else "bias"
    if "experts" in name.split(".") or ".experts." in name or mod.endswith(".experts"):
        if len(shape) >= 3:
            return "expert"
    if "norm" in low:
        return "norm" if leaf_param == "weight" else "bias"
    if "embedding" in low:
        return "embedding"
    if "router" in low or "gate" in low and "linear" not in low and len(shape) == 2 and \
            shape[0] in (text.get("num_experts"), text.get("num_local_experts"), text.get("n_routed_experts")):
        return "router" if leaf_param == "weight" else "bias"
    if leaf_param == "bias":
        return "bias"
    if "conv" in low:
        return "conv"
    if "linear" in low and len(shape) == 2:
        leaf = mod.rsplit(".", 1)[-1]
        n_exp = {text.get("num_experts"), text.get("num_local_experts"), text.get("n_routed_experts")} - {None}
        if leaf in ("gate", "router") and shape[0] in n_exp:
            return "router"
        return "linear"
    return "other"


def _tensor(name: str, shape: tuple, pdtype: str, module: str, head_name: str,
            text: dict) -> tuple[Tensor, bool]:
    """(Tensor, whether its split is a guess)."""
    role = _role(name, shape, module, head_name, text)
    short = name.removesuffix(".weight") if role != "bias" else name
    mod = name.rsplit(".", 1)[0] if "." in name else name
    leaf = mod.rsplit(".", 1)[-1]
    count = 1
    if role == "expert":
        count, shape = shape[0], shape[1:]
    dtype = "" if pdtype == "bf16" else pdtype
    guessed = False
    if role == "embedding" and shape and shape[0] != text.get("vocab_size"):
        split = "replicated"        # a position table or per-layer embedding: not vocab-parallel
    elif role == "expert":
        split = "row" if "down" in name.rsplit(".", 1)[-1] or leaf in _ROW else "column"
    elif role in ("linear", "bias"):
        if leaf in _QKV:
            split = "qkv"
        elif leaf in _KV:
            split = "kv_heads"
        elif leaf in _ROW:
            split = "row"
        elif leaf in _COLUMN:
            split = "column"
        elif role == "bias" and "norm" in module.lower():
            split = "column"
        else:
            split, guessed = "replicated", role == "linear"
    else:
        split = default_split(short, role)
    return Tensor(name=short, shape=tuple(shape), role=role, split=split, count=count, dtype=dtype), guessed


def _mixer(c: dict, text: dict) -> Attention | Recurrent | None:
    if c["k_heads"]:
        heads = _int(text.get("num_attention_heads")) or c["k_heads"]
        windowed = _WINDOWED.get(c["layer_type"])      # a sliding or chunked layer without a window
        window = c["window"] if windowed else None       # caches as a full one (DynamicCache)
        kind = windowed if windowed and window else "full"
        if c["k_heads"] == 1 and c["v_heads"] == 1 and _int(text.get("kv_lora_rank")) == c["k_dim"]:
            nope, rope = _int(text.get("qk_nope_head_dim")) or 0, c["v_dim"]
            return Attention(kind="mla", num_heads=heads, num_kv_heads=heads, head_dim=nope + rope,
                             v_head_dim=_int(text.get("v_head_dim")) or nope, kv_lora_rank=c["k_dim"],
                             rope_dim=rope)
        v_dim = c["v_dim"] if c["v_heads"] == c["k_heads"] else c["v_heads"] * c["v_dim"] // c["k_heads"]
        return Attention(kind=kind, num_heads=heads, num_kv_heads=c["k_heads"], head_dim=c["k_dim"],
                         v_head_dim=v_dim, window=window)
    if c["conv_elems"] or c["recurrent_elems"]:
        conv = c["conv_shape"]
        channels, kernel = (conv[0], conv[-1]) if len(conv) == 2 else (0, 0)
        rec = c["recurrent_shape"]
        if len(rec) == 3:
            h, d, n = rec
        elif len(rec) == 2:
            h, d, n = rec[0], 1, rec[1]
        else:
            h = d = n = 0
        conv_state = channels * (kernel - 1) if channels else c["conv_elems"]
        return Recurrent(kind="mamba2", conv_state_elems=conv_state, ssm_state_elems=c["recurrent_elems"],
                         num_heads=h, head_dim=d, state_size=n, conv_channels=channels, conv_kernel=kernel,
                         chunk_size=_int(text.get("chunk_size")) or 0)
    return None


def _mlp(tensors: list[Tensor], text: dict) -> Mlp | None:
    experts = [t for t in tensors if t.role == "expert"]
    leaves = {t.name.rsplit(".", 1)[-1] for t in tensors}
    if experts:
        down = next((t for t in experts if "down" in t.leaf or t.leaf in _ROW), experts[-1])
        shared = sum(t.shape[-1] for t in tensors if t.role == "linear" and "shared" in t.name
                     and t.leaf in _MLP_ROW)
        top_k = next((v for k in ("num_experts_per_tok", "moe_topk", "top_k")
                      if (v := _int(text.get(k)))), 1)
        return Mlp(kind="moe", intermediate=down.shape[-1], num_experts=down.count, top_k=top_k,
                   shared_intermediate=shared, gated=True)
    rows = [t for t in tensors if t.role == "linear" and t.leaf in _MLP_ROW
            and any(w in t.name for w in _MLP_WORDS)]
    if not rows:
        return None
    gated = bool(leaves & {"gate_proj", "gate_up_proj", "w1", "wi_0"}) or "gate_up_proj" in leaves
    return Mlp(kind="dense", intermediate=rows[0].shape[-1], gated=gated)
