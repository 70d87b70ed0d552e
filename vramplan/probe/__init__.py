"""Probe the attached NVIDIA GPUs through NVML (the `gpu` extra), without creating a CUDA context.

Public: `probe()` -> ProbeReport, `auto_target(index)` -> GpuTarget (what `--gpu auto` plans
against), `target_from(report, index)`, the `Nvml` Protocol with its real (`PynvmlBackend`) and
fake (`fake.FakeNvml`) implementations. Names are loaded on first use (PEP 562) so that cli.py
can import `vramplan.cli.probe` without slowing every `vramplan` start-up; nothing here
imports pynvml or torch.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "probe": "read", "auto_target": "target", "target_from": "target",
    "ProbeReport": "model", "GpuInfo": "model", "MemoryInfo": "model", "MigInstance": "model",
    "ProcessInfo": "model", "Nvml": "nvml", "NvmlError": "nvml", "PynvmlBackend": "nvml",
}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
