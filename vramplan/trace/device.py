"""Which device a traced program allocates on. The trace proper runs on `cpu` (FakeTensors);
`vramplan verify --level run` runs the same programs on real tensors of a real device, so the
builders and scenarios read the device from here instead of hard-coding it."""

from __future__ import annotations

import contextlib
import contextvars

_DEVICE = contextvars.ContextVar("vramplan_trace_device", default="cpu")
# The bitsandbytes module when a GPU run uses the real library (verify on cuda:N); None: the
# trace's emulation of its layout (trace/quant.py, training.Adam8bitLike).
_BNB = contextvars.ContextVar("vramplan_trace_bitsandbytes", default=None)
# Called where the tracker resets its peak, so a device's allocator peak covers the same window
# (verify: CudaMeter.reset_peaks); None on the CPU and in the trace proper.
_ON_RESET = contextvars.ContextVar("vramplan_trace_on_reset", default=None)


def current() -> str:
    return _DEVICE.get()


def kind() -> str:
    """"cpu" or "cuda": the device type autocast and the kernel patches care about."""
    return current().split(":")[0]


def bitsandbytes():
    """The real bitsandbytes module this run uses, or None (emulated)."""
    return _BNB.get()


def peak_reset() -> None:
    """The tracker reset its peak: reset the device's too."""
    hook = _ON_RESET.get()
    if hook is not None:
        hook()


@contextlib.contextmanager
def use(device: str, bnb=None, on_reset=None):
    tokens = _DEVICE.set(device), _BNB.set(bnb), _ON_RESET.set(on_reset)
    try:
        yield
    finally:
        for var, token in zip((_DEVICE, _BNB, _ON_RESET), tokens):
            var.reset(token)
