"""The bad-input contract, asserted one way everywhere (issue #15).

Through the CLI: the expected exit code (2 bad input, 3 environment problem; never 1, which only
means "does not fit"), one or two plain sentences on stderr that start with "vramplan: ", no
traceback, nothing on stdout (no table, no JSON: nothing that reads like an answer), and an
answer within a time limit. Through the API: a VramplanError subclass (BadInput is a ValueError)
whose message names the problem, never a bare TypeError/KeyError/AttributeError.
"""

from __future__ import annotations

import re
import signal
from contextlib import contextmanager

import pytest
from typer.testing import CliRunner

from vramplan.cli import app
from vramplan.errors import VramplanError

runner = CliRunner()
SECONDS = 10        # any refusal comes back well inside this; a hang fails the case


@contextmanager
def deadline(seconds: int = SECONDS):
    """Fail (instead of hanging the suite) when the body runs longer than `seconds`."""
    def expire(*_):
        raise TimeoutError(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def sentences(text: str) -> int:
    """Sentences in a message, counting '. ', '? ' and '! ' breaks (decimals like 1.5 do not)."""
    return len([s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z(`'\"])", text.strip()) if s])


def assert_cli_refuses(argv: list[str], code: int = 2, needle: str | None = None,
                       env: dict | None = None) -> str:
    """Run `vramplan ARGV`; assert the contract; return the message (without "vramplan: ")."""
    with deadline():
        r = runner.invoke(app, argv, env={"HF_HUB_OFFLINE": "1", **(env or {})})
    err = r.stderr
    assert r.exit_code == code, f"{argv}: exit {r.exit_code}, want {code}\nstdout: {r.stdout[:500]}\nstderr: {err[:500]}\n{r.exception!r}"
    assert "Traceback" not in err and "Traceback" not in r.stdout, f"{argv}: traceback\n{err}"
    assert r.stdout.strip() == "", f"{argv}: something on stdout: {r.stdout[:300]}"
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert lines and lines[0].startswith("vramplan: "), f"{argv}: stderr {err!r}"
    message = " ".join(l.strip() for l in lines)[len("vramplan: "):]
    assert 1 <= sentences(message) <= 3, f"{argv}: not one or two plain sentences: {message!r}"
    if needle is not None:
        assert needle.lower() in message.lower(), f"{argv}: {needle!r} not in {message!r}"
    return message


def assert_api_refuses(fn, *args, exc: type[VramplanError] = VramplanError, needle: str | None = None,
                       **kwargs) -> VramplanError:
    """Call the API; assert it raises `exc` (a VramplanError) with a message naming the problem."""
    with deadline():
        with pytest.raises(exc) as info:
            fn(*args, **kwargs)
    e = info.value
    assert isinstance(e, VramplanError), f"{type(e).__name__} is not a VramplanError"
    if needle is not None:
        assert needle.lower() in str(e).lower(), f"{needle!r} not in {str(e)!r}"
    return e
