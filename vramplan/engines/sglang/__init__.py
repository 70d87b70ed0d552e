"""SGLang serving: its static memory fraction, token pool, page size and start-up refusals."""

from vramplan.engines.sglang.engine import ENGINE

__all__ = ["ENGINE"]
