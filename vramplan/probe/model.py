"""What a probe found, as frozen dataclasses: the boundary between NVML reading and rendering.

Bytes are ints. A field NVML could not give is None: "not supported on this card" leaves it
None silently, any other failure also records why in `errors` (field -> message), so a table can
say "unknown" and a script can tell the difference.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MemoryInfo:
    """NVML's memory figures. `api` says which call produced them: "v2"
    (nvmlDeviceGetMemoryInfo_v2, driver R510+: reserved reported apart) or "v1" (older
    drivers: the driver's reserve is inside `used`, and `reserved` is None)."""

    api: str
    total: int
    reserved: int | None
    used: int
    free: int


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    name: str                  # "" when NVML would not say (permissions, containers)
    used_bytes: int | None     # None: NVML cannot attribute memory (WDDM, MIG without rights)


@dataclass(frozen=True)
class MigInstance:
    slot: int                  # NVML's MIG device index on the parent
    uuid: str | None
    name: str | None           # "NVIDIA A100-SXM4-40GB MIG 3g.20gb"
    gpu_instance: int | None
    compute_instance: int | None
    memory: MemoryInfo | None
    capacity_bytes: int | None
    processes: tuple[ProcessInfo, ...] = ()
    cuda_index: int | None = None      # its position among CUDA devices; None: not visible
    errors: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def profile(self) -> str:
        """"3g.20gb" from the NVML name (the part after "MIG ")."""
        return (self.name or "").rpartition("MIG ")[2] or "?"


@dataclass(frozen=True)
class GpuInfo:
    index: int                         # NVML index (PCI bus order)
    uuid: str | None
    name: str | None
    catalog_id: str | None             # the catalog GPU matched by NVML name; None: unknown card
    memory: MemoryInfo | None
    capacity_bytes: int | None         # CUDA-visible total: NVML total - catalog driver reserve
    ecc: tuple[bool, bool] | None      # (current, pending); None: not supported / unknown
    mig: tuple[bool, bool] | None      # (current, pending); None: card without MIG
    mig_instances: tuple[MigInstance, ...] = ()
    pcie: tuple[int, int, int, int] | None = None   # current gen, width, max gen, max width
    power_limit_w: float | None = None
    processes: tuple[ProcessInfo, ...] = ()
    cuda_index: int | None = None      # None: not visible, or in MIG mode (its instances are)
    error: str | None = None           # the device could not be read at all
    errors: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def mig_enabled(self) -> bool:
        return bool(self.mig and self.mig[0])


@dataclass(frozen=True)
class ProbeReport:
    driver_version: str | None
    cuda_driver_version: str | None    # "12.4": the newest CUDA the driver supports
    gpus: tuple[GpuInfo, ...]          # visible GPUs, in NVML order
    cuda_visible_devices: str | None   # the environment value honoured (None: unset)
    driver_reserve_bytes: int          # catalog.driver_reserve_mib in bytes
    warnings: tuple[str, ...] = ()

    def cuda_devices(self) -> list[tuple[GpuInfo, MigInstance | None]]:
        """What torch calls cuda:0, cuda:1, ... in order: whole GPUs and MIG instances."""
        found = []
        for g in self.gpus:
            if g.cuda_index is not None:
                found.append((g.cuda_index, g, None))
            for m in g.mig_instances:
                if m.cuda_index is not None:
                    found.append((m.cuda_index, g, m))
        return [(g, m) for _, g, m in sorted(found, key=lambda t: t[0])]

    @property
    def readable(self) -> bool:
        """At least one visible GPU answered."""
        return any(g.error is None for g in self.gpus)
