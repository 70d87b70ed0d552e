"""MODEL as a local path: a config.json file, or a directory that holds one."""

from __future__ import annotations

from pathlib import Path

from vramplan.errors import BadConfig, BadInput

# A config.json is a few KiB; anything this large is a weights file passed by mistake, and
# reading it whole would only waste memory before failing to parse.
MAX_CONFIG_BYTES = 16 * 2**20


def config_file(path: Path) -> Path:
    """The config.json that `path` (an existing file or directory) stands for."""
    if not path.is_dir():
        return path
    candidate = path / "config.json"
    if not candidate.is_file():
        raise BadInput(
            f"Directory {path} has no config.json. "
            "Pass the model's directory (the one with config.json) or the path to the file itself."
        )
    return candidate


def read_config_bytes(path: Path) -> bytes:
    """Read a local config file, refusing files too large to be one."""
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise BadConfig(
                f"{path} is {size / 2**20:.0f} MiB, far too large for a config.json. "
                "Pass the model's config.json, not a weights file."
            )
        return path.read_bytes()
    except OSError as e:
        raise BadInput(f"Cannot read {path}: {e.strerror or e}. Check the path and its permissions.") from None
