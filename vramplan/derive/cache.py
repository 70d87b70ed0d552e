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
from pathlib import Path

from vramplan import disk_cache

DERIVE_VERSION = 2
FORMAT = 1
_PACKAGES = ("torch", "transformers")
# A DeepSeek-V3 derivation (61 layers, fused experts) is about 200 KiB; an unfused 256-expert
# model under an older transformers a few MiB. 64 MiB is far beyond any of ours.
ENTRY_LIMIT = 64 * 2**20


def directory() -> Path:
    return disk_cache.directory("derive")


def library_versions() -> dict[str, str]:
    return disk_cache.library_versions(_PACKAGES)


def config_hash(raw: dict) -> str:
    blob = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def key(raw: dict) -> str:
    blob = json.dumps({"config": config_hash(raw), "libs": library_versions(), "derive": DERIVE_VERSION},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


checksum = disk_cache.checksum


def _valid(f) -> bool:
    return (isinstance(f, dict) and isinstance(f.get("params"), list) and isinstance(f.get("cache"), list)
            and isinstance(f.get("text"), dict) and isinstance(f.get("layers_prefix"), str)
            and all(isinstance(p, list) and len(p) == 4 and isinstance(p[0], str) and isinstance(p[1], list)
                    and all(type(d) is int and d >= 0 for d in p[1]) for p in f["params"])
            and all(isinstance(c, dict) for c in f["cache"]))


def load(k: str) -> dict | None:
    return disk_cache.load("derive", k, fmt=FORMAT, field="facts", limit=ENTRY_LIMIT, valid=_valid)


def store(k: str, facts: dict) -> None:
    disk_cache.store("derive", k, facts, fmt=FORMAT, field="facts")
