"""A GGUF file planned before it exists: an HF checkpoint as llama.cpp's converter writes it
(convert_hf_to_gguf.py, conversion/base.py) and as `llama-quantize` turns it into a mix such as
Q4_K_M (src/llama-quant.cpp), tensor by tensor. llama.cpp commit 0c1e57098 throughout;
docs/llama-cpp.md "Quantization mixes" states every rule with its line.

Converter (conversion/base.py prepare_tensors, ~l.1084-1150): 1-D tensors, norms, routers
(ffn_gate_inp) and anything not named ".weight" are written F32; the rest in the --outtype
(auto: the checkpoint's 16-bit type). Names follow gguf-py/gguf/tensor_mapping.py.

Quantizer (llama-quant.cpp):
- which tensors it touches (tensor_allows_quantization, l.287): 2-D/3-D, named "...weight", not
  a norm, not ffn_gate_inp, not positional/token-type embeddings, not ssm_conv1d;
- the mix's default type (llama_ftype_get_default_type, l.880);
- the per-tensor choices (llama_tensor_get_type_impl, l.446-715): output and tied token_embd to
  Q6_K (Q5_K for the IQ1/IQ2 mixes, Q8_0 when the row does not divide into 256-blocks), attn_v
  (and fused qkv / kv_b) up by GQA and position, ffn_down up in the first, last and every third
  layer (use_more_bits), attn_output by mix and expert count, the 8-expert and 70B exceptions;
- tensors visited in llama_model_loader's order (layer, then name: weight_name_comparer in
  llama-model-loader.h), which is what the counters i_attention_wv / i_ffn_down count in;
- the fallback when a row does not divide into the type's blocks (tensor_type_fallback, l.390).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vramplan.errors import BadInput
from vramplan.spec import ModelSpec
from vramplan.spec.gguf import FILE_TYPE_ID, GgufFile, GgufTensor, block, tensor_bytes

# The mixes `--dtype` accepts (llama-quantize's names, lower case) -> llama.cpp file type
MIXES = {name.lower(): name for name in FILE_TYPE_ID}

# llama_ftype_get_default_type: the type a mix gives every tensor it has no rule for
_DEFAULT = {
    "F32": "f32", "F16": "f16", "BF16": "bf16", "Q4_0": "q4_0", "Q4_1": "q4_1", "Q5_0": "q5_0", "Q5_1": "q5_1",
    "Q8_0": "q8_0", "Q1_0": "q1_0", "Q2_0": "q2_0", "MXFP4_MOE": "mxfp4", "Q2_K": "q2_K", "Q2_K_S": "q2_K",
    "IQ3_XS": "iq3_s", "Q3_K_S": "q3_K", "Q3_K_M": "q3_K", "Q3_K_L": "q3_K", "Q4_K_S": "q4_K",
    "Q4_K_M": "q4_K", "Q5_K_S": "q5_K", "Q5_K_M": "q5_K", "Q6_K": "q6_K", "TQ1_0": "tq1_0",
    "TQ2_0": "tq2_0", "IQ2_XXS": "iq2_xxs", "IQ2_XS": "iq2_xs", "IQ2_S": "iq2_xs", "IQ2_M": "iq2_s",
    "IQ3_XXS": "iq3_xxs", "IQ1_S": "iq1_s", "IQ1_M": "iq1_m", "IQ4_NL": "iq4_nl", "IQ4_XS": "iq4_xs",
    "IQ3_S": "iq3_s", "IQ3_M": "iq3_s", "NVFP4": "nvfp4",
}
# tensor_type_fallback: a 256-block type whose row does not divide falls back to a 32-block one
_FALLBACK = {
    "iq1_s": "iq4_nl", "iq1_m": "iq4_nl", "iq2_xxs": "iq4_nl", "iq2_xs": "iq4_nl", "iq2_s": "iq4_nl",
    "iq3_xxs": "iq4_nl", "iq3_s": "iq4_nl", "iq4_xs": "iq4_nl", "q2_0": "q4_0", "q2_K": "q4_0",
    "q3_K": "q4_0", "tq1_0": "q4_0", "tq2_0": "q4_0", "q4_K": "q5_0", "q5_K": "q5_1", "q6_K": "q8_0",
}
_IQ12 = ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M")
_QUANT_FREE = ("f32", "f16", "bf16")


def mix_name(dtype: str) -> str | None:
    """--dtype q4_k_m -> "Q4_K_M"; None when `dtype` is not a llama.cpp mix."""
    return MIXES.get(dtype.strip().lower().replace("-", "_"))


# ------------------------------------------------------------------ HF checkpoint -> GGUF tensors

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+)$")
_LEAF = {   # suffix after "layers.N." -> GGUF name in the block (gguf-py tensor_mapping.py)
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.qkv_proj": "attn_qkv", "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm", "self_attn.sinks": "attn_sinks",
    "self_attn.q_a_proj": "attn_q_a", "self_attn.q_b_proj": "attn_q_b", "self_attn.q_a_layernorm": "attn_q_a_norm",
    "self_attn.kv_a_proj_with_mqa": "attn_kv_a_mqa", "self_attn.kv_a_layernorm": "attn_kv_a_norm",
    "self_attn.kv_b_proj": "attn_kv_b",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    "mlp.gate_up_proj": "ffn_up", "mlp.gate": "ffn_gate_inp", "mlp.router": "ffn_gate_inp",
    "mlp.experts.gate_proj": "ffn_gate_exps", "mlp.experts.up_proj": "ffn_up_exps",
    "mlp.experts.down_proj": "ffn_down_exps", "mlp.experts.gate_up_proj": "ffn_gate_exps",
    "mlp.shared_expert.gate_proj": "ffn_gate_shexp", "mlp.shared_expert.up_proj": "ffn_up_shexp",
    "mlp.shared_expert.down_proj": "ffn_down_shexp", "mlp.shared_experts.gate_proj": "ffn_gate_shexp",
    "mlp.shared_experts.up_proj": "ffn_up_shexp", "mlp.shared_experts.down_proj": "ffn_down_shexp",
    "mlp.shared_expert_gate": "ffn_gate_inp_shexp",
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
}
_TOP = {"embed_tokens": "token_embd", "norm": "output_norm", "lm_head": "output"}


@dataclass(frozen=True)
class _Planned:
    name: str
    shape: tuple[int, ...]     # ggml order
    src: str                   # the converter's type


def convert(model: ModelSpec, outtype: str) -> list[_Planned]:
    """The tensors convert_hf_to_gguf.py writes for `model` at `outtype` (f16, bf16, f32)."""
    out: list[_Planned] = []
    gemma_norms = any(t.name.endswith("pre_feedforward_layernorm") for l in model.layers for t in l.tensors)
    for t in model.all_tensors():
        if any(t.name.startswith(p) for p in model.traits.towers):
            continue                     # vision/audio towers go to a separate mmproj file
        bias = t.name.endswith(".bias") or t.name.endswith("_bias")
        base = t.name.removesuffix(".bias").removesuffix("_bias")
        m = _LAYER.search(base)
        if m:
            bid, rest = m[1], m[2]
            leaf = _LEAF.get(rest)
            if rest == "post_attention_layernorm" and gemma_norms:
                leaf = "post_attention_norm"
            if leaf is None:
                leaf = rest.replace(".", "_")
            name = f"blk.{bid}.{leaf}"
        else:
            name = _TOP.get(base.rsplit(".", 1)[-1], base.replace(".", "_"))
        suffix = ".bias" if bias else ".weight"
        for n, shape in _ggml_shapes(name, t, model):
            src = _converted_type(n + suffix, shape, outtype)
            out.append(_Planned(n + suffix, shape, src))
    return out


def _ggml_shapes(name: str, t, model: ModelSpec) -> list[tuple[str, tuple[int, ...]]]:
    """GGUF name(s) and ggml shape(s) of one checkpoint tensor; fused expert gate_up is split in
    two (the converter writes ffn_gate_exps and ffn_up_exps)."""
    shape = tuple(reversed(t.shape))
    if "_exps" in name or (t.role == "expert"):
        hidden = model.hidden_size
        dims = t.shape if t.count == 1 else (t.count, *t.shape)
        experts = dims[0]
        inner = [d for d in dims[1:] if d != hidden] or [hidden]
        width = inner[0]
        if t.name.endswith("_bias") or t.name.endswith(".bias"):
            if "gate_up" in t.name:
                return [(name, (width // 2, experts)), (name.replace("ffn_gate_exps", "ffn_up_exps"), (width // 2, experts))]
            return [(name, (width, experts))]
        if "gate_up" in t.name:
            half = width // 2
            return [(name, (hidden, half, experts)), (name.replace("ffn_gate_exps", "ffn_up_exps"), (hidden, half, experts))]
        if "down" in t.name:
            return [(name, (width, hidden, experts))]
        return [(name, (hidden, width, experts))]
    return [(name, shape)]


def _converted_type(name: str, shape: tuple[int, ...], outtype: str) -> str:
    if len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return "f32"
    if "ffn_gate_inp" in name or name.endswith(("ssm_conv1d.weight", "position_embd.weight", "token_types.weight")):
        return "f32"
    return outtype


# ------------------------------------------------------------------ llama-quantize's choices

def _category(name: str) -> str:
    """tensor_get_category (llama-quant.cpp l.119): the first match wins."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for key, cat in (("attn_qkv.weight", "attn_v"), ("attn_kv_b.weight", "attn_v"), ("attn_v.weight", "attn_v"),
                     ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
                     ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down")):
        if key in name:
            return cat + ("_qkv" if key == "attn_qkv.weight" else "")
    return "other"


