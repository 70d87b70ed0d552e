"""One training step of the HF Trainer + peft + bitsandbytes kind: full, LoRA and QLoRA.

`ENGINE` loads on first use (PEP 562): the edge and the trace tier import `options` (the
training flags, the methods) on every start-up, and that must not load the whole step model
for a serve or infer plan."""

from importlib import import_module

__all__ = ["ENGINE"]


def __getattr__(name: str):
    if name == "ENGINE":
        return import_module("vramplan.engines.hf_trainer.engine").ENGINE
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
