"""A fake NVML: the `Nvml` Protocol over plain data, and the scenarios the tests assert on.

Why it ships in the package: probe logic must be checkable where there is no GPU (CI, laptops,
this project's own machines), and the scenarios double as documentation of what real drivers
report (docs/probe.md). Memory is given the v2 way (total, reserved, used); the v1 view is
derived exactly as NVML does it: v1 counts the driver's reserve as used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vramplan.probe import nvml
from vramplan.probe.nvml import NvmlError

MiB = 2**20


@dataclass
class FakeMig:
    uuid: str
    name: str
    gpu_instance: int
    compute_instance: int
    total: int
    used: int = 0
    reserved: int = 0
    processes: list[tuple[int, int | None]] = field(default_factory=list)


@dataclass
class FakeGpu:
    name: str
    uuid: str
    total: int
    reserved: int
    used: int
    ecc: tuple[bool, bool] | None = (True, True)    # None: NOT_SUPPORTED
    mig: tuple[bool, bool] | None = None            # None: NOT_SUPPORTED (no MIG on this card)
    migs: list[FakeMig] = field(default_factory=list)
    pcie: tuple[int, int, int, int] = (4, 16, 4, 16)
    power_mw: int = 350_000
    processes: list[tuple[int, int | None]] = field(default_factory=list)
    fail: dict[str, int] = field(default_factory=dict)   # method name -> NVML code it raises
    capability: tuple[int, int] = (9, 0)                 # CUDA compute capability


class FakeNvml:
    """Implements vramplan.probe.nvml.Nvml. Handles are ("gpu", i) or ("mig", i, slot)."""

    def __init__(self, gpus: list[FakeGpu], driver: str = "550.54.15", cuda: int = 12040,
                 has_v2: bool = True, init_error: int | None = None,
                 process_names: dict[int, str] | None = None):
        self.gpus, self.driver, self.cuda = gpus, driver, cuda
        self.has_v2, self.init_error = has_v2, init_error
        self.process_names = process_names or {}
        self.initialized = False
        self.calls: list[str] = []

    # -- helpers
    def _dev(self, h, method: str):
        self.calls.append(method)
        if not self.initialized:
            raise NvmlError(1, "Uninitialized")
        gpu = self.gpus[h[1]]
        if method in gpu.fail:
            raise NvmlError(gpu.fail[method])
        return gpu.migs[h[2]] if h[0] == "mig" else gpu

    # -- the Protocol
    def init(self) -> None:
        if self.init_error is not None:
            raise NvmlError(self.init_error)
        self.initialized = True

    def shutdown(self) -> None:
        self.initialized = False

    def driver_version(self) -> str:
        return self.driver

    def cuda_driver_version(self) -> int:
        return self.cuda

    def device_count(self) -> int:
        return len(self.gpus)

    def handle(self, index: int):
        if not 0 <= index < len(self.gpus):
            raise NvmlError(2, "Invalid Argument")
        h = ("gpu", index)
        self._dev(h, "handle")
        return h

    def handle_by_uuid(self, uuid: str):
        """nvmlDeviceGetHandleByUUID: a GPU- or a MIG- UUID, exactly."""
        self.calls.append("handle_by_uuid")
        if not self.initialized:
            raise NvmlError(1, "Uninitialized")
        for i, g in enumerate(self.gpus):
            if g.uuid == uuid:
                return ("gpu", i)
            for slot, m in enumerate(g.migs):
                if m.uuid == uuid:
                    return ("mig", i, slot)
        raise NvmlError(nvml.NOT_FOUND)

    def name(self, h) -> str:
        return self._dev(h, "name").name

    def cuda_capability(self, h) -> tuple[int, int]:
        self._dev(h, "cuda_capability")
        return self.gpus[h[1]].capability

    def uuid(self, h) -> str:
        return self._dev(h, "uuid").uuid

    def memory_v2(self, h):
        d = self._dev(h, "memory_v2")
        if not self.has_v2:
            raise NvmlError(nvml.FUNCTION_NOT_FOUND)
        return d.total, d.reserved, d.used, d.total - d.reserved - d.used

    def memory_v1(self, h):
        d = self._dev(h, "memory_v1")
        return d.total, d.reserved + d.used, d.total - d.reserved - d.used

    def ecc_mode(self, h):
        d = self._dev(h, "ecc_mode")
        if h[0] == "mig" or d.ecc is None:
            raise NvmlError(nvml.NOT_SUPPORTED)
        return d.ecc

    def mig_mode(self, h):
        d = self._dev(h, "mig_mode")
        if d.mig is None:
            raise NvmlError(nvml.NOT_SUPPORTED)
        return d.mig

    def mig_devices(self, h):
        d = self._dev(h, "mig_devices")
        if d.mig is None:
            raise NvmlError(nvml.NOT_SUPPORTED)
        return [("mig", h[1], slot) for slot in range(len(d.migs))]

    def mig_ids(self, h):
        d = self._dev(h, "mig_ids")
        return d.gpu_instance, d.compute_instance

    def pcie_link(self, h):
        return self._dev(h, "pcie_link").pcie

    def power_limit_mw(self, h) -> int:
        return self._dev(h, "power_limit_mw").power_mw

    def processes(self, h):
        d = self._dev(h, "processes")
        if h[0] == "gpu" and d.migs:    # the parent sees every instance's processes
            return sorted(p for m in d.migs for p in m.processes)
        return list(d.processes)

    def process_name(self, pid: int) -> str:
        if pid not in self.process_names:
            raise NvmlError(nvml.NOT_FOUND)
        return self.process_names[pid]


# ---------------------------------------------------------------------------------------------
# Scenarios (tests/test_probe.py asserts their exact figures; docs/probe.md shows their output)

L40S_UUID = "GPU-5d7f3b0e-8a1c-4b6e-9f2d-1a2b3c4d5e6f"
H100_UUID = "GPU-9c1e0d2a-7b3f-4e5d-8c6b-0a1b2c3d4e5f"
A100_UUID = "GPU-ffd5acaf-b817-df81-a168-544a6a58f601"
MIG_UUIDS = ("MIG-7ec5b605-15c1-5e16-a4df-44642e0eaa8f", "MIG-1f2e3d4c-5b6a-5789-8a9b-0c1d2e3f4a5b",
             "MIG-a0b1c2d3-e4f5-5a6b-9c8d-7e6f5a4b3c2d")
T4_UUID = "GPU-3a4b5c6d-7e8f-4a0b-9c1d-2e3f4a5b6c7d"


def healthy_l40s() -> FakeNvml:
    """One idle L40S, ECC on (NVML total 46,068 MiB), driver R550 with the v2 memory call."""
    return FakeNvml([FakeGpu("NVIDIA L40S", L40S_UUID, total=46068 * MiB, reserved=512 * MiB,
                             used=0, ecc=(True, True), mig=None, pcie=(4, 16, 4, 16),
                             power_mw=350_000, capability=(8, 9))])


def busy_h100() -> FakeNvml:
    """An H100 SXM where two other processes hold 28 GiB between them."""
    return FakeNvml([FakeGpu("NVIDIA H100 80GB HBM3", H100_UUID, total=81559 * MiB,
                             reserved=512 * MiB, used=28672 * MiB, mig=(False, False),
                             pcie=(5, 16, 5, 16), power_mw=700_000,
                             processes=[(4242, 20480 * MiB), (5151, 8192 * MiB)])],
                    driver="560.35.03", cuda=12060,
                    process_names={4242: "python3", 5151: "/opt/tritonserver/bin/tritonserver"})


def mig_a100() -> FakeNvml:
    """An A100-SXM4-40GB in MIG mode with 3g.20gb, 2g.10gb and 1g.5gb instances."""
    migs = [
        FakeMig(MIG_UUIDS[0], "NVIDIA A100-SXM4-40GB MIG 3g.20gb", 1, 0, total=19968 * MiB,
                used=4096 * MiB, processes=[(777, 4096 * MiB)]),
        FakeMig(MIG_UUIDS[1], "NVIDIA A100-SXM4-40GB MIG 2g.10gb", 5, 0, total=9856 * MiB),
        FakeMig(MIG_UUIDS[2], "NVIDIA A100-SXM4-40GB MIG 1g.5gb", 13, 0, total=4864 * MiB),
    ]
    return FakeNvml([FakeGpu("NVIDIA A100-SXM4-40GB", A100_UUID, total=40960 * MiB,
                             reserved=0, used=4096 * MiB, mig=(True, True), migs=migs,
                             pcie=(4, 16, 4, 16), power_mw=400_000, capability=(8, 0))],
                    driver="535.129.03", cuda=12020, process_names={777: "python"})


def old_driver_t4() -> FakeNvml:
    """A T4 on driver 470 (before R510): no nvmlDeviceGetMemoryInfo_v2, reserve counted as used."""
    return FakeNvml([FakeGpu("Tesla T4", T4_UUID, total=15360 * MiB, reserved=263 * MiB, used=0,
                             ecc=(True, True), mig=None, pcie=(3, 16, 3, 16), power_mw=70_000,
                             capability=(7, 5))],
                    driver="470.82.01", cuda=11040, has_v2=False)


def no_driver() -> FakeNvml:
    """No NVIDIA driver installed: nvmlInit cannot load libnvidia-ml.so.1."""
    return FakeNvml([], init_error=nvml.LIBRARY_NOT_FOUND)


def no_gpu() -> FakeNvml:
    """A driver that loads but sees no GPU."""
    return FakeNvml([])


def one_bad_of_two() -> FakeNvml:
    """Two L40S; the second has fallen off the bus (every call on it: GPU_IS_LOST)."""
    lost = {m: nvml.GPU_IS_LOST for m in ("name", "uuid", "memory_v2", "memory_v1", "ecc_mode",
                                          "mig_mode", "pcie_link", "power_limit_mw", "processes",
                                          "cuda_capability")}
    return FakeNvml([
        FakeGpu("NVIDIA L40S", L40S_UUID, total=46068 * MiB, reserved=512 * MiB, used=0,
                capability=(8, 9)),
        FakeGpu("NVIDIA L40S", "GPU-00000000-0000-0000-0000-000000000001", total=46068 * MiB,
                reserved=512 * MiB, used=0, fail=lost, capability=(8, 9)),
    ])


def unknown_card() -> FakeNvml:
    """A card the catalog does not know: it still works with its measured totals."""
    return FakeNvml([FakeGpu("NVIDIA Prototype X1", "GPU-12345678-aaaa-bbbb-cccc-1234567890ab",
                             total=32768 * MiB, reserved=400 * MiB, used=1024 * MiB, ecc=(False, False),
                             pcie=(5, 16, 5, 16), power_mw=450_000, processes=[(99, 1024 * MiB)])],
                    process_names={})


SCENARIOS = {
    "healthy-l40s": healthy_l40s, "busy-h100": busy_h100, "mig-a100": mig_a100,
    "old-driver-t4": old_driver_t4, "no-driver": no_driver, "no-gpu": no_gpu,
    "one-bad-of-two": one_bad_of_two, "unknown-card": unknown_card,
}
