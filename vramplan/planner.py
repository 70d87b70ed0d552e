"""From (model, GPU, workload) to a Plan: components, verdict, limits and suggestions.

Pure: takes dataclasses (and the GPU catalog as data, for suggestions), returns a Plan. What a
workload costs is the engine's business (vramplan.engines); the planner asks the engine named by
the workload, applies one verdict rule everywhere, and solves the limits against it.
"""

from __future__ import annotations

from dataclasses import replace

from vramplan.engines.base import Engine
from vramplan.engines.registry import engine as engine_named
from vramplan.memory import kv_cache as kv
from vramplan.memory.setup import Breakdown, Setup
from vramplan.memory.solve import largest_fitting
from vramplan.spec import GpuSpec, GpuTarget, LocalReport, ModelSpec, Plan, SglangReport, Workload
from vramplan.suggestions import suggestions
from vramplan.units import MAX_BATCH, MAX_TOKENS


def engine_of(workload: Workload) -> Engine:
    return engine_named(workload.engine)


def setup(model: ModelSpec, target: GpuTarget, workload: Workload) -> Setup:
    return engine_of(workload).prepare(model, target, workload)


def components(s: Setup, batch: int, ctx: int) -> Breakdown:
    return engine_of(s.workload).components(s, batch, ctx)


def total_bytes(s: Setup, batch: int, ctx: int) -> int:
    return components(s, batch, ctx).total


def verdict(eng: Engine, s: Setup, batch: int, ctx: int) -> bool:
    """The one rule: the engine's verdict on this batch and context. The plan, its limits, the
    suggestions, compare and sweep all ask it."""
    return eng.fits(s, eng.components(s, batch, ctx), ctx)


def _limits(eng: Engine, s: Setup, batch: int, ctx: int) -> tuple[int, int]:
    """The largest batch at `ctx` and the largest context at `batch` that the one rule accepts.
    What does not depend on batch and context (vLLM's headroom, its free-memory and cache-size
    refusals) fails the first probe, so such a plan answers (0, 0) after two evaluations."""
    if not verdict(eng, s, 1, 1):
        return 0, 0
    max_batch = largest_fitting(lambda b: verdict(eng, s, b, ctx), MAX_BATCH)
    max_ctx = largest_fitting(lambda c: verdict(eng, s, batch, c), MAX_TOKENS)
    return max_batch, max_ctx


def evaluate(model: ModelSpec, target: GpuTarget, workload: Workload) -> tuple[int, bool]:
    """(total bytes, fits) of one workload, without solving limits: what suggestions need."""
    eng = engine_of(workload)
    s = eng.prepare(model, target, workload)
    b = eng.components(s, workload.batch, workload.ctx)
    return b.total, eng.fits(s, b, workload.ctx)


def build(model: ModelSpec, target: GpuTarget, workload: Workload,
          catalog: tuple[GpuSpec, ...] = (), suggest: bool = True) -> Plan:
    eng = engine_of(workload)
    s = eng.prepare(model, target, workload)
    batch, ctx = workload.batch, workload.ctx
    b = eng.components(s, batch, ctx)
    max_batch, max_ctx = _limits(eng, s, batch, ctx)
    warnings = list(model.warnings) + list(s.warnings)
    if s.fmt.base == "fp32" and model.torch_dtype_assumed:
        warnings.append("config.json names no torch_dtype, so the weights are taken as fp32 "
                        "(transformers' default); pass --dtype bf16 if the checkpoint is 16-bit.")
    report = eng.report(s, b, ctx)
    mpe = model.max_position_embeddings
    if mpe and ctx > mpe and report is None:     # an engine with a start-up report judges ctx itself
        warnings.append(f"--ctx {ctx:,} exceeds the model's max_position_embeddings ({mpe:,}); "
                        f"quality past it is not guaranteed and vLLM refuses it by default.")
    warnings += eng.warnings(s, report)
    plan = Plan(
        model=model, target=target, workload=workload, weight_dtype=s.fmt.label,
        kv_dtype=s.kv_dtype, components=b.parts, component_notes=b.notes,
        peak_allocated_bytes=b.peak_allocated, total_bytes=b.total, capacity_bytes=s.capacity,
        kv_bytes_per_token=(report.kv_bytes_per_token if isinstance(report, LocalReport)
                            else kv.kv_bytes_per_token(model, s.kv_elem, s.tp)),
        max_batch=max_batch, max_ctx=max_ctx,
        serve=None if isinstance(report, (LocalReport, SglangReport)) else report,
        local=report if isinstance(report, LocalReport) else None,
        sglang=report if isinstance(report, SglangReport) else None,
        warnings=tuple(warnings), phase=b.phase, outside=dict(b.outside),
    )
    if suggest and not plan.fits:
        plan = replace(plan, suggestions=tuple(suggestions(plan, catalog, eng, evaluate)))
    return plan
