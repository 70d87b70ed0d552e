"""Which GPU, how many, at what cost: `vramplan compare` and `vramplan sweep` (docs/compare.md).

    >>> from vramplan.compare import compare
    >>> c = compare("meta-llama/Llama-3.1-8B", "l40s,h100,a100-80gb", ctx="32k", batch=8)
    >>> c.cheapest.gpu.id, c.cheapest.gpus_needed
    ('a100-80gb', 1)

Importing this package loads nothing: cli.py imports `compare.commands` on every start-up, so
the planning modules are imported by the two functions below on first use.
"""

from __future__ import annotations

__all__ = ["compare", "sweep"]


def compare(model, gpus=None, **kwargs):
    """Plan one workload on every catalog GPU and rank them; see `vramplan.compare.table.compare`."""
    from vramplan.compare.table import compare as _compare

    return _compare(model, gpus, **kwargs)


def sweep(model, gpu=None, **kwargs):
    """Fit or not over a ctx x batch grid on one card; see `vramplan.compare.grid.sweep`."""
    from vramplan.compare.grid import sweep as _sweep

    return _sweep(model, gpu, **kwargs)
