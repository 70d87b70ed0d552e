"""Probe the attached NVIDIA GPUs through NVML (the `gpu` extra), without creating a CUDA context.

Public: `probe()` -> ProbeReport, `auto_target(index)` -> GpuTarget (what `--gpu auto` plans
against), `target_from(report, index)`, the `Nvml` Protocol with its real (`PynvmlBackend`) and
fake (`fake.FakeNvml`) implementations. Nothing here imports pynvml or torch: the NVML backend
loads pynvml when it is first used, so the package imports without the `gpu` extra.
"""

from __future__ import annotations

from vramplan.probe.model import GpuInfo, MemoryInfo, MigInstance, ProbeReport, ProcessInfo
from vramplan.probe.nvml import Nvml, NvmlError, PynvmlBackend
from vramplan.probe.read import probe
from vramplan.probe.target import auto_target, own_target, target_from

__all__ = ["probe", "auto_target", "own_target", "target_from", "ProbeReport", "GpuInfo", "MemoryInfo",
           "MigInstance", "ProcessInfo", "Nvml", "NvmlError", "PynvmlBackend"]
