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


def current() -> str:
    return _DEVICE.get()


def kind() -> str:
    """"cpu" or "cuda": the device type autocast and the kernel patches care about."""
    return current().split(":")[0]


def bitsandbytes():
    """The real bitsandbytes module this run uses, or None (emulated)."""
    return _BNB.get()


@contextlib.contextmanager
def use(device: str, bnb=None):
    token, bnb_token = _DEVICE.set(device), _BNB.set(bnb)
    try:
        yield
    finally:
        _DEVICE.reset(token)
        _BNB.reset(bnb_token)
