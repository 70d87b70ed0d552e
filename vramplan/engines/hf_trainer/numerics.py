"""The dtype plan of a training step: bytes per element of each stream, and of the weights.

Why one place: every activation, gradient and state size is "elements x bytes", and the bytes
follow from a few decisions (method, precision, autocast, what QLoRA keeps out of 4 bits) that
must be made once and read everywhere. The table is docs/training.md §2.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from vramplan.errors import BadInput
from vramplan.spec import ModelSpec, Tensor
from vramplan.engines.hf_trainer.options import Method, TrainOptions, deepspeed_masters
from vramplan.memory.dtypes import FLOAT_BYTES
from vramplan.memory.overhead import block_rounded
from vramplan.memory.weights import WeightFormat, allocated_bytes, resolve_format, transformers_bnb

QLORA_BASES = ("nf4", "fp4", "int8")


@dataclass(frozen=True, kw_only=True)
class Numerics:
    """Bytes per element of each activation stream and of the trainable state. The flags that
    are off in most rows of the table default to off."""

    resid: int          # residual stream between layers
    norm_out: int       # norm outputs = inputs of the projections
    lin_out: int        # projection outputs, MLP intermediates
    attn: int           # q, k, v, out as the attention kernel saves them
    logits: int
    autocast: bool
    base_trainable: bool
    lora_w: int         # adapter dtype bytes (0: full fine-tuning)
    param_bytes: int    # dtype the optimizer steps (fp32 master under "mixed")
    grad_bytes: int
    peft_cast: bool = False     # peft casts the adapter input to the adapter dtype (lora.Linear
                                # always; the bnb 4/8-bit LoRA layers only outside autocast)
    layer_copies: bool = False  # autocast keeps bf16 copies of every fp32 matmul weight (HF AMP, full)
    head_copy: bool = False     # lm_head weight stored fp32 and run under autocast
    int8_base: bool = False     # bnb MatMul8bitLt saves its input A and int8 CAt even for frozen B


def float_bytes(weight_dtype: str, method: Method) -> int:
    """16 bits for "auto" (an fp32 checkpoint is trained in bf16; an fp8/mxfp4 one is dequantized)."""
    wd = weight_dtype.strip().lower()
    if wd in ("auto", "bf16", "fp16", "bfloat16", "float16"):
        return 2
    if wd in ("fp32", "float32"):
        return 4
    raise BadInput(f"{{dtype}} {weight_dtype!r} does not apply to {{mode}} {method}: "
                   f"it trains 16- or 32-bit weights (bf16, fp16, fp32); for a 4-bit base use {{mode}} qlora.")


def qlora_base(model: ModelSpec, weight_dtype: str | None, transformers: int = 5) -> WeightFormat:
    """The quantized format of a QLoRA base: nf4 unless --dtype names fp4 or int8, with what
    that transformers version's bitsandbytes conversion leaves in 16 bits (weights.transformers_bnb)."""
    wd = "nf4" if weight_dtype in ("auto", None) else weight_dtype.strip().lower()
    if wd not in QLORA_BASES:
        raise BadInput(f"{{dtype}} {weight_dtype!r} does not apply to {{mode}} qlora; use nf4 (default), fp4 or int8.")
    return transformers_bnb(model, resolve_format(model, wd), transformers)[0]


def numerics(method: Method, o: TrainOptions, weight_dtype: str, layer_norm: bool = False,
             bnb_linears: bool = True) -> Numerics:
    """The dtype plan for one method and options (docs/training.md §2, one row each). `layer_norm`:
    the model normalizes with nn.LayerNorm, which CUDA autocast runs in fp32 (its "float32"
    list), so under autocast the norm outputs are fp32, and under QLoRA with bitsandbytes linears
    (`bnb_linears`) so is everything they hand back in their input's dtype (trace tier: GPT-2)."""
    n = _numerics(method, o, weight_dtype)
    if layer_norm and n.autocast and n.norm_out < 4:
        wide = {"norm_out": 4}
        if method == "qlora" and bnb_linears:
            wide.update(lin_out=4, resid=4)
        n = replace(n, **wide)
    return n


