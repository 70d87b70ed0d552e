"""The GPU a plan is for, from the user's words: a catalog id with a count ("l40s:2"), "auto"
(the attached card, probed through NVML), or any card by its memory ("48GB")."""

from __future__ import annotations

from dataclasses import replace

from vramplan import catalog
from vramplan.errors import BadInput
from vramplan.spec import GpuTarget
from vramplan.units import parse_bytes, shown

DEFAULT_GPU = "l40s"
MAX_GPU_TEXT = 100      # characters of a --gpu value: the longest catalog name with a count is ~30


def resolve_target(gpu: str | GpuTarget | None = None, gpu_mem: str | int | None = None,
                   gpu_free: str | int | None = None, default: str = DEFAULT_GPU) -> GpuTarget:
    """`gpu` ID[:COUNT] or `gpu_mem` SIZE (not both); neither means the default card.
    `gpu_free` says how much of each card is free now (other processes hold the rest)."""
    if gpu is not None and not isinstance(gpu, (str, GpuTarget)):
        raise BadInput(f"{{gpu}} must be a catalog id such as 'l40s' or 'h100:8', 'auto', or a GpuTarget, "
                       f"got {shown(gpu)}.")
    if isinstance(gpu, str) and len(gpu) > MAX_GPU_TEXT:
        raise BadInput(f"{{gpu}} is {len(gpu):,} characters long; give a catalog id and an optional "
                       f"count, e.g. {{gpu}} h100:8 (`vramplan gpus` lists the ids).")
    if gpu is not None and gpu_mem is not None:
        raise BadInput("Give either {gpu} or {gpu_mem}, not both.")
    if isinstance(gpu, GpuTarget):
        target = gpu
    elif gpu_mem is not None:
        target = GpuTarget(gpu=None, count=1, memory_bytes=parse_bytes(gpu_mem))
    elif isinstance(gpu, str) and gpu.strip().lower() == "auto":
        target = auto_target()
    else:
        target = catalog.parse_gpu_arg(default if gpu is None else gpu)
    if gpu_free is not None:
        free = parse_bytes(gpu_free, "{gpu_free}")
        if free > target.per_gpu_bytes:
            raise BadInput(f"{{gpu_free}} {shown(gpu_free)} is more than the card's CUDA total "
                           f"({target.per_gpu_bytes / 2**30:.2f} GiB).")
        target = replace(target, free_bytes=free)
    return target


def auto_target(index: int = 0, own_pid: int | None = None, own_bytes: int | None = None) -> GpuTarget:
    """`gpu="auto"`: CUDA device `index` through NVML (vramplan.probe), with its real capacity
    and current free memory; an EnvironmentProblem (exit 3) when there is none. With `own_pid`
    (a training process's pre-flight), what that process already holds there counts as room
    (probe.target.own_target)."""
    from vramplan import probe      # NVML machinery, only for --gpu auto

    if own_pid is None:
        return probe.auto_target(index)
    return probe.own_target(index, own_pid, own_bytes)
