"""A model as the user names it (Hub id, bundled id, directory, config.json, or a config dict)
-> its config, the config's hash and the parsed ModelSpec. The one loader the API, the trace
tier and verify share."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace

from vramplan import models, sources
from vramplan.models.gguf import parse_header
from vramplan.sources import gguf as gguf_source
from vramplan.spec import ModelSpec


@dataclass(frozen=True)
class Loaded:
    config: dict
    sha256: str        # of the config's bytes (of its canonical JSON for a dict): the cache key
    spec: ModelSpec


def load(model: str | dict | ModelSpec) -> Loaded:
    """Read and parse; a ModelSpec is re-read from where it was loaded (its config is needed)."""
    if isinstance(model, dict):
        blob = json.dumps(model, sort_keys=True).encode()
        spec = models.parse(model, model_id=str(model.get("_name_or_path", "config")), source="dict")
        return Loaded(model, hashlib.sha256(blob).hexdigest(), spec)
    name = model.id if isinstance(model, ModelSpec) else str(model)
    if isinstance(model, ModelSpec) and model.location:
        name = model.location if not model.location.startswith("http") else name
    loaded = sources.load_config(name)
    spec = models.parse(loaded.config, model_id=loaded.id, source=loaded.source)
    spec = replace(spec, location=loaded.location, config_sha256=loaded.sha256)
    return Loaded(loaded.config, loaded.sha256, spec)


def load_model(model: str | ModelSpec) -> ModelSpec:
    """A Hub id, a bundled id, a local directory or config.json path -> ModelSpec; a GGUF file
    (or a directory or Hub repo of them) is read by its header (load_gguf)."""
    if isinstance(model, ModelSpec):
        return model
    if is_gguf(model):
        return load_gguf(model)
    return load(model).spec


def is_gguf(model: str) -> bool:
    """A local .gguf file or a directory of them, or a Hub GGUF repo ("org/X-GGUF", "org/X:Q4_K_M")."""
    return gguf_source.is_gguf_path(model) or gguf_source.is_hub_gguf(model)


def load_gguf(model: str) -> ModelSpec:
    """The header of a GGUF model (never its tensor data) -> ModelSpec with every tensor's type."""
    local = gguf_source.is_gguf_path(model)
    h = gguf_source.read_local(model) if local else gguf_source.read_hub(model)
    return replace(parse_header(h.metadata, h.tensors, path=h.path, files=h.files, size_bytes=h.size_bytes,
                                model_id=model), source="path" if local else "hub")
