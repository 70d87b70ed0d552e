"""`vramplan probe`: the attached GPUs through NVML. Exit 3 without a driver, a GPU or
nvidia-ml-py."""

from __future__ import annotations

import typer

from vramplan import api, render
from vramplan.cli import options as O
from vramplan.cli.output import emit_json


def probe(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (docs/probe.md)."),
    debug: bool = O.DEBUG,
) -> None:
    """The attached GPUs via NVML: memory (NVML total/reserved/used/free), ECC, MIG, PCIe, power,
    processes and the catalog match. Exit 3 without a driver, a GPU or nvidia-ml-py."""
    report = api.probe()
    if as_json:
        emit_json(render.probe.report_json(report))
    else:
        print(render.probe.report_text(report))
    for w in report.warnings:
        typer.echo(f"vramplan: warning: {w}", err=True)
    raise typer.Exit(0 if report.readable else 3)
