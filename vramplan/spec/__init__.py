"""Frozen dataclasses that flow between the edges and the pure core: the model (model.py), the
hardware (hardware.py), and the workload and its answer (plan.py). Nothing here does I/O."""

from vramplan.spec.hardware import GpuSpec, GpuTarget, Price
from vramplan.spec.model import (Attention, LayerSpec, Mlp, ModelSpec, Quantization, Recurrent, Role,
                                 PerHead, Split, Tensor, Traits, VisionTower)
from vramplan.spec.local import DeviceBuffers, LocalReport
from vramplan.spec.plan import Mode, Plan, ServeOptions, ServeReport, Suggestion, Workload
from vramplan.spec.sglang import SglangReport

__all__ = ["DeviceBuffers", "LocalReport", "Attention", "GpuSpec", "GpuTarget", "LayerSpec", "Mlp", "Mode", "ModelSpec", "PerHead", "Plan",
           "Price", "Quantization", "Recurrent", "Role", "ServeOptions", "ServeReport", "SglangReport", "Split", "Suggestion",
           "Tensor", "Traits", "VisionTower", "Workload"]
