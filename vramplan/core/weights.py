"""Bytes of the weights, tensor by tensor, for every storage format.

Each format's layout is written out per tensor (packed values + scales + zeros + indices) so
the total is exact for the formats whose layout is fixed; docs/methodology.md gives the source
of every layout. Quantizers touch only matmul weights (roles "linear" and "expert") that no
skip pattern names; embeddings, lm_head, norms, biases and routers keep the 16-bit base dtype.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import lru_cache

from ..errors import BadInput
from ..spec import ModelSpec, Quantization, Tensor
from ..units import ceil_div
from .dtypes import FLOAT_BYTES

QUANTIZABLE_ROLES = ("linear", "expert")
NF4_BLOCK = 64            # bitsandbytes 4-bit blocksize (absmax per 64 values)
NF4_DQ_BLOCK = 256        # double quantization: one fp32 absmax per 256 first-level absmax
MXFP4_BLOCK = 32          # OCP MX: one E8M0 (uint8) scale per 32 FP4 values
DEFAULT_GROUP = 128       # GPTQ/AWQ group size used by --dtype int4 / gptq / awq

# What `--dtype X` means for a checkpoint that is not already quantized.
_ON_THE_FLY = {
    "fp8": Quantization("fp8", bits=8),                     # vLLM online FP8: per-tensor scale
    "int8": Quantization("int8", bits=8),                   # bitsandbytes LLM.int8
    "int4": Quantization("gptq", bits=4, group_size=DEFAULT_GROUP),
    "gptq": Quantization("gptq", bits=4, group_size=DEFAULT_GROUP),
    "awq": Quantization("awq", bits=4, group_size=DEFAULT_GROUP),
    "nf4": Quantization("nf4", bits=4, double_quant=True),   # QLoRA's recipe: NF4 + double quant
    "fp4": Quantization("fp4", bits=4, double_quant=True),
    "mxfp4": Quantization("mxfp4", bits=4),
}


@dataclass(frozen=True)
class WeightFormat:
    """A resolved storage format: quantization (or "none") plus the 16-bit base dtype."""

    quant: Quantization
    base: str               # dtype of everything the quantizer leaves alone
    label: str              # for display: "bf16", "nf4 (double quant) + bf16"


@dataclass(frozen=True)
class WeightReport:
    total: int
    quantized_params: int
    kept_params: int        # params left in the base dtype
    by_role: dict[str, int]


def resolve_format(model: ModelSpec, dtype: str) -> WeightFormat:
    """Turn --dtype into a storage format. "auto" means what the checkpoint holds."""
    base16 = "bf16" if model.torch_dtype == "fp32" else model.torch_dtype
    if dtype == "auto":
        q = model.quantization
        if q is not None and q.method != "none":
            return WeightFormat(q, base16, _label(q, base16))
        return WeightFormat(Quantization("none", bits=8 * FLOAT_BYTES[model.torch_dtype]),
                            model.torch_dtype, model.torch_dtype)
    if dtype in ("fp32", "bf16", "fp16"):
        return WeightFormat(Quantization("none", bits=8 * FLOAT_BYTES[dtype]), dtype, dtype)
    if dtype not in _ON_THE_FLY:
        raise BadInput(f"--dtype {dtype!r} is not a weight format vramplan knows.")
    q = _ON_THE_FLY[dtype]
    # Keep the checkpoint's own skip list (e.g. gpt-oss keeps attention and router in bf16).
    if model.quantization is not None and model.quantization.skip:
        q = Quantization(**{**q.__dict__, "skip": model.quantization.skip})
    return WeightFormat(q, base16, _label(q, base16))


def _label(q: Quantization, base: str) -> str:
    extra = ""
    if q.method in ("gptq", "awq"):
        extra = f" int{q.bits} g{q.group_size}"
    elif q.method == "fp8" and q.block_size:
        extra = f" block {q.block_size[0]}x{q.block_size[1]}"
    elif q.method in ("nf4", "fp4") and q.double_quant:
        extra = " (double quant)"
    return f"{q.method}{extra} + {base}"


@lru_cache(maxsize=4096)
def _compile_skip(pattern: str) -> re.Pattern:
    """A skip entry matches a module and everything under it: "lm_head", "model.layers.*.self_attn",
    or a bare leaf name such as "gate" (transformers matches these as name fragments)."""
    if "*" in pattern or "." in pattern:
        body = "".join(".*" if c == "*" else re.escape(c) for c in pattern)
        return re.compile(rf"(^|.*\.){body}(\..*)?$")
    return re.compile(rf"(^|.*\.){re.escape(pattern)}(\..*)?$")


def is_skipped(name: str, skip: tuple[str, ...]) -> bool:
    return any(_compile_skip(p).match(name) or fnmatchcase(name, p) for p in skip)


def quantizes(t: Tensor, q: Quantization) -> bool:
    return q.method != "none" and t.role in QUANTIZABLE_ROLES and not is_skipped(t.name, q.skip)


def _matrix(t: Tensor) -> tuple[int, int, int]:
    """(matrices, out, in) of a weight: leading dims and `count` are stacked matrices."""
    *lead, out, inp = t.shape if len(t.shape) >= 2 else (1, t.shape[0])
    n = t.count
    for d in lead:
        n *= d
    return n, out, inp


def quantized_bytes(t: Tensor, q: Quantization) -> int:
    """Bytes of one quantizable tensor under `q`, scales and metadata included."""
    n, out, inp = _matrix(t)
    numel = n * out * inp
    m = q.method
    if m == "fp8":
        if q.block_size:
            bo, bi = q.block_size
            scales = n * ceil_div(out, bo) * ceil_div(inp, bi)
        else:
            scales = n                                   # one fp32 scale per tensor
        return numel + 4 * scales
    if m == "int8":
        return numel + 4 * n * out                       # int8 values + fp32 row scale (SCB)
    if m in ("gptq", "awq"):
        bits = q.bits
        group = q.group_size if q.group_size and q.group_size > 0 else inp
        groups = ceil_div(inp, group)
        qweight = n * ceil_div(inp * bits, 32) * out * 4           # packed into int32
        qzeros = n * groups * ceil_div(out * bits, 32) * 4         # packed into int32
        scales = n * groups * out * 2                              # fp16
        g_idx = n * inp * 4 if m == "gptq" else 0                  # int32 per input channel
        return qweight + qzeros + scales + g_idx
    if m in ("nf4", "fp4"):
        per = out * inp
        blocks = ceil_div(per, NF4_BLOCK)
        absmax = blocks + 4 * ceil_div(blocks, NF4_DQ_BLOCK) if q.double_quant else 4 * blocks
        return n * (ceil_div(per, 2) + absmax)
    if m == "mxfp4":
        return numel // 2 + ceil_div(numel, MXFP4_BLOCK)
    raise BadInput(f"quantization method {m!r} has no byte layout in vramplan yet.")


def weight_bytes(model: ModelSpec, fmt: WeightFormat, divisor=None) -> WeightReport:
    """Bytes of every parameter under `fmt`. `divisor(t)` splits a tensor across ranks
    (tensor parallelism); None means one GPU holds it all."""
    base = FLOAT_BYTES[fmt.base]
    total = qparams = kept = 0
    by_role: dict[str, int] = {}
    for t in model.all_tensors():
        if quantizes(t, fmt.quant):
            b = quantized_bytes(t, fmt.quant)
            qparams += t.numel
        else:
            b = t.numel * base
            kept += t.numel
        if divisor is not None:
            b = ceil_div(b, divisor(t))
        by_role[t.role] = by_role.get(t.role, 0) + b
        total += b
    return WeightReport(total, qparams, kept, by_role)
