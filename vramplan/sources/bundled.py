"""The bundled catalog stage: a thin call into `vramplan.catalog`, which owns the data."""

from __future__ import annotations

from vramplan import catalog
from vramplan.errors import EnvironmentProblem
from vramplan.files import CONFIG_LIMIT, read_resource


def find(model: str):
    """(canonical Hub id, config resource) for a bundled model, else None."""
    return catalog.find_bundled(model)


def find_variant(model: str):
    """(fine-tune id, bundled base id, base config resource) for a listed variant, else None."""
    return catalog.find_variant(model)


def read(resource) -> bytes:
    """A bundled config's bytes; a missing or broken data file is a broken install (exit 3)."""
    return read_resource(resource, CONFIG_LIMIT, "the bundled config", EnvironmentProblem,
                         "Reinstall vramplan: pip install --force-reinstall vramplan")


def did_you_mean(model: str) -> str:
    """The sentence every 'not found' message ends with: the nearest bundled ids."""
    near = catalog.nearest_bundled(model, n=3)
    if not near:
        return "Run `vramplan models` to list the bundled models."
    return f"Did you mean: {', '.join(near)}? (`vramplan models` lists the bundled ones.)"
