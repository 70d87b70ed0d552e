"""A fake torch.cuda on a CPU-only torch: devices, contexts, a simulated caching allocator.

Why: the CUDA branch of verify (CudaMeter, the cleanup, --level alloc/run on a device) and the
Trainer callback's measurement had never run anywhere; this runs them in CI. Tensors "on" a fake
device are ordinary CPU tensors; the fake keeps, per storage, which device it belongs to and
charges it to that device's allocator.

What is simulated, and from where (torch 2.13, c10/cuda/CUDACachingAllocator.cpp and
torch/cuda/__init__.py, read for behaviour, not copied):

* devices as CUDA enumerates them: CUDA_VISIBLE_DEVICES (indices and GPU-/MIG- UUIDs, the
  first entry naming nothing ends the list) and, for MIG, **one MIG device per process** (the
  first one listed);
* a primary context per device, created by what creates one for real: `set_device` (CUDA 12
  initializes the context there), `mem_get_info`, `synchronize` (the *current* device when none
  is given), the first allocation or kernel on it. `is_initialized()` turns true at the first
  call that initializes CUDA, as torch's `_lazy_init`;
* lazy module loading: the context grows at the first matmul (cuBLAS handle + workspace, the
  workspace allocated through the caching allocator and held until
  `torch._C._cuda_clearCublasWorkspaces()`), the first SDPA kernel and the first optimizer kernel;
* the allocator: every block rounded up to 512 B; blocks <= 1 MiB from 2 MiB segments, larger
  ones from 20 MiB segments below 10 MiB, else from a segment of the size rounded to 2 MiB;
  free blocks stay cached in their segment (reserved) until `empty_cache()`; when the device is
  full, cached free segments are released and the allocation retried once
  (`num_alloc_retries`), then `torch.OutOfMemoryError` with torch's message;
* NVML sees this process use context + growth + reserved (the FakeNvml scenario's device and
  process list are updated as it happens), unless `hide_pid` (a container's PID namespace);
* failure modes: OOM while creating the context, "no kernel image" for a compute capability the
  build's `get_arch_list()` lacks, a cuBLAS handle that cannot be allocated, an invalid device
  ordinal, and per-op hooks (`on_op`) to raise KeyboardInterrupt or block like a hung kernel.

Which device a new storage belongs to: the device a factory call names (`device="cuda:1"`,
`.to(1)`, `.cuda()`); else the device of its registered tensor inputs; a factory given
`device=torch.device("cpu")` (how `x.device` of a fake-CUDA tensor reads) goes to the device
the program last named; a factory given the string "cpu" or no device at all, and ops on
unregistered tensors, stay on the host.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

MiB = 2**20
GiB = 2**30

ROUND_SMALL = 512            # kMinBlockSize
SMALL_SIZE = 1 * MiB         # kSmallSize: largest "small" block
SMALL_BUFFER = 2 * MiB       # kSmallBuffer
LARGE_BUFFER = 20 * MiB      # kLargeBuffer
MIN_LARGE_ALLOC = 10 * MiB   # kMinLargeAlloc
ROUND_LARGE = 2 * MiB        # kRoundLarge

# What a CUDA 12.8 torch wheel is built for (torch.cuda.get_arch_list() of the cu128 wheels);
# a CUDA 13 build drops sm_70 (Volta): CUDA_13_ARCHS.
CUDA_12_ARCHS = ("sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120")
CUDA_13_ARCHS = ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120")

# (major, minor) by a piece of the NVML name
CAPABILITY = {"V100": (7, 0), "T4": (7, 5), "A100": (8, 0), "A10": (8, 6), "L40S": (8, 9),
              "L4": (8, 9), "4090": (8, 9), "H100": (9, 0), "H200": (9, 0), "B200": (10, 0)}


def _round(n: int) -> int:
    return max(ROUND_SMALL, -(-n // ROUND_SMALL) * ROUND_SMALL)


def _segment_size(size: int) -> int:
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return -(-size // ROUND_LARGE) * ROUND_LARGE


def _fmt(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.2f} MiB"


def accelerator_error(text: str) -> RuntimeError:
    """What torch raises for a failed CUDA runtime call (torch.AcceleratorError, a RuntimeError)."""
    cls = getattr(torch, "AcceleratorError", RuntimeError)
    return cls(f"CUDA error: {text}\nCUDA kernel errors might be asynchronously reported at some other "
               "API call, so the stacktrace below might be incorrect.\nFor debugging consider passing "
               "CUDA_LAUNCH_BLOCKING=1")


@dataclass
class FakeDevice:
    """One device CUDA can enumerate: a whole GPU or a MIG instance."""

    name: str
    uuid: str                          # NVML form: "GPU-..." or "MIG-..."
    total: int                         # cudaMemGetInfo total = total_memory
    major: int = 9
    minor: int = 0
    gpu: int = 0                       # the physical GPU (NVML index) it lives on
    mig_slot: int | None = None        # its NVML MIG slot, None for a whole GPU
    sms: int = 132
    context: int = 500 * MiB           # the primary context when it is created
    growth: dict = field(default_factory=lambda: {"matmul": 70 * MiB, "sdpa": 24 * MiB,
                                                  "optimizer": 8 * MiB})
    cublas_workspace: int = 32 * MiB + 8 * MiB   # torch's default on sm90: 4096 KiB x 8 + ... (simulated)
    scratch: dict = field(default_factory=dict)   # module kind -> bytes allocated and freed at
                                       # its first use (autotuning scratch, lazy buffers)
    context_oom: bool = False          # creating the context fails: "CUDA error: out of memory"
    cublas_fails: bool = False         # cublasCreate fails: CUBLAS_STATUS_ALLOC_FAILED


class _Uuid:
    """torch's _CUuuid: str() is the bare hex form, no GPU-/MIG- prefix."""

    def __init__(self, text: str):
        self.text = text.split("-", 1)[1] if text.upper().startswith(("GPU-", "MIG-")) else text

    def __str__(self) -> str:
        return self.text

    __repr__ = __str__


