"""Parse config.json text as data.

A config is only ever parsed, never executed: `auto_map` / `trust_remote_code` entries are plain
strings to us. Python's json module also accepts the non-strict constants `Infinity`,
`-Infinity` and `NaN` that some Hub configs hold (Nemotron-H writes a bare `Infinity`), so they
load as floats instead of failing; the model readers refuse them wherever a size is read.

What JSON allows but no config holds is refused here, each with its reason (docs/validation.md,
"Model configs"): integers of more than 4,300 digits (Python's own limit for turning digits into
an int, sys.get_int_max_str_digits), nesting deeper than MAX_DEPTH, and strings holding a lone
UTF-16 surrogate ("\\ud800"), which are not text and could not be printed in a message.
"""

from __future__ import annotations

import json
import sys

from vramplan.errors import BadConfig
from vramplan.units import printable

# Hub configs nest four levels at most (quantization_config.config_groups.group_0.weights); 64 is
# far beyond any, and far below the depth at which recursive code (the json module, repr) fails.
MAX_DEPTH = 64
# Python refuses to convert more digits than this to an int (3.11+; 0 means no limit).
MAX_DIGITS = getattr(sys, "get_int_max_str_digits", lambda: 4300)() or 4300


class _TooManyDigits(Exception):
    def __init__(self, digits: int):
        super().__init__(digits)
        self.digits = digits


def _parse_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_DIGITS:
        raise _TooManyDigits(digits)
    return int(text)


def parse_config(raw: bytes, where: str) -> dict:
    """Return the JSON object in `raw`; `where` names the file in error messages."""
    try:
        text = raw.decode("utf-8-sig")  # -sig: tolerate a byte-order mark some editors write
    except UnicodeDecodeError:
        raise BadConfig(
            f"{where} is not UTF-8 text, so it cannot be a config.json. "
            "Pass the model's config.json (not a weights or tokenizer file)."
        ) from None
    try:
        data = json.loads(text, parse_int=_parse_int)
    except json.JSONDecodeError as e:
        raise BadConfig(
            f"{where} is not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}. "
            "Fix the file or download the model's config.json again."
        ) from None
    except _TooManyDigits as e:
        raise BadConfig(
            f"{where} holds an integer of {e.digits:,} digits; vramplan refuses numbers of more than "
            f"{MAX_DIGITS:,} digits (Python's own limit), far beyond any model setting."
        ) from None
    except RecursionError:
        raise BadConfig(f"{where} nests objects or lists too deeply to be a config.json "
                        f"(vramplan refuses more than {MAX_DEPTH} levels).") from None
    if not isinstance(data, dict):
        raise BadConfig(
            f"{where} holds a JSON {type(data).__name__} at the top level, not an object. "
            "A config.json is one JSON object ({...}) of model settings."
        )
    check_data(data, where)
    return data


def check_data(data: dict, where: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH and strings with lone surrogates, naming the key.
    Iterative, so that a deep file cannot exhaust the stack here."""
    stack: list[tuple[object, str, int]] = [(data, "", 1)]
    while stack:
        node, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            top = path.split(".", 1)[0].split("[", 1)[0]
            raise BadConfig(f"{where} nests objects or lists more than {MAX_DEPTH} levels deep (under "
                            f"'{printable(top)}'); a config.json nests a few.")
        in_dict = isinstance(node, dict)
        for k, v in (node.items() if in_dict else enumerate(node)):
            sub = (f"{path}.{k}" if path else k) if in_dict else f"{path}[{k}]"
            if (in_dict and not _is_text(k)) or (isinstance(v, str) and not _is_text(v)):
                clean = sub.encode("utf-8", "backslashreplace").decode("ascii", "replace")
                raise BadConfig(f"'{printable(clean)}' in {where} holds a lone UTF-16 surrogate (an escape "
                                f"like \\ud800 without its pair), which is not text; fix the file.")
            if isinstance(v, (dict, list)):
                stack.append((v, sub, depth + 1))


def _is_text(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


