"""The GPU under test: which one it is, read through NVML and torch, before anything is allocated.

Why by UUID: torch numbers GPUs fastest-first unless CUDA_DEVICE_ORDER=PCI_BUS_ID, NVML by PCI
bus, and on a MIG card CUDA enumerates one MIG device per process, chosen by rules vramplan can
only guess from NVML. The UUID torch reports for cuda:N (`get_device_properties(N).uuid`, the
bare hex form) names the device exactly: it is looked up among the GPUs and MIG instances the
probe read, and NVML's handle comes from `nvmlDeviceGetHandleByUUID`, which takes MIG- UUIDs.
"""

from __future__ import annotations

import os

from vramplan.errors import EnvironmentProblem
from vramplan.probe import nvml as N
from vramplan.probe.model import GpuInfo, MigInstance, ProbeReport
from vramplan.probe.nvml import NvmlError
from vramplan.probe.read import probe
from vramplan.probe.target import target_of
from vramplan.verify import alloc, guard
from vramplan.verify.meter import CudaMeter, NvmlView


def runs_on(capability: tuple[int, int], archs: list[str]) -> bool:
    """Whether a torch built for `archs` (torch.cuda.get_arch_list(): "sm_80", "sm_90a",
    "compute_90") has kernels for a device of `capability`. CUDA's compatibility rules (CUDA C
    Programming Guide, "Binary Compatibility" and "Application Compatibility"): a cubin for
    sm_XY runs on X.Z for Z >= Y; an arch-specific "a" cubin only on X.Y itself; PTX
    (compute_XY) is compiled by the driver for any device >= X.Y."""
    for arch in archs:
        kind, _, num = arch.partition("_")
        digits = num.rstrip("abcdefghijklmnopqrstuvwxyz")
        suffix = num[len(digits):]
        if len(digits) < 2 or not digits.isdigit():
            continue
        major, minor = int(digits[:-1]), int(digits[-1])
        if kind == "compute" and (major, minor) <= capability:
            return True
        if kind == "sm" and major == capability[0] and (
                minor == capability[1] if suffix == "a" else minor <= capability[1]):
            return True
    return False


def check_arch(torch, props, device: str) -> None:
    """Refuse, before anything is built, a GPU this torch has no kernels for (a V100 under a
    CUDA 13 build): every kernel would fail with "no kernel image is available"."""
    archs = list(torch.cuda.get_arch_list() or [])
    cap = (int(props.major), int(props.minor))
    if not archs or runs_on(cap, archs):
        return
    raise EnvironmentProblem(
        f"This torch (CUDA {torch.version.cuda}) has no kernels for {device}, a {props.name} with "
        f"compute capability {cap[0]}.{cap[1]}: it was built for {', '.join(archs)}; install a "
        f"torch build that includes sm_{cap[0]}{cap[1]}.")


def problem(e: BaseException, device: str) -> EnvironmentProblem | None:
    """A failure of the driver, NVML or the CUDA runtime as one sentence (exit 3); None for
    anything else (an out-of-memory in an allocation is a result, not an environment problem)."""
    if isinstance(e, NvmlError):
        return EnvironmentProblem(f"NVML failed on {device}: {e}; check the GPU with `vramplan probe` "
                                  "and nvidia-smi.")
    text = str(e)
    first = text.splitlines()[0] if text else type(e).__name__
    if "no kernel image is available" in text:
        return EnvironmentProblem(f"This torch has no kernels for {device} ({first}); install a "
                                  "torch build for this GPU's compute capability.")
    if "CUBLAS_STATUS" in text:
        return EnvironmentProblem(f"cuBLAS could not be initialized on {device} ({first}): the GPU "
                                  "has no memory left for its handle and workspace, or is failing.")
    if "invalid device ordinal" in text or text == "Invalid device id":
        return EnvironmentProblem(f"There is no CUDA device {device} ({first}); run `vramplan probe` "
                                  "to list them.")
    if isinstance(e, RuntimeError) and first.startswith("CUDA error") and "out of memory" not in first:
        return EnvironmentProblem(f"CUDA failed on {device}: {first}.")
    return None


