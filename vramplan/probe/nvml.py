"""The one seam between vramplan and NVML: a small Protocol, its pynvml implementation, and
NvmlError. Why a seam: there is no GPU where the tests run, so probe logic is written against
this Protocol and exercised with `fake.FakeNvml`; only `PynvmlBackend` ever touches the driver.

Every method returns plain Python values (bytes as int, names as str) and raises NvmlError
carrying NVML's own return code, so callers can tell "not supported on this card" from "GPU is
lost". nvidia-ml-py (module `pynvml`, the `gpu` extra) is imported only when a backend is made.
"""

from __future__ import annotations

from typing import Any, Protocol

from vramplan.errors import MissingExtra

# NVML return codes we act on (nvml.h; identical in pynvml).
NOT_SUPPORTED = 3
NO_PERMISSION = 4
NOT_FOUND = 6
DRIVER_NOT_LOADED = 9
LIBRARY_NOT_FOUND = 12
FUNCTION_NOT_FOUND = 13
GPU_IS_LOST = 15
LIB_RM_VERSION_MISMATCH = 18
ARGUMENT_VERSION_MISMATCH = 25
UNKNOWN = 999

_TEXT = {
    NOT_SUPPORTED: "Not Supported", NO_PERMISSION: "Insufficient Permissions",
    NOT_FOUND: "Not Found", DRIVER_NOT_LOADED: "Driver Not Loaded",
    LIBRARY_NOT_FOUND: "NVML Shared Library Not Found", FUNCTION_NOT_FOUND: "Function Not Found",
    GPU_IS_LOST: "GPU is lost", LIB_RM_VERSION_MISMATCH: "NVML/driver version mismatch",
    ARGUMENT_VERSION_MISMATCH: "Argument version mismatch", UNKNOWN: "Unknown Error",
}


class NvmlError(Exception):
    """An NVML call failed with return code `code` (nvml.h's nvmlReturn_t)."""

    def __init__(self, code: int, text: str | None = None):
        self.code = code
        self.text = text or _TEXT.get(code, f"NVML error {code}")
        super().__init__(f"{self.text} (NVML error {code})")


Handle = Any


class Nvml(Protocol):
    """What vramplan needs from NVML; names follow the nvmlDevice* calls they wrap."""

    def init(self) -> None: ...
    def shutdown(self) -> None: ...
    def driver_version(self) -> str: ...
    def cuda_driver_version(self) -> int: ...                 # 12040 means CUDA 12.4
    def device_count(self) -> int: ...
    def handle(self, index: int) -> Handle: ...
    def handle_by_uuid(self, uuid: str) -> Handle: ...                 # "GPU-..." or "MIG-..."
    def name(self, h: Handle) -> str: ...
    def cuda_capability(self, h: Handle) -> tuple[int, int]: ...       # major, minor
    def uuid(self, h: Handle) -> str: ...
    def memory_v2(self, h: Handle) -> tuple[int, int, int, int]: ...   # total, reserved, used, free
    def memory_v1(self, h: Handle) -> tuple[int, int, int]: ...        # total, used, free
    def ecc_mode(self, h: Handle) -> tuple[bool, bool]: ...            # current, pending
    def mig_mode(self, h: Handle) -> tuple[bool, bool]: ...            # current, pending
    def mig_devices(self, h: Handle) -> list[Handle]: ...              # existing MIG devices, by slot
    def mig_ids(self, h: Handle) -> tuple[int, int]: ...               # GPU instance, compute instance
    def pcie_link(self, h: Handle) -> tuple[int, int, int, int]: ...   # gen, width, max gen, max width
    def power_limit_mw(self, h: Handle) -> int: ...
    def processes(self, h: Handle) -> list[tuple[int, int | None]]: ...  # (pid, bytes or None)
    def process_name(self, pid: int) -> str: ...


