"""What to change when a workload does not fit: concrete changes, each re-planned.

Tried from the least disruptive (the engine's own switches: a cache dtype, checkpointing) to the
most (more cards, then a bigger card); the ones that fit are listed first.

The planner hands in its own `evaluate` (and the engine it planned with), so each change is
judged by the same verdict as the plan, and this module does not import the planner back.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from vramplan.engines.base import Engine
from vramplan.errors import BadInput
from vramplan.spec import GpuSpec, GpuTarget, ModelSpec, Plan, Suggestion, Workload

SCALE_OUT_COUNTS = (2, 4, 8)

# evaluate(model, target, workload) -> (total bytes, fits): a re-plan without limits
Evaluate = Callable[[ModelSpec, GpuTarget, Workload], tuple[int, bool]]


def suggestions(plan: Plan, catalog: tuple[GpuSpec, ...], eng: Engine, evaluate: Evaluate) -> list[Suggestion]:
    m, t, w = plan.model, plan.target, plan.workload
    out: list[Suggestion] = []

    def attempt(text: str, flags: dict, target: GpuTarget = t, **changes) -> bool | None:
        """Re-plan with one change: fits or not, or None when the change is not possible."""
        try:
            total, fits = evaluate(m, target, replace(w, **changes))
        except BadInput:            # e.g. heads that do not split N ways, no LoRA targets
            return None
        out.append(Suggestion(text, flags, total, fits))
        return fits

    eng.levers(plan, attempt)
    if 0 < plan.max_batch < w.batch and not any(x.flags.get("batch") == plan.max_batch for x in out):
        attempt(f"--batch {plan.max_batch}", {"batch": plan.max_batch}, batch=plan.max_batch)
    if 0 < plan.max_ctx < w.ctx:
        attempt(f"--ctx {plan.max_ctx}", {"ctx": plan.max_ctx}, ctx=plan.max_ctx)
    if t.gpu is not None:
        for n in SCALE_OUT_COUNTS:
            way = eng.scale_out(plan, n) if n > t.count else None
            if way is not None and attempt(way.text, way.flags, replace(t, count=n), **way.changes):
                break
    if catalog and t.memory_bytes is None:
        bigger = sorted((g for g in catalog if t.gpu is None or g.cuda_total_bytes > t.gpu.cuda_total_bytes),
                        key=lambda g: g.cuda_total_bytes)
        for g in bigger:
            total, fits = evaluate(m, replace(t, gpu=g), w)
            if fits:
                out.append(Suggestion(f"--gpu {g.id}{':' + str(t.count) if t.count > 1 else ''}",
                                      {"gpu": g.id}, total, True))
                break
    out.sort(key=lambda s: not s.fits)   # stable: keeps the order of disruption
    return out
