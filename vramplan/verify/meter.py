"""Reading memory while verify allocates or runs: one Meter per device kind.

Why two: on a GPU the truth is torch's caching allocator (memory_allocated / memory_reserved
and their peaks) plus NVML (what the driver sees for this process, context included); on the
CPU there is neither, so the trace tier's storage-level tracker (vramplan.trace.tracker), which
counts every storage rounded to 512 B like the caching allocator, is the measurement. Using the
very tracker the trace tier uses is what makes `--device cpu` peaks equal the trace's to the byte.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

from vramplan.probe.nvml import NvmlError


@dataclass(frozen=True)
class Snapshot:
    allocated: int
    reserved: int
    nvml: int | None        # this process as NVML sees it (None: not attributable)


@dataclass(frozen=True)
class Peaks:
    allocated: int
    reserved: int
    nvml: int | None


@dataclass(frozen=True)
class Context:
    """The CUDA context, measured before anything is allocated."""

    bytes: int | None
    source: str              # "nvml process", "nvml device delta" or "unavailable"
    cuda_free: int
    cuda_total: int          # cudaMemGetInfo total: the card's real CUDA total


@dataclass(frozen=True)
class NonTorch:
    """What this process holds outside torch's allocator at the end of the run: NVML's figure
    minus memory_reserved(). With lazy module loading (CUDA 11.7+, torch's default) the
    context grows at the first matmul, SDPA and optimizer kernels, so this is the figure a plan
    must cover, not the one read before anything ran."""

    bytes: int | None
    source: str


class CpuMeter:
    """--device cpu: the trace tracker's live bytes stand for allocated and reserved."""

    def __init__(self, tracker):
        self.tracker = tracker

    context: Context | None = None

    def sync(self) -> None:
        pass

    def snapshot(self) -> Snapshot:
        return Snapshot(self.tracker.live, self.tracker.live, None)

    def reset_peaks(self) -> None:
        self.tracker.reset_peak()

    def peaks(self) -> Peaks:
        p = self.tracker.peak.bytes
        return Peaks(p, p, None)

    def stats(self) -> dict:
        return {}

    def close(self) -> None:
        pass


class NvmlView:
    """This process's (or, failing that, the device's) used memory through NVML.

    Inside containers NVML reports host PIDs, so our own PID is often not found; then the
    device's used memory minus its value before we started is the fallback, which is exact only
    while other processes leave the card alone (the record says which was used)."""

    def __init__(self, backend, handle):
        self.n, self.h = backend, handle
        self.pid = os.getpid()
        self.baseline = self._device_used()
        self.pid_seen = False           # NVML listed this process at least once

    def _device_used(self) -> int | None:
        try:
            try:
                return self.n.memory_v2(self.h)[2]
            except NvmlError:
                return self.n.memory_v1(self.h)[1]
        except NvmlError:
            return None

    def used(self) -> tuple[int | None, str]:
        try:
            for pid, used in self.n.processes(self.h):
                if pid == self.pid and used is not None:
                    self.pid_seen = True
                    return used, "nvml process"
        except NvmlError:
            pass
        now = self._device_used()
        if now is None or self.baseline is None:
            return None, "unavailable"
        return now - self.baseline, "nvml device delta"


class _Sampler(threading.Thread):
    """Polls NVML every few ms for the peak the driver saw (allocator peaks are exact; NVML's
    can only be sampled)."""

    def __init__(self, view: NvmlView, period: float = 0.005):
        super().__init__(daemon=True)
        self.view, self.period = view, period
        self.peak: int | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            used, _ = self.view.used()
            if used is not None and (self.peak is None or used > self.peak):
                self.peak = used
            time.sleep(self.period)


class CudaMeter:
    """--device cuda:N: torch.cuda statistics, NVML for the process, context measured first."""

    def __init__(self, device, view: NvmlView | None, fresh: bool):
        """`fresh`: torch had not initialized CUDA before verify (so the context is ours to
        measure); the caller reads it before its first torch.cuda call."""
        import torch

        self.torch, self.device, self.view = torch, device, view
        free, total = torch.cuda.mem_get_info(device)      # creates the context, allocates nothing
        torch.cuda.synchronize(device)
        ctx, source = view.used() if view else (None, "unavailable")
        if not fresh:      # someone made the context before us: it cannot be told apart
            ctx, source = None, "context existed before verify started"
        self.context = Context(ctx, source, free, total)
        self.sampler = _Sampler(view) if view else None
        if self.sampler:
            self.sampler.start()
        # what this process already held (a notebook's tensors): subtracted from the peaks
        self.baseline_allocated = torch.cuda.memory_allocated(device)
        self.baseline_reserved = torch.cuda.memory_reserved(device)
        self.baseline_nvml = ctx if (ctx is not None and fresh) else (view.used()[0] if view else None)

    def sync(self) -> None:
        self.torch.cuda.synchronize(self.device)

    def snapshot(self) -> Snapshot:
        c = self.torch.cuda
        self.sync()
        nv = self.view.used()[0] if self.view else None
        return Snapshot(c.memory_allocated(self.device), c.memory_reserved(self.device), nv)

    def reset_peaks(self) -> None:
        self.sync()
        self.torch.cuda.reset_peak_memory_stats(self.device)
        if self.sampler:
            self.sampler.peak = None

    def peaks(self) -> Peaks:
        """Peaks since the last reset, less what the process held when verify started."""
        c = self.torch.cuda
        self.sync()
        nv = self.sampler.peak if self.sampler else None
        if self.view:
            now = self.view.used()[0]
            nv = now if nv is None else max(nv, now or 0)
        return Peaks(c.max_memory_allocated(self.device) - self.baseline_allocated,
                     c.max_memory_reserved(self.device) - self.baseline_reserved, nv)

    def free_now(self) -> int:
        """cudaMemGetInfo's free bytes on the device, now."""
        self.sync()
        return self.torch.cuda.mem_get_info(self.device)[0]

    def non_torch(self) -> NonTorch:
        """NVML's figure for this process now, minus what torch's allocator reserves."""
        if self.view is None:
            return NonTorch(None, "unavailable")
        self.sync()
        used, source = self.view.used()
        if used is None:
            return NonTorch(None, source)
        return NonTorch(used - self.torch.cuda.memory_reserved(self.device), source)

    def stats(self) -> dict:
        """The memory_stats() entries a record keeps (fragmentation, retries, OOMs)."""
        s = self.torch.cuda.memory_stats(self.device)
        keys = ("allocated_bytes.all.peak", "reserved_bytes.all.peak", "active_bytes.all.peak",
                "inactive_split_bytes.all.peak", "segment.all.peak", "num_alloc_retries", "num_ooms")
        return {k: s.get(k) for k in keys}

    def close(self) -> None:
        if self.sampler:
            self.sampler.stop.set()
            self.sampler.join(timeout=1)
