"""A model as the user names it (Hub id, bundled id, directory, config.json, or a config dict)
-> its config, the config's hash and the parsed ModelSpec. The one loader the API, the trace
tier and verify share."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace

from vramplan import models, sources
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
    """A Hub id, a bundled id, a local directory or config.json path -> ModelSpec."""
    if isinstance(model, ModelSpec):
        return model
    return load(model).spec
