"""What stays fixed while batch and context vary: the resolved formats, the weights, the
overhead and the capacity of one planning question. Each engine builds one (`Engine.prepare`)
and turns it into components for a given batch and context (`Engine.components`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vramplan.spec import GpuTarget, ModelSpec, Workload
from vramplan.memory.weights import WeightFormat


@dataclass(frozen=True)
class Setup:
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
    widest: tuple[int, str] = (0, "")     # activation elements per token of the widest layer
    mode_data: dict = field(default_factory=dict, hash=False, compare=False)
    warnings: tuple[str, ...] = ()        # what the plan should say about this mode's assumptions


@dataclass(frozen=True)
class Breakdown:
    """Components at the peak, for one batch and context."""

    parts: dict[str, int]        # name -> bytes per GPU, display order; total_bytes = sum
    notes: dict[str, str]
    phase: str                   # where the peak falls
    peak_allocated: int          # what torch.cuda.max_memory_allocated() would count

    @property
    def total(self) -> int:
        return sum(self.parts.values())


def resolve_kv_dtype(kv_dtype: str, fmt: WeightFormat) -> str:
    """"auto" caches in the compute dtype (vLLM kv_cache_dtype=auto, transformers' cache)."""
    return fmt.base if kv_dtype == "auto" else kv_dtype
