"""Methods `full`, `lora`, `qlora`: one training step of the HF Trainer + peft + bitsandbytes kind.

The step's tensors and its peak phase come from engines/hf_trainer/phases.py; this module adds what the
trace cannot see and a GPU process holds anyway (context, cuBLAS workspace, allocator reserve),
so `total_bytes` means the same thing as in the inference modes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from vramplan.spec import GpuTarget, ModelSpec, Workload
from vramplan.memory.activations import pre_sm80_notes
from vramplan.memory import overhead
from vramplan.engines.hf_trainer import phases as training
from vramplan.engines.hf_trainer.options import Method
from vramplan.memory.dtypes import FLOAT_BYTES
from vramplan.memory.setup import Breakdown, Setup
from vramplan.memory.weights import resolve_format, transformers_bnb

# The caching allocator's reserve in training: blocks freed by the backward pass are cached in
# segments that later, differently sized requests cannot reuse. reference/gpus.md: "reserved
# exceeds allocated by a few % to ~20% in training"; PEFT's MetaMathQA runs (Llama-3.2-3B, L40S)
# reserved 5 % more than the allocated peak we predict (docs/training.md). Charged on the peak.
ALLOCATOR_SLACK_TRAIN = 0.05


@dataclass(frozen=True)
class TrainState:
    """How the step trains: the method (the workload's mode, read once at this edge) and the
    weight dtype it is planned with: --dtype, with QLoRA's "auto" read as nf4 (the Setup's `fmt`
    is what transformers' bitsandbytes conversion makes of it)."""

    method: Method
    dtype: str


def prepare(model: ModelSpec, target: GpuTarget, workload: Workload) -> Setup[TrainState]:
    opts = workload.train
    method = cast(Method, workload.mode)     # step_setup refuses anything but a training method
    dtype = workload.dtype
    if method == "qlora" and dtype == "auto":
        dtype = "nf4"
    fmt, warnings = transformers_bnb(model, resolve_format(model, dtype), workload.transformers)
    compute = "bf16" if (opts.precision == "mixed" or method == "qlora") else fmt.base   # autocast's dtype
    warnings = (*warnings, *pre_sm80_notes(target.gpu, compute, model, training=True))
    capacity = target.per_gpu_bytes
    if target.free_bytes is not None:
        capacity = min(capacity, target.free_bytes)
    return Setup(model=model, target=target, workload=workload, fmt=fmt, kv_dtype=fmt.base,
                 kv_elem=FLOAT_BYTES[fmt.base], act_elem=FLOAT_BYTES[fmt.base], weights=0,
                 overhead=overhead.runtime_overhead(target.gpu, opts.world), capacity=capacity,
                 state=TrainState(method, dtype), warnings=warnings)


def components(s: Setup[TrainState], batch: int, ctx: int) -> Breakdown:
    w = s.workload
    peak = training.training_peak(s.model, s.state.method, batch, ctx, w.train, s.state.dtype, w.transformers)
    # Paged optimizer state is reported but kept out of the total and the verdict: it lives in
    # CUDA managed memory, which the driver evicts to host RAM when torch's allocator needs the
    # room (QLoRA arXiv 2305.14314 §3 "Paged Optimizers"); the run then goes on, slower.
    parts = {k: v for k, v in peak.components.items() if v and k not in peak.outside_allocator}
    parts["allocator_slack"] = overhead.allocator_slack(peak.peak_allocated_bytes, ALLOCATOR_SLACK_TRAIN)
    parts.update(s.overhead)
    outside = {k: v for k, v in {**peak.outside_allocator, **peak.host}.items() if v}
    notes = {k: v for k, v in peak.notes.items()          # DeepSpeed's step-only / backward-only parts
             if k not in ("zero_fp32_grads", "zero_buckets") or k in parts}
    return Breakdown(parts, notes, peak.phase,
                     peak.peak_allocated_bytes + s.overhead["cublas_workspace"],
                     outside=outside)


def paging_warning(s: Setup[TrainState], b: Breakdown) -> str | None:
    """What happens when the paged state does not stay on the card: the verdict does not count
    it, so say when it will page and what that costs."""
    paged = b.outside.get("optimizer_paged", 0)
    if not paged:
        return None
    room = s.capacity - b.total
    if room >= paged:
        return None
    moved = paged - max(room, 0)
    return (f"the paged optimizer state ({paged / 2**30:.2f} GiB, CUDA managed memory) does not all fit beside "
            f"the step: about {moved / 2**30:.2f} GiB of it will be paged out to host RAM under memory "
            f"pressure and paged back in at every optimizer step, which slows the step (PCIe-bound) "
            f"but does not run out of memory.")
