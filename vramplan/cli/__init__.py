"""The command line: parse flags, call the API, render. One module per command; this one holds
the typer app and the one place that maps errors to exit codes: 0 fits, 1 does not fit, 2 bad
input, 3 environment problem (and any error vramplan did not expect).

Exit 1 means only "does not fit" (a plan, compare or sweep whose answer is no; DoesNotFit): a
mistake typer finds in the flags is 2 like every other bad input, and an exception no one raised
on purpose is 3 with one sentence, its traceback behind --debug.

The command modules import only typer, vramplan.api and vramplan.render, whose tools and
renderers load on first use, so `vramplan fit` never pays for `compare`, `probe` or `verify`."""

from __future__ import annotations

import functools
import os
import re
import sys

import typer
from typer.core import TyperCommand, TyperGroup

from vramplan.cli.calibrate import calibrate
from vramplan.cli.compare import compare, sweep
from vramplan.cli.fit import fit
from vramplan.cli.gpus import gpus
from vramplan.cli.kv import kv
from vramplan.cli.models import models
from vramplan.cli.probe import probe
from vramplan.cli.verify import verify
from vramplan.errors import DoesNotFit, VramplanError

# typer raises click's exceptions (its own vendored copy since 0.20): found through the class typer
# exports, so both layouts work.
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
_USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
_LONGEST_MESSAGE = 300      # characters of an unexpected error's message worth printing


def _plain(text: str) -> str:
    """One line: whitespace collapsed, runs of digits a user pasted by accident summarized."""
    text = re.sub(r"\d{41,}", lambda m: f"<{len(m[0]):,} digits>", " ".join(str(text).split()))
    return text if len(text) <= _LONGEST_MESSAGE else text[:_LONGEST_MESSAGE] + "..."


def _usage_exit(e, command: str) -> typer.Exit:
    """A flag typer could not parse (unknown option, a word for a number): one sentence, exit 2."""
    message = _plain(e.format_message()).rstrip(".")
    typer.echo(f"vramplan: {message}. See `vramplan {command} --help`.".replace("vramplan  ", "vramplan "),
               err=True)
    return typer.Exit(2)


class _Command(TyperCommand):
    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except _USAGE_ERROR as e:
            if type(e).__name__ == "NoArgsIsHelpError":     # `vramplan fit` alone shows the help
                raise
            raise _usage_exit(e, self.name or "") from None


class _Group(TyperGroup):
    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except _USAGE_ERROR as e:
            if type(e).__name__ == "NoArgsIsHelpError":
                raise
            raise _usage_exit(e, "") from None

    def resolve_command(self, ctx, args):
        try:
            return super().resolve_command(ctx, args)
        except _USAGE_ERROR as e:           # no such command
            raise _usage_exit(e, "") from None


app = typer.Typer(
    cls=_Group, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Plan GPU memory for large language models: will it fit, how every byte is spent, "
         "and what fits instead. Analytic answers need no GPU and no network.",
)


def exit_code(e: VramplanError) -> int:
    """The class's exit code; 1 is "does not fit" and belongs to DoesNotFit alone."""
    code = getattr(e, "exit_code", 3)
    if code == 1 and not isinstance(e, DoesNotFit) or code not in (1, 2, 3):
        return 3
    return code


def _errors_to_exit_codes(command):
    """Our errors become one message on stderr, phrased with flags, and the class's exit code;
    anything else is an internal error (exit 3); --debug re-raises."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except VramplanError as e:
            if kwargs.get("debug"):
                raise
            typer.echo(f"vramplan: {_plain(e.for_cli())}", err=True)
            raise typer.Exit(exit_code(e)) from None
        except (typer.Exit, _CLICK_ERROR):
            raise
        except Exception as e:       # noqa: BLE001 - the contract: no traceback without --debug
            if kwargs.get("debug"):
                raise
            detail = _plain(str(e)).rstrip(".") or "no message"
            typer.echo(f"vramplan: internal error: {type(e).__name__}: {detail}; rerun with --debug "
                       f"for the traceback.", err=True)
            raise typer.Exit(3) from None

    return run


def command(fn):
    return app.command(cls=_Command)(_errors_to_exit_codes(fn))


for _command in (fit, kv, models, gpus, probe, verify, calibrate, compare, sweep):
    command(_command)


class _PipeGuard:
    """stdout for a reader that may leave early (`vramplan compare MODEL | head`): once the pipe is
    closed the rest of the answer goes nowhere, and the command still ends with its verdict's exit
    code rather than an "internal error: BrokenPipeError"."""

    def __init__(self, stream):
        self._stream, self._closed = stream, False

    def _close(self) -> None:
        self._closed = True
        os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())   # the exit-time flush too

    def write(self, text: str) -> int:
        if not self._closed:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._close()
        return len(text)

    def flush(self) -> None:
        if not self._closed:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._close()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def main() -> None:
    if sys.stdout is not None and not isinstance(sys.stdout, _PipeGuard):
        sys.stdout = _PipeGuard(sys.stdout)
    app()
