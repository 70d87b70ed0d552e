"""`quantization_config` of a pre-quantized checkpoint -> spec.Quantization.

Each method's keys as transformers' quantizer configs read them (utils/quantization_config.py):
fp8 (FineGrainedFP8Config), mxfp4 (Mxfp4Config), gptq (GPTQConfig), awq (AwqConfig),
bitsandbytes (BitsAndBytesConfig), compressed-tensors (CompressedTensorsConfig, best effort),
fbgemm_fp8 (FbgemmFp8Config). `skip` carries the module patterns left in 16-bit.

Values are checked as transformers' configs check them (GPTQConfig.post_init: bits in 2, 3, 4, 8;
group_size -1 or positive), plus what the kernels need: a group size that divides hidden_size,
the input width of every quantized q/k/v and gate/up projection (vLLM's GPTQ and AWQ linear
methods refuse an input size that is not a multiple of it).
"""

from __future__ import annotations

import re

from vramplan.errors import BadConfig
from vramplan.spec import Quantization
from vramplan.models._base import Cfg, show
from vramplan.models.bounds import WIDTH, describe

SUPPORTED = ("fp8", "mxfp4", "gptq", "awq", "bitsandbytes", "compressed-tensors", "fbgemm_fp8")
PACKED_BITS = (2, 3, 4, 8)          # GPTQConfig / AwqConfig post_init
DEFAULT_GROUP = 128                 # GPTQConfig / AwqConfig: group_size=128 when the file names none
# Skip patterns: many more, or longer, than any checkpoint lists (DeepSeek-style files list a few
# hundred module names of under 100 characters) are not a skip list. The same bounds as the
# matcher's own (memory/weights.py MAX_SKIP_PATTERNS, MAX_SKIP_PATTERN_CHARS), checked here first
# so a config is refused while it is read; docs/validation.md gives the reasons.
MOST_SKIP_PATTERNS = 20_000
LONGEST_SKIP_PATTERN = 1_024


