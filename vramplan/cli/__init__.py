"""The command line: parse flags, call the API, render. One module per command; this one holds
the typer app and the one place that maps errors to exit codes: 0 fits, 1 does not fit, 2 bad
input, 3 environment problem.

The command modules import only typer, vramplan.api and vramplan.render, whose tools and
renderers load on first use, so `vramplan fit` never pays for `compare`, `probe` or `verify`."""

from __future__ import annotations

import functools

import typer

from vramplan.cli.calibrate import calibrate
from vramplan.cli.compare import compare, sweep
from vramplan.cli.fit import fit
from vramplan.cli.gpus import gpus
from vramplan.cli.kv import kv
from vramplan.cli.models import models
from vramplan.cli.probe import probe
from vramplan.cli.verify import verify
from vramplan.errors import VramplanError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Plan GPU memory for large language models: will it fit, how every byte is spent, "
         "and what fits instead. Analytic answers need no GPU and no network.",
)


def _errors_to_exit_codes(command):
    """Our errors become one message on stderr, phrased with flags, and the class's exit code;
    --debug re-raises."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except VramplanError as e:
            if kwargs.get("debug"):
                raise
            typer.echo(f"vramplan: {e.for_cli()}", err=True)
            raise typer.Exit(e.exit_code)

    return run


def command(fn):
    return app.command()(_errors_to_exit_codes(fn))


for _command in (fit, kv, models, gpus, probe, verify, calibrate, compare, sweep):
    command(_command)


def main() -> None:
    app()
