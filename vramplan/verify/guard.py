"""Safety for runs on a real, possibly shared, GPU: the checks and clean-ups every level uses.

Why each exists:
* `check_free`: a verify that OOMs halfway tells less than a refusal up front, and on a shared
  card it could starve someone else's job; so compare the need with what NVML says is free
  and refuse (exit 1) unless the user insists (--force).
* `check_allocator`: the figures are read from torch's caching allocator; with caching turned
  off they mean something else. We only ever allocate with torch.empty/the model's own
  tensors on the device, never managed (unified) memory, so nothing can silently spill to host.
* `time_limit`: a hung kernel or a huge model must not hold a rented GPU forever.
* `release`: frees every tensor we made, on success, OOM, timeout and Ctrl-C alike (exception
  tracebacks keep frames, and frames keep tensors, alive: we clear them).
Other processes are only ever read through NVML, never signalled.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import threading
import traceback

from vramplan.errors import DoesNotFit, EnvironmentProblem

GiB = 2**30


class VerifyTimeout(Exception):
    """Raised inside the run when --timeout expires (SIGALRM on the main thread)."""


def is_oom(e: BaseException) -> bool:
    """torch.OutOfMemoryError on CUDA; the CPU allocator raises a plain RuntimeError."""
    name = type(e).__name__
    return name == "OutOfMemoryError" or (isinstance(e, RuntimeError) and (
        "out of memory" in str(e).lower() or "can't allocate memory" in str(e).lower()))


def check_free(needed: int, free: int | None, force: bool, where: str) -> str | None:
    """Refuse (DoesNotFit, exit 1) when `needed` exceeds `free`, unless forced; returns a note."""
    if free is None:
        return f"free memory on {where} unknown; not checked"
    if needed <= free:
        return None
    text = f"would not fit: needs {needed / GiB:.2f} GiB, {free / GiB:.2f} GiB free on {where}"
    if force:
        return text + " (--force: trying anyway)"
    raise DoesNotFit(text + "; pass --force to try anyway.")


def check_allocator() -> None:
    if os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING", "") not in ("", "0"):
        raise EnvironmentProblem("PYTORCH_NO_CUDA_MEMORY_CACHING is set, which turns off the "
                                 "caching allocator whose statistics verify reads; unset it.")


def host_available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo: the free-memory check for --device cpu."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Raise VerifyTimeout in the running code after `seconds` (main thread, POSIX only)."""
    usable = (seconds and seconds > 0 and hasattr(signal, "SIGALRM")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def on_alarm(signum, frame):
        raise VerifyTimeout(f"timed out after {seconds:g} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def release(holder: list, exc: BaseException | None = None, device: str = "cpu") -> None:
    """Drop every tensor/model we hold, and the frames an exception keeps, then return the
    cached blocks to the driver so NVML shows the card as we found it. Only `device` is
    synchronized: a bare synchronize() would create a context on the current GPU."""
    holder.clear()
    if exc is not None and exc.__traceback__ is not None:
        traceback.clear_frames(exc.__traceback__)
    gc.collect()
    if device == "cpu":
        return
    try:
        import torch

        if torch.cuda.is_initialized():
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
    except Exception:      # cleanup must never mask the error that brought us here
        pass
