"""`vramplan models`: the bundled model configs, available offline."""

from __future__ import annotations

from typing import Optional

import typer

from vramplan import api, render
from vramplan.cli import options as O
from vramplan.cli.output import emit_json


def models(
    query: Optional[str] = typer.Argument(None, help="Substring to filter ids, e.g. llama."),
    as_json: bool = typer.Option(False, "--json"),
    debug: bool = O.DEBUG,
) -> None:
    """Bundled model configs (available offline)."""
    rows = api.bundled_models(query)
    if as_json:
        emit_json(render.models_json(rows))
    else:
        print(render.models_table(rows) if rows else f"No bundled model matches {query!r}.")
