"""Byte units and token counts.

Inside vramplan every size is an int of bytes. GiB (2**30) is the display unit; GB (10**9) is
accepted only where the user writes it, because vendors label cards in decimal GB. A token
count such as "32k" means 32 * 1024 = 32,768 tokens, as context lengths are powers of two.
"""

from __future__ import annotations

import re
from decimal import Decimal

from vramplan.errors import BadInput

KiB, MiB, GiB, TiB = 2**10, 2**20, 2**30, 2**40

_BYTE_UNITS = {
    "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "pb": 10**15, "eb": 10**18,
    "kib": KiB, "mib": MiB, "gib": GiB, "tib": TiB, "pib": 2**50, "eib": 2**60,
}
_TOKEN_SUFFIX = {"": 1, "k": 2**10, "m": 2**20}
_NUMBER = r"([+-]?)(\d+(?:\.\d+)?|\.\d+)"
_LONGEST = 40          # characters of a number worth reading; longer is a paste accident

# Bounds on what a real workload can ask for (docs/validation.md, "Settings and verdicts"). Beyond
# them a number is a typo or a unit slip, and the solvers would only waste time on it.
# Tokens per sequence: 2**24 (16M) is 16x the longest context any released model serves (1M).
MAX_TOKENS = 2**24
# Sequences per batch (also vLLM's max_num_seqs): 2**20, 1,000x vLLM's largest default (1,024).
MAX_BATCH = 2**20
# Memory per GPU: 4 TiB, 14x the largest card in any catalog today (288 GB: B300, MI355X).
MAX_GPU_BYTES = 4 * TiB
_LIMIT_OF = {"{batch}": MAX_BATCH, "{max_num_seqs}": MAX_BATCH}


def printable(text: str, limit: int = 120) -> str:
    """`text` as a message may print it: control characters, NUL and lone surrogates escaped
    (a lone surrogate cannot even be written to stderr), and cut to `limit` characters."""
    if not text.isprintable():      # surrogates, control characters and NUL are not printable
        text = text.encode("unicode_escape").decode("ascii")
    if len(text) > limit:
        text = f"{text[:limit - 20]}...{text[-17:]} ({len(text)} characters)"
    return text


def shown(value) -> str:
    """A user's value as a message quotes it: repr, except numbers too long to read."""
    text = repr(value)
    if len(text) > _LONGEST:
        digits = sum(c.isdigit() for c in text)
        return f"a {digits:,}-digit number" if digits > _LONGEST // 2 else repr(text[:_LONGEST] + "...")
    return text


def _number(text: str, units: str):
    """(sign, Decimal magnitude, unit) of "1.5k", "-3", "44.5 GiB"; None when it is not that."""
    s = text.strip().lower().replace("_", "").replace(",", "")
    if len(s) > _LONGEST:
        return None
    m = re.fullmatch(_NUMBER + r"\s*(" + units + ")", s)
    if not m:
        return None
    return m.group(1), Decimal(m.group(2)), m.group(3)


def parse_tokens(text: str | int, what: str = "{ctx}") -> int:
    """'32k' -> 32768, '4096' -> 4096, '1.5k' -> 1536. Rejects zero, negatives, junk and counts
    beyond any real workload (MAX_TOKENS; MAX_BATCH for {batch} and {max_num_seqs}); `what` names
    the parameter in the message (a BadInput placeholder such as "{batch}")."""
    limit = _LIMIT_OF.get(what, MAX_TOKENS)
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        parsed = _number(str(text), "[km]?") if isinstance(text, (str, int, float)) else None
        if parsed is None:
            if isinstance(text, str) and len(text.strip()) > _LONGEST and text.strip()[:1].isdigit():
                raise BadInput(f"{what} ({shown(text.strip())}) is beyond any real workload (limit "
                               f"{limit:,}); check the number.")
            raise BadInput(
                f"{what} {shown(text)} is not a token count. Write a whole number such as 4096 or a "
                f"power-of-two shorthand such as 32k (= 32,768) or 1m (= 1,048,576)."
            )
        sign, magnitude, suffix = parsed
        exact = magnitude * _TOKEN_SUFFIX[suffix]
        if exact != exact.to_integral_value():
            raise BadInput(f"{what} {shown(text)} is not a whole number of tokens ({exact.normalize():f}).")
        value = -int(exact) if sign == "-" else int(exact)
    if value <= 0:
        raise BadInput(f"{what} must be at least 1, got {shown(value)}.")
    if value > limit:
        number = f"{value:,}" if value < 10**20 else f"({shown(value)})"
        raise BadInput(f"{what} {number} is beyond any real workload (limit {limit:,}); check the number.")
    return value


def parse_bytes(text: str | int, what: str = "{gpu_mem}") -> int:
    """'48GB' -> 48e9, '44.5GiB' -> 47781511168. A bare number is refused: say GB or GiB. At most
    MAX_GPU_BYTES (4 TiB): a larger size is a unit slip."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        parsed = _number(str(text), "[a-z]*") if isinstance(text, str) else None
        if parsed is None and isinstance(text, str) and len(text.strip()) > _LONGEST and text.strip()[:1].isdigit():
            raise BadInput(f"{what} ({shown(text.strip())}) is more than any GPU holds (at most 4 TiB "
                           f"per GPU here; the largest cards have 288 GB); check the number.")
        if parsed is None or parsed[2] not in _BYTE_UNITS:
            raise BadInput(
                f"{what} {shown(text)} is not a memory size. Write it with a unit, e.g. 48GB "
                f"(decimal, as vendors label cards) or 44.5GiB (binary, as PyTorch reports)."
            )
        sign, magnitude, unit = parsed
        value = int(magnitude * _BYTE_UNITS[unit]) * (-1 if sign == "-" else 1)
    if value <= 0:
        raise BadInput(f"{what} must be a positive size, got {shown(text)}.")
    if value > MAX_GPU_BYTES:
        raise BadInput(f"{what} {shown(text)} is more than any GPU holds (at most 4 TiB per GPU "
                       f"here; the largest cards have 288 GB); check the unit.")
    return value


def whole(value, what: str, low: int, high: int) -> int:
    """A whole number in [low, high] for a count such as {tp} or {lora_r}: an int, or a string of
    digits ("2"); 2.0 is accepted, 2.5, True, None and nan are not."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadInput(f"{what} must be a whole number, got {shown(value)}.")
    if isinstance(value, str):
        text = value.strip()
        if len(text) > _LONGEST or not re.fullmatch(r"[+-]?\d+", text):
            if len(text) > _LONGEST and text.lstrip("+-").isdigit():
                raise BadInput(f"{what} must be between {low} and {high:,}, got {shown(text)}.")
            raise BadInput(f"{what} must be a whole number, got {shown(value)}.")
        value = int(text)
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")) or value != int(value):
            raise BadInput(f"{what} must be a whole number, got {shown(value)}.")
        value = int(value)
    if not low <= value <= high:
        raise BadInput(f"{what} must be between {low} and {high:,}, got {shown(value)}.")
    return value


def real(value, what: str, within, described: str) -> float:
    """A finite float that `within` accepts (never a bool, None, nan or inf); else BadInput
    '{what} must be {described}'."""
    x = None
    if not isinstance(value, bool) and isinstance(value, (int, float, str)):
        try:
            x = float(value)
        except (ValueError, OverflowError):
            x = None
    if x is None or x != x or x in (float("inf"), float("-inf")) or not within(x):
        raise BadInput(f"{what} must be {described}, got {shown(value)}.")
    return x


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
