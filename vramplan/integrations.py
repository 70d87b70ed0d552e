"""Hooks for training frameworks. `VramplanCallback` is a transformers TrainerCallback:

    trainer = Trainer(..., callbacks=[VramplanCallback(ctx=2048)])

At train start it plans the step from the Trainer's own arguments and the model's config
(no network: the config is read from the loaded model) and raises `DoesNotFit` before any
memory is spent; after the first step on CUDA it logs the prediction next to the real
`torch.cuda.max_memory_allocated()` of this process's own GPU (the Trainer's `args.device`,
else LOCAL_RANK: under torchrun rank k trains on cuda:k), counted from train start (the peak
is reset there, so a loading transient is not taken for the step's). Importing this module
imports neither torch nor transformers: the class is built on first access, when a training
script has both loaded.
"""

from __future__ import annotations

import logging
import os
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


def measured_device(args, model=None) -> str | None:
    """"cuda:N" this process trains on: TrainingArguments.device, else LOCAL_RANK, else the
    model's parameters; None off CUDA."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    dev = getattr(args, "device", None)
    if dev is not None and getattr(dev, "type", str(dev).split(":")[0]) == "cuda":
        index = getattr(dev, "index", None)
        return f"cuda:{torch.cuda.current_device() if index is None else index}"
    rank = os.environ.get("LOCAL_RANK")
    if rank is not None and rank.strip().isdigit():
        return f"cuda:{int(rank)}"
    param = next(iter(model.parameters()), None) if model is not None and hasattr(model, "parameters") else None
    if param is not None and param.device.type == "cuda":
        return f"cuda:{param.device.index}"
    return f"cuda:{torch.cuda.current_device()}"


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
            self.device: str | None = None           # the GPU this process trains on
            self.baseline_bytes: int | None = None   # memory_allocated there at train start
            self.measured_bytes: int | None = None

        def _start_measuring(self, args, model) -> None:
            """This process's GPU, what is already on it, and the allocator peak reset there."""
            self.device = measured_device(args, model)
            if self.device is not None:
                torch = sys.modules["torch"]
                self.baseline_bytes = torch.cuda.memory_allocated(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self._start_measuring(args, model)
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
            if state.global_step != 1 or self.plan is None or self.device is None:
                return
            torch = sys.modules["torch"]
            self.measured_bytes = torch.cuda.max_memory_allocated(self.device)
            predicted = self.plan.peak_allocated_bytes
            logger.info("vramplan: max_memory_allocated on %s after step 1: measured %.2f GiB "
                        "(%.2f GiB of it there at train start), predicted %.2f GiB (%+.1f%%)",
                        self.device, self.measured_bytes / 2**30, (self.baseline_bytes or 0) / 2**30,
                        predicted / 2**30, 100 * (predicted - self.measured_bytes) / max(self.measured_bytes, 1))

    return VramplanCallback


def __getattr__(name: str):
    if name == "VramplanCallback":
        cls = _build_callback_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)