def parse_quantization(cfg: Cfg) -> Quantization | None:
    q = cfg.raw("quantization_config", "compression_config")
    if q is None:
        return None
    if not isinstance(q, dict):
        raise BadConfig(f"'quantization_config' in config.json of {cfg.who} must be an object, got {show(q)}.")
    method = q.get("quant_method")
    if method is None and (q.get("load_in_4bit") or q.get("load_in_8bit")
                           or q.get("_load_in_4bit") or q.get("_load_in_8bit")):
        method = "bitsandbytes"          # old bitsandbytes configs carry no quant_method
    if method is None and "config_groups" in q:
        method = "compressed-tensors"
    if not isinstance(method, str):
        raise BadConfig(f"'quantization_config' in config.json of {cfg.who} has no quant_method; "
                        f"vramplan reads {', '.join(SUPPORTED)}.")
    hidden = cfg.raw("hidden_size", "n_embd", "n_embed")
    hidden = hidden if isinstance(hidden, int) and not isinstance(hidden, bool) else None
    m = method.lower()
    skip = _skip_list(q, "modules_to_not_convert", cfg=cfg)
    if m == "fp8":
        return Quantization(method="fp8", bits=8, block_size=_block(q.get("weight_block_size"), cfg, "weight_block_size"),
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
        bits = _bits(q, ("bits",), cfg, "GPTQ")
        return Quantization(method="gptq", bits=bits, group_size=_group(q, ("group_size",), cfg, hidden),
                            desc_act=_flag(q, "desc_act", cfg), skip=skip, pre_quantized=True)
    if m == "awq":
        bits = _bits(q, ("bits", "w_bit"), cfg, "AWQ")
        group = _group(q, ("group_size", "q_group_size"), cfg, hidden)
        return Quantization(method="awq", bits=bits, group_size=group, skip=skip, pre_quantized=True)
    if m == "bitsandbytes":
        return _bnb(q, cfg)
    if m == "compressed-tensors":
        return _compressed_tensors(q, cfg, hidden)
    raise BadConfig(f"quant_method {show(method)} in config.json of {cfg.who} is not one vramplan can size; "
                    f"it reads {', '.join(SUPPORTED)}.")


def _first(q: dict, names: tuple[str, ...]) -> tuple[str, object]:
    for n in names:
        if q.get(n) is not None:
            return n, q[n]
    return names[0], None


def _bits(q: dict, names: tuple[str, ...], cfg: Cfg, method: str) -> int:
    """Bits per packed weight: 2, 3, 4 or 8 (GPTQConfig.post_init; AwqConfig inherits it)."""
    n, v = _first(q, names)
    if v is None:
        raise BadConfig(f"quantization_config ({method}) in config.json of {cfg.who} has no '{names[0]}'.")
    if isinstance(v, bool) or not isinstance(v, int) or v not in PACKED_BITS:
        raise BadConfig(f"quantization_config.{n} in config.json of {cfg.who} is {show(v)}; {method} packs "
                        f"2, 3, 4 or 8 bits per weight (transformers' GPTQConfig refuses others).")
    return v


def _group(q: dict, names: tuple[str, ...], cfg: Cfg, hidden: int | None,
           default: int | None = DEFAULT_GROUP, where: str = "quantization_config") -> int | None:
    """GPTQ/AWQ group size: -1 means one group per whole input row (None here); absent means
    transformers' default 128. A group must divide hidden_size, the input of the quantized q/k/v
    and gate/up projections."""
    n, v = _first(q, names)
    if v is None:
        v = default
        if v is None:
            return None
    elif isinstance(v, bool) or not isinstance(v, int) or v == 0 or v < -1:
        raise BadConfig(f"{where}.{n} in config.json of {cfg.who} is {show(v)}; it must be -1 "
                        f"(one group per row) or a positive number of weights per group.")
    if v == -1:
        return None
    if v > WIDTH.limit:
        raise BadConfig(f"{where}.{n} in config.json of {cfg.who} is {show(v)}; vramplan refuses "
                        f"{describe(WIDTH)}.")
    if hidden and hidden % v:
        raise BadConfig(f"{where}.{n} ({v:,}) in config.json of {cfg.who} does not divide "
                        f"hidden_size ({hidden:,}), the input width of the quantized projections, so the "
                        f"weights cannot split into whole groups.")
    return v


def _flag(q: dict, key: str, cfg: Cfg) -> bool:
    v = q.get(key)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise BadConfig(f"quantization_config.{key} in config.json of {cfg.who} must be true or false, "
                        f"got {show(v)}.")
    return v


def _block(v, cfg: Cfg, key: str) -> tuple[int, int] | None:
    if v is None:
        return None
    if (not isinstance(v, (list, tuple)) or len(v) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) and 0 < x <= WIDTH.limit for x in v)):
        raise BadConfig(f"quantization_config.{key} in config.json of {cfg.who} must be two positive "
                        f"integers of at most {WIDTH.limit:,}, got {show(v)}.")
    return (v[0], v[1])


def _skip_list(q: dict, *keys: str, cfg: Cfg) -> tuple[str, ...]:
    """Module patterns left unquantized, each a string. Runs of '*' are one '*' (the same glob)
    so that no pattern makes the matcher backtrack over every split of a name ("****...Z")."""
    out: list[str] = []
    for k in keys:
        v = q.get(k)
        if v is None:
            continue
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise BadConfig(f"quantization_config.{k} in config.json of {cfg.who} must be a list of module "
                            f"names, got {show(v)}.")
        if len(v) > MOST_SKIP_PATTERNS or any(len(x) > LONGEST_SKIP_PATTERN for x in v):
            raise BadConfig(f"quantization_config.{k} in config.json of {cfg.who} holds {len(v):,} module "
                            f"patterns of up to {max(map(len, v), default=0):,} characters; vramplan reads at most "
                            f"{MOST_SKIP_PATTERNS:,} patterns of at most {LONGEST_SKIP_PATTERN} characters, far "
                            f"beyond any checkpoint's list.")
        out.extend(re.sub(r"\*{2,}", "*", x) for x in v if x)
    return tuple(dict.fromkeys(out))


