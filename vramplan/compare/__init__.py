"""Which GPU, how many, at what cost: `vramplan compare` and `vramplan sweep` (docs/compare.md).

    >>> from vramplan.compare import compare
    >>> c = compare("meta-llama/Llama-3.1-8B", "l40s,h100,a100-80gb", ctx="32k", batch=8)
    >>> c.cheapest.gpu.id, c.cheapest.gpus_needed
    ('a100-80gb', 1)

The functions load their modules on first use (PEP 562): the renderers import the result types
(compare.result) without the planner behind them.
"""

from __future__ import annotations

import importlib

_WHERE = {"compare": "table", "compare_request": "table", "sweep": "grid", "sweep_request": "grid"}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
