"""What to change when a workload does not fit: concrete changes, each re-planned.

Tried from the least disruptive (the engine's own switches: for vLLM its flags, a cache dtype;
for training checkpointing) to the most (more cards, then a bigger card). The engine's switches
that do not fit alone are re-planned two at a time, and a pair that fits is listed. Changes that fit are
listed first, cheapest per hour first (the default dated price per GPU-hour times the cards);
a change that does not fit is listed only when it needs less memory than the plan, so no
suggestion ever asks for more.

The planner hands in its own `evaluate` (and the engine it planned with), so each change is
judged by the same verdict as the plan, and this module does not import the planner back.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass, replace
from itertools import combinations
from typing import Callable

from vramplan.engines.base import Engine
from vramplan.errors import BadInput
from vramplan.pricing import default_price
from vramplan.spec import GpuSpec, GpuTarget, ModelSpec, Plan, Suggestion, Workload

SCALE_OUT_COUNTS = (2, 4, 8, 16)
MAX_PAIRS = 12          # pairs of engine switches re-planned when no single one fits

# evaluate(model, target, workload) -> (total bytes, fits): a re-plan without limits
Evaluate = Callable[[ModelSpec, GpuTarget, Workload], tuple[int, bool]]


@dataclass(frozen=True)
class _Tried:
    text: str
    flags: dict
    changes: dict
    total: int
    fits: bool


def usd_per_hour(target: GpuTarget) -> float | None:
    """What the change costs per hour at the price compare charges by default (the cheapest dated
    on-demand quote, pricing.default_price) times the cards; None without such a quote."""
    price = default_price(target.gpu) if target.gpu is not None else None
    return None if price is None else round(price.usd_per_hour * target.count, 4)


def _merged(w: Workload, first: dict, second: dict) -> dict | None:
    """Two changes of a workload as one: settings records (serve, train) merged field by field;
    None when both set the same field."""
    out = dict(first)
    for key, value in second.items():
        if key not in out:
            out[key] = value
            continue
        base = getattr(w, key)
        if not (is_dataclass(value) and is_dataclass(base)):
            return None
        a = {f.name: getattr(out[key], f.name) for f in fields(base) if getattr(out[key], f.name) != getattr(base, f.name)}
        b = {f.name: getattr(value, f.name) for f in fields(base) if getattr(value, f.name) != getattr(base, f.name)}
        if set(a) & set(b):
            return None
        out[key] = replace(base, **a, **b)
    return out


def suggestions(plan: Plan, catalog: tuple[GpuSpec, ...], eng: Engine, evaluate: Evaluate) -> list[Suggestion]:
    m, t, w = plan.model, plan.target, plan.workload
    out: list[Suggestion] = []
    levers: list[_Tried] = []

    def replan(target: GpuTarget, changes: dict) -> tuple[int, bool] | None:
        try:
            return evaluate(m, target, replace(w, **changes))
        except BadInput:            # e.g. heads that do not split N ways, no LoRA targets
            return None

    def keep(text: str, flags: dict, target: GpuTarget, total: int, fits: bool) -> None:
        if fits or total < plan.total_bytes:       # never a change that needs more memory
            out.append(Suggestion(text, flags, total, fits, usd_per_hour(target)))

    def attempt(text: str, flags: dict, target: GpuTarget = t, quiet: bool = False, **changes) -> bool | None:
        """Re-plan with one change: fits or not, or None when the change is not possible; `quiet`
        only asks (an engine choosing among sizes), without listing it."""
        result = replan(target, changes)
        if result is None or quiet:
            return None if result is None else result[1]
        if target == t:
            levers.append(_Tried(text, flags, changes, *result))
        keep(text, flags, target, *result)
        return result[1]

    eng.levers(plan, attempt)
    failed = [x for x in levers if not x.fits]
    if len(failed) > 1:
        pairs = 0
        for a, b in combinations(failed, 2):
            changes = _merged(w, a.changes, b.changes)
            if changes is None or set(a.flags) & set(b.flags):
                continue
            result = replan(t, changes)
            pairs += 1
            if result is not None and result[1]:
                keep(f"{a.text} {b.text}", {**a.flags, **b.flags}, t, *result)
            if pairs >= MAX_PAIRS:
                break
    if 0 < plan.max_batch < w.batch:
        attempt(f"--batch {plan.max_batch}", {"batch": plan.max_batch}, batch=plan.max_batch)
    if 0 < plan.max_ctx < w.ctx:
        attempt(f"{eng.ctx_flag} {plan.max_ctx}", {"ctx": plan.max_ctx}, ctx=plan.max_ctx)
    if t.gpu is not None:
        for n in SCALE_OUT_COUNTS:
            way = eng.scale_out(plan, n) if n > t.count else None
            if way is not None and attempt(way.text, way.flags, replace(t, count=n), **way.changes):
                break
    if catalog and t.memory_bytes is None:
        bigger = sorted((g for g in catalog if t.gpu is None or g.cuda_total_bytes > t.gpu.cuda_total_bytes),
                        key=lambda g: g.cuda_total_bytes)
        for g in bigger:
            target = replace(t, gpu=g)
            total, fits = evaluate(m, target, w)
            if fits:
                gpu = f"{g.id}{':' + str(t.count) if t.count > 1 else ''}"
                out.append(Suggestion(f"--gpu {gpu}", {"gpu": gpu}, total, True, usd_per_hour(target)))
                break
    # fitting first, cheapest per hour among them; stable, so ties keep the order of disruption
    # (a card without quotes after those with; the order of disruption breaks ties)
    out.sort(key=lambda s: (not s.fits, s.fits and s.usd_per_hour is None,
                            s.usd_per_hour if s.fits and s.usd_per_hour is not None else 0.0))
    return out
