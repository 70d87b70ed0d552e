"""Which GPU, how many, at what cost: `vramplan compare` and `vramplan sweep` (docs/compare.md).

    >>> from vramplan.compare import compare
    >>> c = compare("meta-llama/Llama-3.1-8B", "l40s,h100,a100-80gb", ctx="32k", batch=8)
    >>> c.cheapest.gpu.id, c.cheapest.gpus_needed
    ('a100-80gb', 1)

The CLI imports its command module (`vramplan.cli.compare`) on every start-up but this package
only when `compare` or `sweep` runs, so `vramplan fit` never pays for it.
"""

from __future__ import annotations

from vramplan.compare.grid import sweep
from vramplan.compare.table import compare

__all__ = ["compare", "sweep"]
