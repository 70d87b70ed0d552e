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
from vramplan.files import Kind, kind_of
from vramplan.units import printable
from vramplan.sources.parse import parse_config

__all__ = ["LoadedConfig", "load_config", "is_hub_id", "hub_id_problem"]

# A listed fine-tune read from its base's bundled config reads "bundled variant of <base id>".
Source = Literal["path", "bundled", "hf-cache", "hub"] | str


@dataclass(frozen=True)
class LoadedConfig:
    """A parsed config and where it came from; `sha256` of the raw bytes is the cache key."""

    id: str  # Hub-style id, or the local path as given
    source: Source
    location: str  # file path or URL the bytes were read from
    config: dict = field(repr=False, compare=False)  # identified by sha256, which covers it
    sha256: str


# Hugging Face rules for a repo id: "namespace/name", each part 1-96 of [A-Za-z0-9_.-], starting
# and ending with [A-Za-z0-9_], no "--" or "..", not ending in ".git" (huggingface_hub's
# validate_repo_id, utils/_validators.py). We require the namespace: a bare word is far more
# likely a typo than a legacy un-namespaced repo.
_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_HUB_ID = re.compile(rf"{_PART}/{_PART}")
_ID_CHARS = re.compile(r"[A-Za-z0-9_.-]+")

# No path on Linux is longer than PATH_MAX (4096 bytes) and no file name than NAME_MAX (255); a
# Hub id is at most 96 + 1 + 96 characters. Longer text is refused before the disk is asked.
MAX_PATH_CHARS = 4096
MAX_NAME_CHARS = 255

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_HUB_HOSTS = ("huggingface.co", "www.huggingface.co", "hf.co")
_REVISION = re.compile(r"(?P<id>[^:@\\]+/[^:@/\\]+)[:@](?P<rev>[^/\\]+)")
_DRIVE = re.compile(r"[A-Za-z]:[\\/]")


def is_hub_id(text: str) -> bool:
    """True if `text` could name a Hub model repo ("org/name")."""
    return bool(_HUB_ID.fullmatch(text)) and "--" not in text and ".." not in text and not text.endswith(".git")


def hub_id_problem(text: str) -> str | None:
    """Why `text`, meant as "org/name", is not a Hub id (a clause), or None when it is one."""
    if is_hub_id(text):
        return None
    parts = text.split("/")
    if len(parts) != 2 or not all(parts):
        return "a Hub id is exactly two parts, org/name"
    for part in parts:
        if len(part) > 96:
            return "each part of a Hub id is at most 96 characters"
        if not _ID_CHARS.fullmatch(part):
            return "a Hub id holds only letters, digits, '-', '_' and '.'"
        if part[0] in ".-" or part[-1] in ".-":
            return "each part of a Hub id starts and ends with a letter, a digit or '_'"
    if "--" in text or ".." in text:
        return "a Hub id cannot contain '--' or '..'"
    return "a Hub id cannot end in '.git'"


def _looks_like_path(text: str) -> bool:
    """Strings the user surely meant as a path, so a missing file is reported as such. Windows
    spellings (C:\\models, a backslash) count on every system."""
    seps = tuple(s for s in (os.sep, os.altsep, "\\") if s)
    if text.startswith((".", "~", *seps)) or text.lower().endswith(".json") or _DRIVE.match(text):
        return True
    return any(s in text for s in seps) and not _attempted_id(text)


def _attempted_id(text: str) -> bool:
    """org/name shaped: one '/', no backslash; judged by the Hub rules rather than as a path."""
    return text.count("/") == 1 and "\\" not in text and not text.startswith((".", "/", "~"))


