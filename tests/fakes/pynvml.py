"""A fake `pynvml` module over a FakeNvml scenario, so the real `PynvmlBackend` runs in tests.

Modelled on nvidia-ml-py 13.x's pynvml.py (read for behaviour, not copied): every call raises
`NVMLError(code)`, whose constructor returns the code's subclass (`NVMLError_NotSupported`,
`NVMLError_NoPermission`, `NVMLError_FunctionNotFound`, `NVMLError_Unknown`, ...) with the code
in `.value`; a C function the driver lacks raises FUNCTION_NOT_FOUND; the unversioned
`nvmlDeviceGetComputeRunningProcesses` / `...GraphicsRunningProcesses` call the `_v3` functions
and turn FUNCTION_NOT_FOUND into `NVMLLibraryMismatchError`; `nvmlDeviceGetMemoryInfo(handle,
version=nvmlMemory_v2)` calls `nvmlDeviceGetMemoryInfo_v2`; `nvmlDeviceGetHandleByUUID` takes
GPU- and MIG- UUIDs; strings come back decoded with a strict `bytes.decode()` (a non-UTF-8
process name raises UnicodeDecodeError), the undecorated function kept in `__wrapped__` as
functools.wraps keeps it.

`flavour="community-11"` is the old community `pynvml` 11.x: no `nvmlMemory_v2`, a
`nvmlDeviceGetMemoryInfo(handle)` without `version=`, no `_v3` process calls (the unversioned
ones call `_v2`), and strings returned as bytes.
"""

from __future__ import annotations

import functools
import types
from types import SimpleNamespace

from vramplan.probe import nvml as N

CODES = {
    "UNINITIALIZED": 1, "INVALID_ARGUMENT": 2, "NOT_SUPPORTED": 3, "NO_PERMISSION": 4,
    "ALREADY_INITIALIZED": 5, "NOT_FOUND": 6, "INSUFFICIENT_SIZE": 7, "DRIVER_NOT_LOADED": 9,
    "LIBRARY_NOT_FOUND": 12, "FUNCTION_NOT_FOUND": 13, "GPU_IS_LOST": 15,
    "LIB_RM_VERSION_MISMATCH": 18, "ARGUMENT_VERSION_MISMATCH": 25, "UNKNOWN": 999,
}
MAX_MIG = 7
nvmlMemory_v2 = 0x02000028


class NVMLError(Exception):
    """NVMLError(code) is an instance of that code's subclass, as in nvidia-ml-py."""

    _by_code: dict = {}

    def __new__(cls, value):
        if cls is NVMLError:
            cls = NVMLError._by_code.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __init__(self, value):
        super().__init__(value)
        self.value = value

    def __str__(self):
        return N._TEXT.get(self.value, f"NVML Error with code {self.value}")


for _name, _code in CODES.items():
    _cls = type("NVMLError_" + _name.title().replace("_", ""), (NVMLError,), {})
    NVMLError._by_code[_code] = _cls


class NVMLLibraryMismatchError(Exception):
    pass


def _strings(flavour):
    """nvidia-ml-py's convertStrBytes: bytes results decoded strictly; community 11: bytes."""
    def deco(fn):
        if flavour == "community-11":
            return fn

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            res = fn(*args, **kwargs)
            return res.decode() if isinstance(res, bytes) else res
        return wrapper
    return deco


