"""MODEL as a local path: a config.json file, or a directory that holds one."""

from __future__ import annotations

from pathlib import Path

from vramplan.errors import BadInput
from vramplan.files import CONFIG_LIMIT, Kind, kind_of, read_small_file
from vramplan.units import printable

_HINT = "Pass the model's config.json (not a weights file), or the directory that holds it."


def config_file(path: Path) -> Path:
    """The config.json that the directory `path` stands for (a file stands for itself)."""
    candidate = path / "config.json"
    kind = kind_of(candidate)
    if kind == Kind.MISSING and path.name == "config.json":
        raise BadInput(f"{printable(str(path))} is a directory, not a config.json file, and holds no "
                       "config.json. Pass the model's config.json file or the directory that holds it.")
    if kind == Kind.MISSING:
        raise BadInput(
            f"Directory {printable(str(path))} has no config.json. "
            "Pass the model's directory (the one with config.json) or the path to the file itself."
        )
    if kind == Kind.DANGLING:
        raise BadInput(f"{printable(str(candidate))} is a symbolic link to a file that does not exist. "
                       "Download the model's config.json again, or pass another path.")
    return candidate       # anything else: read_config_bytes says what is wrong with it


def read_config_bytes(path: Path) -> bytes:
    """Read a local config file: a regular file of at most CONFIG_LIMIT bytes, else BadInput."""
    return read_small_file(path, CONFIG_LIMIT, "the config file", BadInput, _HINT)
