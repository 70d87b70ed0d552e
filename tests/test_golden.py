"""Every number vramplan prints, pinned: the golden matrix (tests/golden/matrix.py) re-run and
compared byte for byte. A change meant to move numbers regenerates the files in the same commit
(`python tests/golden/matrix.py --write`) and says why in its message."""

import pytest
from typer.testing import CliRunner

from tests.golden import matrix
from vramplan.cli import app

CASES = matrix.cases()
runner = CliRunner()


def test_matrix_is_large_and_stored():
    assert len(CASES) >= 300
    stored = {p.stem for p in matrix.OUT.glob("*.txt")}
    assert stored == set(CASES), "regenerate with: python tests/golden/matrix.py --write"


@pytest.mark.parametrize("name", list(CASES))
def test_output_is_byte_identical(name):
    want = (matrix.OUT / f"{name}.txt").read_text()
    got = matrix.run_case(runner, app, CASES[name])
    assert got == want, f"{name}: output moved; regenerate deliberately with matrix.py --write"
