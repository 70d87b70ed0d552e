"""Safety for runs on a real, possibly shared, GPU: the checks and clean-ups every level uses.

Why each exists:
* `check_free`: a verify that OOMs halfway tells less than a refusal up front, and on a shared
  card it could starve someone else's job; so compare the need with what NVML says is free
  and refuse (exit 1) unless the user insists (--force).
* `check_allocator`: the figures are read from torch's caching allocator; with caching turned
  off they mean something else. We only ever allocate with torch.empty/the model's own
  tensors on the device, never managed (unified) memory, so nothing can silently spill to host.
* `time_limit`: a hung kernel or a huge model must not hold a rented GPU forever. A one-shot
  SIGALRM is not enough: Python runs the handler only between bytecodes of the main thread, so
  it waits out a blocked CUDA call or a backward running in the autograd engine's threads, and
  when it fires inside a weakref.finalize callback (the trace tracker frees storages in them)
  the exception is printed as "Exception ignored" and lost. So a watchdog thread repeats the
  alarm until the run has stopped; the handler, when it lands in a finalizer, raises in the
  frame that triggered it instead; and the command (`hard=True`) ends the process after a
  grace period if the device never gives control back: exiting is the one thing that always
  frees the GPU.
* `release`: frees every tensor we made, on success, OOM, timeout and Ctrl-C alike (exception
  tracebacks keep frames, and frames keep tensors, alive: we clear them).
Other processes are only ever read through NVML, never signalled.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import signal
import sys
import threading
import time
import traceback
import weakref

from vramplan.errors import DoesNotFit, EnvironmentProblem

GiB = 2**30


GRACE_S = 10.0     # after the timeout, how long the device may take to give control back
# Kept free beyond the plan's need on a GPU. Not a measurement: room for what the free-memory
# figures cannot show ahead of the run: the context growing at its first kernels (lazy module
# loading), a segment rounded up (20 MiB blocks for 1-10 MiB tensors, 2 MiB rounding above),
# NVML's free figure taken a moment earlier. Records (context.non_torch_growth_bytes) will tell.
FREE_MARGIN_BYTES = 256 * 2**20
REPEAT_S = 0.2     # how often the watchdog repeats the alarm until the run has stopped


class VerifyTimeout(BaseException):
    """Raised inside the run when --timeout expires. A BaseException, like KeyboardInterrupt, so
    that the broad `except Exception` of the code it interrupts (transformers' builders, the
    trace tier turning a build failure into a BadConfig) cannot swallow or rename it."""


def is_oom(e: BaseException) -> bool:
    """torch.OutOfMemoryError on CUDA; the CPU allocator raises a plain RuntimeError."""
    name = type(e).__name__
    return name == "OutOfMemoryError" or (isinstance(e, RuntimeError) and (
        "out of memory" in str(e).lower() or "can't allocate memory" in str(e).lower()))


def check_free(needed: int, free: int | None, force: bool, where: str, margin: int = 0) -> str | None:
    """Refuse (DoesNotFit, exit 1) when `needed` + `margin` exceeds `free`, unless forced;
    returns a note."""
    if free is None:
        return f"free memory on {where} unknown; not checked"
    if needed + margin <= free:
        return None
    extra = f" + a {margin // 2**20} MiB margin" if margin else ""
    text = f"would not fit: needs {needed / GiB:.2f} GiB{extra}, {free / GiB:.2f} GiB free on {where}"
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


_FINALIZER_CODES = (weakref.finalize.__call__.__code__,)


def _finalizer_caller(frame):
    """The frame whose code triggered the finalizer `frame` runs in (an exception raised inside
    a finalizer or __del__ is printed and dropped), or None when `frame` is not in one."""
    outer, f = None, frame
    while f is not None:
        if f.f_code in _FINALIZER_CODES or f.f_code.co_name == "__del__":
            outer = f
        f = f.f_back
    return outer.f_back if outer is not None else None


class _Watchdog(threading.Thread):
    """Expires after `seconds`, then makes the run stop: the alarm repeated every REPEAT_S until
    `done`, and with `hard` the process ended GRACE_S later if it never is."""

    def __init__(self, seconds: float, hard: bool, on_main: bool):
        super().__init__(daemon=True, name="vramplan-verify-watchdog")
        self.seconds, self.hard, self.on_main = seconds, hard, on_main
        self.target = threading.get_ident()
        self.done = threading.Event()
        self.message = f"timed out after {seconds:g} s"

    def run(self) -> None:
        if self.done.wait(self.seconds):
            return
        deadline = time.monotonic() + GRACE_S
        while not self.done.is_set():
            self._poke()
            if self.done.wait(REPEAT_S):
                return
            if self.hard and time.monotonic() >= deadline:
                os.write(2, (f"vramplan: verify {self.message} and the device did not give control "
                             f"back within {GRACE_S:g} s more; vramplan exits now, which frees "
                             "everything it held on the device.\n").encode())
                os._exit(3)

    def _poke(self) -> None:
        if self.on_main:
            signal.pthread_kill(self.target, signal.SIGALRM)
        else:       # no signal handler off the main thread: an asynchronous exception instead
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.target),
                                                       ctypes.py_object(VerifyTimeout))

    def on_alarm(self, signum, frame) -> None:
        if self.done.is_set():
            return
        caller = _finalizer_caller(frame)
        if caller is None:
            raise VerifyTimeout(self.message)
        # inside a finalizer: raise at the next line of the code that triggered it
        def trace(f, event, arg):
            if f is caller and event == "line" and not self.done.is_set():
                caller.f_trace = None
                sys.settrace(None)
                raise VerifyTimeout(self.message)
            return trace if f is caller else None

        caller.f_trace_lines = True
        caller.f_trace = trace
        sys.settrace(lambda *a: None)


@contextlib.contextmanager
def time_limit(seconds: float | None, hard: bool = False):
    """Raise VerifyTimeout in the running code after `seconds`; with `hard`, end the process
    (exit 3, one sentence on stderr) if it has not stopped GRACE_S later."""
    if not seconds or seconds <= 0:
        yield
        return
    on_main = threading.current_thread() is threading.main_thread() and hasattr(signal, "pthread_kill")
    dog = _Watchdog(seconds, hard, on_main)
    old = signal.signal(signal.SIGALRM, dog.on_alarm) if on_main else None
    dog.start()
    try:
        yield
    finally:
        dog.done.set()
        if on_main:
            signal.signal(signal.SIGALRM, old)
        sys.settrace(None)


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
            clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
            if clear is not None:    # cuBLAS workspaces live in the caching allocator until cleared
                clear()
            torch.cuda.empty_cache()
    except Exception:      # cleanup must never mask the error that brought us here
        pass
