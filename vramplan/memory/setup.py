"""What stays fixed while batch and context vary: the resolved formats, the weights, the
overhead and the capacity of one planning question. Each engine builds one (`Engine.prepare`)
and turns it into components for a given batch and context (`Engine.components`).

What only one engine needs (vLLM's stages and KV layout, transformers' eager attention, the
trainer's weight dtype) travels in `state`, a frozen dataclass that engine defines: this module
stays engine-neutral, and readers outside the engine get named, typed attributes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from vramplan.spec import GpuTarget, ModelSpec, Workload
from vramplan.memory.weights import WeightFormat

StateT = TypeVar("StateT")


@dataclass(frozen=True, kw_only=True)
class Setup(Generic[StateT]):
    model: ModelSpec
    target: GpuTarget
    workload: Workload
    fmt: WeightFormat
    kv_dtype: str
    kv_elem: int                 # bytes per KV cache element
    act_elem: int                # bytes per activation element (the compute dtype)
    weights: int                 # bytes per GPU
    overhead: dict[str, int]     # counted in total_bytes, independent of batch and ctx
    capacity: int                # bytes the workload may use on one GPU
    tp: int = 1
    widest: tuple[int, str] = (0, "")     # activation elements per token of the widest layer, in
                                          # the engine's runtime layout (unused by the trainer)
    state: StateT = field(hash=False, compare=False)   # the engine's own fixed state (e.g. VllmState)
    warnings: tuple[str, ...] = ()        # what the plan should say about this engine's assumptions


@dataclass(frozen=True)
class Breakdown:
    """Components at the peak, for one batch and context."""

    parts: dict[str, int]        # name -> bytes per GPU, display order; total_bytes = sum
    notes: dict[str, str]
    phase: str                   # where the peak falls
    peak_allocated: int          # what torch.cuda.max_memory_allocated() would count
    outside: dict[str, int] = field(default_factory=dict)   # reported, not in total: memory the
                                 # program can put elsewhere (bitsandbytes paged state in CUDA
                                 # managed memory, evicted to host RAM under pressure; state
                                 # offloaded to host RAM)

    @property
    def total(self) -> int:
        return sum(self.parts.values())


def resolve_kv_dtype(kv_dtype: str, fmt: WeightFormat) -> str:
    """"auto" caches in the compute dtype (vLLM kv_cache_dtype=auto, transformers' cache)."""
    return fmt.base if kv_dtype == "auto" else kv_dtype
