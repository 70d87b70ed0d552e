"""preflight() on a training script's live objects: the loaded model and its TrainingArguments
become the plan's model, settings and GPU (issue #14 item 1).

Why at the edge: it turns objects into the same keywords a user would type (and checks them the
same way), and it chooses the GPU: the process's own device (the Trainer's device, where the
weights already are, the local rank), with the memory this process already holds there counted
as room, not as someone else's (engines/hf_trainer/live.py reads the objects; probe.own_target
measures the device). Loaded on first use by api.preflight, like the other tools.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, replace

from vramplan.engines.hf_trainer.live import LiveArgs, LiveModel, is_live_model, own_cuda_index, read_args, read_model
from vramplan.errors import BadInput
from vramplan.memory.overhead import CUDA_CONTEXT_BYTES
from vramplan.spec import GpuTarget
from vramplan.targets import auto_target, resolve_target
from vramplan.units import parse_bytes

DEFAULT_BATCH, DEFAULT_CTX, DEFAULT_MODE = 4, 2048, "lora"     # preflight() by name, as before


@dataclass(frozen=True, kw_only=True)
class LiveRequest:
    """What preflight() plans: the model (a config dict when read from a live model), its
    keywords, the GPU, and what was read (for the callback's log and the tests)."""

    model: object
    keywords: dict
    target: GpuTarget
    live_model: LiveModel | None = None
    live_args: LiveArgs | None = None
    device_index: int | None = None


def _torch_cuda():
    """torch.cuda when the script has imported torch and CUDA is usable; never imports torch."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        return torch.cuda if torch.cuda.is_available() else None
    except Exception:           # a broken driver: NVML will say what is wrong
        return None


def _own_bytes(cuda, index: int) -> int | None:
    """What torch says this process holds on device `index`: reserved blocks, plus the CUDA
    context once the device has been used (memory/overhead.CUDA_CONTEXT_BYTES)."""
    if cuda is None or not cuda.is_initialized():
        return None
    reserved = int(cuda.memory_reserved(index))
    return reserved + CUDA_CONTEXT_BYTES if reserved else 0


def live_request(model, *, args=None, mode=None, batch=None, ctx=None, gpu="auto", options: dict) -> LiveRequest:
    """Merge what the objects say with what the caller said (the caller wins), and choose the
    GPU. Without live objects this is preflight() by name, with its old defaults."""
    lm = read_model(model, bf16_or_fp16=bool(args is not None and (getattr(args, "bf16", False)
                                                                   or getattr(args, "fp16", False)))) \
        if is_live_model(model) else None
    la = read_args(args) if args is not None else None
    read: dict = {}
    if lm is not None:
        read.update(lm.settings)
    if la is not None:
        for k, v in la.settings.items():
            if k == "grad_ckpt":       # on at the model level, or switched on by the Trainer
                read[k] = bool(read.get(k)) or v
            else:
                read[k] = v
    keywords = {**{k: v for k, v in read.items() if k not in ("mode", "batch")}, **options}
    mode = mode if mode is not None else read.get("mode", DEFAULT_MODE)
    batch = batch if batch is not None else read.get("batch", DEFAULT_BATCH)
    if ctx is None:
        ctx = la.ctx if la is not None and la.ctx else None
    if ctx is None:
        if la is not None:
            raise BadInput("The TrainingArguments do not say how long the sequences are; pass {ctx}, the "
                           "sequence length the data is truncated or packed to (e.g. ctx=2048).")
        ctx = DEFAULT_CTX
    index = None
    world = la.world if la is not None else 1
    if isinstance(gpu, str) and gpu.strip().lower() == "auto":
        cuda = _torch_cuda()
        current = cuda.current_device() if cuda is not None and cuda.is_initialized() else None
        index = own_cuda_index(la, lm, os.environ.get("LOCAL_RANK"), current)
        target = auto_target(index, own_pid=os.getpid(), own_bytes=_own_bytes(cuda, index))
    elif isinstance(gpu, int) and not isinstance(gpu, bool):
        target = resolve_target(gpu_mem=parse_bytes(gpu, "{gpu}"))
    else:
        target = resolve_target(gpu)
    if world > target.count:
        target = replace(target, count=world)
    plan_model = lm.config if lm is not None else model
    return LiveRequest(model=plan_model, keywords={"mode": mode, "batch": batch, "ctx": ctx, **keywords},
                       target=target, live_model=lm, live_args=la, device_index=index)
