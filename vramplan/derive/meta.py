"""The config's own transformers class on the meta device, and every parameter tensor it holds.

Heavy: imports torch and transformers at load, so only `derive/__init__.py` (inside a function),
the trace tier and the oracle (benchmarks/coverage.py) import it. A config.json is data: it is
turned into its config class with `AutoConfig.for_model` (never `trust_remote_code`), and the
model class is the one transformers maps that config to (causal LM, else image-text-to-text).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import torch
from torch import nn

from vramplan.errors import BadConfig, BadInput, VramplanError
from vramplan.trace.build import refusal     # transformers' refusal as one sentence, as the trace tier words it

TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.float64: "fp64",
               torch.int8: "int8", torch.uint8: "uint8", torch.int32: "int32", torch.int64: "int64",
               torch.bool: "bool"}

# The original custom-code Falcon releases, which transformers' own Falcon class reads:
# RefinedWeb (40B/180B) is the new decoder architecture, RefinedWebModel (7B) the old one.
_FALCON_KEYS = {"n_layer": "num_hidden_layers", "n_head": "num_attention_heads",
                "n_head_kv": "num_kv_heads", "n_embed": "hidden_size"}
# Keys that are instructions to a loader, not facts about the architecture: quantization is laid
# out by vramplan itself (memory/weights.py), and auto_map names remote code we never run.
_LOADER_KEYS = ("quantization_config", "auto_map")


@dataclass(frozen=True)
class Param:
    """One parameter storage: its full name (as `named_parameters` gives it, tied copies once),
    its shape and dtype, and the class of the module that owns it."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    module: str          # the owning module's class name ("Linear", "Qwen3RMSNorm", ...)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def model_type_of(raw: dict) -> str:
    mt = raw.get("model_type")
    return mt if isinstance(mt, str) else ""


def hf_config(raw: dict, model_id: str = "", dtype: str | None = None):
    """The transformers config class for this config.json, as data. `dtype` ("bf16" ...)
    overrides the file's; None keeps it (transformers then defaults to fp32)."""
    from transformers import CONFIG_MAPPING, AutoConfig

    # a deep copy: transformers rewrites nested dicts in place (rope_scaling -> rope_parameters),
    # and the caller's dict is the cache key
    d = copy.deepcopy({k: v for k, v in raw.items() if k not in _LOADER_KEYS})
    model_type = d.pop("model_type", "") or ""
    if model_type in ("RefinedWeb", "RefinedWebModel"):
        d = {_FALCON_KEYS.get(k, k): v for k, v in d.items()}
        d["new_decoder_architecture"] = model_type == "RefinedWeb"
        model_type = "falcon"
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise BadInput(
            f"transformers cannot build {model_id or 'this model'}: model_type {model_type!r} is not part "
            f"of the installed transformers, and vramplan never runs remote code.")
    if dtype is not None:
        d["dtype"] = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[dtype]
        d.pop("torch_dtype", None)
    return AutoConfig.for_model(model_type, **d)


def model_classes(config) -> list:
    """The classes transformers maps this config to: its causal LM, then its image-text-to-text
    model (the vision-language families)."""
    from transformers.models.auto import modeling_auto as auto

    out = []
    for mapping in (auto.MODEL_FOR_CAUSAL_LM_MAPPING, auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING):
        try:
            cls = mapping[type(config)]
        except KeyError:
            continue
        if cls not in out:
            out.append(cls)
    return out


# transformers 5 dropped the token ids from the base config class; a few model classes still read
# one in __init__ (Llama4ForConditionalGeneration: config.pad_token_id). An id is no shape: such a
# missing attribute is set to None and the build tried again.
_TOKEN_ID = re.compile(r"object has no attribute '(\w+_token_id)'")


def meta_model(config, dtype: str | None = None, attn: str = "sdpa") -> nn.Module:
    """The model on the meta device (shapes only, no memory). `dtype` None: the config's."""
    for _ in range(4):
        try:
            return _meta_model(config, dtype, attn)
        except AttributeError as e:
            m = _TOKEN_ID.search(str(e))
            if m is None:
                raise
            setattr(config, m.group(1), None)
    return _meta_model(config, dtype, attn)


