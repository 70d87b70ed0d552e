"""Ollama model names ("llama3.1:8b", "qwen3:32b-q4_K_M") -> the bundled HF config of the same
architecture and the GGUF mix the tag holds (configs/ollama.toml, with the source of each)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from vramplan import catalog
from vramplan.errors import ModelNotFound

# an Ollama tag's explicit quantization suffix: "8b-instruct-q8_0", "32b-q4_K_M", "70b-fp16"
_MIX = re.compile(r"-(q\d(?:_[a-z0-9]+)*|iq\d_[a-z0-9_]+|fp16|bf16|f16)$", re.IGNORECASE)
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*(:[A-Za-z0-9._-]+)?$")


@dataclass(frozen=True)
class OllamaModel:
    name: str        # as given
    hf: str          # bundled HF config with the architecture's shapes
    mix: str         # llama.cpp file type: "Q4_K_M"
    source: str


@cache
def table() -> dict[str, dict]:
    raw = catalog._read_toml("ollama.toml")["models"]
    out = {}
    for key, entry in raw.items():
        for name in (key, *entry.get("aliases", ())):
            out[name] = entry
    return out


def is_ollama_name(text: str) -> bool:
    """A name Ollama's library uses ("llama3.1:8b"), not a path or Hub id."""
    if "/" in text or not NAME.match(text):
        return False
    return _lookup(text) is not None


def _lookup(text: str) -> tuple[dict, str | None] | None:
    base, _, tag = text.partition(":")
    mix = None
    m = _MIX.search(tag)
    if m:
        mix, tag = m[1], tag[:m.start()]
        tag = re.sub(r"-(instruct|chat|text|it)$", "", tag)
    t = table()
    for key in (f"{base}:{tag}" if tag else base, base if tag in ("", "latest") else None):
        if key and key in t:
            return t[key], mix
    return None


def resolve(text: str) -> OllamaModel:
    found = _lookup(text)
    if found is None:
        known = ", ".join(sorted(k for k in table() if ":" not in k))
        raise ModelNotFound(f"'{text}' is not an Ollama model vramplan knows; known: {known}.")
    entry, mix = found
    mix = {"fp16": "F16", "f16": "F16", "bf16": "BF16"}.get((mix or "").lower(), (mix or entry["mix"]).upper())
    return OllamaModel(text, entry["hf"], mix, entry["source"])
