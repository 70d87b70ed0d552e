"""The Python API: every question vramplan answers, as a function that returns data.

The adapter between the user's words ("meta-llama/Llama-3.1-8B", "l40s:2", "32k") and the
core's dataclasses. The CLI is a thin shell around it: it builds a `PlanRequest` from its flags,
calls a function here, and renders what comes back (vramplan.render).

`kv_report`, `bundled_models`, `compare`, `sweep`, `probe`, `verify` and `calibrate` load their modules on
first use (PEP 562), so that `import vramplan.api`, and with it `vramplan fit`, pays only for
the analytic planner.
"""

from __future__ import annotations

import importlib

from vramplan import catalog, models
from vramplan.errors import BadInput, DoesNotFit
from vramplan.loading import load_model
from vramplan.methods import plan as plan_request
from vramplan.request import (ENGINE_OF_MODE, METHODS, MODES, TRAINING_MODES, TRANSFORMERS_MAJORS,
                              PlanRequest, ServeFlags, TrainFlags, make_workload, transformers_major)
from vramplan.spec import GpuSpec, GpuTarget, ModelSpec, Plan
from vramplan.targets import auto_target, resolve_target

# The questions beyond the analytic plan, loaded on first use.
_TOOLS = {
    "kv_report": "vramplan.reports", "bundled_models": "vramplan.reports",
    "compare": "vramplan.compare.table", "compare_request": "vramplan.compare.table",
    "sweep": "vramplan.compare.grid", "sweep_request": "vramplan.compare.grid",
    "probe": "vramplan.probe.read", "verify": "vramplan.verify.session",
    "calibrate": "vramplan.verify.calibrate",
}
__all__ = [
    "plan", "plan_request", "preflight", "load_model", "gpus",
    "PlanRequest", "ServeFlags", "TrainFlags", "make_workload", "resolve_target", "auto_target",
    "transformers_major", "BadInput", "ENGINE_OF_MODE", "METHODS", "MODES", "TRAINING_MODES",
    "TRANSFORMERS_MAJORS", *_TOOLS,
]


def __getattr__(name: str):
    if name in _TOOLS:
        return getattr(importlib.import_module(_TOOLS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def plan(model: str | ModelSpec, gpu: str | GpuTarget | None = None, *, gpu_mem: str | int | None = None,
         gpu_free: str | int | None = None,
         mode: str = "serve", batch: int | str = 1, ctx: int | str = 4096, dtype: str = "auto",
         kv_dtype: str = "auto", method: str = "analytic", no_cache: bool = False,
         **options) -> Plan:
    """Plan one workload. Returns a `Plan` (see vramplan.spec); raises VramplanError subclasses.

    `options` are vLLM's engine flags (`ServeFlags`: tp, pp, gpu_memory_utilization, ...), the
    training settings (`TrainFlags`: optim, grad_ckpt, lora_r, ...) and `transformers`; an
    unknown keyword raises BadInput naming it.

    >>> p = plan("meta-llama/Llama-3.1-8B", "l40s", ctx="32k", batch=8)
    >>> p.fits, p.components["weights"]
    (False, 16060522496)
    """
    return plan_request(PlanRequest.from_keywords(
        model, gpu, gpu_mem=gpu_mem, gpu_free=gpu_free, mode=mode, batch=batch, ctx=ctx, dtype=dtype,
        kv_dtype=kv_dtype, method=method, no_cache=no_cache, **options))


def preflight(model: str | ModelSpec | dict, mode: str = "lora", batch: int | str = 4,
              ctx: int | str = 2048, gpu: str | int | GpuTarget = "auto", **options) -> Plan:
    """One-line check for a training script: the plan when it fits, else `DoesNotFit`.

    `gpu` is "auto" (the attached GPU, read through NVML: its real capacity and free memory),
    a catalog id such as "l40s" or "h100:8", a GpuTarget, or a memory size in bytes. The message
    of `DoesNotFit` names the largest batch and context that fit and the cheapest change that
    would. Bad arguments raise `BadInput`, a ValueError.
    """
    if isinstance(model, dict):
        model = models.parse(model, model_id=str(model.get("_name_or_path", "config")), source="dict")
    if isinstance(gpu, bool) or not isinstance(gpu, (str, int, GpuTarget)):
        raise BadInput(f"gpu={gpu!r}: give 'auto', a catalog id such as 'l40s', or a size in bytes.")
    target = resolve_target(gpu_mem=gpu) if isinstance(gpu, int) else resolve_target(gpu)
    p = plan(model, target, mode=mode, batch=batch, ctx=ctx, **options)
    if p.fits:
        return p
    w = p.workload
    need, cap = p.total_bytes / 2**30, p.capacity_bytes / 2**30
    fixes = [f"{s.change} ({', '.join(f'{k}={v!r}' for k, v in s.flags.items())})"
             for s in p.suggestions if s.fits]
    limits = (f"The largest micro-batch that fits at {w.ctx:,} tokens is {p.max_batch}; the longest "
              f"sequence at batch {w.batch} is {p.max_ctx:,} tokens.")
    change = f" Cheapest change that fits: {fixes[0]}." if fixes else ""
    raise DoesNotFit(f"{w.mode} of {p.model.id} at batch {w.batch} x {w.ctx:,} tokens needs "
                     f"{need:.2f} GiB per GPU but {cap:.2f} GiB is available. {limits}{change}", p)


def gpus() -> tuple[GpuSpec, ...]:
    """The GPU catalog: memory, bandwidth, compute and dated prices."""
    return catalog.load_gpus()
