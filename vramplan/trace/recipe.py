"""Which training setups one CPU process can trace, and in which dtypes (no torch import, so a
cached answer stays instant)."""

from __future__ import annotations

from ..errors import BadInput


def check(opts) -> None:
    """A clear message instead of a wrong number for what the trace cannot run."""
    if opts.world > 1 or opts.zero > 0:
        raise BadInput("The trace runs one process: --zero and multi-GPU training are analytic only "
                       "(use --method analytic).")
    if opts.attn == "flash_attention_2":
        raise BadInput("--attn flash_attention_2 needs CUDA kernels the trace cannot run; trace with "
                       "--attn sdpa (same memory class: no seq x seq scores) or use --method analytic.")


def autocast_on(mode: str, opts) -> bool:
    """bf16 autocast: mixed precision, and TRL's QLoRA recipe."""
    return opts.precision == "mixed" or (mode == "qlora" and opts.kbit_prepare == "trl")


def build_dtype(mode: str, opts, base: str) -> str:
    """The dtype the model is built in: fp32 master weights for full mixed precision, bf16
    compute for QLoRA (kbit_prepare then upcasts what it upcasts), else the weights' dtype."""
    if mode == "full" and opts.precision == "mixed":
        return "fp32"
    return "bf16" if mode == "qlora" else base
