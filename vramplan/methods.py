"""The two methods that answer a PlanRequest (`method=`): "analytic", the closed-form planner
(no GPU, no torch), and "trace", the real transformers model run on fake tensors. Both take the
same request and return the same Plan."""

from __future__ import annotations

from vramplan import catalog, planner
from vramplan.errors import BadInput
from vramplan.loading import load_model
from vramplan.request import METHODS, PlanRequest, build_workload
from vramplan.spec import Plan
from vramplan.targets import resolve_target


def plan(request: PlanRequest) -> Plan:
    """Resolve the request's GPU, check its workload, and answer it with its method."""
    if request.method not in METHODS:
        raise BadInput(f"{{method}} {request.method!r} is not one of: {', '.join(METHODS)}.")
    target = resolve_target(request.gpu, request.gpu_mem, request.gpu_free)
    workload = build_workload(request, target.count)
    if request.method == "trace":
        from vramplan import trace      # the trace tier loads only when asked for

        return trace.plan(request.model, target, workload, no_cache=request.no_cache)
    return planner.build(load_model(request.model), target, workload, catalog=catalog.load_gpus())