def _bnb(q: dict, cfg: Cfg) -> Quantization:
    skip = _skip_list(q, "llm_int8_skip_modules", "modules_to_not_convert", cfg=cfg)
    for key in ("load_in_4bit", "_load_in_4bit", "load_in_8bit", "_load_in_8bit"):
        _flag(q, key, cfg)          # BitsAndBytesConfig.post_init: "load_in_4bit must be a boolean"
    if q.get("load_in_4bit") or q.get("_load_in_4bit"):
        kind = q.get("bnb_4bit_quant_type") or "fp4"      # BitsAndBytesConfig default: fp4
        if not isinstance(kind, str) or kind.lower() not in ("nf4", "fp4"):
            raise BadConfig(f"quantization_config.bnb_4bit_quant_type in config.json of {cfg.who} is "
                            f"{show(kind)}, neither nf4 nor fp4.")
        return Quantization(method=kind.lower(), bits=4, double_quant=_flag(q, "bnb_4bit_use_double_quant", cfg),
                            skip=skip, pre_quantized=True)
    if q.get("load_in_8bit") or q.get("_load_in_8bit"):
        return Quantization(method="int8", bits=8, skip=skip, pre_quantized=True)
    raise BadConfig(f"the bitsandbytes quantization_config in config.json of {cfg.who} sets neither "
                    f"load_in_4bit nor load_in_8bit.")


def _ct_skip(q: dict, cfg: Cfg) -> tuple[str, ...]:
    """compressed-tensors `ignore` entries: module names, or "re:<regex>" patterns. Simple regexes
    are turned into the dotted/wildcard patterns the weights core matches ("re:.*mlp.gate$" ->
    "*mlp.gate"); anything fancier is kept as written (and matched as text, never run as a regex)."""
    out = []
    for p in _skip_list(q, "ignore", cfg=cfg):
        if p.startswith("re:"):
            r = p[3:].lstrip("^").rstrip("$")
            r = r.replace(".*", "*").replace("\\.", ".")
            if re.fullmatch(r"[\w.*]+", r):
                p = re.sub(r"\*{2,}", "*", r)
        out.append(p)
    return tuple(dict.fromkeys(out))


def _compressed_tensors(q: dict, cfg: Cfg, hidden: int | None) -> Quantization:
    """Best effort: the first config group's weight scheme decides the method."""
    skip = _ct_skip(q, cfg)
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
    where = "quantization_config.config_groups"
    bits = weights.get("num_bits", 8)
    typ, strategy = weights.get("type", "int"), weights.get("strategy") or ""
    if isinstance(bits, bool) or not isinstance(bits, int) or not isinstance(typ, str) or not isinstance(strategy, str):
        raise BadConfig(f"the compressed-tensors weight scheme in config.json of {cfg.who} must give num_bits "
                        f"as an integer and type and strategy as strings, got {show(bits)}, {show(typ)} and "
                        f"{show(strategy)}.")
    typ, strategy = typ.lower(), strategy.lower()
    group = _group(weights, ("group_size",), cfg, hidden, default=None, where=where)
    if len(groups) > 1:
        cfg.warn("compressed-tensors checkpoint has several quantization groups; vramplan sizes every "
                 "quantized layer with the first group's scheme.")
    if typ == "float" and bits == 8:
        block = None
        if strategy == "block":
            block = _block(weights.get("block_structure"), cfg, "config_groups.block_structure")
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
    raise BadConfig(f"the compressed-tensors scheme ({show(typ)}, {show(bits)} bits) in config.json of "
                    f"{cfg.who} is not one vramplan can size.")
