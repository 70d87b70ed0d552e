"""Read every visible GPU through an `Nvml` backend into a ProbeReport.

Why so defensive: a probe is run on freshly rented, half-configured machines. One GPU that has
fallen off the bus must not hide the healthy ones, and a feature a card lacks (ECC on consumer
cards, MIG before Ampere) is "not supported", not an error. Only a machine where nothing can be
read is an EnvironmentProblem (exit 3), said in one sentence.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace

from vramplan import catalog
from vramplan.errors import EnvironmentProblem, UnknownGpu
from vramplan.probe import nvml as N
from vramplan.probe.model import GpuInfo, MemoryInfo, MigInstance, ProbeReport, ProcessInfo
from vramplan.probe.nvml import Nvml, NvmlError
from vramplan.probe.visible import Candidate, select

MiB = 2**20


def _init_problem(e: NvmlError) -> EnvironmentProblem:
    if e.code == N.LIBRARY_NOT_FOUND:
        text = ("No NVIDIA driver found: libnvidia-ml.so.1 (NVML) is not installed, so there is "
                "no GPU to probe.")
    elif e.code == N.DRIVER_NOT_LOADED:
        text = ("The NVIDIA driver is installed but not loaded (NVML: Driver Not Loaded); "
                "load it (modprobe nvidia) or reboot.")
    elif e.code == N.LIB_RM_VERSION_MISMATCH:
        text = ("The NVIDIA kernel driver and its user-space library differ in version "
                "(NVML: version mismatch); reboot after the driver update.")
    elif e.code == N.NO_PERMISSION:
        text = "NVML refused access to the GPUs (insufficient permissions); check /dev/nvidia* access."
    else:
        text = f"NVML could not start: {e}."
    return EnvironmentProblem(text)


def cuda_version_text(v: int | None) -> str | None:
    """12040 -> "12.4" (NVML encodes 1000 * major + 10 * minor)."""
    return None if v is None else f"{v // 1000}.{(v % 1000) // 10}"


class _Reader:
    """Calls one backend, keeping per-field failures instead of raising them."""

    def __init__(self, n: Nvml, reserve: int):
        self.n, self.reserve = n, reserve

    def try_(self, errors: dict, key: str, fn, *args):
        try:
            return fn(*args)
        except NvmlError as e:
            if e.code != N.NOT_SUPPORTED:
                errors[key] = str(e)
            return None

    def memory(self, h) -> MemoryInfo:
        """v2 (reserved apart) when it answers, else v1. Any v2 failure falls back: drivers
        before R510 lack the call (FUNCTION_NOT_FOUND, ARGUMENT_VERSION_MISMATCH), and WSL and
        vGPU answer UNKNOWN or NOT_SUPPORTED although v1 works. If v1 fails too, its error is
        the device's."""
        try:
            total, reserved, used, free = self.n.memory_v2(h)
            return MemoryInfo("v2", total, reserved, used, free)
        except NvmlError:
            pass
        total, used, free = self.n.memory_v1(h)
        return MemoryInfo("v1", total, None, used, free)

    def capacity(self, mem: MemoryInfo | None) -> int | None:
        return None if mem is None else max(mem.total - self.reserve, 0)

    def processes(self, errors: dict, h) -> tuple[ProcessInfo, ...]:
        procs = self.try_(errors, "processes", self.n.processes, h) or []
        out = []
        for pid, used in procs:
            try:
                name = self.n.process_name(pid)
            except NvmlError:
                name = ""
            out.append(ProcessInfo(pid, name, used))
        return tuple(out)

    def mig(self, h, slot: int) -> MigInstance:
        errors: dict = {}
        uuid = self.try_(errors, "uuid", self.n.uuid, h)
        name = self.try_(errors, "name", self.n.name, h)
        ids = self.try_(errors, "mig_ids", self.n.mig_ids, h) or (None, None)
        mem = self.try_(errors, "memory", self.memory, h)
        return MigInstance(slot, uuid, name, ids[0], ids[1], mem, self.capacity(mem),
                           self.processes(errors, h), errors=errors)

    def gpu(self, index: int, h) -> GpuInfo:
        errors: dict = {}
        try:   # name and memory are what a probe is for: without them the device is unreadable
            name = self.n.name(h)
            mem = self.memory(h)
        except NvmlError as e:
            return GpuInfo(index, self.try_({}, "uuid", self.n.uuid, h), None, None, None, None,
                           None, None, error=str(e))
        uuid = self.try_(errors, "uuid", self.n.uuid, h)
        mig = self.try_(errors, "mig_mode", self.n.mig_mode, h)
        migs: tuple[MigInstance, ...] = ()
        if mig and mig[0]:
            handles = self.try_(errors, "mig_devices", self.n.mig_devices, h) or []
            migs = tuple(self.mig(mh, slot) for slot, mh in enumerate(handles))
        power = self.try_(errors, "power_limit", self.n.power_limit_mw, h)
        return GpuInfo(
            index=index, uuid=uuid, name=name, catalog_id=catalog_match(name), memory=mem,
            capacity_bytes=self.capacity(mem),
            ecc=self.try_(errors, "ecc", self.n.ecc_mode, h), mig=mig, mig_instances=migs,
            pcie=self.try_(errors, "pcie", self.n.pcie_link, h),
            power_limit_w=None if power is None else power / 1000,
            processes=self.processes(errors, h), errors=errors,
        )


