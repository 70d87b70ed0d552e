"""The local Hugging Face cache stage: find a config.json already on disk, without network.

Layout (as huggingface_hub writes it):
    <cache>/models--<org>--<name>/refs/main             commit hash of the main branch
    <cache>/models--<org>--<name>/snapshots/<hash>/config.json
The cache directory is found the way huggingface_hub finds it, read from the environment at call
time (huggingface_hub itself is never imported here).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from vramplan.errors import EnvironmentProblem
from vramplan.files import CONFIG_LIMIT, REF_LIMIT, Kind, is_within, kind_of, read_small_file
from vramplan.units import printable

# huggingface_hub writes a 40-hex-digit commit hash into refs/<branch>; we accept letters and
# digits up to 64 (a SHA-256 object id), and nothing that could be a path (no '/', '.', '\\').
_COMMIT = re.compile(r"[0-9A-Za-z]{1,64}")


def cache_dir() -> Path:
    """HF_HUB_CACHE, else the legacy HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    env = os.environ
    hub = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if not hub:
        xdg = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        hub = os.path.join(env.get("HF_HOME") or os.path.join(xdg, "huggingface"), "hub")
    try:
        return Path(os.path.expandvars(os.path.expanduser(hub)))
    except (KeyError, RuntimeError, ValueError):   # an unknown ~user in the variable
        return Path(hub)


def _repo_dir(root: Path, repo_id: str) -> Path | None:
    """The repo's cache folder; Hub ids are case-insensitive, so fall back to a case-blind match."""
    folder = "models--" + repo_id.replace("/", "--")
    try:
        if (root / folder).is_dir():
            return root / folder
        return next((p for p in root.iterdir() if p.name.lower() == folder.lower() and p.is_dir()), None)
    except (OSError, ValueError):  # no cache directory at all, or one we may not list
        return None


def _ref(repo: Path) -> str | None:
    """The commit refs/main names; None when there is no refs/main. A ref that is not a commit
    hash (a tampered "../.." or "/etc") is a broken cache, never a path to follow."""
    ref = repo / "refs" / "main"
    if kind_of(ref) == Kind.MISSING:
        return None
    raw = read_small_file(ref, REF_LIMIT, "the Hugging Face cache ref", EnvironmentProblem, _hint(repo))
    text = raw.decode("ascii", "replace").strip()
    if not text:
        return None          # an empty ref names nothing: the newest snapshot answers
    if not _COMMIT.fullmatch(text):
        raise EnvironmentProblem(
            f"The Hugging Face cache ref {printable(str(ref))} holds '{printable(text, 60)}', not a commit "
            f"hash, so vramplan will not follow it. {_hint(repo)}")
    return text


def _hint(repo: Path) -> str:
    return f"Delete {printable(str(repo))} from the cache and run again."


def _confined(file: Path, repo: Path) -> Path:
    """`file`, after checking that every link it follows stays inside the repo's cache folder
    (huggingface_hub links snapshots/<commit>/config.json to ../../blobs/<sha256>). A path we
    may not even stat cannot be resolved, nor read: `read_config` says "permission denied"."""
    if kind_of(file) != Kind.DENIED and not is_within(file, repo):
        try:
            where = f" (to {printable(str(file.resolve()))})"
        except (OSError, RuntimeError):
            where = ""
        raise EnvironmentProblem(
            f"The Hugging Face cache file {printable(str(file))} leads outside its repo folder{where}, "
            f"so vramplan will not read it. {_hint(repo)}")
    return file


def find_cached(repo_id: str) -> tuple[str, Path] | None:
    """(repo id as cached, path of config.json), preferring the snapshot refs/main points to.

    Every path is confined to the repo's folder; a tampered ref or link is an EnvironmentProblem."""
    repo = _repo_dir(cache_dir(), repo_id)
    if repo is None:
        return None
    main = _ref(repo)
    cached_id = repo.name[len("models--"):].replace("--", "/")
    snapshots = repo / "snapshots"
    if main:
        file = snapshots / main / "config.json"
        if kind_of(file) not in (Kind.MISSING, Kind.DANGLING):
            return cached_id, _confined(file, repo)
    # No usable main ref (e.g. only a pinned revision was downloaded): take the newest snapshot.
    # is_file() follows the blob symlink, so a snapshot whose blob was deleted is skipped.
    try:
        found = [p for p in snapshots.glob("*/config.json") if p.is_file()]
    except OSError:
        found = []
    if not found:
        return None
    newest = max(found, key=lambda p: (p.lstat().st_mtime, p.parent.name))
    return cached_id, _confined(newest, repo)


def read_config(file: Path) -> bytes:
    """The bytes of a cached config.json (found by `find_cached`): a broken cache is exit 3."""
    repo = file.parent.parent.parent
    return read_small_file(file, CONFIG_LIMIT, "the cached config", EnvironmentProblem, _hint(repo))
