"""A model as the user names it (Hub id, bundled id, directory, config.json, or a config dict)
-> its config, the config's hash and the parsed ModelSpec. The one loader the API, the trace
tier and verify share."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace

from pathlib import Path

from vramplan import derive, models, sources
from vramplan.errors import BadConfig, BadInput, EnvironmentProblem, VramplanError
from vramplan.models import checkpoint as checkpoint_model
from vramplan.models.gguf import parse_header
from vramplan.sources import gguf as gguf_source
from vramplan.sources import safetensors as safetensors_source
from vramplan.spec import ModelSpec
from vramplan.spec.model import ContextLimit

# The config keys vLLM reads a model's length from, in its order; the smallest wins (vllm/config/
# model.py, _get_and_verify_max_len, v0.11.0 lines 1774-1791), then model_max_length overrides.
_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "model_max_length",
                "max_target_positions", "max_sequence_length", "max_seq_length", "seq_len")
# RoPE types whose configured length already includes the scaling (ibid. lines 1845-1863).
_PRESCALED_ROPE = ("su", "longrope", "llama3")
# Configs vLLM reads with its own class, which has no length key, so any --max-model-len is
# accepted: Falcon's RefinedWeb (vllm/transformers_utils/configs/falcon.py, RWConfig; config.py
# _CONFIG_REGISTRY, v0.11.0 lines 73-74).
_NO_LENGTH = ("RefinedWeb", "RefinedWebModel")


@dataclass(frozen=True)
class Loaded:
    config: dict
    sha256: str        # of the config's bytes (of its canonical JSON for a dict): the cache key
    spec: ModelSpec


WEIGHTS_FROM = ("auto", "config", "checkpoint")
# Which reader turns a config into layers (--layers-from): "analytic" the family modules and the
# generic reader of models/ (no torch); "transformers" the model transformers builds from the config
# (vramplan/derive/); "auto" the family module where one reads this model_type, else transformers
# when torch and transformers are installed, else the analytic reader.
LAYERS_FROM = ("auto", "analytic", "transformers")


def parse(config: dict, model_id: str, source: str, layers_from: str = "auto") -> ModelSpec:
    """config.json -> ModelSpec by the reader `layers_from` selects (LAYERS_FROM). auto: a family
    module's reading stands; the generic reader's stands when it is exact (a verified layout);
    otherwise (approximate, or refused) the layers derived from transformers answer when it is
    installed and builds the config, else the generic reading or its refusal."""
    if layers_from not in LAYERS_FROM:
        raise BadInput(f"{{layers_from}} {layers_from!r} is not one of: {', '.join(LAYERS_FROM)}.")
    if layers_from == "transformers":
        return derive.spec(config, model_id, source)
    if layers_from == "analytic" or not derive_answers(config):
        return models.parse(config, model_id=model_id, source=source)
    try:
        analytic, refused = models.parse(config, model_id=model_id, source=source), None
    except BadConfig as e:
        analytic, refused = None, e
    if analytic is not None and analytic.confidence == "exact":
        return analytic
    try:
        return derive.spec(config, model_id, source)
    except (BadInput, BadConfig):
        if refused is not None:
            raise refused from None     # transformers cannot build it either: the reader's sentence
        return analytic


def derive_answers(config) -> bool:
    """--layers-from auto may ask transformers: no family module reads this model_type, the
    installed transformers may know it, and torch and transformers are installed (all checked
    without importing them)."""
    model_type = config.get("model_type") if isinstance(config, dict) else None
    return (isinstance(model_type, str) and model_type not in models.REGISTRY and derive.may_know(model_type)
            and derive.available())


def load(model: str | dict | ModelSpec, weights_from: str = "config", layers_from: str = "auto") -> Loaded:
    """Read and parse; a ModelSpec is re-read from where it was loaded (its config is needed).
    `weights_from` (with_weights): "config", "checkpoint", or "auto" (the checkpoint when one is
    at hand). `layers_from` (parse): "auto", "analytic" or "transformers"."""
    if isinstance(model, dict):
        if weights_from == "checkpoint":
            raise BadInput("{weights_from} checkpoint needs a model directory or a Hub id; a config given "
                           "as a dict has no checkpoint.")
        blob = json.dumps(model, sort_keys=True).encode()
        spec = parse(model, str(model.get("_name_or_path", "config")), "dict", layers_from)
        spec = replace(spec, context_limit=context_limit(model, spec))
        return Loaded(model, hashlib.sha256(blob).hexdigest(), spec)
    name = model.id if isinstance(model, ModelSpec) else str(model)
    if isinstance(model, ModelSpec) and model.location:
        name = model.location if not model.location.startswith("http") else name
    loaded = sources.load_config(name)
    spec = parse(loaded.config, loaded.id, loaded.source, layers_from)
    spec = replace(spec, location=loaded.location, config_sha256=loaded.sha256,
                   context_limit=context_limit(loaded.config, spec))
    return Loaded(loaded.config, loaded.sha256, with_weights(spec, loaded, weights_from))


def load_model(model: str | ModelSpec, weights_from: str = "config", layers_from: str = "auto") -> ModelSpec:
    """A Hub id, a bundled id, a local directory or config.json path -> ModelSpec; a GGUF file
    (or a directory or Hub repo of them) is read by its header (load_gguf), which is its own
    checkpoint."""
    if isinstance(model, ModelSpec):
        return model
    if is_gguf(model):
        return load_gguf(model)
    return load(model, weights_from, layers_from).spec


def with_weights(spec: ModelSpec, loaded, weights_from: str) -> ModelSpec:
    """`spec` with its weights read from the safetensors checkpoint when `weights_from` asks for it
    (docs/model-sources.md, "Weights from the checkpoint").

    auto: a local directory's safetensors files, a complete checkpoint in the HF cache beside the
    cached config, or the Hub's metadata when the config itself came from the Hub; else the
    config (a bundled config plans offline). checkpoint: the same, and the Hub for a bundled or
    partly cached id; none to be had is BadInput (exit 2) for a local directory and
    EnvironmentProblem (exit 3) when the Hub cannot be asked."""
    if weights_from not in WEIGHTS_FROM:
        raise BadInput(f"{{weights_from}} {weights_from!r} is not one of: {', '.join(WEIGHTS_FROM)}.")
    if weights_from == "config":
        return spec
    strict = weights_from == "checkpoint"
    where = Path(loaded.location).parent if loaded.source in ("path", "hf-cache") else None
    try:
        if where is not None:
            try:
                ckpt = safetensors_source.read_local(where)
            except (safetensors_source.NoCheckpoint, VramplanError):
                if loaded.source == "path" or not strict:
                    raise
                ckpt = safetensors_source.read_hub(loaded.id)      # a config cached without its weights
        elif loaded.source == "hub" or (strict and loaded.source == "bundled"):
            ckpt = safetensors_source.read_hub(loaded.id)
        else:
            raise safetensors_source.NoCheckpoint(f"a {loaded.source} config has no checkpoint beside it")
    except safetensors_source.NoCheckpoint as e:
        if strict:
            raise BadInput(f"{{weights_from}} checkpoint: {e}, so there are no weights to read. Pass the "
                           f"directory that holds the model's *.safetensors files, or use {{weights_from}} "
                           f"config.") from None
        return spec
    except VramplanError as e:
        # auto: a checkpoint that cannot be had (offline, the Hub unreachable, a partial HF cache)
        # leaves the config's reading; the user's own broken files are refused either way.
        if strict or loaded.source == "path" or not isinstance(e, (EnvironmentProblem, BadInput)):
            raise
        return replace(spec, weights_notes=spec.weights_notes + (
            f"the checkpoint could not be read, so the config's figures are used: {str(e).split('. ')[0]}",))
    return checkpoint_model.apply(spec, ckpt)


def is_gguf(model: str) -> bool:
    """A local .gguf file or a directory of them, or a Hub GGUF repo ("org/X-GGUF", "org/X:Q4_K_M").
    A config dict is never one."""
    if not isinstance(model, str):
        return False
    return gguf_source.is_gguf_path(model) or gguf_source.is_hub_gguf(model)


def load_gguf(model: str) -> ModelSpec:
    """The header of a GGUF model (never its tensor data) -> ModelSpec with every tensor's type."""
    local = gguf_source.is_gguf_path(model)
    h = gguf_source.read_local(model) if local else gguf_source.read_hub(model)
    return replace(parse_header(h.metadata, h.tensors, path=h.path, files=h.files, size_bytes=h.size_bytes,
                                model_id=model), source="path" if local else "hub")


