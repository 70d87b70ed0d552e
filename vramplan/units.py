"""Byte units and token counts.

Inside vramplan every size is an int of bytes. GiB (2**30) is the display unit; GB (10**9) is
accepted only where the user writes it, because vendors label cards in decimal GB. A token
count such as "32k" means 32 * 1024 = 32,768 tokens, as context lengths are powers of two.
"""

from __future__ import annotations

import re

from vramplan.errors import BadInput

KiB, MiB, GiB, TiB = 2**10, 2**20, 2**30, 2**40

_BYTE_UNITS = {
    "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": KiB, "mib": MiB, "gib": GiB, "tib": TiB,
}
_TOKEN_SUFFIX = {"": 1, "k": 2**10, "m": 2**20}
_NUMBER = r"(\d+(?:\.\d+)?|\.\d+)"

# No real workload needs more than 2**24 (16M) tokens per sequence or 2**20 sequences per
# batch; beyond that a number is a typo and the solver would only waste time on it.
MAX_TOKENS = 2**24
MAX_BATCH = 2**20


def parse_tokens(text: str | int, what: str = "{ctx}") -> int:
    """'32k' -> 32768, '4096' -> 4096, '1.5k' -> 1536. Rejects zero, negatives and junk; `what`
    names the parameter in the message (a BadInput placeholder such as "{batch}")."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        s = str(text).strip().lower().replace("_", "").replace(",", "")
        m = re.fullmatch(_NUMBER + r"\s*([km]?)", s)
        if not m:
            raise BadInput(
                f"{what} {text!r} is not a token count. Write a whole number such as 4096 or a "
                f"power-of-two shorthand such as 32k (= 32,768) or 1m (= 1,048,576)."
            )
        exact = float(m.group(1)) * _TOKEN_SUFFIX[m.group(2)]
        value = int(exact)
        if value != exact:
            raise BadInput(f"{what} {text!r} is not a whole number of tokens ({exact:g}).")
    if value <= 0:
        raise BadInput(f"{what} must be at least 1, got {value}.")
    limit = MAX_BATCH if what == "{batch}" else MAX_TOKENS
    if value > limit:
        raise BadInput(f"{what} {value:,} is beyond any real workload (limit {limit:,}); check the number.")
    return value


def parse_bytes(text: str | int, what: str = "{gpu_mem}") -> int:
    """'48GB' -> 48e9, '44.5GiB' -> 47781511168. A bare number is refused: say GB or GiB."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        s = str(text).strip().lower().replace("_", "").replace(",", "")
        m = re.fullmatch(_NUMBER + r"\s*([a-z]*)", s)
        if not m or m.group(2) not in _BYTE_UNITS:
            raise BadInput(
                f"{what} {text!r} is not a memory size. Write it with a unit, e.g. 48GB "
                f"(decimal, as vendors label cards) or 44.5GiB (binary, as PyTorch reports)."
            )
        value = int(float(m.group(1)) * _BYTE_UNITS[m.group(2)])
    if value <= 0:
        raise BadInput(f"{what} must be a positive size, got {text!r}.")
    if value > 2**50:
        raise BadInput(f"{what} {text!r} is larger than any GPU; check the unit.")
    return value


def gib(n: int) -> float:
    return n / GiB


def fmt_gib(n: int, digits: int = 2) -> str:
    """Display form: '14.96 GiB'. Negative values keep their sign (headroom below zero)."""
    return f"{n / GiB:,.{digits}f} GiB"


def fmt_bytes(n: int) -> str:
    """Exact bytes with thousands separators, as tests and users compare them."""
    return f"{n:,}"


def fmt_tokens(n: int) -> str:
    """32768 -> '32,768 (32k)' when it is a round power-of-two multiple, else '32,000'."""
    if n >= 1024 and n % 1024 == 0:
        k = n // 1024
        return f"{n:,} ({k}k)" if k < 1024 or k % 1024 else f"{n:,} ({k // 1024}m)"
    return f"{n:,}"


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)