def _bare(uuid) -> str:
    """"GPU-5d7f..." / "MIG-7ec5..." / torch's "5d7f..." -> "5d7f...", lower case."""
    text = str(uuid or "").strip().lower()
    for prefix in ("gpu-", "mig-"):
        text = text.removeprefix(prefix)
    return text


def match(report: ProbeReport, torch_uuid, index: int) -> tuple[GpuInfo, MigInstance | None, str]:
    """The probed GPU (and MIG instance) that torch's cuda:`index` is, and how it was found."""
    want = _bare(torch_uuid)
    if not want:          # an old torch without the uuid property: NVML's numbering, said so
        devices = report.cuda_devices()
        if index >= len(devices):
            raise EnvironmentProblem(f"There is no CUDA device {index}: {len(devices)} visible "
                                     "(run `vramplan probe` to list them).")
        g, m = devices[index]
        return g, m, "position"
    for g in report.gpus:
        for m in g.mig_instances:
            if _bare(m.uuid) == want:
                return g, m, "uuid"
        if _bare(g.uuid) == want:
            if not g.mig_enabled:
                return g, None, "uuid"
            shown = [m for m in g.mig_instances if m.cuda_index is not None]
            if len(shown) == 1:     # a driver that reports the parent's UUID for its MIG device
                return g, shown[0], "parent uuid"
            raise EnvironmentProblem(f"cuda:{index} is a MIG device of GPU {g.index}, and torch "
                                     "reports the parent's UUID; name the instance with "
                                     "CUDA_VISIBLE_DEVICES=MIG-<uuid> (see `vramplan probe`).")
    raise EnvironmentProblem(f"torch's cuda:{index} (UUID {torch_uuid}) is none of the GPUs NVML "
                             "lists here; run `vramplan probe` to see them.")