def _numerics(method: Method, o: TrainOptions, weight_dtype: str) -> Numerics:
    mixed = o.precision == "mixed" or (method == "full" and deepspeed_masters(o))
    lw = 4 if o.lora_dtype == "fp32" else 2
    if method == "full":
        e = float_bytes(weight_dtype, method)
        if mixed and o.zero == 0:          # HF Trainer AMP: fp32 params, bf16 autocast
            return Numerics(resid=4, norm_out=4, lin_out=2, attn=2, logits=2, autocast=True,
                            base_trainable=True, lora_w=0, param_bytes=4, grad_bytes=4,
                            layer_copies=True, head_copy=True)
        if mixed:                          # DeepSpeed/FSDP bf16: 16-bit params, fp32 master in the optimizer
            return Numerics(resid=2, norm_out=2, lin_out=2, attn=2, logits=2, autocast=False,
                            base_trainable=True, lora_w=0, param_bytes=4, grad_bytes=2)
        return Numerics(resid=e, norm_out=e, lin_out=e, attn=e, logits=e, autocast=False,
                        base_trainable=True, lora_w=0, param_bytes=e, grad_bytes=e)
    if method == "lora":
        b = float_bytes(weight_dtype, method)
        if mixed:
            return Numerics(resid=b, norm_out=b, lin_out=2, attn=2, logits=2, autocast=True,
                            base_trainable=False, lora_w=lw, peft_cast=True, param_bytes=lw, grad_bytes=lw)
        return Numerics(resid=b, norm_out=b, lin_out=b, attn=b, logits=b, autocast=False,
                        base_trainable=False, lora_w=lw, peft_cast=True, param_bytes=lw, grad_bytes=lw)
    # qlora: always under autocast (Trainer bf16=True / fp16=True: bnb's compute dtype is the
    # autocast dtype; "bf16" and "mixed" are the same here, the adapters being the fp32 masters).
    # bnb Linear4bit casts its input to the compute dtype and its output back to the input's
    # dtype, so fp32 norms (peft, trl) make every projection output fp32.
    int8 = weight_dtype.strip().lower() == "int8"
    kp = o.kbit_prepare
    if kp == "trl":                        # qlora.py / TRL bf16: adapters bf16, lm_head bf16
        return Numerics(resid=4, norm_out=4, lin_out=4, attn=2, logits=2, autocast=True,
                        base_trainable=False, lora_w=2, param_bytes=2, grad_bytes=2, int8_base=int8)
    if kp == "peft":                       # fp32 lm_head under autocast: a bf16 weight copy
        return Numerics(resid=4, norm_out=4, lin_out=4, attn=2, logits=2, autocast=True,
                        base_trainable=False, lora_w=lw, param_bytes=lw, grad_bytes=lw,
                        head_copy=True, int8_base=int8)
    return Numerics(resid=2, norm_out=2, lin_out=2, attn=2, logits=2, autocast=True,
                    base_trainable=False, lora_w=lw, param_bytes=lw, grad_bytes=lw, int8_base=int8)


def stored_weights(method: Method, o: TrainOptions, model: ModelSpec, weight_dtype: str,
                   transformers: int = 5) -> tuple[Callable[[Tensor], int], str]:
    """(bytes of one tensor as stored, label) for the frozen/working copy of the weights."""
    if method in ("full", "lora"):
        e = 2 if (method == "full" and (o.precision == "mixed" or deepspeed_masters(o))) else float_bytes(weight_dtype, method)
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
        return allocated_bytes(t, q, kept(t), layout="transformers")

    kept_label = {"peft": "rest fp32 (peft prepare_model_for_kbit_training)",
                  "trl": "norms fp32, embeddings/lm_head 16-bit (TRL/qlora.py)", "none": "rest 16-bit"}[kp]
    return fn, f"{fmt.label.split(' + ')[0]}, {kept_label}"
