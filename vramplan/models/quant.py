"""`quantization_config` of a pre-quantized checkpoint -> spec.Quantization.

Each method's keys as transformers' quantizer configs read them (utils/quantization_config.py):
fp8 (FineGrainedFP8Config), mxfp4 (Mxfp4Config), gptq (GPTQConfig), awq (AwqConfig),
bitsandbytes (BitsAndBytesConfig), compressed-tensors (CompressedTensorsConfig, best effort),
fbgemm_fp8 (FbgemmFp8Config). `skip` carries the module patterns left in 16-bit.
"""

from __future__ import annotations

import re

from vramplan.errors import BadConfig
from vramplan.spec import Quantization
from vramplan.models._base import Cfg

SUPPORTED = ("fp8", "mxfp4", "gptq", "awq", "bitsandbytes", "compressed-tensors", "fbgemm_fp8")


def parse_quantization(cfg: Cfg) -> Quantization | None:
    q = cfg.raw("quantization_config", "compression_config")
    if q is None:
        return None
    if not isinstance(q, dict):
        raise BadConfig(f"'quantization_config' in config.json of {cfg.who} must be an object, got {q!r}.")
    method = q.get("quant_method")
    if method is None and (q.get("load_in_4bit") or q.get("load_in_8bit")
                           or q.get("_load_in_4bit") or q.get("_load_in_8bit")):
        method = "bitsandbytes"          # old bitsandbytes configs carry no quant_method
    if method is None and "config_groups" in q:
        method = "compressed-tensors"
    if not isinstance(method, str):
        raise BadConfig(f"'quantization_config' in config.json of {cfg.who} has no quant_method; "
                        f"vramplan reads {', '.join(SUPPORTED)}.")
    m = method.lower()
    skip = _skip_list(q, "modules_to_not_convert")
    if m == "fp8":
        return Quantization(method="fp8", bits=8, block_size=_block(q.get("weight_block_size"), cfg),
                            skip=skip, pre_quantized=True)
    if m == "fbgemm_fp8":
        # FBGEMM stores fp8 weights with one fp32 scale per output row; the per-row scales are
        # a rounding error next to the weights, so it is read as plain fp8.
        cfg.warn("quant_method fbgemm_fp8 is read as fp8 with per-tensor scales (its per-row scales "
                 "add well under 1% to the weights).")
        return Quantization(method="fp8", bits=8, skip=skip, pre_quantized=True)
    if m == "mxfp4":
        return Quantization(method="mxfp4", bits=4, skip=skip, pre_quantized=True)
    if m == "gptq":
        bits = _int(q, ("bits",), cfg, method)
        return Quantization(method="gptq", bits=bits, group_size=_group(q.get("group_size")),
                            desc_act=bool(q.get("desc_act", False)), skip=skip, pre_quantized=True)
    if m == "awq":
        bits = _int(q, ("bits", "w_bit"), cfg, method)
        group = q.get("group_size", q.get("q_group_size"))
        return Quantization(method="awq", bits=bits, group_size=_group(group), skip=skip, pre_quantized=True)
    if m == "bitsandbytes":
        return _bnb(q, cfg)
    if m == "compressed-tensors":
        return _compressed_tensors(q, cfg)
    raise BadConfig(f"quant_method {method!r} in config.json of {cfg.who} is not one vramplan can size; "
                    f"it reads {', '.join(SUPPORTED)}.")


def _int(q: dict, names: tuple[str, ...], cfg: Cfg, method: str) -> int:
    for n in names:
        v = q.get(n)
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise BadConfig(f"quantization_config.{n} in config.json of {cfg.who} must be a positive "
                                f"integer, got {v!r}.")
            return v
    raise BadConfig(f"quantization_config ({method}) in config.json of {cfg.who} has no '{names[0]}'.")


def _group(v) -> int | None:
    """GPTQ/AWQ group size; -1 (or absent) means one group per whole input row."""
    if v is None or isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        return None
    return v


def _block(v, cfg: Cfg) -> tuple[int, int] | None:
    if v is None:
        return None
    if (not isinstance(v, (list, tuple)) or len(v) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v)):
        raise BadConfig(f"quantization_config.weight_block_size in config.json of {cfg.who} must be two "
                        f"positive integers, got {v!r}.")
    return (v[0], v[1])


