"""Parse config.json text as data.

A config is only ever parsed, never executed: `auto_map` / `trust_remote_code` entries are plain
strings to us. Python's json module also accepts the non-strict constants `Infinity`,
`-Infinity` and `NaN` that some Hub configs hold (Nemotron-H writes a bare `Infinity`), so they
load as floats instead of failing.
"""

from __future__ import annotations

import json

from vramplan.errors import BadConfig


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
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadConfig(
            f"{where} is not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}. "
            "Fix the file or download the model's config.json again."
        ) from None
    if not isinstance(data, dict):
        raise BadConfig(
            f"{where} holds a JSON {type(data).__name__} at the top level, not an object. "
            "A config.json is one JSON object ({...}) of model settings."
        )
    return data
