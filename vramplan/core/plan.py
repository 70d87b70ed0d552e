"""From (model, GPU, workload) to a Plan: components, verdict, limits and suggestions.

Pure: takes dataclasses (and the GPU catalog as data, for suggestions), returns a Plan.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from ..errors import BadInput
from ..spec import GpuSpec, GpuTarget, ModelSpec, Plan, Suggestion, Workload
from ..units import MAX_BATCH, MAX_TOKENS, ceil_div
from . import activations as act
from . import kv_cache as kv
from . import overhead, serving
from .dtypes import FLOAT_BYTES
from .limits import largest_fitting
from .parallel import tp_divisor
from .weights import WeightFormat, resolve_format, weight_bytes

INFERENCE_MODES = ("serve", "infer")


@dataclass(frozen=True)
class Setup:
    """What stays fixed while batch and context vary."""

    model: ModelSpec
    target: GpuTarget
    workload: Workload
    fmt: WeightFormat
    kv_dtype: str
    kv_elem: int
    act_elem: int
    weights: int
    overhead: dict[str, int]     # counted in total_bytes
    outside: dict[str, int]      # serve: outside vLLM's budget, in total x (1 - util)
    capacity: int
    tp: int
    batched_tokens: int = 0      # serve: max_num_batched_tokens
    max_seqs: int = 0            # serve: max_num_seqs
    widest: tuple[int, str] = (0, "")   # activation elements per token of the widest layer


def resolve_kv_dtype(kv_dtype: str, fmt: WeightFormat) -> str:
    """"auto" caches in the compute dtype (vLLM kv_cache_dtype=auto, transformers' cache)."""
    return fmt.base if kv_dtype == "auto" else kv_dtype


def setup(model: ModelSpec, target: GpuTarget, workload: Workload) -> Setup:
    if workload.mode not in INFERENCE_MODES:
        raise BadInput(f"--mode {workload.mode!r} is not available yet; use serve or infer.")
    fmt = resolve_format(model, workload.dtype)
    serve = workload.mode == "serve"
    if serve and fmt.base == "fp32":
        # vLLM's dtype=auto serves fp32 checkpoints in 16 bits (ModelConfig._get_and_verify_dtype).
        plain = fmt.quant.method == "none"
        fmt = replace(fmt, base="bf16", label="bf16" if plain else fmt.label,
                      quant=replace(fmt.quant, bits=16) if plain else fmt.quant)
    kv_dtype = resolve_kv_dtype(workload.kv_dtype, fmt)
    o = workload.serve
    tp = o.tp if serve else 1
    world = tp * o.pp if serve else target.count
    weights = weight_bytes(model, fmt, tp_divisor(model, tp) if tp > 1 else None).total
    if not serve and target.count > 1:
        weights = ceil_div(weights, target.count)   # accelerate's device_map="auto" splits layers
    per_gpu = target.per_gpu_bytes
    if serve:
        capacity = int(per_gpu * o.gpu_memory_utilization)
        tokens, seqs = serving.engine_limits(o, target.gpu, per_gpu)
        ovh = {"non_torch": serving.NON_TORCH_INCREASE}
        outside = serving.outside_budget(world, o.enforce_eager, overhead.CUDA_CONTEXT_BYTES)
    else:
        capacity, tokens, seqs = per_gpu, 0, 0
        ovh, outside = overhead.runtime_overhead(target.gpu, world), {}
    if target.free_bytes is not None and not serve:
        capacity = min(capacity, target.free_bytes)
    return Setup(model, target, workload, fmt, kv_dtype, FLOAT_BYTES[kv_dtype],
                 FLOAT_BYTES[fmt.base], weights, ovh, outside, capacity, tp, tokens, seqs,
                 act.widest_layer(model))


def components(s: Setup, batch: int, ctx: int) -> tuple[dict[str, int], dict[str, str], str]:
    """Bytes per GPU by component, a note per component, and the phase of the peak."""
    m, w = s.model, s.workload
    notes = {"weights": s.fmt.label}
    if w.mode == "serve":
        o = w.serve
        cache = kv.paged_cache_bytes(m, s.kv_elem, batch, ctx, o.block_size, s.tp, s.act_elem,
                                     in_flight=s.batched_tokens)
        profile = serving.profile_peak(m, s.batched_tokens, s.max_seqs, s.act_elem, s.tp, s.widest)
        notes["kv_cache"] = f"{batch} x {ctx:,} tokens, paged in blocks of {o.block_size}, {s.kv_dtype}"
        notes["activations"] = profile.where
        notes["non_torch"] = "non-torch growth after vLLM's start-up snapshot"
        parts = {"weights": s.weights, "kv_cache": cache, "activations": profile.bytes}
        phase = "profile run"
    else:
        count = s.target.count
        cache = ceil_div(kv.contiguous_cache_bytes(m, s.kv_elem, batch, ctx, s.act_elem), count)
        prefill = act.forward_peak(m, batch * ctx, s.act_elem, s.widest)
        decode = max((a.kv_elems_per_token * kv.kept_tokens(a, ctx + 1) * s.kv_elem * batch
                      for a in kv.attention_layers(m)), default=0)
        logits = act.last_logits_bytes(m, batch, s.act_elem)
        if prefill.bytes >= decode:
            transient, phase = prefill.bytes, f"prefill ({prefill.where})"
        else:
            transient, phase = decode, "decode (cache growth copies one layer)"
        activations = ceil_div(transient, count) + logits
        notes["kv_cache"] = f"{batch} x {ctx:,} tokens, contiguous, {s.kv_dtype}"
        notes["activations"] = phase + " + last-position logits"
        parts = {"weights": s.weights, "kv_cache": cache, "activations": activations}
        parts["allocator_slack"] = overhead.allocator_slack(activations)
    parts.update(s.overhead)
    return parts, notes, phase


def total_bytes(s: Setup, batch: int, ctx: int) -> int:
    return sum(components(s, batch, ctx)[0].values())


def _limits(s: Setup, batch: int, ctx: int) -> tuple[int, int]:
    ctx_cap = MAX_TOKENS
    max_batch = largest_fitting(lambda b: total_bytes(s, b, ctx) <= s.capacity, MAX_BATCH)
    max_ctx = largest_fitting(lambda c: total_bytes(s, batch, c) <= s.capacity, ctx_cap)
    return max_batch, max_ctx


def evaluate(model: ModelSpec, target: GpuTarget, workload: Workload) -> tuple[int, bool]:
    """(total bytes, fits) of one workload, without solving limits: what suggestions need."""
    s = setup(model, target, workload)
    parts = components(s, workload.batch, workload.ctx)[0]
    total = sum(parts.values())
    fits = total <= s.capacity
    if workload.mode == "serve":
        fits = fits and _serve_report(s, parts, workload.ctx).headroom_ok
    return total, fits


def build(model: ModelSpec, target: GpuTarget, workload: Workload,
          catalog: tuple[GpuSpec, ...] = (), suggest: bool = True) -> Plan:
    s = setup(model, target, workload)
    batch, ctx = workload.batch, workload.ctx
    parts, notes, phase = components(s, batch, ctx)
    total = sum(parts.values())
    if workload.mode == "serve":
        peak_alloc = parts["weights"] + parts["kv_cache"] + parts["activations"]
    else:
        peak_alloc = parts["weights"] + parts["kv_cache"] + parts["activations"] + parts["cublas_workspace"]
    max_batch, max_ctx = _limits(s, batch, ctx)
    warnings = list(model.warnings)
    if s.fmt.base == "fp32" and model.extra.get("torch_dtype_assumed"):
        warnings.append("config.json names no torch_dtype, so the weights are taken as fp32 "
                        "(transformers' default); pass --dtype bf16 if the checkpoint is 16-bit.")
    mpe = model.max_position_embeddings
    if mpe and ctx > mpe:
        warnings.append(f"--ctx {ctx:,} exceeds the model's max_position_embeddings ({mpe:,}); "
                        f"quality past it is not guaranteed and vLLM refuses it by default.")
    serve_report = None
    if workload.mode == "serve":
        serve_report = _serve_report(s, parts, ctx)
        if not serve_report.headroom_ok:
            warnings.append("The CUDA context, CUDA graphs and NCCL buffers do not fit in the "
                            f"{1 - workload.serve.gpu_memory_utilization:.0%} vLLM leaves outside its budget; "
                            "lower --gpu-memory-utilization.")
    plan = Plan(
        model=model, target=target, workload=workload, weight_dtype=s.fmt.label,
        kv_dtype=s.kv_dtype, components=parts, component_notes=notes,
        peak_allocated_bytes=peak_alloc, total_bytes=total, capacity_bytes=s.capacity,
        kv_bytes_per_token=kv.kv_bytes_per_token(model, s.kv_elem, s.tp),
        max_batch=max_batch, max_ctx=max_ctx, serve=serve_report,
        warnings=tuple(warnings), phase=phase,
    )
    if suggest and not plan.fits:
        plan = replace(plan, suggestions=tuple(suggestions(plan, catalog)))
    return plan


def _serve_report(s: Setup, parts: dict[str, int], ctx: int):
    o = s.workload.serve
    non_kv = sum(v for k, v in parts.items() if k != "kv_cache")
    available = o.kv_cache_memory if o.kv_cache_memory is not None else s.capacity - non_kv
    headroom = s.target.per_gpu_bytes - s.capacity
    headroom_ok = sum(s.outside.values()) <= headroom
    if s.target.free_bytes is not None:       # vLLM: free memory at start must cover total x util
        headroom_ok = headroom_ok and s.target.free_bytes >= s.capacity
    return serving.report(s.model, o, s.kv_elem, s.act_elem, s.tp, available, ctx,
                          s.batched_tokens, s.max_seqs, headroom_ok, s.outside)


def suggestions(plan: Plan, catalog: tuple[GpuSpec, ...]) -> list[Suggestion]:
    """Concrete changes, each re-planned. Tried from the least disruptive (a cache dtype) to
    the most (other hardware); the ones that fit are listed first, in that order."""
    m, t, w = plan.model, plan.target, plan.workload
    out: list[Suggestion] = []

    def attempt(text: str, flags: dict, target: GpuTarget = t, **changes) -> None:
        try:
            total, fits = evaluate(m, target, replace(w, **changes))
        except BadInput:
            return
        out.append(Suggestion(text, flags, total, fits))

    if FLOAT_BYTES.get(plan.kv_dtype, 2) > 1:
        attempt("--kv-dtype fp8", {"kv_dtype": "fp8"}, kv_dtype="fp8")
    for dtype in ("fp8", "int4") if w.mode == "serve" else ("int8", "nf4"):
        if not plan.weight_dtype.startswith(dtype):
            attempt(f"--dtype {dtype}", {"dtype": dtype}, dtype=dtype)
    if 0 < plan.max_batch < w.batch:
        attempt(f"--batch {plan.max_batch}", {"batch": plan.max_batch}, batch=plan.max_batch)
    if 0 < plan.max_ctx < w.ctx:
        attempt(f"--ctx {plan.max_ctx}", {"ctx": plan.max_ctx}, ctx=plan.max_ctx)
    if t.gpu is not None and w.mode == "serve":
        for n in (2, 4, 8):
            if n > t.count and _tp_ok(m, n):
                more = replace(t, count=n)
                opts = replace(w.serve, tp=n)
                before = len(out)
                attempt(f"--gpu {t.gpu.id}:{n} --tp {n}", {"gpu": f"{t.gpu.id}:{n}", "tp": n},
                        more, serve=opts)
                if len(out) > before and out[-1].fits:
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


def _tp_ok(model: ModelSpec, tp: int) -> bool:
    """vLLM requires the attention heads to divide evenly across tensor-parallel ranks."""
    heads = [l.mixer.num_heads for l in model.attention_layers]
    return all(h % tp == 0 for h in heads)