class _Segment:
    __slots__ = ("size", "used", "small")

    def __init__(self, size: int, small: bool):
        self.size, self.used, self.small = size, 0, small


class Allocator:
    """One device's caching allocator: blocks, segments, the statistics torch reports."""

    def __init__(self, fake: "FakeCuda", index: int):
        self.fake, self.index = fake, index
        self.segments: list[_Segment] = []
        self.blocks: dict[int, tuple[_Segment, int]] = {}
        self.allocated = self.peak_allocated = 0
        self.reserved = self.peak_reserved = 0
        self.active_peak = 0
        self.num_alloc_retries = self.num_ooms = 0
        self.peak_segments = 0
        self._next = 0

    def malloc(self, nbytes: int) -> int:
        size = _round(nbytes)
        small = size <= SMALL_SIZE
        seg = next((s for s in self.segments if s.small == small and s.size - s.used >= size), None)
        if seg is None:
            want = _segment_size(size)
            if self.fake.device_free(self.index) < want:
                self.num_alloc_retries += 1
                self.release_cached()
            if self.fake.device_free(self.index) < want:
                self.num_ooms += 1
                raise torch.OutOfMemoryError(self._oom_text(size))
            seg = _Segment(want, small)
            self.segments.append(seg)
            self.reserved += want
            self.peak_reserved = max(self.peak_reserved, self.reserved)
            self.peak_segments = max(self.peak_segments, len(self.segments))
            self.fake.nvml_sync(self.index)
        seg.used += size
        self.allocated += size
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        self.active_peak = max(self.active_peak, self.allocated)
        self._next += 1
        self.blocks[self._next] = (seg, size)
        return self._next

    def free(self, key: int) -> None:
        seg, size = self.blocks.pop(key)
        seg.used -= size
        self.allocated -= size

    def release_cached(self) -> None:
        kept = [s for s in self.segments if s.used]
        self.reserved -= sum(s.size for s in self.segments if not s.used)
        self.segments = kept
        self.fake.nvml_sync(self.index)

    def reset_peaks(self) -> None:
        self.peak_allocated = self.active_peak = self.allocated
        self.peak_reserved = self.reserved
        self.peak_segments = len(self.segments)

    def stats(self) -> dict:
        inactive = sum(s.size - s.used for s in self.segments if s.used)
        return {"allocated_bytes.all.current": self.allocated,
                "allocated_bytes.all.peak": self.peak_allocated,
                "reserved_bytes.all.current": self.reserved,
                "reserved_bytes.all.peak": self.peak_reserved,
                "active_bytes.all.peak": self.active_peak,
                "inactive_split_bytes.all.peak": inactive,
                "segment.all.current": len(self.segments), "segment.all.peak": self.peak_segments,
                "num_alloc_retries": self.num_alloc_retries, "num_ooms": self.num_ooms}

    def _oom_text(self, size: int) -> str:
        f = self.fake
        total = f.visible[self.index].total
        return (f"CUDA out of memory. Tried to allocate {_fmt(size)}. GPU {self.index} has a total "
                f"capacity of {_fmt(total)} of which {_fmt(f.device_free(self.index))} is free. "
                f"Including non-PyTorch memory, this process has {_fmt(f.process_used(self.index))} "
                f"memory in use. Of the allocated memory {_fmt(self.allocated)} is allocated by "
                f"PyTorch, and {_fmt(self.reserved - self.allocated)} is reserved by PyTorch but "
                "unallocated. If reserved but unallocated memory is large try setting "
                "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.")


