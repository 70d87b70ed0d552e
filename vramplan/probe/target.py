"""`--gpu auto`: turn the probed CUDA device into the GpuTarget the planner uses.

Capacity is what CUDA will actually offer: the NVML total minus the driver reserve the catalog
documents (catalog.driver_reserve_mib, docs/gpus.md), not the catalog's typical figure, because
ECC settings, MIG slices and driver versions change it card by card. Free memory is what NVML
says is free now (other processes hold the rest), capped at that capacity: with the v1 call
and on idle cards NVML's free can exceed what CUDA will hand out.
"""

from __future__ import annotations

from dataclasses import replace

from vramplan import catalog
from vramplan.errors import EnvironmentProblem
from vramplan.spec import GpuSpec, GpuTarget
from vramplan.probe.model import GpuInfo, MigInstance, ProbeReport
from vramplan.probe.read import probe


def target_from(report: ProbeReport, index: int = 0) -> GpuTarget:
    """The GpuTarget of CUDA device `index` in a probe report."""
    devices = report.cuda_devices()
    if not 0 <= index < len(devices):
        raise EnvironmentProblem(f"There is no CUDA device {index}: {len(devices)} visible "
                                 f"(run `vramplan probe` to list them).")
    gpu, mig = devices[index]
    return target_of(report, gpu, mig, f"cuda:{index}")


def target_of(report: ProbeReport, gpu: GpuInfo, mig: MigInstance | None, where: str) -> GpuTarget:
    """The GpuTarget of one probed GPU or MIG instance (`where` names it in messages)."""
    if gpu.error is not None:
        raise EnvironmentProblem(f"GPU {gpu.index} ({where}) could not be read: {gpu.error}.")
    mem, capacity = (mig.memory, mig.capacity_bytes) if mig else (gpu.memory, gpu.capacity_bytes)
    if mem is None or capacity is None:
        what = f"MIG instance {mig.profile}" if mig else f"GPU {gpu.index}"
        raise EnvironmentProblem(f"NVML gave no memory figures for {what} ({where}).")
    spec = _spec(gpu, mig, capacity, mem.total, report.driver_reserve_bytes)
    return GpuTarget(gpu=spec, count=1, free_bytes=min(mem.free, capacity))


def _spec(gpu: GpuInfo, mig: MigInstance | None, capacity: int, nvml_total: int,
          reserve: int) -> GpuSpec:
    how = (f"probed: NVML total {nvml_total:,} B ({nvml_total / 2**20:,.0f} MiB) minus the "
           f"{reserve // 2**20} MiB driver reserve (docs/gpus.md)")
    base = None
    if gpu.catalog_id:
        base = catalog.find_gpu(gpu.catalog_id)
    if base is None:
        base = GpuSpec(id="probed", name=gpu.name or "unknown GPU", nvml_name=gpu.name or "",
                       marketing="", cuda_total_bytes=capacity, cuda_total_measured=False)
    kept = tuple(s for s in base.sources if not s.startswith("cuda_total_bytes "))
    changes = dict(cuda_total_bytes=capacity, cuda_total_measured=False,
                   nvml_total_bytes=nvml_total, sources=kept + (how,))
    if mig is not None:   # a slice: its own name and memory; no prices, it is not rented alone
        changes.update(id=f"{base.id}-mig-{mig.profile}", name=mig.name or base.name, mig=0, prices=())
    return replace(base, **changes)


def auto_target(index: int = 0, backend=None, environ=None) -> GpuTarget:
    """`--gpu auto`: the GpuTarget of CUDA device `index` (cuda:0 by default), probed now.

    Catalog entry matched by NVML name (prices, bandwidth, architecture kept) with the probed
    CUDA-visible capacity and free memory; an unknown card gets id "probed" and its measured
    totals. Raises MissingExtra / EnvironmentProblem (exit 3) when nothing can be probed.
    """
    return target_from(probe(backend, environ), index)


def own_target(index: int, pid: int, own_bytes: int | None = None, backend=None, environ=None) -> GpuTarget:
    """The device a training process already works on: CUDA device `index`, whose room for the
    job is the capacity minus what OTHER processes hold, i.e. NVML's free memory plus what this
    process holds there already (its loaded weights, its context). Planning the whole step
    against NVML's free memory alone would count the loaded weights twice (issue #14, case 2).

    This process's share is NVML's figure for `pid`; where NVML cannot attribute it (a
    container's PID namespace, MIG without rights) the caller's measurement `own_bytes`
    (torch.cuda.memory_reserved + the CUDA context), else nothing."""
    report = probe(backend, environ)
    target = target_from(report, index)
    gpu, mig = report.cuda_devices()[index]
    holder = mig or gpu
    mine = [p.used_bytes for p in holder.processes if p.pid == pid and p.used_bytes is not None]
    held = sum(mine) if mine else (own_bytes or 0)
    free = target.free_bytes or 0
    return replace(target, free_bytes=min(free + held, target.per_gpu_bytes))
