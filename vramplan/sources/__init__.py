"""Where a model's config.json comes from.

`load_config(MODEL)` tries, in this order: an existing local path, the bundled catalog, the local
Hugging Face cache, the Hub (config.json only). Every stage returns the raw bytes, parsed as data
by `parse.parse_config`; nothing here imports huggingface_hub, torch or transformers at import
time, and only the Hub stage imports huggingface_hub at all.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vramplan.errors import BadInput, ModelNotFound
from vramplan.sources import bundled, hf_cache, hub, local
from vramplan.sources.parse import parse_config

__all__ = ["LoadedConfig", "load_config", "is_hub_id"]

Source = Literal["path", "bundled", "hf-cache", "hub"]


@dataclass(frozen=True)
class LoadedConfig:
    """A parsed config and where it came from; `sha256` of the raw bytes is the cache key."""

    id: str  # Hub-style id, or the local path as given
    source: Source
    location: str  # file path or URL the bytes were read from
    config: dict = field(repr=False, compare=False)  # identified by sha256, which covers it
    sha256: str


# Hugging Face rules for a repo id: "namespace/name", each part 1-96 of [A-Za-z0-9_.-], starting
# and ending with [A-Za-z0-9_], no "--" or "..", not ending in ".git". We require the namespace:
# a bare word is far more likely a typo than a legacy un-namespaced repo.
_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_HUB_ID = re.compile(rf"{_PART}/{_PART}")


def is_hub_id(text: str) -> bool:
    """True if `text` could name a Hub model repo ("org/name")."""
    return bool(_HUB_ID.fullmatch(text)) and "--" not in text and ".." not in text and not text.endswith(".git")


def _looks_like_path(text: str) -> bool:
    """Strings the user surely meant as a path, so a missing file is reported as such."""
    seps = tuple(s for s in (os.sep, os.altsep) if s)
    if text.startswith((".", "~", *seps)) or text.lower().endswith(".json"):
        return True
    return any(s in text for s in seps) and not is_hub_id(text)


def _env_offline() -> bool:
    """huggingface_hub's own rule: HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set to 1/on/yes/true."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in {"1", "ON", "YES", "TRUE"}


def _loaded(id: str, source: Source, location: str, raw: bytes) -> LoadedConfig:
    return LoadedConfig(id, source, location, parse_config(raw, location), hashlib.sha256(raw).hexdigest())


def load_config(model: str, *, offline: bool | None = None) -> LoadedConfig:
    """Resolve MODEL to its config.json: local path, bundled catalog, HF cache, then the Hub.

    offline=None follows HF_HUB_OFFLINE; offline=True never touches the network.
    """
    if not model.strip():
        raise BadInput("MODEL is empty. Pass a Hub id (org/name), a config.json or a directory holding one.")

    path = Path(model).expanduser()
    if path.exists():
        file = local.config_file(path)
        return _loaded(str(path), "path", str(file.resolve()), local.read_config_bytes(file))
    if _looks_like_path(model):
        raise ModelNotFound(
            f"No such file or directory: {model}. "
            "Pass an existing config.json, a directory holding one, or a Hub id (org/name)."
        )

    found = bundled.find(model)
    if found is not None:
        canonical, resource = found
        return _loaded(canonical, "bundled", str(resource), resource.read_bytes())

    if not is_hub_id(model):
        raise ModelNotFound(
            f"'{model}' is not a local path, a bundled model, or a Hub id of the form org/name. "
            + bundled.did_you_mean(model)
        )

    cached = hf_cache.find_cached(model)
    if cached is not None:
        cached_id, file = cached
        return _loaded(cached_id, "hf-cache", str(file), file.read_bytes())

    if offline if offline is not None else _env_offline():
        why = "HF_HUB_OFFLINE is set" if offline is None else "offline mode is on"
        raise hub.unreachable(model, f"the Hub was not tried because {why}")
    file, url = hub.fetch(model)
    return _loaded(model, "hub", url, file.read_bytes())
