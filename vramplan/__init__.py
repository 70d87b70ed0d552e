"""vramplan: plan GPU memory for large language models.

Public API only; importing this package loads nothing heavy (no torch, no transformers, no
huggingface_hub): `plan` and friends import their modules on first use.
"""

from __future__ import annotations

from vramplan.errors import (BadConfig, BadInput, DoesNotFit, EnvironmentProblem, MissingExtra,
                     ModelNotFound, UnknownGpu, VramplanError)

__version__ = "0.1.0"

__all__ = [
    "plan", "preflight", "load_model", "__version__",
    "VramplanError", "BadInput", "BadConfig", "ModelNotFound", "UnknownGpu",
    "EnvironmentProblem", "MissingExtra", "DoesNotFit",
]


def plan(model, gpu=None, **kwargs):
    """Plan a workload; see `vramplan.api.plan` for the arguments. Returns a `Plan`."""
    from vramplan.api import plan as _plan

    return _plan(model, gpu, **kwargs)


def preflight(model, mode="lora", batch=4, ctx=2048, gpu="auto", **options):
    """Raise `DoesNotFit` unless the training step fits; see `vramplan.api.preflight`."""
    from vramplan.api import preflight as _preflight

    return _preflight(model, mode=mode, batch=batch, ctx=ctx, gpu=gpu, **options)


def load_model(model):
    """Resolve MODEL (Hub id, bundled id, path) and parse it into a `ModelSpec`."""
    from vramplan.api import load_model as _load

    return _load(model)
