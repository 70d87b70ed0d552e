"""`vramplan calibrate RECORDS.jsonl`: plan vs measured per case, component and GPU, and the
constants the records would move. Exit 0; 2 for a file that holds no verify records."""

from __future__ import annotations

import typer

from vramplan import api, render
from vramplan.cli import options as O
from vramplan.cli.output import emit_json


def calibrate(
    records: str = typer.Argument(..., help="A file `vramplan verify --record` appended to."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (docs/verify.md)."),
    debug: bool = O.DEBUG,
) -> None:
    """Plan vs measured from verify records: per case, per component and GPU, and which
    constants (CUDA context, driver reserve, CUDA totals, cuBLAS workspace, allocator slack)
    the records would move."""
    result = api.calibrate(records)
    if as_json:
        emit_json(result.to_json())
    else:
        print(render.verify.calibration_text(result))
