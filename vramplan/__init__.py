"""vramplan: plan GPU memory for large language models.

Public API only; importing this package loads nothing heavy (no torch, no transformers, no
huggingface_hub): `plan`, `preflight` and `load_model` come from vramplan.api on first use
(PEP 562), so that importing any vramplan module stays as cheap as that module.
"""

from __future__ import annotations

import importlib

from vramplan.errors import (BadConfig, BadInput, DoesNotFit, EnvironmentProblem, MissingExtra,
                             ModelNotFound, UnknownGpu, VramplanError)

__version__ = "0.1.0"

__all__ = [
    "plan", "preflight", "load_model", "__version__",
    "VramplanError", "BadInput", "BadConfig", "ModelNotFound", "UnknownGpu",
    "EnvironmentProblem", "MissingExtra", "DoesNotFit",
]

_FROM_API = ("plan", "preflight", "load_model")


def __getattr__(name: str):
    if name in _FROM_API:
        return getattr(importlib.import_module("vramplan.api"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
