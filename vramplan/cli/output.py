"""How the commands write their answer to stdout: one JSON document, or text as rendered."""

from __future__ import annotations

import json
import sys


def emit_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def emit(fmt: str, as_json, table, as_csv, markdown) -> None:
    """Write the answer in `fmt` (json, csv, markdown or table); each renderer is called only
    when chosen."""
    if fmt == "json":
        emit_json(as_json())
    elif fmt == "csv":
        sys.stdout.write(as_csv())
    else:
        print(markdown() if fmt == "markdown" else table())
