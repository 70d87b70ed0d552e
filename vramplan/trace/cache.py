"""Trace results on disk, so a repeated question is answered without importing torch.

Key: the config's sha256, the scenario, the versions of torch / transformers / peft (read from
package metadata, which costs no import) and TRACE_VERSION, bumped whenever the traced program
or the accounting changes. Location: $XDG_CACHE_HOME/vramplan/trace, else ~/.cache/vramplan/trace.

Nothing on disk is believed as it stands: an entry is an envelope {"format", "key", "sha256",
"result"}, and `load` answers from it only when the format is this one, the key is the one asked
for, the SHA-256 of the result's canonical JSON matches (a truncated or hand-edited file fails),
and the result passes `_valid` (every field of the right type, every size a whole number of bytes
from 0 to MAX_BYTES, the components summing to the peak as the tracker guarantees). Anything else
is a miss, never an error: the caller traces again and `store` overwrites the entry. The checksum
guards against accidents, not against someone who can write the cache (they can recompute it).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from vramplan import disk_cache
from vramplan.trace.result import TraceResult

TRACE_VERSION = 10      # 10: measured["params"], the traced model's own parameter count
# The layout of an entry file; an entry of another format (older, or written by a newer
# vramplan sharing the cache) is a miss.
FORMAT = 2
_PACKAGES = ("torch", "transformers", "peft")

# An entry holds the scenario, a dozen tensor rows and a few counters: 2-5 KiB. 1 MiB is two
# hundred times that; a larger file is not one of ours.
ENTRY_LIMIT = 2**20
# No trace measures more than 1 PiB (2**50 bytes): a thousand times the largest GPU's memory.
MAX_BYTES = 2**50
_INT_FIELDS = ("peak_bytes", "weights_bytes")
_STR_FIELDS = ("phase", "op", "module")
_ROW_STR_FIELDS = ("category", "dtype", "op", "module", "phase")


def directory() -> Path:
    return disk_cache.directory("trace")


def library_versions() -> dict[str, str]:
    return disk_cache.library_versions(_PACKAGES)


def key(config_sha256: str, scenario: dict) -> str:
    blob = json.dumps({"config": config_sha256, "scenario": scenario, "libs": library_versions(),
                       "trace": TRACE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


checksum = disk_cache.checksum


def load(k: str) -> TraceResult | None:
    """The cached result for key `k`, or None for a miss: no entry, or one that fails any check."""
    result = disk_cache.load("trace", k, fmt=FORMAT, field="result", limit=ENTRY_LIMIT, valid=_valid)
    return None if result is None else TraceResult.from_json(result)


def store(k: str, result: TraceResult) -> None:
    """Write the entry (disk_cache.store: atomically, never failing the answer)."""
    try:
        payload = json.loads(json.dumps(result.to_json(), default=list))   # tuples as lists
    except (ValueError, TypeError):
        return
    disk_cache.store("trace", k, payload, fmt=FORMAT, field="result")


# --- what a result must look like ---------------------------------------------------------------


def _size(v) -> bool:
    return type(v) is int and 0 <= v <= MAX_BYTES


def _sizes(d) -> bool:
    return isinstance(d, dict) and all(isinstance(k, str) and _size(v) for k, v in d.items())


def _strs(d) -> bool:
    return isinstance(d, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in d.items())


def _measured(m) -> bool:
    """What assemble.py reads: the attention kernel used, and the library warnings."""
    warnings = m.get("warnings", []) if isinstance(m, dict) else None
    return (isinstance(m, dict) and isinstance(m.get("attn", ""), str)
            and isinstance(warnings, list) and all(isinstance(w, str) for w in warnings))


def _row(r) -> bool:
    return (isinstance(r, dict)
            and set(r) == {"bytes", "shape", *_ROW_STR_FIELDS}
            and _size(r["bytes"])
            and isinstance(r["shape"], list) and all(_size(n) for n in r["shape"])
            and all(isinstance(r[f], str) for f in _ROW_STR_FIELDS))


def _valid(d) -> bool:
    """The fields of TraceResult with the types and ranges the tracker writes (trace/run.py)."""
    expected = {"scenario", "components", "phase_peaks", "top", "measured", "versions", "seconds",
                *_INT_FIELDS, *_STR_FIELDS}
    if not (isinstance(d, dict) and set(d) == expected):
        return False
    seconds = d["seconds"]
    return (isinstance(d["scenario"], dict) and _measured(d["measured"])
            and all(_size(d[f]) for f in _INT_FIELDS)
            and all(isinstance(d[f], str) for f in _STR_FIELDS)
            and _sizes(d["components"]) and sum(d["components"].values()) == d["peak_bytes"]
            and _sizes(d["phase_peaks"])
            and isinstance(d["top"], list) and all(_row(r) for r in d["top"])
            and _strs(d["versions"])
            and type(seconds) in (int, float) and math.isfinite(seconds) and seconds >= 0)


