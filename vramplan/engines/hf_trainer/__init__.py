"""One training step of the HF Trainer + peft + bitsandbytes kind: full, LoRA and QLoRA."""

from vramplan.engines.hf_trainer.engine import ENGINE

__all__ = ["ENGINE"]
