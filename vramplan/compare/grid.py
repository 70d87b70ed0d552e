"""`vramplan sweep`: where a workload fits on one card (or one fixed set of cards), over a grid of
context lengths and batch sizes, with the largest batch that fits at each context."""

from __future__ import annotations

from dataclasses import replace

from vramplan import planner as core_plan
from vramplan.errors import BadInput
from vramplan.loading import load_model
from vramplan.compare.result import Cell, Sweep
from vramplan.request import PlanRequest, build_workload
from vramplan.spec import GpuTarget, ModelSpec
from vramplan.targets import resolve_target
from vramplan.units import parse_tokens

MAX_POINTS = 24       # per axis: a longer list is a typo, and the table would not fit a screen


def parse_range(text: str | int, what: str) -> tuple[int, ...]:
    """"4k..128k" doubles from 4,096 up to 131,072 (the end is always included); "1,8,32" is a
    list; a single value is a one-point axis. `what` names the parameter: "{ctx}", "{batch}"."""
    if isinstance(text, int):
        return (parse_tokens(text, what),)
    s = str(text).strip()
    if ".." in s:
        lo_text, _, hi_text = s.partition("..")
        lo, hi = parse_tokens(lo_text, what), parse_tokens(hi_text, what)
        if lo > hi:
            raise BadInput(f"{what} {text!r}: the range must go up, e.g. {hi_text.strip()}..{lo_text.strip()}.")
        points = []
        n = lo
        while n < hi:
            points.append(n)
            n *= 2
        points.append(hi)
    else:
        points = sorted({parse_tokens(p, what) for p in s.split(",") if p.strip()})
        if not points:
            raise BadInput(f"{what} {text!r} names no value; write e.g. 4k..128k or 1,8,32.")
    if len(points) > MAX_POINTS:
        raise BadInput(f"{what} {text!r} has {len(points)} points; at most {MAX_POINTS} (a range doubles).")
    return tuple(points)


def sweep(model: str | ModelSpec, gpu: str | GpuTarget | None = None, *, ctx: str = "4k..128k",
          batch: str = "1..64", gpu_mem: str | int | None = None, mode: str = "serve",
          dtype: str = "auto", kv_dtype: str = "auto", **options) -> Sweep:
    """Plan every (ctx, batch) of the grid on `gpu` ("l40s", "h100:2"; default l40s) or a card of
    `gpu_mem` bytes. Other keywords are those of `vramplan.api.plan`."""
    return sweep_request(PlanRequest.from_keywords(model, gpu, ctx=ctx, batch=batch, gpu_mem=gpu_mem,
                                                   mode=mode, dtype=dtype, kv_dtype=kv_dtype, **options))


def sweep_request(request: PlanRequest) -> Sweep:
    """`sweep` of a PlanRequest whose `ctx` and `batch` are ranges or lists ("4k..128k", "1,8")."""
    ctxs, batches = parse_range(request.ctx, "{ctx}"), parse_range(request.batch, "{batch}")
    spec = load_model(request.model, request.weights_from)
    target = resolve_target(request.gpu, request.gpu_mem, request.gpu_free)
    base = build_workload(replace(request, batch=batches[0], ctx=ctxs[0]), target.count)
    cells, limits, plan = [], [], None
    for c in ctxs:
        at_ctx = replace(base, ctx=c)
        plan = core_plan.build(spec, target, at_ctx, suggest=False)
        limits.append(plan.max_batch)
        row = []
        for b in batches:
            total, fits = core_plan.evaluate(spec, target, replace(at_ctx, batch=b))
            row.append(Cell(total, fits))
        cells.append(tuple(row))
    return Sweep(model=spec, target=target, workload=base, capacity_bytes=plan.capacity_bytes, ctxs=ctxs,
                 batches=batches, cells=tuple(cells), max_batch=tuple(limits),
                 weight_dtype=plan.weight_dtype, kv_dtype=plan.kv_dtype)
