"""Hooks for training frameworks. `VramplanCallback` is a transformers TrainerCallback:

    trainer = Trainer(..., callbacks=[VramplanCallback(ctx=2048)])

At train start it plans the step from the live objects (vramplan.preflight(model, args=args):
the model as loaded, with its adapters, quantization, checkpointing switched on at the model
level, attention and dtypes, and the Trainer's arguments, DeepSpeed/FSDP and world size
included; no network: the config is read from the loaded model) against this process's own GPU,
whose room is its capacity minus what other processes hold, and raises `DoesNotFit` before the
first step. `ctx` may be left out under TRL's SFTTrainer (its max_length is read). After the first
step on CUDA it logs the prediction next to the real `torch.cuda.max_memory_allocated()` of this
process's own GPU (the Trainer's `args.device`, else where the model is, else LOCAL_RANK),
counted from train start (the peak is reset there, so a loading transient is not taken for the
step's). Importing this module imports neither torch nor transformers: the class is built on
first access, when a training script has both loaded.
"""

from __future__ import annotations

import logging
import os
import sys

from vramplan.api import preflight
from vramplan.engines.hf_trainer.live import is_live_model, own_cuda_index, read_args, read_model

logger = logging.getLogger("vramplan")


def trainer_settings(args, model) -> dict:
    """The preflight() keywords the live objects imply (what the model says, then what the
    arguments add; checkpointing is on when either switches it on). Duck-typed."""
    la = read_args(args)
    settings = dict(read_model(model, la.autocast).settings) if is_live_model(model) else {}
    for k, v in la.settings.items():
        settings[k] = (bool(settings.get(k)) or v) if k == "grad_ckpt" else v
    return settings


def measured_device(args, model=None) -> str | None:
    """"cuda:N" this process trains on (engines/hf_trainer/live.own_cuda_index: the Trainer's
    device, where the model's tensors are, the local rank); None off CUDA."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    la = read_args(args)
    if la.device is not None and not la.device.startswith("cuda"):
        return None
    lm = read_model(model) if model is not None and is_live_model(model) else None
    current = torch.cuda.current_device() if torch.cuda.is_initialized() else None
    return f"cuda:{own_cuda_index(la, lm, os.environ.get('LOCAL_RANK'), current)}"


def _build_callback_class():
    from transformers import TrainerCallback

    class VramplanCallback(TrainerCallback):
        """Pre-flight check at train start; predicted vs measured after the first step."""

        def __init__(self, ctx: int | str | None = None, gpu="auto", raise_if_no_fit: bool = True, **options):
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
            try:
                self.plan = preflight(model, args=args, ctx=self.ctx, gpu=self.gpu, **self.options)
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
