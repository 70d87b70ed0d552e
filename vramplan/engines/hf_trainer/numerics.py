"""The dtype plan of a training step: bytes per element of each stream, and of the weights.

Why one place: every activation, gradient and state size is "elements x bytes", and the bytes
follow from a few decisions (mode, precision, autocast, what QLoRA keeps out of 4 bits) that
must be made once and read everywhere. The table is docs/training.md §2.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from vramplan.errors import BadInput
from vramplan.spec import ModelSpec, Tensor
from vramplan.engines.hf_trainer.options import TrainOptions
from vramplan.memory.dtypes import FLOAT_BYTES
from vramplan.memory.overhead import block_rounded
from vramplan.memory.weights import WeightFormat, allocated_bytes, resolve_format, transformers_bnb

QLORA_BASES = ("nf4", "fp4", "int8")


@dataclass(frozen=True)
class Numerics:
    """Bytes per element of each activation stream and of the trainable state."""

    resid: int          # residual stream between layers
    norm_out: int       # norm outputs = inputs of the projections
    lin_out: int        # projection outputs, MLP intermediates
    attn: int           # q, k, v, out as the attention kernel saves them
    logits: int
    autocast: bool
    base_trainable: bool
    lora_w: int         # adapter dtype bytes (0: full fine-tuning)
    peft_cast: bool     # peft casts the adapter input to the adapter dtype (lora.Linear always;
                        # the bnb 4/8-bit LoRA layers only outside autocast)
    param_bytes: int    # dtype the optimizer steps (fp32 master under "mixed")
    grad_bytes: int
    layer_copies: bool  # autocast keeps bf16 copies of every fp32 matmul weight (HF AMP, full)
    head_copy: bool     # lm_head weight stored fp32 and run under autocast
    int8_base: bool = False   # bnb MatMul8bitLt saves its input A and int8 CAt even for frozen B


def float_bytes(weight_dtype: str, mode: str) -> int:
    """16 bits for "auto" (an fp32 checkpoint is trained in bf16; an fp8/mxfp4 one is dequantized)."""
    wd = weight_dtype.strip().lower()
    if wd in ("auto", "bf16", "fp16", "bfloat16", "float16"):
        return 2
    if wd in ("fp32", "float32"):
        return 4
    raise BadInput(f"{{dtype}} {weight_dtype!r} does not apply to {{mode}} {mode}: "
                   f"it trains 16- or 32-bit weights (bf16, fp16, fp32); for a 4-bit base use {{mode}} qlora.")


def qlora_base(model: ModelSpec, weight_dtype: str | None, transformers: int = 5) -> WeightFormat:
    """The quantized format of a QLoRA base: nf4 unless --dtype names fp4 or int8, with what
    that transformers version's bitsandbytes conversion leaves in 16 bits (weights.transformers_bnb)."""
    wd = "nf4" if weight_dtype in ("auto", None) else weight_dtype.strip().lower()
    if wd not in QLORA_BASES:
        raise BadInput(f"{{dtype}} {weight_dtype!r} does not apply to {{mode}} qlora; use nf4 (default), fp4 or int8.")
    return transformers_bnb(model, resolve_format(model, wd), transformers)[0]


def numerics(mode: str, o: TrainOptions, weight_dtype: str, layer_norm: bool = False,
             bnb_linears: bool = True) -> Numerics:
    """The dtype plan for one mode and options (docs/training.md §2, one row each). `layer_norm`:
    the model normalizes with nn.LayerNorm, which CUDA autocast runs in fp32 (its "float32"
    list), so under autocast the norm outputs are fp32, and under QLoRA with bitsandbytes linears
    (`bnb_linears`) so is everything they hand back in their input's dtype (trace tier: GPT-2)."""
    n = _numerics(mode, o, weight_dtype)
    if layer_norm and n.autocast and n.norm_out < 4:
        wide = {"norm_out": 4}
        if mode == "qlora" and bnb_linears:
            wide.update(lin_out=4, resid=4)
        n = replace(n, **wide)
    return n


def _numerics(mode: str, o: TrainOptions, weight_dtype: str) -> Numerics:
    mixed = o.precision == "mixed"
    lw = 4 if o.lora_dtype == "fp32" else 2
    if mode == "full":
        e = float_bytes(weight_dtype, mode)
        if mixed and o.zero == 0:          # HF Trainer AMP: fp32 params, bf16 autocast
            return Numerics(4, 4, 2, 2, 2, True, True, 0, False, 4, 4, True, True)
        if mixed:                          # DeepSpeed/FSDP bf16: 16-bit params, fp32 master in the optimizer
            return Numerics(2, 2, 2, 2, 2, False, True, 0, False, 4, 2, False, False)
        return Numerics(e, e, e, e, e, False, True, 0, False, e, e, False, False)
    if mode == "lora":
        b = float_bytes(weight_dtype, mode)
        if mixed:
            return Numerics(b, b, 2, 2, 2, True, False, lw, True, lw, lw, False, False)
        return Numerics(b, b, b, b, b, False, False, lw, True, lw, lw, False, False)
    # qlora: always under autocast (Trainer bf16=True / fp16=True: bnb's compute dtype is the
    # autocast dtype; "bf16" and "mixed" are the same here, the adapters being the fp32 masters).
    # bnb Linear4bit casts its input to the compute dtype and its output back to the input's
    # dtype, so fp32 norms (peft, trl) make every projection output fp32.
    int8 = weight_dtype.strip().lower() == "int8"
    kp = o.kbit_prepare
    if kp == "trl":                        # qlora.py / TRL bf16: adapters bf16, lm_head bf16
        return Numerics(4, 4, 4, 2, 2, True, False, 2, False, 2, 2, False, False, int8)
    if kp == "peft":                       # fp32 lm_head under autocast: a bf16 weight copy
        return Numerics(4, 4, 4, 2, 2, True, False, lw, False, lw, lw, False, True, int8)
    return Numerics(2, 2, 2, 2, 2, True, False, lw, False, lw, lw, False, False, int8)


def stored_weights(mode: str, o: TrainOptions, model: ModelSpec, weight_dtype: str, transformers: int = 5):
    """(bytes of one tensor as stored, label) for the frozen/working copy of the weights."""
    if mode in ("full", "lora"):
        e = 2 if (mode == "full" and o.precision == "mixed") else float_bytes(weight_dtype, mode)
        name = {2: "bf16" if model.torch_dtype != "fp16" else "fp16", 4: "fp32"}[e]
        return (lambda t: block_rounded(t.numel * max(e, FLOAT_BYTES.get(t.dtype, 0)))), name
    fmt = qlora_base(model, weight_dtype, transformers)
    q = fmt.quant
    kp = o.kbit_prepare

    def kept(t: Tensor) -> int:
        if kp == "peft":
            return 4                                   # every non-quantized param upcast to fp32
        if kp == "trl":
            return 4 if t.role in ("norm", "bias", "other", "router", "conv") else 2
        return 2

    def fn(t: Tensor) -> int:
        return allocated_bytes(t, q, kept(t), hf=True)

    kept_label = {"peft": "rest fp32 (peft prepare_model_for_kbit_training)",
                  "trl": "norms fp32, embeddings/lm_head 16-bit (TRL/qlora.py)", "none": "rest 16-bit"}[kp]
    return fn, f"{fmt.label.split(' + ')[0]}, {kept_label}"