_NEVER = ("_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
          "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "attn_rel_b.weight",
          "position_embd", "token_types", "time_mix_")


def allows_quantization(name: str, n_dims: int) -> bool:
    """tensor_allows_quantization (l.287), the rules that apply to language models."""
    return n_dims >= 2 and name.endswith("weight") and not any(k in name for k in _NEVER)


@dataclass(frozen=True)
class Arch:
    """What the quantizer reads of the model besides tensor names (llama_model hparams)."""

    arch: str                 # GGUF architecture name
    n_layer: int              # hparams.n_layer_all
    n_gqa: int                # n_head / n_head_kv of layer 0
    n_expert: int
    is_70b: bool              # LLM_TYPE_70B: see _is_70b


def _more_bits(i: int, n: int) -> bool:
    """use_more_bits: the first and last eighth, and every third layer between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def choose_types(tensors: list[tuple[str, tuple[int, ...], str]], mix: str, a: Arch) -> list[str]:
    """The type llama-quantize writes for each (name, ggml shape, current type), in the given
    order (which must be llama.cpp's: layer, then name)."""
    default = _DEFAULT[mix]
    n_wv = sum(_category(n).startswith("attn_v") for n, _, _ in tensors)
    tied = not any(n == "output.weight" for n, _, _ in tensors)
    state = {"wv": 0, "down": 0, "gate": 0, "up": 0}
    out = []
    for name, shape, current in tensors:
        if not allows_quantization(name, len(shape)):
            out.append(current)
            continue
        new = default
        if default not in _QUANT_FREE:
            new = _rule(name, shape, new, mix, a, state, n_wv, tied)
            new = _fallback(new, shape[0])
        out.append(new)
    return out


def _fallback(type_: str, ne0: int) -> str:
    blck = block(type_)[0]
    if ne0 % blck == 0:
        return type_
    new = _FALLBACK.get(type_, type_)
    return new if ne0 % block(new)[0] == 0 else "f16"


def _layer_of(name: str, counter: int, a: Arch) -> int:
    """layer_info: MoE models read the layer from the name, others use the running counter."""
    if a.n_expert > 1:
        m = re.match(r"blk\.(\d+)\.", name)
        return int(m[1]) if m else counter
    return counter


def _rule(name: str, shape, new: str, mix: str, a: Arch, st: dict, n_wv: int, tied: bool) -> str:
    cat = _category(name)
    attn_v = cat.startswith("attn_v")
    if cat == "output" or (tied and cat == "token_embd"):
        if mix == "MXFP4_MOE" or a.arch == "falcon" or shape[0] % block(new)[0] != 0:
            return "q8_0"
        if mix in ("IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"):
            return "q5_K"
        return new if new == "q8_0" else "q6_K"
    if mix == "MXFP4_MOE":
        return "mxfp4" if len(shape) > 2 and shape[2] > 1 else "q8_0"
    if cat == "token_embd":
        if mix in ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M"):
            return "q2_K"
        if mix in ("IQ2_S", "IQ2_M", "IQ3_XXS"):
            return "iq3_s"
        if mix in ("TQ1_0", "TQ2_0", "Q2_0"):
            return "q4_K"
        return new
    if mix in _IQ12:
        if attn_v:
            st["wv"] += 1
            if a.n_gqa >= 4 or a.n_expert >= 4:
                return "q4_K"
            return "iq3_s" if mix in ("IQ2_S", "IQ2_M") else "q2_K"
        if a.n_expert == 8 and cat == "attn_k":
            return "q4_K"
        if cat == "ffn_down":
            i = st["down"]
            st["down"] += 1
            if i < a.n_layer // 8:
                return "iq3_s" if mix in ("IQ2_S", "IQ2_M") else "q2_K"
            return new
        if cat == "attn_output":
            if a.n_expert == 8:
                return "q5_K"
            if mix in ("IQ1_S", "IQ1_M"):
                return "iq2_xxs"
            if mix in ("IQ2_S", "IQ2_M"):
                return "iq3_s"
        return new
    if attn_v:
        i = st["wv"]
        if mix == "Q2_K":
            new = "q4_K" if a.n_gqa >= 4 else "q3_K"
        elif mix == "Q2_K_S" and a.n_gqa >= 4:
            new = "q4_K"
        elif mix == "IQ3_XXS":
            new = "q4_K" if a.n_gqa >= 4 else "iq3_s"        # no imatrix
        elif mix in ("IQ3_XS", "IQ3_S") and a.n_gqa >= 4:
            new = "q4_K"
        elif mix == "IQ3_M":
            new = "q4_K"
        elif mix == "Q3_K_M":
            new = "q5_K" if i < 2 else "q4_K"
        elif mix == "Q3_K_L":
            new = "q5_K"
        elif mix in ("IQ4_NL", "IQ4_XS") and a.n_gqa >= 4:
            new = "q5_K"
        elif mix in ("Q4_K_M", "Q5_K_M") and _more_bits(i, n_wv):
            new = "q6_K"
        elif mix == "Q4_K_S" and i < 4:
            new = "q5_K"
        if a.is_70b and new in ("q3_K", "q4_K"):
            new = "q5_K"
        if a.n_expert == 8:
            new = "q8_0"
        st["wv"] += 1
        return new
    if cat == "attn_k":
        if a.n_expert == 8:
            return "q8_0"
        if mix == "IQ3_XS":
            return "iq3_xxs"
        if mix == "IQ3_XXS":
            return "iq2_s"
        return new
    if cat == "attn_q":
        if mix == "IQ3_XS":
            return "iq3_xxs"
        if mix == "IQ3_XXS":
            return "iq2_s"
        return new
    if cat == "ffn_down":
        i, n = _layer_of(name, st["down"], a), a.n_layer
        st["down"] += 1
        if mix == "Q2_K":
            return "q3_K"
        if mix == "Q2_K_S":
            return "q4_K" if i < n // 8 else new
        if mix == "IQ3_XXS":
            return "q4_K" if i < n // 8 else "q3_K"
        if mix == "Q3_K_M":
            if i < n // 16:
                return "q5_K"
            return "q4_K" if a.arch != "falcon" or _more_bits(i, n) else "q3_K"
        if mix == "IQ3_M" and (i < n // 8 or (a.n_expert == 8 and _more_bits(i, n))):
            return "q4_K"
        if mix == "Q3_K_L":
            return "q4_K" if a.arch == "falcon" else "q5_K"
        if mix == "Q4_K_M":
            if a.arch == "falcon":
                return "q6_K" if i < n // 16 else "q5_K" if _more_bits(i, n) else "q4_K"
            return "q6_K" if _more_bits(i, n) else new
        if i < n // 8 and mix in ("IQ4_NL", "IQ4_XS"):
            return "q5_K"
        if mix == "Q5_K_M" and _more_bits(i, n):
            return "q6_K"
        if mix == "Q4_K_S" and a.arch != "falcon" and i < n // 8:
            return "q5_K"
        return new
    if cat == "attn_output":
        if a.arch != "falcon":
            if a.n_expert == 8:
                if mix in ("Q2_K", "IQ3_XS", "IQ3_XXS", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M",
                           "IQ3_S", "IQ3_M", "IQ4_XS"):
                    return "q5_K"
                return new
            return {"Q2_K": "q3_K", "IQ3_XXS": "iq3_s", "Q3_K_M": "q4_K", "Q3_K_L": "q5_K",
                    "IQ3_M": "q4_K"}.get(mix, new)
        return "q4_K" if mix == "Q3_K_L" else new
    if cat in ("ffn_gate", "ffn_up"):
        key = "gate" if cat == "ffn_gate" else "up"
        i, n = _layer_of(name, st[key], a), a.n_layer
        st[key] += 1
        if mix == "IQ3_XS" and n // 8 <= i < 7 * n // 8:
            return "iq3_xxs"
        return new
    return new


# ------------------------------------------------------------------ the planned file

def plan_file(model: ModelSpec, mix: str) -> GgufFile:
    """The GGUF file converting `model` and quantizing it to `mix` would give (exact bytes per
    tensor; tensor data alignment padding, 32 B per tensor at most, is not counted)."""
    outtype = {"BF16": "bf16", "F32": "f32"}.get(mix, "bf16" if model.torch_dtype == "bf16" else "f16")
    planned = convert(model, outtype)
    planned.sort(key=lambda p: (_block_id(p.name), p.name))
    attn = [l.mixer for l in model.layers if l.mixer is not None and hasattr(l.mixer, "num_kv_heads")]
    first = attn[0] if attn else None
    n_gqa = (first.num_heads // max(1, first.num_kv_heads)) if first else 1
    n_expert = max((l.mlp.num_experts for l in model.layers if l.mlp is not None), default=0)
    arch = _gguf_arch(model)
    is_70b = _is_70b(arch, model.num_layers, n_gqa)
    a = Arch(arch=arch, n_layer=model.num_layers, n_gqa=n_gqa, n_expert=n_expert, is_70b=is_70b)
    types = choose_types([(p.name, p.shape, p.src) for p in planned], mix, a)
    tensors = tuple(GgufTensor(p.name, t, p.shape, tensor_bytes(t, p.shape)) for p, t in zip(planned, types))
    return GgufFile(path=f"{model.id} as {mix}", architecture=arch, file_type=mix, tensors=tensors,
                    context_length=model.max_position_embeddings or 0, planned=True)


def _is_70b(arch: str, n_layer: int, n_gqa: int) -> bool:
    """LLM_TYPE_70B as each architecture's load_arch_hparams sets it (the only model type the
    quantizer reads): llama at 80 layers with GQA (src/models/llama.cpp:28, else 65B), qwen2,
    deci and olmo at 80 layers whatever the heads (qwen2.cpp:14, deci.cpp:8, olmo.cpp:10), jais2
    at 68 (jais2.cpp:8)."""
    if arch == "llama":
        return n_layer == 80 and n_gqa > 1
    return (arch, n_layer) in (("qwen2", 80), ("deci", 80), ("olmo", 80), ("jais2", 68))


def _block_id(name: str) -> int:
    m = re.match(r"blk\.(\d+)\.", name)
    return int(m[1]) if m else -1


_ARCH = {"llama": "llama", "mistral": "llama", "mixtral": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
         "qwen3_moe": "qwen3moe", "gemma2": "gemma2", "gemma3": "gemma3", "gemma3_text": "gemma3",
         "gpt_oss": "gpt-oss", "phi3": "phi3", "falcon": "falcon", "deepseek_v3": "deepseek2",
         "deepseek_v2": "deepseek2"}


def _gguf_arch(model: ModelSpec) -> str:
    return _ARCH.get(model.model_type, model.model_type)


def has_gguf_mapping(model: ModelSpec) -> bool:
    """llama.cpp's converter names for this model type are modelled here (_ARCH)."""
    return model.model_type in _ARCH


def check_mix(dtype: str) -> str:
    mix = mix_name(dtype)
    if mix is None:
        raise BadInput(f"{{dtype}} {dtype!r} is not a llama.cpp quantization mix; the mixes are "
                       f"{', '.join(m.lower() for m in MIXES.values())}.")
    return mix
