import pytest

from vramplan.errors import BadInput
from vramplan.units import GiB, fmt_gib, fmt_tokens, parse_bytes, parse_tokens


@pytest.mark.parametrize("text,expected", [
    ("32k", 32_768), ("32K", 32_768), ("4096", 4096), ("1m", 1_048_576), ("1.5k", 1536),
    ("128_000", 128_000), (" 8 ", 8), (7, 7),
])
def test_parse_tokens(text, expected):
    assert parse_tokens(text) == expected


@pytest.mark.parametrize("text", ["32q", "-5", "0", "", "k", "1.3", "2e5", "99999999999"])
def test_parse_tokens_rejects(text):
    with pytest.raises(BadInput) as e:
        parse_tokens(text)
    assert "--ctx" in e.value.for_cli()
    assert str(e.value).startswith("ctx ") and "--" not in str(e.value)


def test_batch_limit_is_named():
    with pytest.raises(BadInput) as e:
        parse_tokens("2000000", "{batch}")
    assert "--batch" in e.value.for_cli() and "limit 1,048,576" in str(e.value)


def test_one_error_phrased_for_the_cli_and_for_python():
    with pytest.raises(BadInput) as e:
        parse_bytes("48", "{gpu_mem}")
    assert e.value.for_cli().startswith("--gpu-mem '48' is not a memory size.")
    assert str(e.value).startswith("gpu_mem '48' is not a memory size.")
    e = BadInput("{gpu_memory_utilization} must be in (0, 1], got 1.5; {tp} x {pp} too.")
    assert e.for_cli() == "--gpu-memory-utilization must be in (0, 1], got 1.5; --tp x --pp too."
    assert str(e) == "gpu_memory_utilization must be in (0, 1], got 1.5; tp x pp too."
    assert BadInput("{prices} 'x' is not ID=USD").for_cli() == "--price 'x' is not ID=USD"
    quoted = BadInput("{gpu} '{l40s}' names no GPU")         # a user's value in quotes stays as typed
    assert quoted.for_cli() == "--gpu '{l40s}' names no GPU" and str(quoted) == "gpu '{l40s}' names no GPU"


@pytest.mark.parametrize("text,expected", [
    ("48GB", 48 * 10**9), ("48 gb", 48 * 10**9), ("44.5GiB", 47_781_511_168),  # 44.5 * 2**30
    ("46068MiB", 46_068 * 2**20), ("1TB", 10**12), ("512B", 512),
])
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["48", "48G", "lots", "-1GB", "0GB", "9999TiB"])
def test_parse_bytes_rejects(text):
    with pytest.raises(BadInput):
        parse_bytes(text)


def test_formatting():
    assert fmt_gib(16_060_522_496) == "14.96 GiB"
    assert fmt_gib(-GiB) == "-1.00 GiB"
    assert fmt_tokens(32_768) == "32,768 (32k)"
    assert fmt_tokens(1_048_576) == "1,048,576 (1m)"
    assert fmt_tokens(32_000) == "32,000"