_HOST = -1          # "this factory call allocates on the host"
_MATMUL = ("mm", "addmm", "bmm", "baddbmm", "_grouped_mm", "addbmm", "addmv", "mv")


def _is_cuda(d) -> bool:
    if isinstance(d, torch.device):
        return d.type == "cuda"
    if isinstance(d, str):
        return d.split(":")[0] == "cuda"
    return isinstance(d, int) and not isinstance(d, bool)


def _is_cpu(d) -> bool:
    """A torch.device("cpu") object: how `x.device` of a fake-CUDA tensor reads, so most likely
    derived from one. The string "cpu" is written by code that means the host (AdamW's
    `torch.tensor(0.0, device="cpu")` step counters)."""
    return isinstance(d, torch.device) and d.type == "cpu"


class _Redirect(TorchFunctionMode):
    """Calls that name a CUDA device run on the CPU, the new storages charged to that device."""

    def __init__(self, fake: "FakeCuda"):
        super().__init__()
        self.fake = fake

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        f = self.fake
        name = getattr(func, "__name__", "")
        target, has_device = None, False
        if name in ("to", "cuda") and args and isinstance(args[0], torch.Tensor):
            t, rest = args[0], list(args[1:])
            if name == "cuda":
                d = rest[0] if rest else kwargs.pop("device", None)
                func, rest = torch.Tensor.to, ["cpu"]
                target = f.index_of(d)
            elif kwargs.get("device") is not None and _is_cuda(kwargs["device"]):
                target = f.index_of(kwargs["device"])
                kwargs["device"] = "cpu"
            elif rest and not isinstance(rest[0], (torch.dtype, torch.Tensor)) and _is_cuda(rest[0]):
                target = f.index_of(rest[0])
                rest[0] = "cpu"
            if target is not None:
                has_device = True
                if f.device_of(t) != target:      # a transfer: a new storage on the target
                    kwargs["copy"] = True
            args = (t, *rest)
        elif kwargs.get("device") is not None:
            has_device = True
            d = kwargs["device"]
            if _is_cuda(d):
                target = f.index_of(d)
                kwargs["device"] = "cpu"
            elif _is_cpu(d) and f.program_device is not None:
                target = f.program_device
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if target is None and not has_device:
            if not tensors:
                target = _HOST
            else:
                target = next((d for d in map(f.device_of, tensors) if d is not None), None)
        if target is not None and target != _HOST:
            f.touch(target)
            if has_device:
                f.program_device = target
        previous = f.ambient, f.forced
        f.ambient, f.forced = target, (target if has_device and target is not None else None)
        try:
            return func(*args, **kwargs)
        finally:
            f.ambient, f.forced = previous


class _Account(TorchDispatchMode):
    """Every op's new storages, charged to their device; the kernels a device would run."""

    def __init__(self, fake: "FakeCuda"):
        super().__init__()
        self.fake = fake

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        f = self.fake
        ins = [t for t in tree_flatten((args, kwargs or {}))[0] if isinstance(t, torch.Tensor)]
        device = f.forced if f.forced is not None else next(
            (d for d in map(f.device_of, ins) if d is not None), None)
        if device is None and not ins and f.ambient not in (None, _HOST):
            device = f.ambient
        block = None
        if device is not None:
            f.kernel(device, func)
            size = _factory_bytes(func, args, kwargs or {})
            if size is not None:          # a big factory: fail before the host allocates it
                f.touch(device)
                block = f.allocators[device].malloc(size)
        try:
            out = func(*args, **(kwargs or {}))
        except BaseException:
            if block is not None:
                f.allocators[device].free(block)
            raise
        if device is not None:
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    f.register(t, device, block)
                    block = None
        return out


_FACTORIES = {"empty": 0, "empty_strided": 0, "zeros": 0, "ones": 0, "full": 0, "rand": 0,
              "randn": 0, "new_empty": 1, "new_zeros": 1, "new_ones": 1, "new_full": 1,
              "new_empty_strided": 1}