def _text(value) -> str:
    """Old pynvml returns bytes; a process name need not be UTF-8 (a Latin-1 path)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class PynvmlBackend:
    """The real backend: nvidia-ml-py's pynvml, its errors turned into NvmlError."""

    def __init__(self):
        try:
            import pynvml
        except ImportError:
            raise MissingExtra("gpu", "nvidia-ml-py") from None
        self._n = pynvml

    def _call(self, fn: str, *args, **kwargs):
        try:
            return getattr(self._n, fn)(*args, **kwargs)
        except self._n.NVMLError as e:
            raise NvmlError(getattr(e, "value", UNKNOWN), None) from None
        except (AttributeError, getattr(self._n, "NVMLLibraryMismatchError", AttributeError)):
            # nvidia-ml-py too old to know the call, or the driver too old to have it
            raise NvmlError(FUNCTION_NOT_FOUND) from None

    def init(self) -> None:
        self._call("nvmlInit")

    def shutdown(self) -> None:
        self._call("nvmlShutdown")

    def driver_version(self) -> str:
        return _text(self._call("nvmlSystemGetDriverVersion"))

    def cuda_driver_version(self) -> int:
        return int(self._call("nvmlSystemGetCudaDriverVersion"))

    def device_count(self) -> int:
        return int(self._call("nvmlDeviceGetCount"))

    def handle(self, index: int) -> Handle:
        return self._call("nvmlDeviceGetHandleByIndex", index)

    def handle_by_uuid(self, uuid: str) -> Handle:
        """nvmlDeviceGetHandleByUUID takes MIG- UUIDs too (nvml.h: "MIG device UUIDs")."""
        return self._call("nvmlDeviceGetHandleByUUID", uuid)

    def name(self, h) -> str:
        return _text(self._call("nvmlDeviceGetName", h))

    def cuda_capability(self, h) -> tuple[int, int]:
        major, minor = self._call("nvmlDeviceGetCudaComputeCapability", h)
        return int(major), int(minor)

    def uuid(self, h) -> str:
        return _text(self._call("nvmlDeviceGetUUID", h))

    def memory_v2(self, h) -> tuple[int, int, int, int]:
        version = getattr(self._n, "nvmlMemory_v2", None)
        if version is None:        # the old community pynvml: no v2 struct, no version= keyword
            raise NvmlError(FUNCTION_NOT_FOUND)
        try:
            m = self._call("nvmlDeviceGetMemoryInfo", h, version=version)
        except TypeError:
            raise NvmlError(FUNCTION_NOT_FOUND) from None
        return int(m.total), int(m.reserved), int(m.used), int(m.free)

    def memory_v1(self, h) -> tuple[int, int, int]:
        m = self._call("nvmlDeviceGetMemoryInfo", h)
        return int(m.total), int(m.used), int(m.free)

    def ecc_mode(self, h) -> tuple[bool, bool]:
        cur, pending = self._call("nvmlDeviceGetEccMode", h)
        return bool(cur), bool(pending)

    def mig_mode(self, h) -> tuple[bool, bool]:
        cur, pending = self._call("nvmlDeviceGetMigMode", h)
        return bool(cur), bool(pending)

    def mig_devices(self, h) -> list[Handle]:
        found = []
        for slot in range(int(self._call("nvmlDeviceGetMaxMigDeviceCount", h))):
            try:
                found.append(self._call("nvmlDeviceGetMigDeviceHandleByIndex", h, slot))
            except NvmlError as e:
                if e.code != NOT_FOUND:     # an empty slot is NOT_FOUND; anything else is real
                    raise
        return found

    def mig_ids(self, h) -> tuple[int, int]:
        return (int(self._call("nvmlDeviceGetGpuInstanceId", h)),
                int(self._call("nvmlDeviceGetComputeInstanceId", h)))

    def pcie_link(self, h) -> tuple[int, int, int, int]:
        return tuple(int(self._call(f, h)) for f in (
            "nvmlDeviceGetCurrPcieLinkGeneration", "nvmlDeviceGetCurrPcieLinkWidth",
            "nvmlDeviceGetMaxPcieLinkGeneration", "nvmlDeviceGetMaxPcieLinkWidth"))

    def power_limit_mw(self, h) -> int:
        return int(self._call("nvmlDeviceGetEnforcedPowerLimit", h))

    def _process_list(self, kind: str) -> list:
        """One kind's list: the unversioned call (v3 in nvidia-ml-py), v2 only where the driver
        or the module lacks v3 (FUNCTION_NOT_FOUND, or the NVMLLibraryMismatchError nvidia-ml-py
        raises for it); any other error is the answer."""
        def read(h):
            try:
                return self._call(f"nvmlDeviceGet{kind}RunningProcesses", h)
            except NvmlError as e:
                if e.code != FUNCTION_NOT_FOUND:
                    raise
            return self._call(f"nvmlDeviceGet{kind}RunningProcesses_v2", h)
        return read

    def processes(self, h) -> list[tuple[int, int | None]]:
        """Compute and graphics processes, read separately: graphics is NOT_SUPPORTED or
        NO_PERMISSION on WSL and some drivers, and that must not cost the compute list (the one
        verify needs). A compute failure is raised; a graphics failure leaves graphics out."""
        seen: dict[int, int | None] = {}
        lists = [self._process_list("Compute")(h)]
        try:
            lists.append(self._process_list("Graphics")(h))
        except NvmlError:
            pass
        for procs in lists:
            for p in procs:
                used = p.usedGpuMemory
                if p.pid not in seen or (used or 0) > (seen[p.pid] or 0):
                    seen[int(p.pid)] = None if used is None else int(used)
        return sorted(seen.items())

    def process_name(self, pid: int) -> str:
        try:
            return _text(self._call("nvmlSystemGetProcessName", pid))
        except UnicodeDecodeError:
            # nvidia-ml-py decodes strictly; its undecorated function (functools.wraps keeps it
            # as __wrapped__) returns the bytes
            raw = getattr(self._n.nvmlSystemGetProcessName, "__wrapped__", None)
            if raw is None:
                return ""
            try:
                return _text(raw(pid))
            except self._n.NVMLError:
                return ""


def default_backend() -> Nvml:
    """The backend `probe` uses when none is given. Tests monkeypatch this to a FakeNvml."""
    return PynvmlBackend()
