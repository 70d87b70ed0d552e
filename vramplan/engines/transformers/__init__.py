"""transformers `generate()`: a contiguous cache, the whole prompt prefilled at once."""

from vramplan.engines.transformers.engine import ENGINE

__all__ = ["ENGINE"]
