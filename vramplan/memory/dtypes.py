"""Names of precisions the user may ask for, and bytes per element of the plain ones."""

from __future__ import annotations

from vramplan.errors import BadInput

FLOAT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1}

_ALIASES = {
    "float32": "fp32", "float": "fp32", "f32": "fp32",
    "bfloat16": "bf16", "float16": "fp16", "half": "fp16", "f16": "fp16",
    "fp8_e4m3": "fp8", "fp8_e5m2": "fp8", "e4m3": "fp8", "float8": "fp8",
    "bnb4": "nf4", "4bit": "nf4", "bnb8": "int8", "8bit": "int8", "llm.int8": "int8",
}

# --dtype: how weights are stored. int4 is GPTQ-style (group 128, fp16 scales, packed zeros).
WEIGHT_FORMATS = ("auto", "fp32", "bf16", "fp16", "fp8", "int8", "int4", "gptq", "awq", "nf4", "fp4", "mxfp4")
KV_FORMATS = ("auto", "fp32", "bf16", "fp16", "fp8", "int8")


def normalize(name: str, allowed: tuple[str, ...], flag: str) -> str:
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in allowed:
        raise BadInput(f"{flag} {name!r} is not one of: {', '.join(allowed)}.")
    return key


def config_dtype(value: object) -> str | None:
    """Map a config's torch_dtype/dtype string ("bfloat16") to our short name, or None."""
    if not isinstance(value, str):
        return None
    key = value.strip().lower().removeprefix("torch.")
    key = _ALIASES.get(key, key)
    return key if key in ("fp32", "bf16", "fp16") else None
