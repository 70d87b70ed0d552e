"""`vramplan kv`: KV cache bytes per token, per layer kind, for each cache dtype."""

from __future__ import annotations

import typer

from vramplan import api, render
from vramplan.cli import options as O
from vramplan.cli.output import emit_json


def kv(
    model: str = O.MODEL,
    as_json: bool = typer.Option(False, "--json"),
    debug: bool = O.DEBUG,
) -> None:
    """KV cache bytes per token, per layer kind, for each cache dtype."""
    report = api.kv_report(model)
    if as_json:
        emit_json(render.kv_json(report))
    else:
        print(render.kv_table(report))