def _factory_bytes(func, args, kwargs) -> int | None:
    """The bytes a factory op will allocate, known before it runs (None for other ops)."""
    name = getattr(func, "__name__", "").split(".")[0]
    at = _FACTORIES.get(name)
    if at is None or len(args) <= at:
        return None
    size = args[at]
    if isinstance(size, int):
        size = [size]
    n = 1
    for s in size:
        n *= int(s)
    dtype = kwargs.get("dtype") or (args[0].dtype if at == 1 else torch.get_default_dtype())
    return n * torch.empty((), dtype=dtype, device="meta").element_size()


class FakeCuda:
    """torch.cuda over `devices` (every device CUDA could enumerate, in order), kept in step
    with `nvml` (a vramplan.probe.fake.FakeNvml) when given. Use as
    `with FakeCuda(...).installed(monkeypatch) as fc:`."""

    def __init__(self, devices: list[FakeDevice], nvml=None, *, arch_list=CUDA_12_ARCHS,
                 hide_pid: bool = False, environ=None, cuda_version: str = "12.8"):
        env = os.environ if environ is None else environ
        self.all = devices
        self.visible = _enumerate(devices, env.get("CUDA_VISIBLE_DEVICES"))
        self.nvml, self.arch_list, self.hide_pid = nvml, list(arch_list), hide_pid
        self.cuda_version = cuda_version
        self.pid = os.getpid()
        self.initialized = False
        self.current = 0
        self.contexts: dict[int, int] = {}          # device -> context bytes (with growth)
        self.context_order: list[int] = []
        self.loaded: dict[int, set] = {}            # device -> module kinds loaded (lazy loading)
        self.allocators = [Allocator(self, i) for i in range(len(self.visible))]
        self.workspaces: dict[int, int] = {}        # device -> allocator block of the cuBLAS workspace
        self.storages: dict[int, tuple[int, int]] = {}   # id(storage) -> (device, block)
        self.program_device: int | None = None
        self.ambient: int | None = None             # the device of the torch call running now
        self.forced: int | None = None              # ... when that call names it explicitly
        self.on_op = None                           # hook(func, device): raise or block
        self.on_sync = None                         # hook(device) inside synchronize
        self.on_context = None                      # hook(device) when a context is created
        self.calls: list[tuple] = []
        self._base_used = {i: self._nvml_used_now(i) for i in range(len(self.visible))}
        self._reported = {i: 0 for i in range(len(self.visible))}
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ device bookkeeping
    def index_of(self, d) -> int:
        if d is None:
            i = self.current
        elif isinstance(d, torch.device):
            i = self.current if d.index is None else d.index
        elif isinstance(d, str):
            i = self.current if ":" not in d else int(d.split(":")[1])
        else:
            i = int(d)
        if not 0 <= i < len(self.visible):
            raise accelerator_error("invalid device ordinal")
        return i

    def _init(self) -> None:
        if not self.visible:
            raise RuntimeError("No CUDA GPUs are available")
        self.initialized = True

    def touch(self, i: int) -> None:
        """The primary context of device i exists after this (created now if needed)."""
        self._init()
        if i in self.contexts:
            return
        dev = self.visible[i]
        if dev.context_oom:
            raise accelerator_error("out of memory")
        self.contexts[i] = dev.context
        self.context_order.append(i)
        self.loaded[i] = set()
        self.nvml_sync(i)
        if self.on_context is not None:
            self.on_context(i)

    def device_of(self, t: torch.Tensor) -> int | None:
        try:
            entry = self.storages.get(id(t.untyped_storage()))
        except (RuntimeError, NotImplementedError):
            return None
        return None if entry is None else entry[0]

    def register(self, t: torch.Tensor, device: int, block: int | None = None) -> None:
        """Charge t's storage to `device` (`block`: already allocated for it)."""
        if type(t).__name__ == "FakeTensor" or t.device.type == "meta":
            return
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return
        key = id(st)
        if key in self.storages:
            if block is not None:
                self.allocators[device].free(block)
            return
        self.touch(device)
        if block is None:
            block = self.allocators[device].malloc(st.nbytes())
        self.storages[key] = (device, block)
        weakref.finalize(st, self._release, key)

    def _release(self, key: int) -> None:
        entry = self.storages.pop(key, None)
        if entry is not None:
            self.allocators[entry[0]].free(entry[1])

    def kernel(self, i: int, func) -> None:
        """What running `func` on device i does besides its tensors: module loading, failures."""
        self.touch(i)
        name = getattr(func, "__name__", str(func)).split(".")[0]
        if name not in ("empty", "empty_strided", "empty_like", "set_", "resize_", "view",
                        "_unsafe_view", "detach", "alias", "t", "transpose", "expand",
                        "as_strided", "lift_fresh", "_to_copy") and not self._arch_ok(i):
            raise accelerator_error("no kernel image is available for execution on the device")
        kind = ("matmul" if name in _MATMUL else "sdpa" if "scaled_dot_product" in name
                else "optimizer" if name.startswith(("_foreach_", "_fused_adam")) else None)
        if kind and kind not in self.loaded[i]:
            dev = self.visible[i]
            if kind == "matmul":
                if dev.cublas_fails:
                    raise accelerator_error("CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")
                if i not in self.workspaces:
                    self.workspaces[i] = self.allocators[i].malloc(dev.cublas_workspace)
            if dev.scratch.get(kind):
                self.allocators[i].free(self.allocators[i].malloc(dev.scratch[kind]))
            self.loaded[i].add(kind)
            self.contexts[i] += dev.growth.get(kind, 0)
            self.nvml_sync(i)
        if self.on_op is not None:
            self.on_op(func, i)

    def _arch_ok(self, i: int) -> bool:
        d = self.visible[i]
        for a in self.arch_list:
            kind, _, num = a.partition("_")
            major, minor = int(num[:-1]), int(num[-1])
            if kind == "sm" and major == d.major and minor <= d.minor:
                return True
            if kind == "compute" and (major, minor) <= (d.major, d.minor):
                return True
        return False

    # ------------------------------------------------------------------ what NVML sees
    def process_used(self, i: int) -> int:
        return self.contexts.get(i, 0) + self.allocators[i].reserved

    def others_used(self, i: int) -> int:
        """What other processes hold on device i: NVML's figure now, less what we reported."""
        if self.nvml is None:
            return self._base_used[i]
        return self._nvml_used_now(i) - self._reported[i]

    def device_free(self, i: int) -> int:
        return max(self.visible[i].total - self.others_used(i) - self.process_used(i), 0)

    def _nvml_target(self, i: int):
        if self.nvml is None:
            return None
        d = self.visible[i]
        g = self.nvml.gpus[d.gpu]
        return g, (g.migs[d.mig_slot] if d.mig_slot is not None else None)

    def _nvml_used_now(self, i: int) -> int:
        t = self._nvml_target(i)
        if t is None:
            return 0
        g, m = t
        return (m or g).used

    def nvml_sync(self, i: int) -> None:
        """Bring the FakeNvml scenario in line with this process's use of device i."""
        t = self._nvml_target(i)
        if t is None:
            return
        now = self.process_used(i)
        delta, self._reported[i] = now - self._reported[i], now
        g, m = t
        for holder in filter(None, (g, m)):
            holder.used += delta
        if self.hide_pid:
            return
        procs = (m or g).processes
        procs[:] = [p for p in procs if p[0] != self.pid] + ([(self.pid, now)] if now else [])

    # ------------------------------------------------------------------ torch.cuda, faked
    def _props(self, device=None):
        self._init()
        i = self.current if device is None else (device if isinstance(device, int) else
                                                 self.index_of(device))
        if not 0 <= i < len(self.visible):
            raise AssertionError("Invalid device id")
        d = self.visible[i]
        return SimpleNamespace(name=d.name, total_memory=d.total, major=d.major, minor=d.minor,
                               multi_processor_count=d.sms, uuid=_Uuid(d.uuid),
                               is_integrated=False, is_multi_gpu_board=False, L2_cache_size=50 * MiB)

    def _mem_get_info(self, device=None):
        i = self.index_of(device)
        self.touch(i)
        self.calls.append(("mem_get_info", i))
        return self.device_free(i), self.visible[i].total

    def _synchronize(self, device=None):
        i = self.index_of(device)
        self.touch(i)
        self.calls.append(("synchronize", i))
        if self.on_sync is not None:
            self.on_sync(i)

    def _set_device(self, device):
        i = self.index_of(device)
        self.touch(i)
        self.current = i

    def _exchange(self, device):
        if device is None or device < 0:
            return -1
        prev = self.current
        if device != prev:
            self.touch(self.index_of(device))
            self.current = device
        return prev

    def _maybe_exchange(self, device):
        if device is None or device < 0:
            return -1
        prev, self.current = self.current, device       # no context is created switching back
        return prev

    def _stat(self, name):
        def read(device=None):
            self._init()
            a = self.allocators[self.index_of(device)]
            return {"memory_allocated": a.allocated, "max_memory_allocated": a.peak_allocated,
                    "memory_reserved": a.reserved, "max_memory_reserved": a.peak_reserved}[name]
        return read

    def _reset_peak(self, device=None):
        self._init()
        self.allocators[self.index_of(device)].reset_peaks()

    def _memory_stats(self, device=None):
        self._init()
        return self.allocators[self.index_of(device)].stats()

    def _empty_cache(self):
        if not self.initialized:
            return
        for a in self.allocators:
            a.release_cached()

    def _clear_workspaces(self):
        for i, block in list(self.workspaces.items()):
            self.allocators[i].free(block)
            del self.workspaces[i]

    # ------------------------------------------------------------------ install
    @contextlib.contextmanager
    def installed(self, monkeypatch):
        c = torch.cuda
        patches = {
            "is_available": lambda: bool(self.visible), "device_count": lambda: len(self.visible),
            "is_initialized": lambda: self.initialized, "init": self._init, "_lazy_init": self._init,
            "current_device": lambda: self.current, "set_device": self._set_device,
            "_exchange_device": self._exchange, "_maybe_exchange_device": self._maybe_exchange,
            "get_device_properties": self._props,
            "get_device_capability": lambda d=None: (self._props(d).major, self._props(d).minor),
            "get_device_name": lambda d=None: self._props(d).name,
            "get_arch_list": lambda: list(self.arch_list), "synchronize": self._synchronize,
            "mem_get_info": self._mem_get_info, "memory_stats": self._memory_stats,
            "reset_peak_memory_stats": self._reset_peak, "empty_cache": self._empty_cache,
            # torch's bf16 probe for pre-Ampere cards makes a bf16 tensor there (a context)
            "_check_bf16_tensor_supported": lambda d: (self.touch(self.index_of(d)), True)[1],
        }
        for name in ("memory_allocated", "max_memory_allocated", "memory_reserved", "max_memory_reserved"):
            patches[name] = self._stat(name)
        for name, fn in patches.items():
            monkeypatch.setattr(c, name, fn)
            if hasattr(c.memory, name):
                monkeypatch.setattr(c.memory, name, fn)
        monkeypatch.setattr(torch.version, "cuda", self.cuda_version)
        monkeypatch.setattr(torch._C, "_cuda_clearCublasWorkspaces", self._clear_workspaces, raising=False)
        with _Redirect(self), _Account(self):
            yield self


