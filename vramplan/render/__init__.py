"""Turn answers into what people and scripts read: tables (text.py), JSON (json.py), the memory
bar (bar.py), and per tool compare.py, probe.py, verify.py and plot.py (charts).

Renderers work from the data they are given (Plan, KvReport, Comparison, ...) and compute
nothing. Names load on first use (PEP 562), so `import vramplan.render` costs nothing and a
command pays only for the renderer it prints with: tables import tabulate, charts matplotlib.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "plan_table": "text", "kv_table": "text", "models_table": "text", "gpus_table": "text",
    "plan_json": "json", "model_json": "json", "gpu_json": "json", "gpus_json": "json",
    "kv_json": "json", "models_json": "json",
    "memory_bar": "bar",
}
_MODULES = ("text", "json", "bar", "compare", "probe", "verify", "plot")
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
