"""The layers of any model transformers knows, derived from transformers itself.

    from vramplan import derive
    if derive.available():                       # torch and transformers importable (no import)
        spec = derive.spec(config_dict, model_id="org/name")

`extract.py` builds the config's own class on the meta device (meta.py: every parameter tensor,
tied ones once) and reads each layer's cache after a prefill on fake tensors (kv.py); those
"facts" are cached on disk by config hash (cache.py) and turned into a ModelSpec by
assemble.py. `oracle.py` compares the same figures with the analytic tier (benchmarks/coverage.py,
docs/coverage.md). meta.py, kv.py, extract.py and oracle.py import torch and transformers at load,
so they are imported only inside functions, when a derivation runs; this module, cache.py and
assemble.py import nothing heavy, so a cached derivation is assembled without torch.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import replace
from pathlib import Path

from vramplan.derive import assemble, cache
from vramplan.errors import MissingExtra
from vramplan.spec import ModelSpec

__all__ = ["available", "spec", "facts"]


def missing() -> str | None:
    """The first of torch and transformers that is not installed (checked without importing)."""
    return next((m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None), None)


def available() -> bool:
    """torch and transformers are importable (checked without importing them)."""
    return missing() is None


@functools.lru_cache(maxsize=1)
def _model_dirs() -> frozenset[str]:
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.origin:
        return frozenset()
    try:
        return frozenset(p.name for p in (Path(spec.origin).parent / "models").iterdir() if p.is_dir())
    except OSError:
        return frozenset()


def may_know(model_type: str) -> bool:
    """Whether the installed transformers may have this model_type, from its package folders
    (transformers/models/<type>/, or a folder whose name starts the type: gemma3 for gemma3_text),
    without importing it: a type it cannot have costs no torch import before the refusal."""
    dirs = _model_dirs()
    if not dirs:
        return True         # cannot tell: let transformers answer
    name = model_type.replace("-", "_").lower()
    return name in dirs or any(name.startswith(d + "_") for d in dirs)


def facts(raw: dict, model_id: str = "", *, use_cache: bool = True) -> dict:
    """The derived facts of this config.json, from the disk cache or from transformers."""
    k = cache.key(raw)
    found = cache.load(k) if use_cache else None
    if found is not None:
        return found
    absent = missing()
    if absent is not None:
        raise MissingExtra("trace", absent)
    from vramplan.derive import extract     # torch and transformers load only here

    found = extract.facts(raw, model_id)
    cache.store(k, found)
    return found


def spec(raw: dict, model_id: str = "", source: str = "", *, use_cache: bool = True) -> ModelSpec:
    """The ModelSpec of this config.json with its layers derived from transformers."""
    built = assemble.spec(raw, facts(raw, model_id, use_cache=use_cache), model_id)
    return replace(built, source=source) if source else built
