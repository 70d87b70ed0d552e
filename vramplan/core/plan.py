"""From (model, GPU, workload) to a Plan: components, verdict, limits and suggestions.

Pure: takes dataclasses (and the GPU catalog as data, for suggestions), returns a Plan.
"""

from __future__ import annotations

from dataclasses import replace
from importlib import import_module

from ..errors import BadInput
from ..spec import GpuSpec, GpuTarget, ModelSpec, Plan, Suggestion, Workload
from ..units import MAX_BATCH, MAX_TOKENS
from . import kv_cache as kv
from . import serving
from .dtypes import FLOAT_BYTES
from .limits import largest_fitting
from .setup import Breakdown, Setup

# Each mode is a module with prepare(model, target, workload) -> Setup and
# components(setup, batch, ctx) -> Breakdown; imported on first use.
MODES = {"serve": "serving", "infer": "inference", "full": "finetune", "lora": "finetune",
         "qlora": "finetune"}


def _mode(name: str):
    if name not in MODES:
        raise BadInput(f"--mode {name!r} is not one of: {', '.join(MODES)}.")
    return import_module(f".{MODES[name]}", __package__)


def setup(model: ModelSpec, target: GpuTarget, workload: Workload) -> Setup:
    return _mode(workload.mode).prepare(model, target, workload)


def components(s: Setup, batch: int, ctx: int) -> Breakdown:
    return _mode(s.workload.mode).components(s, batch, ctx)


def total_bytes(s: Setup, batch: int, ctx: int) -> int:
    return components(s, batch, ctx).total


def _limits(s: Setup, batch: int, ctx: int) -> tuple[int, int]:
    ctx_cap = MAX_TOKENS
    max_batch = largest_fitting(lambda b: total_bytes(s, b, ctx) <= s.capacity, MAX_BATCH)
    max_ctx = largest_fitting(lambda c: total_bytes(s, batch, c) <= s.capacity, ctx_cap)
    return max_batch, max_ctx


def evaluate(model: ModelSpec, target: GpuTarget, workload: Workload) -> tuple[int, bool]:
    """(total bytes, fits) of one workload, without solving limits: what suggestions need."""
    s = setup(model, target, workload)
    b = components(s, workload.batch, workload.ctx)
    fits = b.total <= s.capacity
    if workload.mode == "serve":
        fits = fits and serving.startup(s, b, workload.ctx).headroom_ok
    return b.total, fits


def build(model: ModelSpec, target: GpuTarget, workload: Workload,
          catalog: tuple[GpuSpec, ...] = (), suggest: bool = True) -> Plan:
    s = setup(model, target, workload)
    batch, ctx = workload.batch, workload.ctx
    b = components(s, batch, ctx)
    max_batch, max_ctx = _limits(s, batch, ctx)
    warnings = list(model.warnings) + list(s.warnings)
    if s.fmt.base == "fp32" and model.extra.get("torch_dtype_assumed"):
        warnings.append("config.json names no torch_dtype, so the weights are taken as fp32 "
                        "(transformers' default); pass --dtype bf16 if the checkpoint is 16-bit.")
    mpe = model.max_position_embeddings
    if mpe and ctx > mpe:
        warnings.append(f"--ctx {ctx:,} exceeds the model's max_position_embeddings ({mpe:,}); "
                        f"quality past it is not guaranteed and vLLM refuses it by default.")
    serve_report = None
    if workload.mode == "serve":
        serve_report = serving.startup(s, b, ctx)
        if not serve_report.headroom_ok and not serve_report.refusal:
            warnings.append("The CUDA context, CUDA graphs and NCCL buffers do not fit in the "
                            f"{1 - workload.serve.gpu_memory_utilization:.0%} vLLM leaves outside its budget; "
                            "lower --gpu-memory-utilization.")
    plan = Plan(
        model=model, target=target, workload=workload, weight_dtype=s.fmt.label,
        kv_dtype=s.kv_dtype, components=b.parts, component_notes=b.notes,
        peak_allocated_bytes=b.peak_allocated, total_bytes=b.total, capacity_bytes=s.capacity,
        kv_bytes_per_token=kv.kv_bytes_per_token(model, s.kv_elem, s.tp),
        max_batch=max_batch, max_ctx=max_ctx, serve=serve_report,
        warnings=tuple(warnings), phase=b.phase,
    )
    if suggest and not plan.fits:
        plan = replace(plan, suggestions=tuple(suggestions(plan, catalog)))
    return plan


def suggestions(plan: Plan, catalog: tuple[GpuSpec, ...]) -> list[Suggestion]:
    """Concrete changes, each re-planned. Tried from the least disruptive (a cache dtype or a
    training switch) to the most (other hardware); the ones that fit are listed first."""
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

    training = w.train is not None
    if training:
        _training_switches(plan, attempt)
    else:
        if FLOAT_BYTES.get(plan.kv_dtype, 2) > 1:
            attempt("--kv-dtype fp8", {"kv_dtype": "fp8"}, kv_dtype="fp8")
        for dtype in ("fp8", "int4") if w.mode == "serve" else ("int8", "nf4"):
            if not plan.weight_dtype.startswith(dtype):
                attempt(f"--dtype {dtype}", {"dtype": dtype}, dtype=dtype)
    if 0 < plan.max_batch < w.batch:
        attempt(f"--batch {plan.max_batch}", {"batch": plan.max_batch}, batch=plan.max_batch)
    if 0 < plan.max_ctx < w.ctx:
        attempt(f"--ctx {plan.max_ctx}", {"ctx": plan.max_ctx}, ctx=plan.max_ctx)
    if t.gpu is not None and w.mode in ("serve", "full", "lora", "qlora"):
        for n in (2, 4, 8):
            if n <= t.count:
                continue
            more = replace(t, count=n)
            if training:
                text, flags = f"--gpu {t.gpu.id}:{n} --zero 3", {"gpu": f"{t.gpu.id}:{n}", "zero": 3}
                fits = attempt(text, flags, more, train=replace(w.train, world=n, zero=3))
            else:
                text, flags = f"--gpu {t.gpu.id}:{n} --tp {n}", {"gpu": f"{t.gpu.id}:{n}", "tp": n}
                fits = attempt(text, flags, more, serve=replace(w.serve, tp=n))
            if fits:
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


def _training_switches(plan: Plan, attempt) -> None:
    """The usual levers of a fine-tuning run, in the order people reach for them."""
    w, o = plan.workload, plan.workload.train
    if not o.grad_ckpt:
        attempt("--grad-ckpt", {"grad_ckpt": True}, train=replace(o, grad_ckpt=True))
    if w.mode != "qlora" and "8bit" not in o.optim:
        attempt("--optim adamw_8bit", {"optim": "adamw_8bit"}, train=replace(o, optim="adamw_8bit"))
    if w.mode == "full":
        if attempt("--mode lora", {"mode": "lora"}, mode="lora") is None:   # no default targets
            attempt("--mode lora --lora-targets all-linear", {"mode": "lora", "lora_targets": "all-linear"},
                    mode="lora", train=replace(o, lora_targets=("all-linear",)))
    if w.mode in ("full", "lora"):
        attempt("--mode qlora", {"mode": "qlora"}, mode="qlora", dtype="auto")
