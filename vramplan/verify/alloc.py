"""--level alloc: allocate the plan's components as real tensors and see what the device says.

Why: it checks the plan's arithmetic against the allocator and the driver without building a
model, in seconds, at any size that fits. Each component is allocated in the pieces a real run
would make, so the caching allocator rounds as it would (a 2 MiB segment for a small norm
weight, 20 MiB segments for 1-10 MiB blocks): weights one tensor per checkpoint tensor, the KV
cache K and V per attention layer, everything else one block. Memory the allocator does not
hand out as tensors (CUDA context, cuBLAS workspace, NCCL, CUDA graphs, vLLM's non-torch
memory, the allocator's own slack, bitsandbytes' paged optimizer state in managed memory) is
not allocated: the context is measured separately and the slack is what `reserved - allocated`
shows.
"""

from __future__ import annotations

from vramplan.memory.dtypes import FLOAT_BYTES
from vramplan.memory.overhead import block_rounded
from vramplan.verify.guard import is_oom
from vramplan.verify.result import Row

NOT_ALLOCATED = {
    "cuda_context": "measured separately, before any allocation",
    "cublas_workspace": "made by the first matmul: see --level run",
    "nccl": "communicator buffers: needs a multi-GPU run",
    "cuda_graphs": "captured by the serving engine: not reproduced",
    "non_torch": "the serving engine's memory outside torch: not reproduced",
    "allocator_slack": "compare with reserved - allocated",
    "optimizer_paged": "CUDA managed memory, which verify never allocates",
}


def pieces(name: str, planned: int, plan) -> list[int]:
    """Tensor sizes that the allocator turns into exactly `planned` bytes (weights: one per
    checkpoint tensor, each rounded to its 512-B block as the plan counts it), split the way a
    real run splits them."""
    if planned <= 0:
        return []
    if name == "weights":
        per = FLOAT_BYTES.get(plan.weight_dtype)
        if per and plan.target.count == 1:
            sizes = [t.numel * per for t in plan.model.all_tensors()]
            if sum(block_rounded(s) for s in sizes) == planned:
                return [s for s in sizes if s]
    if name == "kv_cache":
        n = 2 * len(plan.model.attention_layers)
        if n and planned % n == 0:
            return [planned // n] * n
    return [planned]


def allocate(plan, device: str, meter, holder: list) -> tuple[list[Row], str | None]:
    """Allocate component by component into `holder`; stop at the first OOM and say where.
    The caller frees `holder` (guard.release) whatever happens."""
    import torch

    rows: list[Row] = []
    for name, planned in plan.components.items():
        if name in NOT_ALLOCATED:
            rows.append(Row(name, planned, note=NOT_ALLOCATED[name]))
            continue
        sizes = pieces(name, planned, plan)
        before = meter.snapshot()
        for k, size in enumerate(sizes):
            try:
                holder.append(torch.empty(size, dtype=torch.uint8, device=device))
            except Exception as e:
                if not is_oom(e):
                    raise
                where = (f"out of memory allocating {name}: tensor {k + 1} of {len(sizes)} "
                         f"({size:,} B), after {sum(sizes[:k]):,} B of it")
                rows.append(_row(name, planned, before, meter.snapshot(), k, where))
                return rows, where
        rows.append(_row(name, planned, before, meter.snapshot(), len(sizes), ""))
    return rows, None


def _row(name, planned, before, after, n, note) -> Row:
    """measured = memory_allocated() growth (tracker live bytes on cpu), reserved =
    memory_reserved() growth, nvml = NVML growth for this process."""
    nvml = None if after.nvml is None or before.nvml is None else after.nvml - before.nvml
    return Row(name, planned, after.allocated - before.allocated,
               after.reserved - before.reserved, nvml, pieces=n, note=note)


def planned_total(rows) -> int:
    """What --level alloc should end up holding: every component it allocates."""
    return sum(r.planned for r in rows if r.name not in NOT_ALLOCATED)
