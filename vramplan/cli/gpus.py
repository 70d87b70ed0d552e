"""`vramplan gpus`: the GPU catalog."""

from __future__ import annotations

import typer

from vramplan import api, render
from vramplan.cli import options as O
from vramplan.cli.output import emit_json


def gpus(
    as_json: bool = typer.Option(False, "--json"),
    debug: bool = O.DEBUG,
) -> None:
    """The GPU catalog: memory, bandwidth, compute and dated prices."""
    catalog = api.gpus()
    if as_json:
        emit_json(render.gpus_json(catalog, api.default_prices(catalog)))
    else:
        print(render.gpus_table(catalog, api.default_prices(catalog)))
