"""From a TraceResult to a Plan that means what an analytic Plan means.

The trace counts tensors; a GPU process also holds the CUDA context, cuBLAS workspaces and the
allocator's slack. Those come from the same overhead model the analytic tier uses (the mode's
own `prepare()`: core/inference.py, core/serving.py, core/finetune.py), so `total_bytes` is
comparable across `--method analytic` and `--method trace`. What the trace cannot run (vLLM's
sampler and paged cache in serve mode) is taken from the analytic model and says so in its note.
Limits (max_batch, max_ctx) are solved by the analytic model: a trace measures one workload.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..core import kv_cache as kv
from ..core import overhead
from ..core.setup import Breakdown, Setup
from ..spec import Plan
from ..units import GiB
from .result import TraceResult

# Categories that are not GPU memory (torch's AdamW step counters live on the host) or not in
# torch's allocator (bitsandbytes paged optimizer state, CUDA managed memory).
_HOST = "host"
_PAGED = "optimizer_paged"


@dataclass(frozen=True)
class TracedPlan(Plan):
    """A Plan whose tensor components were measured by the trace; `trace` has the detail."""

    trace: TraceResult | None = None


def _note_where(t: TraceResult) -> str:
    return f"traced peak in {t.where}"


def inference(s: Setup, t: TraceResult, analytic: Plan) -> TracedPlan:
    c = t.components
    weights, cache = c.get("weights", 0), c.get("kv_cache", 0)
    activations = sum(v for k, v in c.items() if k not in ("weights", "kv_cache", _HOST))
    parts = {"weights": weights, "kv_cache": cache, "activations": activations,
             "allocator_slack": overhead.allocator_slack(activations), **s.overhead}
    notes = {"weights": f"{s.fmt.label}, traced", "kv_cache": f"transformers cache at the peak, {s.kv_dtype}",
             "activations": _note_where(t) + " (incl. last-position logits and sampler)"}
    peak = weights + cache + activations + s.overhead["cublas_workspace"]
    return _plan(analytic, parts, notes, peak, t)


def serve(s: Setup, t: TraceResult, analytic: Plan, startup) -> TracedPlan:
    """Weights and the profiling forward traced; vLLM's sampler and paged KV from the analytic
    model (vLLM's own code, not transformers')."""
    from ..core import serving

    c = t.components
    weights = c.get("weights", 0)
    forward = sum(v for k, v in c.items() if k not in ("weights", _HOST))
    d = s.mode_data
    sampler = int(serving.SAMPLER_BYTES_PER_LOGIT * d["max_seqs"] * s.model.vocab_size)
    w = s.workload
    cache = kv.paged_cache_bytes(s.model, s.kv_elem, w.batch, w.ctx, w.serve.block_size, s.tp,
                                 s.act_elem, in_flight=d["batched_tokens"])
    if forward >= sampler:
        act, where = forward, f"profile forward of {d['batched_tokens']:,} tokens, traced ({t.where})"
    else:
        act, where = sampler, (f"profile sampler, {d['max_seqs']:,} requests x {s.model.vocab_size:,} vocab "
                               f"(analytic; the traced forward needs {forward / GiB:.2f} GiB)")
    parts = {"weights": weights, "kv_cache": cache, "activations": act, **s.overhead}
    notes = {"weights": f"{s.fmt.label}, traced",
             "kv_cache": f"{w.batch} x {w.ctx:,} tokens, paged in blocks of {w.serve.block_size} (vLLM, analytic)",
             "activations": where, "non_torch": "non-torch growth after vLLM's start-up snapshot"}
    b = Breakdown(parts, notes, "profile run", weights + cache + act)
    plan = _plan(analytic, parts, notes, b.peak_allocated, t)
    return replace(plan, serve=startup(s, b, w.ctx))


def training(s: Setup, t: TraceResult, analytic: Plan, slack_fraction: float) -> TracedPlan:
    c = {k: v for k, v in t.components.items() if k != _HOST}
    order = ("weights", "trainable", "gradients", "optimizer", _PAGED, "optimizer_step_temporaries",
             "activations", "logits_and_loss")
    parts = {k: c.get(k, 0) for k in order if k in c or k in ("weights", "gradients", "optimizer")}
    parts["activations"] = c.get("activations", 0) + c.get("buffers", 0)
    transient = parts["activations"] + parts.get("logits_and_loss", 0)
    parts["allocator_slack"] = overhead.allocator_slack(transient, slack_fraction)
    parts.update(s.overhead)
    notes = {"weights": "traced", "activations": _note_where(t)}
    if _PAGED in parts:
        notes[_PAGED] = "bitsandbytes paged state (CUDA managed memory, outside torch's allocator)"
    allocated = sum(v for k, v in c.items() if k != _PAGED) + s.overhead["cublas_workspace"]
    return _plan(analytic, parts, notes, allocated, t)


def _plan(analytic: Plan, parts: dict, notes: dict, peak: int, t: TraceResult) -> TracedPlan:
    warnings = list(analytic.warnings) + list(t.measured.get("warnings", ()))
    warnings.append("max_batch and max_ctx come from the analytic model (the trace measures one workload).")
    fields = {f: getattr(analytic, f) for f in analytic.__dataclass_fields__}
    fields.update(components=parts, component_notes=notes, peak_allocated_bytes=peak,
                  total_bytes=sum(parts.values()), warnings=tuple(warnings),
                  phase=t.phase, suggestions=(), trace=t)
    return TracedPlan(**fields)