def _skip_list(q: dict, *keys: str) -> tuple[str, ...]:
    out: list[str] = []
    for k in keys:
        v = q.get(k)
        if isinstance(v, str):
            v = [v]
        if isinstance(v, (list, tuple)):
            out.extend(str(x) for x in v if x)
    return tuple(dict.fromkeys(out))


def _bnb(q: dict, cfg: Cfg) -> Quantization:
    skip = _skip_list(q, "llm_int8_skip_modules", "modules_to_not_convert")
    if q.get("load_in_4bit") or q.get("_load_in_4bit"):
        kind = str(q.get("bnb_4bit_quant_type", "fp4")).lower()   # BitsAndBytesConfig default: fp4
        if kind not in ("nf4", "fp4"):
            raise BadConfig(f"bnb_4bit_quant_type {kind!r} in config.json of {cfg.who} is neither nf4 nor fp4.")
        return Quantization(method=kind, bits=4, double_quant=bool(q.get("bnb_4bit_use_double_quant", False)),
                            skip=skip, pre_quantized=True)
    if q.get("load_in_8bit") or q.get("_load_in_8bit"):
        return Quantization(method="int8", bits=8, skip=skip, pre_quantized=True)
    raise BadConfig(f"the bitsandbytes quantization_config in config.json of {cfg.who} sets neither "
                    f"load_in_4bit nor load_in_8bit.")


def _ct_skip(patterns) -> tuple[str, ...]:
    """compressed-tensors `ignore` entries: module names, or "re:<regex>" patterns. Simple regexes
    are turned into the dotted/wildcard patterns the weights core matches ("re:.*mlp.gate$" ->
    "*mlp.gate"); anything fancier is kept as written."""
    out = []
    for p in patterns or ():
        p = str(p)
        if p.startswith("re:"):
            r = p[3:].lstrip("^").rstrip("$")
            r = r.replace(".*", "*").replace("\\.", ".")
            if re.fullmatch(r"[\w.*]+", r):
                p = r
        out.append(p)
    return tuple(out)


def _compressed_tensors(q: dict, cfg: Cfg) -> Quantization:
    """Best effort: the first config group's weight scheme decides the method."""
    skip = _ct_skip(q.get("ignore"))
    groups = q.get("config_groups") or {}
    weights = None
    if isinstance(groups, dict):
        for g in groups.values():
            if isinstance(g, dict) and isinstance(g.get("weights"), dict):
                weights = g["weights"]
                break
    if weights is None:
        cfg.warn("compressed-tensors quantization_config has no weight scheme vramplan can read; "
                 "the weights are sized as unquantized.")
        return Quantization(method="none", skip=skip, pre_quantized=True)
    bits = weights.get("num_bits", 8)
    typ = str(weights.get("type", "int")).lower()
    strategy = str(weights.get("strategy", "")).lower()
    group = _group(weights.get("group_size"))
    if len(groups) > 1:
        cfg.warn("compressed-tensors checkpoint has several quantization groups; vramplan sizes every "
                 "quantized layer with the first group's scheme.")
    if typ == "float" and bits == 8:
        block = None
        if strategy == "block":
            block = _block(weights.get("block_structure"), cfg)
        return Quantization(method="fp8", bits=8, block_size=block, skip=skip, pre_quantized=True)
    if typ == "float" and bits == 4:
        cfg.warn("compressed-tensors FP4 (NVFP4) weights are sized as MXFP4 (4-bit values, one 8-bit "
                 "scale per 32); NVFP4 keeps one per 16, about 3% more.")
        return Quantization(method="mxfp4", bits=4, skip=skip, pre_quantized=True)
    if typ == "int" and bits == 8 and strategy in ("channel", "tensor", ""):
        return Quantization(method="int8", bits=8, skip=skip, pre_quantized=True)
    if typ == "int" and bits in (2, 3, 4, 8):
        # pack-quantized: int32-packed values + per-group scales (+ zero points when asymmetric),
        # no g_idx: the AWQ layout is the closest one the weights core knows.
        cfg.warn(f"compressed-tensors int{bits} weights are sized with the AWQ layout (packed values, "
                 f"per-group scales and zeros).")
        return Quantization(method="awq", bits=bits, group_size=group, skip=skip, pre_quantized=True)
    raise BadConfig(f"the compressed-tensors scheme ({typ}{bits}) in config.json of {cfg.who} is not one "
                    f"vramplan can size.")
