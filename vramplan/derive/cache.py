"""Derived facts on disk, so a repeated plan of the same config neither imports torch nor builds
the model. The conventions of trace/cache.py: key = the config's canonical JSON hash, the
versions of torch and transformers (read from package metadata, no import) and DERIVE_VERSION
(bumped whenever extract.py or kv.py change what they read); location
$XDG_CACHE_HOME/vramplan/derive, else ~/.cache/vramplan/derive; an entry is an envelope
{"format", "key", "sha256", "facts"} believed only when all of it checks, else a miss (never an
error); written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from importlib import metadata
from pathlib import Path

from vramplan.errors import VramplanError
from vramplan.files import read_small_file

DERIVE_VERSION = 2
FORMAT = 1
_PACKAGES = ("torch", "transformers")
_KEY = re.compile(r"[0-9a-f]{32}")
# A DeepSeek-V3 derivation (61 layers, fused experts) is about 200 KiB; an unfused 256-expert
# model under an older transformers a few MiB. 64 MiB is far beyond any of ours.
ENTRY_LIMIT = 64 * 2**20


def directory() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vramplan" / "derive"


def library_versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = ""
    return out


def config_hash(raw: dict) -> str:
    blob = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def key(raw: dict) -> str:
    blob = json.dumps({"config": config_hash(raw), "libs": library_versions(), "derive": DERIVE_VERSION},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def checksum(facts: dict) -> str:
    blob = json.dumps(facts, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def _valid(f) -> bool:
    return (isinstance(f, dict) and isinstance(f.get("params"), list) and isinstance(f.get("cache"), list)
            and isinstance(f.get("text"), dict) and isinstance(f.get("layers_prefix"), str)
            and all(isinstance(p, list) and len(p) == 4 and isinstance(p[0], str) and isinstance(p[1], list)
                    and all(type(d) is int and d >= 0 for d in p[1]) for p in f["params"])
            and all(isinstance(c, dict) for c in f["cache"]))


def load(k: str) -> dict | None:
    if not _KEY.fullmatch(str(k)):
        return None
    try:
        raw = read_small_file(directory() / f"{k}.json", ENTRY_LIMIT, "derive cache entry")
        entry = json.loads(raw.decode("utf-8"))
        if not (isinstance(entry, dict) and set(entry) == {"format", "key", "sha256", "facts"}
                and entry["format"] == FORMAT and entry["key"] == k):
            return None
        facts = entry["facts"]
        if not (_valid(facts) and entry["sha256"] == checksum(facts)):
            return None
        return facts
    except (VramplanError, OSError, ValueError, TypeError, KeyError, RecursionError):
        return None


def store(k: str, facts: dict) -> None:
    """Atomically; a cache that cannot be written is no reason to fail the answer."""
    if not _KEY.fullmatch(str(k)):
        return
    path = directory() / f"{k}.json"
    try:
        entry = {"format": FORMAT, "key": k, "sha256": checksum(facts), "facts": facts}
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
