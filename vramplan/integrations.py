"""Hooks for training frameworks. `VramplanCallback` is a transformers TrainerCallback:

    trainer = Trainer(..., callbacks=[VramplanCallback(ctx=2048)])

At train start it plans the step from the Trainer's own arguments and the model's config
(no network: the config is read from the loaded model) and raises `DoesNotFit` before any
memory is spent; after the first step on CUDA it logs the prediction next to the real
`torch.cuda.max_memory_allocated()`. Importing this module imports neither torch nor
transformers: the class is built on first access, when a training script has both loaded.
"""

from __future__ import annotations

import logging
import sys

from vramplan.api import preflight

logger = logging.getLogger("vramplan")


def trainer_settings(args, model) -> dict:
    """preflight() keyword arguments read from TrainingArguments and a (peft) model.
    Duck-typed, so it can be tested without transformers."""
    settings: dict = {"batch": int(args.per_device_train_batch_size)}
    peft_config = getattr(model, "peft_config", None) or {}
    four_bit = bool(getattr(model, "is_loaded_in_4bit", False))
    settings["mode"] = "qlora" if four_bit else "lora" if peft_config else "full"
    optim = getattr(args, "optim", None)
    if optim is not None:
        settings["optim"] = str(getattr(optim, "value", optim))
    if getattr(args, "gradient_checkpointing", False):
        settings["grad_ckpt"] = True
    if peft_config:
        lora = next(iter(peft_config.values()))
        settings["lora_r"] = int(lora.r)
        targets = lora.target_modules
        settings["lora_targets"] = targets if isinstance(targets, str) else ",".join(sorted(targets))
        settings["lora_dropout"] = float(lora.lora_dropout)
    dtype = str(getattr(model, "dtype", ""))
    if dtype.endswith("float32") and (getattr(args, "bf16", False) or getattr(args, "fp16", False)):
        settings["precision"] = "mixed"
    return settings


def _model_config(model) -> dict:
    base = getattr(model, "get_base_model", None)
    config = (base() if callable(base) else model).config
    return config.to_dict()


def _build_callback_class():
    from transformers import TrainerCallback

    class VramplanCallback(TrainerCallback):
        """Pre-flight check at train start; predicted vs measured after the first step."""

        def __init__(self, ctx: int | str, gpu="auto", raise_if_no_fit: bool = True, **options):
            self.ctx, self.gpu, self.raise_if_no_fit, self.options = ctx, gpu, raise_if_no_fit, options
            self.plan = None
            self.measured_bytes: int | None = None

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            settings = {**trainer_settings(args, model), **self.options}
            try:
                self.plan = preflight(_model_config(model), ctx=self.ctx, gpu=self.gpu, **settings)
            except Exception as e:       # DoesNotFit or an environment problem
                self.plan = getattr(e, "plan", None)
                if self.raise_if_no_fit:
                    raise
                logger.warning("vramplan: %s", e)
                return
            logger.info("vramplan: the step fits, %.2f GiB of %.2f GiB (peak in %s)",
                        self.plan.total_bytes / 2**30, self.plan.capacity_bytes / 2**30, self.plan.phase)

        def on_step_end(self, args, state, control, **kwargs):
            torch = sys.modules.get("torch")
            if state.global_step != 1 or self.plan is None or torch is None or not torch.cuda.is_available():
                return
            self.measured_bytes = torch.cuda.max_memory_allocated()
            predicted = self.plan.peak_allocated_bytes
            logger.info("vramplan: max_memory_allocated after step 1: measured %.2f GiB, predicted "
                        "%.2f GiB (%+.1f%%)", self.measured_bytes / 2**30, predicted / 2**30,
                        100 * (predicted - self.measured_bytes) / self.measured_bytes)

    return VramplanCallback


def __getattr__(name: str):
    if name == "VramplanCallback":
        cls = _build_callback_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)