def make(nvml, *, flavour: str = "nvidia-ml-py", driver_lacks=(), fail: dict | None = None,
         graphics: dict | None = None) -> types.ModuleType:
    """A `pynvml` module over FakeNvml `nvml`.

    driver_lacks: C functions the driver does not export ("nvmlDeviceGetMemoryInfo_v2",
    "nvmlDeviceGetComputeRunningProcesses_v3", ...): FUNCTION_NOT_FOUND.
    fail: C function name -> NVML code it returns (every device).
    graphics: NVML GPU index -> [(pid, bytes)] of graphics processes.
    """
    fail = dict(fail or {})
    graphics = graphics or {}
    m = types.ModuleType("pynvml")
    m.__file__ = f"<fake pynvml, {flavour}>"
    m.NVMLError = NVMLError
    m.NVMLLibraryMismatchError = NVMLLibraryMismatchError
    for name, code in CODES.items():
        setattr(m, f"NVML_ERROR_{name}", code)
        setattr(m, NVMLError._by_code[code].__name__, NVMLError._by_code[code])
    if flavour != "community-11":
        m.nvmlMemory_v2 = nvmlMemory_v2
    strings = _strings(flavour)

    def c(fn_name: str):
        """The C function's return code, as the driver would give it."""
        if fn_name in driver_lacks:
            raise NVMLError(CODES["FUNCTION_NOT_FOUND"])
        if fn_name in fail:
            raise NVMLError(fail[fn_name])

    def call(fn_name: str, method: str, *args):
        c(fn_name)
        try:
            return getattr(nvml, method)(*args)
        except N.NvmlError as e:
            raise NVMLError(e.code) from None

    def export(fn):
        setattr(m, fn.__name__, fn)
        return fn

    @export
    def nvmlInit():
        call("nvmlInitWithFlags", "init")

    @export
    def nvmlShutdown():
        call("nvmlShutdown", "shutdown")

    @export
    @strings
    def nvmlSystemGetDriverVersion():
        return call("nvmlSystemGetDriverVersion", "driver_version").encode()

    @export
    def nvmlSystemGetCudaDriverVersion():
        return call("nvmlSystemGetCudaDriverVersion_v2", "cuda_driver_version")

    @export
    def nvmlDeviceGetCount():
        return call("nvmlDeviceGetCount_v2", "device_count")

    @export
    def nvmlDeviceGetHandleByIndex(index):
        return call("nvmlDeviceGetHandleByIndex_v2", "handle", index)

    @export
    def nvmlDeviceGetHandleByUUID(uuid):
        c("nvmlDeviceGetHandleByUUID")
        text = uuid.decode() if isinstance(uuid, bytes) else uuid
        for gi, g in enumerate(nvml.gpus):
            if g.uuid == text:
                return ("gpu", gi)
            for slot, mig in enumerate(g.migs):
                if mig.uuid == text:
                    return ("mig", gi, slot)
        raise NVMLError(CODES["NOT_FOUND"])

    @export
    @strings
    def nvmlDeviceGetName(h):
        return call("nvmlDeviceGetName", "name", h).encode()

    @export
    @strings
    def nvmlDeviceGetUUID(h):
        return call("nvmlDeviceGetUUID", "uuid", h).encode()

    if flavour == "community-11":
        @export
        def nvmlDeviceGetMemoryInfo(h):
            total, used, free = call("nvmlDeviceGetMemoryInfo", "memory_v1", h)
            return SimpleNamespace(total=total, used=used, free=free)
    else:
        @export
        def nvmlDeviceGetMemoryInfo(h, version=None):
            if not version:
                total, used, free = call("nvmlDeviceGetMemoryInfo", "memory_v1", h)
                return SimpleNamespace(total=total, used=used, free=free)
            c("nvmlDeviceGetMemoryInfo_v2")
            if not nvml.has_v2:
                raise NVMLError(CODES["FUNCTION_NOT_FOUND"])
            total, reserved, used, free = call("nvmlDeviceGetMemoryInfo_v2", "memory_v2", h)
            return SimpleNamespace(version=version, total=total, reserved=reserved, used=used, free=free)

    @export
    def nvmlDeviceGetEccMode(h):
        return list(call("nvmlDeviceGetEccMode", "ecc_mode", h))

    @export
    def nvmlDeviceGetMigMode(h):
        return list(call("nvmlDeviceGetMigMode", "mig_mode", h))

    @export
    def nvmlDeviceGetMaxMigDeviceCount(h):
        c("nvmlDeviceGetMaxMigDeviceCount")
        g = nvml.gpus[h[1]]
        if g.mig is None:
            raise NVMLError(CODES["NOT_SUPPORTED"])
        return MAX_MIG

    @export
    def nvmlDeviceGetMigDeviceHandleByIndex(h, slot):
        handles = call("nvmlDeviceGetMigDeviceHandleByIndex", "mig_devices", h)
        if slot >= len(handles):
            raise NVMLError(CODES["NOT_FOUND"])
        return handles[slot]

    @export
    def nvmlDeviceGetGpuInstanceId(h):
        return call("nvmlDeviceGetGpuInstanceId", "mig_ids", h)[0]

    @export
    def nvmlDeviceGetComputeInstanceId(h):
        return call("nvmlDeviceGetComputeInstanceId", "mig_ids", h)[1]

    for i, part in enumerate(("CurrPcieLinkGeneration", "CurrPcieLinkWidth", "MaxPcieLinkGeneration",
                              "MaxPcieLinkWidth")):
        def pcie(h, i=i, part=part):
            return call(f"nvmlDeviceGet{part}", "pcie_link", h)[i]
        pcie.__name__ = f"nvmlDeviceGet{part}"
        export(pcie)

    @export
    def nvmlDeviceGetEnforcedPowerLimit(h):
        return call("nvmlDeviceGetEnforcedPowerLimit", "power_limit_mw", h)

    @export
    def nvmlDeviceGetCudaComputeCapability(h):
        return tuple(call("nvmlDeviceGetCudaComputeCapability", "cuda_capability", h))

    def procs(kind: str, version: str):
        def fn(h):
            c(f"nvmlDeviceGet{kind}RunningProcesses{version}")
            if kind == "Compute":
                found = call(f"nvmlDeviceGet{kind}RunningProcesses{version}", "processes", h)
            else:
                found = [] if h[0] == "mig" else list(graphics.get(h[1], []))
            return [SimpleNamespace(pid=pid, usedGpuMemory=used, gpuInstanceId=0xFFFFFFFF,
                                    computeInstanceId=0xFFFFFFFF) for pid, used in found]
        fn.__name__ = f"nvmlDeviceGet{kind}RunningProcesses{version}"
        return fn

    for kind in ("Compute", "Graphics"):
        v2 = export(procs(kind, "_v2"))
        if flavour == "community-11":
            def unversioned(h, v2=v2):
                return v2(h)
        else:
            v3 = export(procs(kind, "_v3"))

            def unversioned(h, v3=v3):         # nvidia-ml-py's @throwOnVersionMismatch
                try:
                    return v3(h)
                except NVMLError._by_code[CODES["FUNCTION_NOT_FOUND"]]:
                    raise NVMLLibraryMismatchError("Unversioned function called and the pyNVML "
                                                   "version does not match the NVML lib version.")
        unversioned.__name__ = f"nvmlDeviceGet{kind}RunningProcesses"
        export(unversioned)

    @export
    @strings
    def nvmlSystemGetProcessName(pid):
        c("nvmlSystemGetProcessName")
        if pid not in nvml.process_names:
            raise NVMLError(CODES["NOT_FOUND"])
        name = nvml.process_names[pid]
        return name if isinstance(name, bytes) else name.encode()

    return m
