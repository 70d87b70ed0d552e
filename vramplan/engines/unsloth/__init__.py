"""Unsloth's LoRA/QLoRA recipe (FastLanguageModel + TRL's SFTTrainer) as an engine: the HF
Trainer's step with Unsloth's kernels, its offloaded checkpointing and its fused loss
(docs/training.md §17)."""

from vramplan.engines.unsloth.engine import ENGINE

__all__ = ["ENGINE"]