def catalog_match(nvml_name: str | None) -> str | None:
    """The catalog id whose NVML name (or alias) is `nvml_name`; None for a card we do not know."""
    if not nvml_name:
        return None
    try:
        return catalog.find_gpu(nvml_name).id
    except UnknownGpu:
        return None


def probe(backend: Nvml | None = None, environ: Mapping[str, str] | None = None) -> ProbeReport:
    """Every GPU CUDA would see (CUDA_VISIBLE_DEVICES honoured), read through NVML.

    Raises MissingExtra without nvidia-ml-py and EnvironmentProblem when there is no driver, no
    GPU, or CUDA_VISIBLE_DEVICES hides them all. Never creates a CUDA context.
    """
    environ = os.environ if environ is None else environ
    n = backend if backend is not None else N.default_backend()
    try:
        n.init()
    except NvmlError as e:
        raise _init_problem(e) from None
    try:
        return _probe(n, environ, catalog.driver_reserve_mib() * MiB)
    finally:
        try:
            n.shutdown()
        except NvmlError:
            pass


def _probe(n: Nvml, environ: Mapping[str, str], reserve: int) -> ProbeReport:
    r = _Reader(n, reserve)
    meta: dict = {}
    driver = r.try_(meta, "driver", n.driver_version)
    cuda = r.try_(meta, "cuda", n.cuda_driver_version)
    try:
        count = n.device_count()
    except NvmlError as e:
        raise EnvironmentProblem(f"NVML could not count the GPUs: {e}.") from None
    if count == 0:
        raise EnvironmentProblem("The NVIDIA driver is loaded but sees no GPU on this machine.")

    # First pass: just enough of every device to apply CUDA_VISIBLE_DEVICES.
    handles, candidates, infos = {}, [], {}
    for i in range(count):
        try:
            handles[i] = n.handle(i)
        except NvmlError as e:
            infos[i] = GpuInfo(i, None, None, None, None, None, None, None, error=str(e))
            candidates.append(Candidate(i, None, False))
            continue
        infos[i] = r.gpu(i, handles[i])
        g = infos[i]
        candidates.append(Candidate(i, g.uuid, g.mig_enabled, tuple(
            (m.slot, m.uuid, m.gpu_instance, m.compute_instance) for m in g.mig_instances)))

    value = environ.get("CUDA_VISIBLE_DEVICES")
    order, dropped, warning = select(value, candidates)
    warnings = [warning] if warning else []
    if not order:
        raise EnvironmentProblem(f"CUDA_VISIBLE_DEVICES='{value}' hides all {count} GPU(s) on "
                                 "this machine; unset it or name a GPU.")
    cuda_of = {sel: k for k, sel in enumerate(order)}
    gpus = []
    for i in sorted({gi for gi, _ in order}):
        g = infos[i]
        migs = tuple(replace(m, cuda_index=cuda_of.get((i, m.slot))) for m in g.mig_instances)
        gpus.append(replace(g, cuda_index=cuda_of.get((i, None)), mig_instances=migs))
    if (value and any(e.strip().lstrip("-").isdigit() for e in value.split(","))
            and environ.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID"
            and len({g.name for g in infos.values() if g.name}) > 1):
        warnings.append("CUDA_VISIBLE_DEVICES uses indices, which are NVML's PCI bus order here; "
                        "set CUDA_DEVICE_ORDER=PCI_BUS_ID so CUDA numbers the GPUs the same way.")
    if dropped:
        k, (gi, slot) = next((k, s) for k, s in enumerate(order) if s[1] is not None)
        mig = next(m for m in infos[gi].mig_instances if m.slot == slot)
        warnings.append(f"CUDA gives a process one MIG device: cuda:{k} is MIG {mig.profile} (GPU {gi}); "
                        f"the other {len(dropped)} MIG instance{'s' if len(dropped) > 1 else ''} "
                        f"{'are' if len(dropped) > 1 else 'is'} not visible to it (choose one with "
                        "CUDA_VISIBLE_DEVICES=MIG-<uuid>).")
    for g in gpus:
        if g.error:
            warnings.append(f"GPU {g.index} could not be read: {g.error}.")
    return ProbeReport(driver, cuda_version_text(cuda), tuple(gpus), value, reserve, tuple(warnings))

