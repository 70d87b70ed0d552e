"""--record results.jsonl: one self-describing JSON line per verify run, appended.

Why JSON lines: records from many machines, GPUs and versions are concatenated and filtered
with ordinary tools; each line carries everything needed to interpret it (GPU, driver, CUDA,
torch, transformers and vramplan versions, the flags, predicted and measured figures), so a
record is meaningful years later. docs/verify.md shows how they calibrate memory/overhead.py.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import tempfile
from pathlib import Path

from vramplan import __version__
from vramplan.errors import BadInput
from vramplan.files import read_small_file
from vramplan.units import printable

SCHEMA = "vramplan.verify/1"
# Settings that change what the allocator and the context hold, kept with every record
ENVIRONMENT = ("PYTORCH_CUDA_ALLOC_CONF", "CUDA_MODULE_LOADING")


def versions() -> dict:
    """Library versions as installed now (None for what is missing); torch.version.cuda is the
    CUDA runtime torch was built with, which the driver must support."""
    out = {"vramplan": __version__, "python": platform.python_version(), "torch": None,
           "torch_cuda": None, "transformers": None, "peft": None}
    try:
        import torch

        out["torch"], out["torch_cuda"] = torch.__version__, torch.version.cuda
    except ImportError:
        pass
    for name in ("transformers", "peft"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            pass
    return out


def make_record(result_json: dict) -> dict:
    return {"schema": SCHEMA,
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(), "environment": {k: os.environ.get(k) for k in ENVIRONMENT},
            **result_json}


def unusable(path: str | Path) -> str | None:
    """Why `path` cannot take records (checked before a run, so a finished result is not lost
    to a typo), or None. Creates the parent folders, as append does."""
    p = Path(path)
    if p.is_dir():
        return "it is a directory"
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        existed = p.exists()
        with p.open("a", encoding="utf-8"):
            pass
        if not existed:
            p.unlink()
    except OSError as e:
        return e.strerror or str(e)
    return None


def keep_elsewhere(record: dict) -> str:
    """Write a record that could not be appended to a temporary file; returns its path."""
    fd, name = tempfile.mkstemp(prefix="vramplan-verify-", suffix=".jsonl")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
    return name


def append(path: str | Path, record: dict) -> None:
    p = Path(path)
    if p.parent and not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


# A record is 3-6 KiB; 64 MiB holds some ten thousand runs, more than any calibration needs.
READ_LIMIT = 64 * 2**20


def read(path: str | Path) -> list[dict]:
    """Every record in a results file (lines of other schemas skipped). The file is read like
    every file (regular, at most READ_LIMIT bytes); a line that is not a JSON object is
    BadInput naming the line, never a record silently lost."""
    raw = read_small_file(path, READ_LIMIT, "the results file", BadInput,
                          "Pass the file that verify --record wrote.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput(f"The results file {printable(str(path))} is not UTF-8 text. "
                       "Pass the file that verify --record wrote.") from None
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            rec = None
        if not isinstance(rec, dict):
            raise BadInput(f"Line {number} of the results file {printable(str(path))} is not a JSON "
                           "object. Remove or repair that line (each line is one record).")
        if rec.get("schema") == SCHEMA:
            out.append(rec)
    return out
