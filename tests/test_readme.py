"""The README's example output is what the command prints today."""

import os
import re

from typer.testing import CliRunner

from vramplan.cli import app

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def test_readme_example_is_current():
    text = open(README, encoding="utf-8").read()
    command = re.search(r"```\n(vramplan fit [^\n]+)\n```", text).group(1)
    shown = re.search(r"```\n(model     .*?)\n```", text, re.S).group(1)
    result = CliRunner().invoke(app, command.split()[1:])
    assert result.exit_code == 1
    assert result.stdout.rstrip() == shown.rstrip()
