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
    assert "--ctx" in str(e.value)


def test_batch_limit_is_named():
    with pytest.raises(BadInput, match="--batch"):
        parse_tokens("2000000", "--batch")


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
