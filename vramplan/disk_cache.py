"""Checked JSON entries in vramplan's on-disk caches (trace/cache.py, derive/cache.py).

One envelope per file, $XDG_CACHE_HOME/vramplan/NAME/KEY.json (else ~/.cache/vramplan/NAME):
{"format", "key", "sha256", FIELD}. An entry is believed only when every part checks (its format,
its key, the checksum of the payload's canonical JSON, and the caller's `valid`), else it is a
miss, never an error; it is written atomically (a temporary file renamed over the old one), and
a cache that cannot be written is no reason to fail the answer.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Callable

from vramplan.errors import VramplanError
from vramplan.files import read_small_file

KEY = re.compile(r"[0-9a-f]{32}")      # the first 128 bits of a SHA-256, in hex


def directory(name: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vramplan" / name


def library_versions(packages: tuple[str, ...]) -> dict[str, str]:
    """Installed versions from package metadata (no import); "" for one that is missing."""
    out = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = ""
    return out


def checksum(payload) -> str:
    """SHA-256 of the payload's canonical JSON (sorted keys, no spaces)."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def load(name: str, k: str, *, fmt: int, field: str, limit: int, valid: Callable[[object], bool]):
    """The payload under key `k`, or None for a miss: no entry, or one that fails any check."""
    if not KEY.fullmatch(str(k)):
        return None
    try:
        raw = read_small_file(directory(name) / f"{k}.json", limit, f"{name} cache entry")
        entry = json.loads(raw.decode("utf-8"))
        if not (isinstance(entry, dict) and set(entry) == {"format", "key", "sha256", field}
                and entry["format"] == fmt and entry["key"] == k):
            return None
        payload = entry[field]
        if not (valid(payload) and entry["sha256"] == checksum(payload)):
            return None
        return payload
    except (VramplanError, OSError, ValueError, TypeError, KeyError, RecursionError):
        return None


def store(name: str, k: str, payload, *, fmt: int, field: str) -> None:
    """Write the entry atomically; any failure leaves the cache as it was and is not raised."""
    if not KEY.fullmatch(str(k)):
        return
    path = directory(name) / f"{k}.json"
    try:
        entry = {"format": fmt, "key": k, "sha256": checksum(payload), field: payload}
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{k}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(entry, f, allow_nan=False)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except (OSError, ValueError, TypeError):
        pass