def _meta_model(config, dtype: str | None, attn: str) -> nn.Module:
    """The first class that builds: a composite config whose causal-LM class reads only a text
    config (Qwen3.5's Qwen3_5ForCausalLM on the whole Qwen3_5Config) is built with its
    image-text-to-text class instead."""
    classes = model_classes(config)
    if not classes:
        raise BadInput(f"transformers has no causal-LM or image-text-to-text class for model_type "
                       f"{config.model_type!r}.")
    for i, cls in enumerate(classes):
        try:
            return _build(cls, config, dtype, attn)
        except AttributeError as e:
            if _TOKEN_ID.search(str(e)) or i == len(classes) - 1:
                raise
    raise AssertionError("unreachable")


def _build(cls, config, dtype: str | None, attn: str) -> nn.Module:
    kwargs = {"attn_implementation": attn}
    if dtype is not None:
        kwargs["dtype"] = TORCH_DTYPES[dtype]
    elif getattr(config, "dtype", None) is not None:
        kwargs["dtype"] = config.dtype
    with torch.device("meta"):
        try:
            model = cls._from_config(config, **kwargs)
        except ValueError as e:     # no SDPA path for this architecture (e.g. gpt-oss sinks)
            if attn != "sdpa" or "scaled_dot_product_attention" not in str(e):
                raise
            kwargs["attn_implementation"] = "eager"
            model = cls._from_config(config, **kwargs)
    model.eval()
    return model


def build(raw: dict, model_id: str = "", dtype: str | None = None, attn: str = "sdpa"):
    """(config, meta model); whatever transformers raises about this config becomes one BadConfig
    sentence (`refusal`), never a traceback."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        config = hf_config(raw, model_id, dtype)
        return config, meta_model(config, dtype, attn)
    except (VramplanError, ImportError, MemoryError):
        raise
    except Exception as e:      # noqa: BLE001 - any refusal by transformers' config or model code
        raise refusal(e, model_id) from e
    finally:
        hf_logging.set_verbosity(level)


def parameters(model: nn.Module) -> list[Param]:
    """Every parameter storage once, in module order: a tied lm_head (the same Parameter as the
    embedding) is listed under the first name that reaches it, as `model.parameters()` counts it."""
    owner = {}
    for mname, module in model.named_modules():
        for pname, p in module._parameters.items():
            if p is not None and id(p) not in owner:
                owner[id(p)] = (f"{mname}.{pname}" if mname else pname, type(module).__name__)
    out, seen = [], set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        name, cls = owner[id(p)]
        out.append(Param(name=name, shape=tuple(int(d) for d in p.shape),
                         dtype=DTYPE_NAMES.get(p.dtype, str(p.dtype).removeprefix("torch.")), module=cls))
    return out


def count_parameters(model: nn.Module) -> int:
    """Unique parameters (tied once), as `sum(p.numel() for p in model.parameters())`."""
    return sum(p.numel() for p in model.parameters())


def tied_names(model: nn.Module) -> list[str]:
    """Parameter names that share a storage with an earlier one (a tied lm_head)."""
    seen, out = set(), []
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            out.append(name)
        seen.add(id(p))
    return out


def decoder_layers_prefix(model: nn.Module, config) -> str:
    """The module path of the language model's decoder layers ("model.layers",
    "model.language_model.layers", "transformer.h", "backbone.layers" ...): the longest
    ModuleList whose length is the text config's layer count, outside any vision/audio tower."""
    text = config.get_text_config(decoder=True)
    try:
        n = getattr(text, "num_hidden_layers", None)
    except Exception:       # noqa: BLE001 - a config that refuses a global value
        n = None
    best = ""
    best_len = -1
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or not name:
            continue
        if _tower(name):
            continue
        if n is not None and len(module) != n:
            continue
        if len(module) > best_len or (len(module) == best_len and len(name) < len(best)):
            best, best_len = name, len(module)
    return best


_TOWER_WORDS = ("vision", "visual", "audio", "image", "speech", "encoder", "mm_projector", "multi_modal")


def _tower(name: str) -> bool:
    low = name.lower()
    return any(w in low for w in _TOWER_WORDS)


def library_versions() -> dict[str, str]:
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}
