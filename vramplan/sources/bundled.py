"""The bundled catalog stage: a thin call into `vramplan.catalog`, which owns the data."""

from __future__ import annotations

from vramplan import catalog


def find(model: str):
    """(canonical Hub id, config resource) for a bundled model, else None."""
    return catalog.find_bundled(model)


def did_you_mean(model: str) -> str:
    """The sentence every 'not found' message ends with: the nearest bundled ids."""
    near = catalog.nearest_bundled(model, n=3)
    if not near:
        return "Run `vramplan models` to list the bundled models."
    return f"Did you mean: {', '.join(near)}? (`vramplan models` lists the bundled ones.)"
