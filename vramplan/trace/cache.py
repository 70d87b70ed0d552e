"""Trace results on disk, so a repeated question is answered without importing torch.

Key: the config's sha256, the scenario, the versions of torch / transformers / peft (read from
package metadata, which costs no import) and TRACE_VERSION, bumped whenever the traced program
or the accounting changes. Location: $XDG_CACHE_HOME/vramplan/trace, else ~/.cache/vramplan/trace.
A corrupt or unreadable entry is a miss, never an error.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

from vramplan.trace.result import TraceResult

TRACE_VERSION = 9
_PACKAGES = ("torch", "transformers", "peft")


def directory() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vramplan" / "trace"


def library_versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = ""
    return out


def key(config_sha256: str, scenario: dict) -> str:
    blob = json.dumps({"config": config_sha256, "scenario": scenario, "libs": library_versions(),
                       "trace": TRACE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def load(k: str) -> TraceResult | None:
    path = directory() / f"{k}.json"
    try:
        return TraceResult.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def store(k: str, result: TraceResult) -> None:
    path = directory() / f"{k}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(result.to_json(), default=list))
        os.replace(tmp, path)
    except OSError:
        pass      # a read-only home is no reason to fail the answer
