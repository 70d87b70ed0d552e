"""Which training setups one CPU process can trace, and in which dtypes (no torch import, so a
cached answer stays instant)."""

from __future__ import annotations

from vramplan.errors import BadInput


def check(opts) -> None:
    """A clear message instead of a wrong number for what the trace cannot run."""
    if opts.world > 1 or opts.zero > 0:
        raise BadInput("The trace runs one process: {zero} and multi-GPU training are analytic only "
                       "(use {method} analytic).")
    if opts.attn == "flash_attention_2":
        raise BadInput("{attn} flash_attention_2 needs CUDA kernels the trace cannot run; trace with "
                       "{attn} sdpa (same memory class: no seq x seq scores) or use {method} analytic.")


def autocast_on(mode: str, opts) -> bool:
    """bf16 autocast: mixed precision, and QLoRA always (the Trainer's bf16=True runs autocast,
    and bitsandbytes computes in the autocast dtype; engines/hf_trainer/numerics.py models the same)."""
    return opts.precision == "mixed" or mode == "qlora"


def build_dtype(mode: str, opts, dtype: str) -> str:
    """The dtype the model is built in: fp32 master weights for full mixed precision, bf16
    compute for QLoRA (kbit_prepare then upcasts what it upcasts), else --dtype, where "auto"
    means 16 bits (an fp32 checkpoint is trained in bf16: engines/hf_trainer/numerics.float_bytes)."""
    if mode == "full" and opts.precision == "mixed":
        return "fp32"
    if mode == "qlora" or dtype not in ("fp32", "fp16"):
        return "bf16"
    return dtype
