"""Bytes of the weights, tensor by tensor, for every storage format.

Each format's layout is written out per tensor (packed values + scales + zeros + indices) so
the total is exact for the formats whose layout is fixed; docs/methodology.md gives the source
of every layout. Quantizers touch only matmul weights (roles "linear" and "expert") that no
skip pattern names; embeddings, lm_head, norms, biases and routers keep the 16-bit base dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from functools import lru_cache

from vramplan.errors import BadInput
from vramplan.spec import ModelSpec, Quantization, Tensor
from vramplan.spec.checkpoint import PLAIN_FLOATS
from vramplan.units import ceil_div
from vramplan.memory.dtypes import FLOAT_BYTES
from vramplan.memory.overhead import block_rounded
from vramplan.memory.runtime import RuntimeLayout

QUANTIZABLE_ROLES = ("linear", "expert")
NF4_BLOCK = 64            # bitsandbytes 4-bit blocksize (absmax per 64 values)
NF4_DQ_BLOCK = 256        # double quantization: one fp32 absmax per 256 first-level absmax
NF4_CODE_VALUES = 16      # the NF4/FP4 lookup table, fp32, one per quantized matrix
NF4_DQ_CODE_VALUES = 256  # the 8-bit dynamic map of the nested absmax, fp32, one per model
MXFP4_BLOCK = 32          # OCP MX: one E8M0 (uint8) scale per 32 FP4 values
DEFAULT_GROUP = 128       # GPTQ/AWQ group size used by --dtype int4 / gptq / awq

# What `--dtype X` means for a checkpoint that is not already quantized.
_ON_THE_FLY = {
    "fp8": Quantization(method="fp8", bits=8),                     # vLLM online FP8: per-tensor scale
    "int8": Quantization(method="int8", bits=8),                   # bitsandbytes LLM.int8
    "int4": Quantization(method="gptq", bits=4, group_size=DEFAULT_GROUP),
    "gptq": Quantization(method="gptq", bits=4, group_size=DEFAULT_GROUP),
    "awq": Quantization(method="awq", bits=4, group_size=DEFAULT_GROUP),
    "nf4": Quantization(method="nf4", bits=4, double_quant=True),   # QLoRA's recipe: NF4 + double quant
    "fp4": Quantization(method="fp4", bits=4, double_quant=True),
    "mxfp4": Quantization(method="mxfp4", bits=4),
}


@dataclass(frozen=True)
class WeightFormat:
    """A resolved storage format: quantization (or "none") plus the 16-bit base dtype."""

    quant: Quantization
    base: str               # dtype of everything the quantizer leaves alone
    label: str              # for display: "bf16", "nf4 (double quant) + bf16"
    as_stored: bool = False # the checkpoint's own format (--dtype auto): tensors read from its
                            # safetensors headers (Tensor.stored) take their stored bytes


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
        stored = model.weights_from == "checkpoint"
        if q is not None and q.method != "none":
            return WeightFormat(q, base16, _label(q, base16), as_stored=stored)
        return WeightFormat(Quantization(method="none", bits=8 * FLOAT_BYTES[model.torch_dtype]),
                            model.torch_dtype, model.torch_dtype, as_stored=stored)
    if dtype in ("fp32", "bf16", "fp16"):
        return WeightFormat(Quantization(method="none", bits=8 * FLOAT_BYTES[dtype]), dtype, dtype)
    if dtype not in _ON_THE_FLY:
        raise BadInput(f"{{dtype}} {dtype!r} is not a weight format vramplan knows.")
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


# Bounds on a checkpoint's skip list (quantization_config.modules_to_not_convert and kin): real
# entries are module names or short globs ("model.layers.*.mlp.router", 25 characters; the
# longest tensor name of a bundled model is 73), and lists naming modules one by one run to one
# entry per layer and module kind (even one per expert per layer, 128 x 61, fits). Matching
# costs entries x tensors. docs/validation.md, "Skip patterns".
MAX_SKIP_PATTERN_CHARS = 1024
MAX_SKIP_PATTERNS = 20_000


@lru_cache(maxsize=4096)
def _compile_skip(pattern: str) -> tuple[tuple[str, ...], bool]:
    """A skip entry as (its literal pieces between '*', whether fnmatch's '?' and '[...]' apply).

    An entry matches a module and everything under it: "lm_head", "model.layers.*.self_attn", or
    a bare leaf name such as "gate" (transformers matches these as name fragments): some run of
    whole dotted segments of the name matches the entry, '*' standing for any text, dots
    included. An entry with '?' or '[' also matches as an fnmatch glob of the whole name."""
    if len(pattern) > MAX_SKIP_PATTERN_CHARS:
        raise BadInput(f"A module pattern in the checkpoint's quantization_config is {len(pattern):,} "
                       f"characters long; vramplan reads patterns of at most {MAX_SKIP_PATTERN_CHARS} "
                       f"(module names are far shorter).")
    return tuple(pattern.split("*")), ("?" in pattern or "[" in pattern)


def _segments_match(name: str, pieces: tuple[str, ...]) -> bool:
    """Some run of whole dotted segments of `name` matches the glob '*'.join(pieces).

    Without backtracking: the run starts at the first segment start where the first piece fits
    (an earlier start leaves at least as much room), the middle pieces take their leftmost places
    (str.find), and any segment end that leaves room for the last piece closes it. Time grows
    with len(name) times the number of pieces, never exponentially, whatever the pattern."""
    starts = [0] + [i + 1 for i, c in enumerate(name) if c == "."]
    ends = [i for i, c in enumerate(name) if c == "."] + [len(name)]
    first, last = pieces[0], pieces[-1]
    if len(pieces) == 1:
        return any(name.startswith(first, s) and s + len(first) in ends for s in starts)
    start = next((s for s in starts if name.startswith(first, s)), None)
    if start is None:
        return False
    pos = start + len(first)
    for piece in pieces[1:-1]:
        found = name.find(piece, pos)
        if found < 0:
            return False
        pos = found + len(piece)
    return any(e - len(last) >= pos and name.startswith(last, e - len(last)) for e in ends)


def is_skipped(name: str, skip: tuple[str, ...]) -> bool:
    """True when an entry of the skip list names module `name` or a module above it.

    fnmatchcase is used only for '?' and '[...]', and is safe from catastrophic backtracking
    since CPython 3.9 (bpo-40480: its regexes commit to each '*' piece's first match)."""
    if len(skip) > MAX_SKIP_PATTERNS:
        raise BadInput(f"The checkpoint's quantization_config lists {len(skip):,} modules to keep "
                       f"unquantized; vramplan reads at most {MAX_SKIP_PATTERNS:,}.")
    for p in skip:
        pieces, glob = _compile_skip(p)
        if _segments_match(name, pieces) or (glob and fnmatchcase(name, p)):
            return True
    return False


def quantizes(t: Tensor, q: Quantization) -> bool:
    return (q.method != "none" and t.role in QUANTIZABLE_ROLES and t.role not in q.keep_roles
            and not is_skipped(t.name, q.skip))


BNB_METHODS = ("nf4", "fp4", "int8")


def transformers_bnb(model: ModelSpec, fmt: WeightFormat, major: int) -> tuple[WeightFormat, tuple[str, ...]]:
    """What transformers' on-the-fly bitsandbytes conversion really reaches, and warnings.

    transformers 5's `replace_with_bnb_linear` (integrations/bitsandbytes.py) converts a module
    only when `type(module) is nn.Linear` (or GPT-2's Conv1D); 4.x tested `isinstance`. So under
    5.x the fused 3-D MoE expert parameters (not modules at all) and nn.Linear subclasses such as
    Falcon's `FalconLinear` keep the 16-bit dtype; under 4.x experts were per-expert nn.Linear
    modules and were quantized. vLLM and pre-quantized checkpoints are not affected."""
    q = fmt.quant
    if q.method not in BNB_METHODS or q.pre_quantized or major < 5:
        return fmt, ()
    cls, names = model.traits.hf_linear_subclass, model.traits.hf_linear_subclass_modules
    new = replace(fmt, quant=replace(q, keep_roles=q.keep_roles + ("expert",), skip=q.skip + tuple(names)))
    kept = [t for t in model.all_tensors() if quantizes(t, q) and not quantizes(t, new.quant)]
    if not kept:
        return fmt, ()
    experts = sum(t.numel for t in kept if t.role == "expert")
    linears = sum(t.numel for t in kept if t.role != "expert")
    what = " and ".join(x for x in (experts and f"the fused MoE experts ({experts / 1e9:.2f} B params)",
                                    linears and f"every {cls} layer ({linears / 1e9:.2f} B params)") if x)
    warning = (f"transformers {major} + bitsandbytes {q.method} leave {what} in {fmt.base}: "
               f"replace_with_bnb_linear converts exact nn.Linear modules only (transformers 4 "
               f"quantized them; plan that with --transformers 4).")
    return new, (warning,)


def _matrix(t: Tensor) -> tuple[int, int, int]:
    """(matrices, out, in) of a weight: leading dims and `count` are stacked matrices."""
    *lead, out, inp = t.shape if len(t.shape) >= 2 else (1, t.shape[0])
    n = t.count
    for d in lead:
        n *= d
    return n, out, inp


def stored_parts(t: Tensor, q: Quantization) -> tuple[tuple[int, int], ...]:
    """The tensors one quantizable weight is stored as under `q`: (bytes, how many) each.
    Each is its own allocation, so each is rounded to the allocator's block on the GPU."""
    n, out, inp = _matrix(t)
    numel = n * out * inp
    m = q.method
    if m == "fp8":
        if q.block_size:
            bo, bi = q.block_size
            scales = n * ceil_div(out, bo) * ceil_div(inp, bi)
        else:
            scales = n                                   # one fp32 scale per tensor
        return (numel, 1), (4 * scales, 1)
    if m == "int8":
        return (numel, 1), (4 * n * out, 1)              # int8 values + fp32 row scale (SCB)
    if m in ("gptq", "awq"):
        bits = q.bits
        group = q.group_size if q.group_size and q.group_size > 0 else inp
        groups = ceil_div(inp, group)
        parts = [(n * ceil_div(inp * bits, 32) * out * 4, 1),     # qweight, packed into int32
                 (n * groups * ceil_div(out * bits, 32) * 4, 1),  # qzeros, packed into int32
                 (n * groups * out * 2, 1)]                       # scales, fp16
        if m == "gptq":
            parts.append((n * inp * 4, 1))                        # g_idx, int32 per input channel
        return tuple(parts)
    if m in ("nf4", "fp4"):
        # per matrix (bitsandbytes quantizes each Linear4bit on its own, functional.quantize_4bit):
        # the packed codes, the absmax (uint8 + fp32 nested absmax per 256 with double quant),
        # the 16-entry fp32 code table (get_4bit_type) and, with double quant, the fp32 offset
        per = out * inp
        blocks = ceil_div(per, NF4_BLOCK)
        if q.double_quant:
            return ((ceil_div(per, 2), n), (blocks, n), (4 * ceil_div(blocks, NF4_DQ_BLOCK), n),
                    (4 * NF4_CODE_VALUES, n), (4, n))
        return (ceil_div(per, 2), n), (4 * blocks, n), (4 * NF4_CODE_VALUES, n)
    if m == "mxfp4":
        return (numel // 2, 1), (ceil_div(numel, MXFP4_BLOCK), 1)
    raise BadInput(f"quantization method {m!r} has no byte layout in vramplan yet.")


def quantized_bytes(t: Tensor, q: Quantization) -> int:
    """Bytes of one quantizable tensor under `q`, scales and metadata included, as on disk."""
    return sum(b * k for b, k in stored_parts(t, q))


def allocated_bytes(t: Tensor, q: Quantization, base_bytes: int, *, layout: RuntimeLayout,
                    stored: bool = False) -> int:
    """Bytes one weight takes in the CUDA caching allocator: each stored tensor rounded up to
    512 B (a Qwen3 q_norm of 256 B costs 512). Under the "transformers" layout a tensor it
    keeps in a wider dtype (Tensor.dtype) takes that width; vLLM loads it in the base dtype.
    `stored` (WeightFormat.as_stored): a tensor read from the checkpoint takes its parts' bytes."""
    if stored and t.stored:
        return sum(block_rounded(b) for b in loaded_parts(t, q, base_bytes, layout=layout))
    if quantizes(t, q):
        return sum(block_rounded(b) * k for b, k in stored_parts(t, q))
    if layout == "transformers" and t.dtype:
        base_bytes = max(base_bytes, FLOAT_BYTES[t.dtype])
    return block_rounded(t.numel * base_bytes)


def loaded_parts(t: Tensor, q: Quantization, base_bytes: int, *, layout: RuntimeLayout) -> tuple[int, ...]:
    """Bytes of each stored part of a checkpoint tensor once loaded. Quantized data and its scales
    (packed int32, fp8, uint8 blocks, their fp16/fp32 scales) load as stored: vLLM's quantized
    layers create parameters of the checkpoint's dtypes and copy into them. A plain float weight
    the format does not quantize is cast to the model's dtype (vLLM's default_weight_loader copies
    into a parameter of the model dtype; transformers' from_pretrained casts to `dtype`, keeping
    Tensor.dtype's width where it keeps one): a bf16 model's fp32 norms load as bf16."""
    out = []
    for dtype, numel, nbytes in t.stored:
        if dtype in PLAIN_FLOATS and not quantizes(t, q):
            width = base_bytes
            if layout == "transformers" and t.dtype:
                width = max(width, FLOAT_BYTES[t.dtype])
            out.append(numel * width)
        else:
            out.append(nbytes)
    return tuple(out)


def shared_state_bytes(model: ModelSpec, q: Quantization) -> int:
    """Quantization state the whole model shares once: bitsandbytes caches the 256-entry fp32
    dynamic map of the nested absmax quantization on the device of its first call and every
    double-quantized layer refers to it (functional.quantize_blockwise, `name2qmap`)."""
    if q.method in ("nf4", "fp4") and q.double_quant and any(quantizes(t, q) for t in model.all_tensors()):
        return block_rounded(4 * NF4_DQ_CODE_VALUES)
    return 0


def weight_bytes(model: ModelSpec, fmt: WeightFormat, divisor=None, *, layout: RuntimeLayout) -> WeightReport:
    """Bytes of every parameter under `fmt` as the allocator holds them (512-B blocks per
    tensor) in the runtime's `layout` (see allocated_bytes). `divisor(t)` splits a tensor across
    ranks (tensor parallelism); None means one GPU holds it all."""
    base = FLOAT_BYTES[fmt.base]
    total = qparams = kept = 0
    by_role: dict[str, int] = {}
    for t in model.all_tensors():
        b = allocated_bytes(t, fmt.quant, base, layout=layout, stored=fmt.as_stored)
        if quantizes(t, fmt.quant):
            qparams += t.numel
        else:
            kept += t.numel
        if divisor is not None:
            b = ceil_div(b, divisor(t))
        by_role[t.role] = by_role.get(t.role, 0) + b
        total += b
    shared = shared_state_bytes(model, fmt.quant)
    if shared:
        by_role["other"] = by_role.get("other", 0) + shared
    return WeightReport(total + shared, qparams, kept, by_role)
