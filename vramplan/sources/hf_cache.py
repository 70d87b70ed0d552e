"""The local Hugging Face cache stage: find a config.json already on disk, without network.

Layout (as huggingface_hub writes it):
    <cache>/models--<org>--<name>/refs/main             commit hash of the main branch
    <cache>/models--<org>--<name>/snapshots/<hash>/config.json
The cache directory is found the way huggingface_hub finds it, read from the environment at call
time (huggingface_hub itself is never imported here).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """HF_HUB_CACHE, else the legacy HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    env = os.environ
    hub = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if not hub:
        xdg = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        hub = os.path.join(env.get("HF_HOME") or os.path.join(xdg, "huggingface"), "hub")
    return Path(os.path.expandvars(os.path.expanduser(hub)))


def _repo_dir(root: Path, repo_id: str) -> Path | None:
    """The repo's cache folder; Hub ids are case-insensitive, so fall back to a case-blind match."""
    folder = "models--" + repo_id.replace("/", "--")
    if (root / folder).is_dir():
        return root / folder
    try:
        return next((p for p in root.iterdir() if p.name.lower() == folder.lower() and p.is_dir()), None)
    except OSError:  # no cache directory at all
        return None


def find_cached(repo_id: str) -> tuple[str, Path] | None:
    """(repo id as cached, path of config.json), preferring the snapshot refs/main points to."""
    repo = _repo_dir(cache_dir(), repo_id)
    if repo is None:
        return None
    try:
        main = (repo / "refs" / "main").read_text().strip()
    except OSError:
        main = ""
    cached_id = repo.name[len("models--"):].replace("--", "/")
    if main and (repo / "snapshots" / main / "config.json").is_file():
        return cached_id, repo / "snapshots" / main / "config.json"
    # No usable main ref (e.g. only a pinned revision was downloaded): take the newest snapshot.
    # is_file() follows the blob symlink, so a snapshot whose blob was deleted is skipped.
    found = [p for p in (repo / "snapshots").glob("*/config.json") if p.is_file()]
    if not found:
        return None
    return cached_id, max(found, key=lambda p: (p.lstat().st_mtime, p.parent.name))
