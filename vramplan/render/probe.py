"""A ProbeReport as text for people and as JSON for scripts (keys documented in docs/probe.md).

Memory is shown in MiB, the unit nvidia-smi uses, so a reader can hold the two side by side;
the JSON carries exact bytes.
"""

from __future__ import annotations

from vramplan import __version__
from vramplan.probe.model import GpuInfo, MemoryInfo, MigInstance, ProbeReport, ProcessInfo

MiB, GiB = 2**20, 2**30


def _mem_json(m: MemoryInfo | None) -> dict | None:
    if m is None:
        return None
    return {"api": m.api, "total_bytes": m.total, "reserved_bytes": m.reserved,
            "used_bytes": m.used, "free_bytes": m.free}


def _procs_json(ps: tuple[ProcessInfo, ...]) -> list[dict]:
    return [{"pid": p.pid, "name": p.name, "used_bytes": p.used_bytes} for p in ps]


def _mig_json(m: MigInstance) -> dict:
    return {"slot": m.slot, "uuid": m.uuid, "name": m.name, "profile": m.profile,
            "gpu_instance_id": m.gpu_instance, "compute_instance_id": m.compute_instance,
            "cuda_index": m.cuda_index, "memory": _mem_json(m.memory),
            "cuda_capacity_bytes": m.capacity_bytes, "processes": _procs_json(m.processes),
            "errors": dict(m.errors)}


def gpu_json(g: GpuInfo) -> dict:
    pcie = None if g.pcie is None else dict(zip(("generation", "width", "max_generation", "max_width"), g.pcie))
    return {
        "index": g.index, "cuda_index": g.cuda_index, "name": g.name, "uuid": g.uuid,
        "catalog_id": g.catalog_id, "memory": _mem_json(g.memory),
        "cuda_capacity_bytes": g.capacity_bytes,
        "ecc": None if g.ecc is None else {"current": g.ecc[0], "pending": g.ecc[1]},
        "mig": None if g.mig is None else {"current": g.mig[0], "pending": g.mig[1],
                                           "instances": [_mig_json(m) for m in g.mig_instances]},
        "pcie": pcie, "power_limit_w": g.power_limit_w, "processes": _procs_json(g.processes),
        "error": g.error, "errors": dict(g.errors),
    }


def report_json(r: ProbeReport) -> dict:
    return {"vramplan_version": __version__, "driver_version": r.driver_version,
            "cuda_driver_version": r.cuda_driver_version,
            "cuda_visible_devices": r.cuda_visible_devices,
            "driver_reserve_bytes": r.driver_reserve_bytes,
            "gpus": [gpu_json(g) for g in r.gpus], "warnings": list(r.warnings)}


def _mib(b: int | None) -> str:
    return "?" if b is None else f"{b / MiB:,.0f} MiB"


def _mem_line(m: MemoryInfo) -> str:
    reserved = f"reserved {_mib(m.reserved)}  " if m.reserved is not None else ""
    note = "" if m.api == "v2" else "  (v1 call: this driver counts its reserve as used)"
    return (f"memory (NVML {m.api})  total {_mib(m.total)}  {reserved}used {_mib(m.used)}  "
            f"free {_mib(m.free)}{note}")


def _procs_lines(ps: tuple[ProcessInfo, ...], indent: str) -> list[str]:
    if not ps:
        return [f"{indent}processes   none"]
    lines = [f"{indent}processes   {len(ps)}"]
    for p in ps:
        lines.append(f"{indent}  pid {p.pid:<8} {_mib(p.used_bytes):>12}  {p.name or '(name unavailable)'}")
    return lines


def _gpu_text(g: GpuInfo, reserve: int) -> list[str]:
    where = f"cuda:{g.cuda_index}" if g.cuda_index is not None else (
        "MIG mode: its instances are the CUDA devices" if g.mig_enabled else "not visible to CUDA")
    if g.error:
        return [f"GPU {g.index}  ({where})  ERROR: {g.error}"]
    match = f"catalog: {g.catalog_id}" if g.catalog_id else "catalog: no match (using measured totals)"
    lines = [f"GPU {g.index}  {g.name}  ({where})  {g.uuid or 'uuid ?'}", f"  {match}"]
    lines.append("  " + _mem_line(g.memory))
    if g.capacity_bytes is not None:
        lines.append(f"  CUDA capacity       {_mib(g.capacity_bytes)} ({g.capacity_bytes / GiB:.2f} GiB)"
                     f" = NVML total - {reserve // MiB} MiB driver reserve")
    ecc = "unsupported" if g.ecc is None else ("on" if g.ecc[0] else "off") + (
        f" (pending {'on' if g.ecc[1] else 'off'})" if g.ecc[0] != g.ecc[1] else "")
    mig = "unsupported" if g.mig is None else ("enabled" if g.mig[0] else "disabled")
    pcie = "?" if g.pcie is None else f"Gen{g.pcie[0]} x{g.pcie[1]} (max Gen{g.pcie[2]} x{g.pcie[3]})"
    power = "?" if g.power_limit_w is None else f"{g.power_limit_w:g} W"
    lines.append(f"  ECC {ecc}, MIG {mig}, PCIe {pcie}, power limit {power}")
    for m in g.mig_instances:
        cuda = f"cuda:{m.cuda_index}" if m.cuda_index is not None else "not visible"
        lines.append(f"  MIG {m.profile:<8} GI {m.gpu_instance} CI {m.compute_instance}  ({cuda})  {m.uuid}")
        if m.memory is not None:
            lines.append("    " + _mem_line(m.memory))
            lines.append(f"    CUDA capacity     {_mib(m.capacity_bytes)}")
        lines += _procs_lines(m.processes, "    ")
    if not g.mig_instances:
        lines += _procs_lines(g.processes, "  ")
    for key, msg in g.errors.items():
        lines.append(f"  ({key} unavailable: {msg})")
    return lines


def report_text(r: ProbeReport) -> str:
    lines = [f"driver {r.driver_version or '?'}, CUDA {r.cuda_driver_version or '?'}"
             + (f", CUDA_VISIBLE_DEVICES={r.cuda_visible_devices!r}" if r.cuda_visible_devices is not None else "")]
    for g in r.gpus:
        lines.append("")
        lines += _gpu_text(g, r.driver_reserve_bytes)
    if r.warnings:
        lines.append("")
        lines += [f"warning: {w}" for w in r.warnings]
    return "\n".join(lines)
