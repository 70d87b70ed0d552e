"""`vramplan probe` as a plain function with a typer signature; cli/__init__.py registers it
with its error-to-exit-code wrapper (`command(probe)`), so this module imports only typer."""

from __future__ import annotations

import json
import sys

import typer


def probe(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (docs/probe.md)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """The attached GPUs via NVML: memory (NVML total/reserved/used/free), ECC, MIG, PCIe, power,
    processes and the catalog match. Exit 3 without a driver, a GPU or nvidia-ml-py."""
    from vramplan.probe import read
    from vramplan.render import probe as render

    report = read.probe()
    if as_json:
        sys.stdout.write(json.dumps(render.report_json(report), indent=2) + "\n")
    else:
        print(render.report_text(report))
    for w in report.warnings:
        typer.echo(f"vramplan: warning: {w}", err=True)
    raise typer.Exit(0 if report.readable else 3)