def context_limit(config: dict, spec: ModelSpec) -> ContextLimit:
    """The longest context vLLM accepts for this config without VLLM_ALLOW_LONG_MAX_MODEL_LEN, derived
    as vLLM 0.11 derives it (vllm/config/model.py, _get_and_verify_max_len, lines 1763-1912): the
    smallest length key of the text config, model_max_length if set, times the RoPE factor unless
    the RoPE type is already scaled (llama3, longrope, su) or the model is Gemma 3, from
    original_max_position_embeddings for YaRN. No length key at all: tokens None (vLLM then
    accepts any --max-model-len it is given). vLLM also reads a tokenizer_config.json's model_max_length; we
    read no tokenizer files (docs/validation.md)."""
    unlimited = ContextLimit(tokens=None, key="", shown="")
    if config.get("model_type") in _NO_LENGTH:
        return unlimited
    text = config.get("text_config")
    text = text if isinstance(text, dict) else config
    derived, key = None, ""
    for k in _LENGTH_KEYS:
        v = _positive(text.get(k))
        if v is not None and (derived is None or v < derived):
            derived, key = v, k
    longest = _positive(text.get("model_max_length"))
    if longest is not None:
        derived, key = longest, "model_max_length"
    if derived is None:
        if spec.max_position_embeddings is None:
            return unlimited
        derived, key = spec.max_position_embeddings, "max_position_embeddings"   # a family default
    rope = text.get("rope_scaling")
    if isinstance(rope, dict) and "gemma3" not in str(config.get("model_type", "")):
        kind = rope.get("rope_type", rope.get("type"))
        if kind not in _PRESCALED_ROPE:
            if kind == "yarn" and _positive(rope.get("original_max_position_embeddings")) is not None:
                derived = rope["original_max_position_embeddings"]
            derived = derived * (_positive(rope.get("factor")) or 1.0)
    tokens = int(derived)
    mml = int(longest) if longest is not None else None
    return ContextLimit(tokens=max(tokens, mml or 0), key=key, shown=str(derived), model_max_length=mml)


def _positive(value) -> int | float | None:
    """A positive finite number from a config, else None (a junk value is not a length)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if 0 < value < float("inf") else None
