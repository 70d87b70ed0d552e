"""config.json -> ModelSpec, one small module per architecture family.

    from vramplan.models import parse
    spec = parse(config_dict, model_id="meta-llama/Llama-3.1-8B", source="bundled")

Each family module registers the model_type values it reads (`REGISTRY`); an unknown model_type
is read by the generic reader (models/generic.py): exact for the layouts it has verified against
transformers, labelled `approximate` with its assumptions otherwise, a BadConfig naming the keys it
lacks or saying what it cannot size. Parameter counts match transformers' `from_config` models exactly (see
docs/families.md for every formula and its source file). Nothing heavy is imported.

Every fact about an architecture lives in its module, so adding one is a new module here plus
its import line below. The module registers its model_types (`@register`), lists its tensors with
`Tensors` (each tensor's tensor-parallel `split` defaults by role and by the names families share,
`_base.default_split`; it passes `split=` for its own, e.g. a fused QKV), and hands `make_spec`
its `Traits`: `replace(GENERIC_TRAITS, ...)` with what its implementations do differently
(peft's default LoRA targets, fp32 norms, an attention transformers runs instead of SDPA ...),
citing the source of each. memory/ and engines/ read these typed facts and never look a model
type or module name up.
"""

from __future__ import annotations

from dataclasses import replace

from vramplan.errors import BadConfig
from vramplan.spec import ModelSpec
from vramplan.models._base import REGISTRY, Cfg, _clip, show
from vramplan.models import (deepseek, falcon, gemma2, gemma3, gpt2, gpt_oss, llama, mistral, mixtral,  # noqa: F401
               nemotron_h, phi3, qwen2, qwen3, qwen3_moe)
from vramplan.models.generic import parse_generic

__all__ = ["parse", "REGISTRY", "known_model_types"]


def known_model_types() -> tuple[str, ...]:
    return tuple(sorted(REGISTRY))


def parse(config: dict, model_id: str = "", source: str = "") -> ModelSpec:
    """Turn a Hugging Face config.json (already parsed to a dict) into a per-layer ModelSpec."""
    who = _clip(model_id) or "this model"
    if not isinstance(config, dict):
        raise BadConfig(f"config.json of {who} is not a JSON object.")
    model_type = config.get("model_type")
    if model_type is not None and not isinstance(model_type, str):
        raise BadConfig(f"model_type in config.json of {who} must be a string, got {show(model_type)}.")
    model_type = model_type or ""
    cfg = Cfg(config, model_id, model_type)
    fn = REGISTRY.get(model_type)
    if fn is None:
        # No family module: the generic reader (models/generic.py) reads it from transformers'
        # config conventions, exact for the layouts it has verified, else labelled approximate.
        spec = parse_generic(cfg)
    else:
        spec = fn(cfg)
    if source:
        spec = replace(spec, source=source)
    return spec