class CudaDevice:
    """The GPU under test: probed through NVML, its context measured before anything else."""

    def __init__(self, torch, device: str, backend, environ):
        guard.check_allocator()
        self.torch, self.device = torch, device
        self.fresh = not torch.cuda.is_initialized()
        if not torch.cuda.is_available():
            raise EnvironmentProblem(
                f"torch sees no CUDA GPU (torch {torch.__version__}, CUDA build "
                f"{torch.version.cuda or 'none: a CPU-only wheel'}); run verify on a GPU "
                "machine, or use --device cpu.")
        self.index = index = int(device.split(":")[1])
        count = torch.cuda.device_count()
        if index >= count:
            raise EnvironmentProblem(f"There is no CUDA device {index}: torch sees {count} "
                                     "(run `vramplan probe` to list them).")
        props = torch.cuda.get_device_properties(index)        # reads the device, no context
        check_arch(torch, props, device)
        self.capability = (int(props.major), int(props.minor))
        report = probe(backend, environ)
        g, mig, how = match(report, getattr(props, "uuid", None), index)
        self.target = target_of(report, g, mig, device)
        mem = (mig or g).memory
        self.gpu = {"name": (mig.name if mig else g.name), "uuid": (mig.uuid if mig else g.uuid),
                    "catalog_id": g.catalog_id, "nvml_index": g.index, "matched_by": how,
                    "driver_version": report.driver_version,
                    "cuda_driver_version": report.cuda_driver_version,
                    "compute_capability": f"{props.major}.{props.minor}",
                    "memory_api": mem.api, "nvml_total_bytes": mem.total,
                    "nvml_free_bytes_before": mem.free,
                    "cuda_capacity_bytes": self.target.per_gpu_bytes}
        self.notes: list[str] = []
        probed = (mig or g).cuda_index
        if how == "position":
            self.notes.append("torch reports no device UUID: matched to NVML by position")
        elif probed != index:
            self.notes.append(f"NVML's numbering puts this GPU at cuda:{probed}; matched by UUID")
        self.need, self.force = 0, False         # set by the session: checked again once the context exists
        self.meter: CudaMeter | None = None
        self.end = None                       # NonTorch at the end of the attempt
        self.others = sum(1 for p in (mig or g).processes if p.pid != os.getpid())
        self.planned_context = None
        self.n = backend if backend is not None else N.default_backend()
        self.n.init()
        try:
            self.view = NvmlView(self.n, self._handle(g, mig))   # baseline before our context exists
        except BaseException:
            self.close()
            raise

    def selected(self):
        """torch's current device is the one under test inside this block (torch.cuda.device:
        on leaving, the previous device is made current again only if it already has a context,
        so none is created there)."""
        return self.torch.cuda.device(self.index)

    def _handle(self, g: GpuInfo, mig: MigInstance | None):
        try:
            return self.n.handle_by_uuid((mig or g).uuid)
        except NvmlError:
            h = self.n.handle(g.index)
            return self.n.mig_devices(h)[mig.slot] if mig is not None else h

    def measure(self, plan, level: str, holder: list, model, spec, run):
        """Context first (nothing allocated yet), then the level's allocations, then what is
        held outside torch at the end."""
        try:
            self.meter = CudaMeter(self.device, self.view, self.fresh)
        except RuntimeError as e:
            if "out of memory" not in str(e).lower():
                raise
            free = self.gpu["nvml_free_bytes_before"]
            raise EnvironmentProblem(f"verify could not create a CUDA context on {self.device}: out of "
                                     f"memory ({free / 2**20:,.0f} MiB free before it started; see "
                                     "`vramplan probe` for who holds the rest).") from None
        self.planned_context = plan.components.get("cuda_context")
        self.gpu["cuda_total_bytes"] = self.meter.context.cuda_total
        self._pid_visibility(self.meter.context.source)
        note = guard.check_free(self.need, self.meter.context.cuda_free, self.force,
                                f"{self.device} now", guard.FREE_MARGIN_BYTES)
        if note:
            self.notes.append(note)
        self.meter.reset_peaks()
        try:
            if level == "alloc":
                rows, oom = alloc.allocate(plan, self.device, self.meter, holder)
                p = self.meter.peaks()
                measured = {"max_allocated_bytes": p.allocated, "max_reserved_bytes": p.reserved,
                            "nvml_peak_bytes": p.nvml, "memory_stats": self.meter.stats(),
                            "baseline_allocated_bytes": self.meter.baseline_allocated}
                predicted = {"peak_allocated_bytes": alloc.planned_total(rows), "total_bytes": plan.total_bytes}
                return rows, predicted, measured, oom, []
            return run(plan, model, spec, self.device, self.meter)
        finally:
            try:
                self.end = self.meter.non_torch()
            except Exception:       # a broken device must not hide why the attempt ended
                self.end = None

    def _pid_visibility(self, source: str) -> None:
        """Inside a container NVML lists host PIDs, never ours: every NVML figure is then the
        device's growth since verify started, which includes any other process's."""
        visible = {"nvml process": True, "nvml device delta": False}.get(source)
        if visible is None and self.view is not None:
            visible = self.view.pid_seen or None
        self.gpu["pid_visible"] = visible
        if visible is False:
            others = (f"; {self.others} other process{'es use' if self.others != 1 else ' uses'} "
                      "this GPU, so these figures include whatever they allocated meanwhile"
                      if self.others else "")
            self.notes.append("NVML does not list this process's PID (a container's PID namespace "
                              "hides it): its NVML figures are whole-device deltas since verify "
                              f"started{others}")

    def context_json(self) -> dict | None:
        if self.meter is None:
            return None
        c, end = self.meter.context, self.end
        end_bytes = end.bytes if end is not None else None
        return {"measured_bytes": c.bytes, "source": c.source,
                "planned_bytes": self.planned_context, "cuda_total_bytes": c.cuda_total,
                "cuda_free_bytes": c.cuda_free, "end_non_torch_bytes": end_bytes,
                "end_source": end.source if end is not None else "unavailable",
                "non_torch_growth_bytes": (end_bytes - c.bytes if end_bytes is not None
                                           and c.bytes is not None else None)}

    def close(self) -> None:
        if self.meter is not None:
            self.meter.close()
        try:
            self.n.shutdown()
        except Exception:
            pass
