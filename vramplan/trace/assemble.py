"""From a TraceResult to a Plan that means what an analytic Plan means.

The trace counts tensors; a GPU process also holds the CUDA context, cuBLAS workspaces and the
allocator's slack. Those come from the same overhead model the analytic tier uses (the engine's
own `prepare()`: engines/transformers/generate.py, engines/vllm/serving.py,
engines/hf_trainer/step.py), so `total_bytes` is comparable across `--method analytic` and `--method trace`. What the trace cannot run (vLLM's
sampler and paged cache in serve mode) is taken from the analytic model and says so in its note.
Limits (max_batch, max_ctx) are solved by the analytic model: a trace measures one workload.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from vramplan.memory import activations as act
from vramplan.memory import overhead
from vramplan.memory.setup import Setup
from vramplan.spec import Plan
from vramplan.units import GiB
from vramplan.trace.result import TraceResult

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


def serve(s: Setup, t: TraceResult, analytic: Plan) -> TracedPlan:
    """Weights and the profiling forward traced; vLLM's sampler peak, paged KV cache and start-up
    figures from the analytic model (vLLM's own code, not transformers')."""
    c = t.components
    weights = c.get("weights", 0)
    forward = sum(v for k, v in c.items() if k not in ("weights", _HOST))
    tokens = s.state.batched_tokens
    modelled_forward = act.forward_peak(s.model, tokens, s.act_elem, s.widest).bytes
    modelled = analytic.components["activations"]
    sampler = modelled if modelled > modelled_forward else 0     # the engine's sampler dominated
    eager = t.measured.get("attn", "sdpa") == "eager"
    if eager:
        # transformers has no SDPA path for this model; vLLM's fused attention never builds the
        # seq x seq scores the eager forward does, so the traced forward does not stand for it
        forward, sampler = 0, modelled
    parts = dict(analytic.components)
    parts["weights"] = weights
    parts["activations"] = max(forward, sampler)
    notes = dict(analytic.component_notes)
    notes["weights"] = f"{s.fmt.label}, traced"
    notes["kv_cache"] = notes.get("kv_cache", "") + " (vLLM's paged cache, analytic)"
    if eager:
        notes["activations"] = notes.get("activations", "") + (
            " (analytic: transformers runs this model with eager attention, vLLM does not)")
    elif forward >= sampler:
        notes["activations"] = f"profile forward of {tokens:,} tokens, traced ({t.where})"
    else:
        notes["activations"] = notes.get("activations", "") + (
            f" (analytic; the traced forward needs {forward / GiB:.2f} GiB)")
    peak = analytic.peak_allocated_bytes + weights - analytic.components["weights"] \
        + parts["activations"] - modelled
    plan = _plan(analytic, parts, notes, peak, t)
    return replace(plan, warnings=plan.warnings + (
        "The vLLM start-up figures (serve report) come from the analytic model.",))


def training(s: Setup, t: TraceResult, analytic: Plan, slack_fraction: float) -> TracedPlan:
    """The allocator slack follows engines/hf_trainer/step.py: a fraction of the allocated peak."""
    c = {k: v for k, v in t.components.items() if k != _HOST}
    order = ("weights", "trainable", "gradients", "optimizer", _PAGED, "optimizer_step_temporaries",
             "activations", "logits_and_loss")
    parts = {k: c[k] for k in order if c.get(k)}
    parts["activations"] = c.get("activations", 0) + c.get("buffers", 0)
    allocated = sum(v for k, v in c.items() if k != _PAGED)
    parts["allocator_slack"] = overhead.allocator_slack(allocated, slack_fraction)
    parts.update(s.overhead)
    notes = {"weights": "traced", "activations": _note_where(t)}
    if _PAGED in parts:
        notes[_PAGED] = "bitsandbytes paged state (CUDA managed memory, outside torch's allocator)"
    return _plan(analytic, parts, notes, allocated + s.overhead["cublas_workspace"], t)


def _plan(analytic: Plan, parts: dict, notes: dict, peak: int, t: TraceResult) -> TracedPlan:
    warnings = list(analytic.warnings) + list(t.measured.get("warnings", ()))
    layers = (f"the layers derived from {analytic.model.derived_from}" if analytic.model.derived_from
              else "the analytic layers")
    warnings.append(f"max_batch and max_ctx are solved by the closed-form model on {layers} (the trace "
                    f"measures one workload).")
    traced = t.measured.get("params")
    if isinstance(traced, int) and traced != analytic.model.params:
        warnings.append(f"The traced model holds {traced:,} parameters; the layers the limits read hold "
                        f"{analytic.model.params:,}.")
    fields = {f: getattr(analytic, f) for f in analytic.__dataclass_fields__}
    fields.update(components=parts, component_notes=notes, peak_allocated_bytes=peak,
                  total_bytes=sum(parts.values()), warnings=tuple(warnings),
                  phase=t.phase, suggestions=(), trace=t)
    return TracedPlan(**fields)