def _env_offline() -> bool:
    """huggingface_hub's own rule: HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set to 1/on/yes/true."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in {"1", "ON", "YES", "TRUE"}


def _loaded(id: str, source: Source, location: str, raw: bytes) -> LoadedConfig:
    return LoadedConfig(id, source, location, parse_config(raw, location), hashlib.sha256(raw).hexdigest())


def _check_text(model) -> str:
    """Refuse, before the disk is asked, what no path and no id can be."""
    if not isinstance(model, str):
        raise BadInput(f"The model must be a Hub id, a bundled name or a path (a string), "
                       f"not {type(model).__name__}.")
    if not model.strip():
        raise BadInput("MODEL is empty. Pass a Hub id (org/name), a config.json or a directory holding one.")
    if "\x00" in model:
        raise BadInput(f"The model name '{printable(model)}' holds a NUL character, which no id or path "
                       "can hold. Check what was pasted.")
    try:
        os.fsencode(model)
    except UnicodeError:
        raise BadInput(f"The model name '{printable(model)}' holds a character that is not valid text "
                       "(a lone surrogate), which no id or path can hold. Check what was pasted.") from None
    longest = max(len(part) for part in re.split(r"[/\\]", model))
    if len(model) > MAX_PATH_CHARS or longest > MAX_NAME_CHARS:
        raise BadInput(f"The model name is {len(model):,} characters long ('{printable(model, 60)}'): longer "
                       f"than any Hub id (two parts of at most 96) or path (file names of at most "
                       f"{MAX_NAME_CHARS}, paths of at most {MAX_PATH_CHARS}) can be. Check what was pasted.")
    return model


def _expand_user(model: str) -> str:
    """`~/x` and `~user/x` as the shell would expand them; a user that does not exist is refused
    (pathlib raises RuntimeError there, and some platforms KeyError)."""
    if not model.startswith("~"):
        return model
    try:
        out = os.path.expanduser(model)
    except (KeyError, RuntimeError, ValueError, UnicodeError, OSError):
        out = model
    if out.startswith("~"):
        user = re.split(r"[/\\]", model, maxsplit=1)[0]
        raise BadInput(f"Cannot expand '{printable(user)}' in '{printable(model)}': no such user, or no home "
                       "directory, on this machine. Write the path out in full.")
    return out


def _read_local(model: str, path: str, kind: str) -> LoadedConfig:
    """MODEL names something on disk: read it as a config (or its directory's config.json)."""
    if kind in (Kind.TOO_LONG, Kind.INVALID):
        raise BadInput(f"'{printable(model)}' is not a path this file system can open (a name too long, "
                       "or a character it cannot store). Check what was pasted.")
    if kind == Kind.DANGLING:
        raise BadInput(f"{printable(model)} is a symbolic link to {printable(os.readlink(path))}, which does "
                       "not exist. Point it at a config.json, or pass the file itself.")
    file = local.config_file(Path(path)) if kind == Kind.DIR else Path(path)
    raw = local.read_config_bytes(file)
    try:
        where = str(file.resolve())
    except (OSError, RuntimeError):
        where = str(file)
    return _loaded(str(Path(path)), "path", where, raw)


def _not_found(model: str) -> BadInput:
    """The refusal for a MODEL that is on no disk and cannot be an id: say what it looks like."""
    windows = "\\" in model and os.sep == "/"
    if _looks_like_path(model):
        note = " (this system separates directories with '/')" if windows else ""
        if is_hub_id(model.rstrip("/")) and model.endswith("/"):
            note = f" (for the Hub id, drop the trailing '/': {model.rstrip('/')})"
        return ModelNotFound(
            f"No such file or directory: {printable(model)}{note}. "
            "Pass an existing config.json, a directory holding one, or a Hub id (org/name)."
        )
    if _attempted_id(model):
        return ModelNotFound(
            f"'{printable(model)}' is neither a local path nor a valid Hub id: {hub_id_problem(model)}. "
            + bundled.did_you_mean(model)
        )
    return ModelNotFound(
        f"'{printable(model)}' is not a local path, a bundled model, or a Hub id of the form org/name. "
        + bundled.did_you_mean(model)
    )


def _refuse_url_or_revision(model: str) -> None:
    """URLs and ids with a revision: say what to pass instead."""
    bare = _URL.sub("", model, count=1)
    if bare != model or bare.lower().startswith(tuple(h + "/" for h in _HUB_HOSTS)):
        host, _, rest = bare.partition("/")
        parts = [p for p in rest.split("/") if p]
        if host.lower() in _HUB_HOSTS and len(parts) >= 2 and is_hub_id("/".join(parts[:2])):
            raise BadInput(f"'{printable(model)}' is a URL; vramplan takes the repo id. "
                           f"Pass {parts[0]}/{parts[1]}.")
        raise BadInput(f"'{printable(model)}' is a URL; vramplan takes a Hub repo id (org/name) or a local "
                       "path, and downloads nothing but a Hub repo's config.json.")
    m = _REVISION.fullmatch(model)
    if m and is_hub_id(m["id"]):
        raise BadInput(f"'{printable(model)}' names a revision ('{printable(m['rev'])}'), which vramplan does not "
                       f"take: it reads the main branch's config. Pass {m['id']}, or that revision's "
                       "config.json as a local path.")


def load_config(model: str, *, offline: bool | None = None) -> LoadedConfig:
    """Resolve MODEL to its config.json: local path, bundled catalog, HF cache, a bundled base of
    a listed fine-tune (configs/models/variants.toml), then the Hub.

    offline=None follows HF_HUB_OFFLINE; offline=True never touches the network. Every refusal
    is a BadInput (exit 2), or an EnvironmentProblem (exit 3) for a broken cache or install.
    """
    model = _check_text(model)
    path = _expand_user(model)
    kind = kind_of(path)
    if kind != Kind.MISSING:
        return _read_local(model, path, kind)
    if model != model.strip():
        raise BadInput(f"'{printable(model)}' starts or ends with whitespace, and no file of that name "
                       "exists. Remove the spaces (or quote the path exactly as it is on disk).")
    _refuse_url_or_revision(model)
    if _looks_like_path(model):
        raise _not_found(model)

    found = bundled.find(model)
    if found is not None:
        canonical, resource = found
        return _loaded(canonical, "bundled", str(resource), bundled.read(resource))

    if not is_hub_id(model):
        raise _not_found(model)

    cached = hf_cache.find_cached(model)
    if cached is not None:
        cached_id, file = cached
        return _loaded(cached_id, "hf-cache", str(file), hf_cache.read_config(file))

    variant = bundled.find_variant(model)
    if variant is not None:   # configs/models/variants.toml: same architecture, both configs checked
        variant_id, base, resource = variant
        return _loaded(variant_id, f"bundled variant of {base}", str(resource), bundled.read(resource))

    if offline if offline is not None else _env_offline():
        why = "HF_HUB_OFFLINE is set" if offline is None else "offline mode is on"
        raise hub.unreachable(model, f"the Hub was not tried because {why}")
    file, url = hub.fetch(model)
    return _loaded(model, "hub", url, hub.read_config(file))