def _enumerate(devices: list[FakeDevice], value: str | None) -> list[FakeDevice]:
    """The devices CUDA enumerates: CUDA_VISIBLE_DEVICES applied, then one MIG device at most."""
    gpus = sorted({d.gpu for d in devices})
    if value is None:
        picked = list(devices)
    else:
        picked = []
        for entry in (e.strip() for e in value.split(",")):
            if entry.isdigit() and int(entry) in gpus:
                hit = [d for d in devices if d.gpu == int(entry)]
            elif entry.upper().startswith(("GPU-", "MIG-")):
                hit = [d for d in devices if d.uuid.lower() == entry.lower()] or [
                    d for d in devices if entry.upper().startswith("GPU-") and d.mig_slot is None
                    and d.uuid.lower().startswith(entry.lower())]
            else:
                hit = []
            if not hit or any(h in picked for h in hit):
                break
            picked += hit
    out, mig_seen = [], False
    for d in picked:
        if d.mig_slot is not None:
            if mig_seen:
                continue
            mig_seen = True
        out.append(d)
    return out


def from_nvml(nvml, *, cuda_reserve: int = 480 * MiB, capability: dict | None = None,
              **device_options) -> list[FakeDevice]:
    """The CUDA devices of a FakeNvml scenario: whole GPUs, or the MIG instances of a GPU in
    MIG mode; CUDA total = NVML total - `cuda_reserve`."""
    out = []
    for gi, g in enumerate(nvml.gpus):
        cap = (capability or {}).get(gi) or next(
            (v for k, v in CAPABILITY.items() if k in g.name), (9, 0))
        if g.mig and g.mig[0] and g.migs:
            for slot, m in enumerate(g.migs):
                out.append(FakeDevice(m.name, m.uuid, m.total - cuda_reserve, *cap, gpu=gi,
                                      mig_slot=slot, **device_options))
        else:
            out.append(FakeDevice(g.name, g.uuid, g.total - cuda_reserve, *cap, gpu=gi,
                                  **device_options))
    return out
