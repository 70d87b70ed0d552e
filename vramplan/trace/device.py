"""Which device a traced program allocates on. The trace proper runs on `cpu` (FakeTensors);
`vramplan verify --level run` runs the same programs on real tensors of a real device, so the
builders and scenarios read the device from here instead of hard-coding it."""

from __future__ import annotations

import contextlib
import contextvars

_DEVICE = contextvars.ContextVar("vramplan_trace_device", default="cpu")


def current() -> str:
    return _DEVICE.get()


def kind() -> str:
    """"cpu" or "cuda": the device type autocast and the kernel patches care about."""
    return current().split(":")[0]


@contextlib.contextmanager
def use(device: str):
    token = _DEVICE.set(device)
    try:
        yield
    finally:
        _DEVICE.reset(token)
