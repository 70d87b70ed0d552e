"""Shared pieces of every family parser: reading config keys, naming tensors, assembling a ModelSpec.

Nothing here imports torch or transformers: a config.json is parsed as plain data.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Callable

from vramplan.errors import BadConfig
from vramplan.units import printable
from vramplan.models.bounds import PARAMS, bound_of, describe
from vramplan.spec import (Attention, LayerSpec, ModelSpec, PerHead, Quantization, Role, Split, Tensor, Traits,
                           VisionTower)

_MISSING = object()

# model_type -> parser(Cfg) -> ModelSpec. Filled by @register in the family modules.
REGISTRY: dict[str, Callable[["Cfg"], ModelSpec]] = {}


def register(*model_types: str):
    def deco(fn):
        for mt in model_types:
            REGISTRY[mt] = fn
        return fn
    return deco


def show(v: Any) -> str:
    """A config value as a message quotes it: short, and safe for anything JSON can hold (a
    5,000-digit integer, which str() refuses; NaN; a string of a million characters; a list
    nested ten thousand deep, which repr() cannot print)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        if v.bit_length() > 64:
            digits = int(v.bit_length() * 0.30103) + 1
            return f"{'a negative' if v < 0 else 'a'} number of about {digits:,} digits"
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "Infinity" if v > 0 else "-Infinity"
        return repr(v)
    if isinstance(v, str):
        return repr(v) if len(v) <= 40 else repr(v[:40]) + f"... ({len(v):,} characters)"
    if isinstance(v, list):
        if len(v) <= 4 and all(x is None or isinstance(x, (bool, int, float, str)) for x in v):
            return "[" + ", ".join(show(x) for x in v) + "]"
        return f"a list of {len(v):,} item{'s' if len(v) != 1 else ''}"
    if isinstance(v, dict):
        return f"an object with {len(v):,} key{'s' if len(v) != 1 else ''}"
    return f"a {type(v).__name__}"


class Cfg:
    """A config dict with helpers that raise BadConfig naming the key and the model.

    `path` says where in the file the dict sits ("" for the top level, "text_config" for a nested
    one) so error messages point at the right place. Every integer is checked against its bound
    (models/bounds.py) as it is read, so every family refuses an absurd size the same way.
    """

    __slots__ = ("d", "model", "model_type", "path", "root", "warnings", "dtype_assumed")

    def __init__(self, d: dict, model: str, model_type: str, path: str = "", root: "Cfg | None" = None):
        if not isinstance(d, dict):
            where = f"'{path}' in " if path else ""
            raise BadConfig(f"{where}config.json of {_clip(model) or 'this model'} is not a JSON object.")
        self.d = d
        self.model = model
        self.model_type = model_type
        self.path = path
        self.root = root if root is not None else self
        self.warnings: list[str] = [] if root is None else root.warnings
        self.dtype_assumed = False

    # --- access -----------------------------------------------------------------------------
    def sub(self, key: str, defaults: dict | None = None) -> "Cfg":
        """A nested config (e.g. text_config), with `defaults` filled in under the file's keys."""
        raw = self.d.get(key)
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise BadConfig(f"'{key}' in config.json of {self.who} must be an object, got {show(raw)}.")
        merged = dict(defaults or {})
        merged.update(raw)      # an explicit null overrides a default, as in transformers
        return Cfg(merged, self.model, self.model_type, key, self.root)

    def with_defaults(self, defaults: dict) -> "Cfg":
        """The same config with a family's defaults under the keys the file leaves out."""
        if not defaults:
            return self
        merged = dict(defaults)
        merged.update(self.d)
        c = Cfg(merged, self.model, self.model_type, self.path, self.root)
        if self.root is self:        # keep the top level as the root others report to
            c.root = c
            c.warnings = self.warnings
        return c

    @property
    def who(self) -> str:
        mt = _clip(self.model_type)
        return f"{_clip(self.model)} (model_type '{mt}')" if self.model else f"model_type '{mt}'"

    def _key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def key(self, *names: str) -> str:
        """The key as a message names it: the alias the file uses, under its path ("text_config.x")."""
        return self._key(self._find(names)[0])

    def has(self, *names: str) -> bool:
        return any(self.d.get(n) is not None for n in names)

    def _find(self, names: tuple[str, ...]) -> tuple[str, Any]:
        """The first of `names` the file sets (not null) and its value; (names[0], None) if none."""
        for n in names:
            v = self.d.get(n)
            if v is not None:
                return n, v
        return names[0], None

    def raw(self, *names: str, default: Any = None) -> Any:
        v = self._find(names)[1]
        return default if v is None else v

    def _missing(self, names: tuple[str, ...]) -> BadConfig:
        alts = " or ".join(f"'{self._key(n)}'" for n in names)
        return BadConfig(
            f"config.json of {self.who} has no {alts}, which vramplan needs to size the model. "
            f"Check that the file is a complete Hugging Face config.json."
        )

    def bad(self, name: str, text: str) -> BadConfig:
        """BadConfig "'<key>' in config.json of <model> <text>"."""
        return BadConfig(f"'{self._key(name)}' in config.json of {self.who} {text}")

    def int(self, *names: str, default: Any = _MISSING, positive: bool = True) -> int:
        """An integer (not a float, not a boolean), positive (or >= 0) and within its bound."""
        name, v = self._find(names)
        if v is None:
            if default is _MISSING:
                raise self._missing(names)
            return default
        if isinstance(v, bool) or not isinstance(v, int):
            # transformers 5's strict configs refuse a float here too (32.0 included)
            raise self.bad(name, f"must be an integer, got {show(v)}.")
        if positive and v <= 0:
            raise self.bad(name, f"must be positive, got {show(v)}.")
        if not positive and v < 0:
            raise self.bad(name, f"must not be negative, got {show(v)}.")
        bound = bound_of(name)
        if v > bound.limit:
            raise self.bad(name, f"is {show(v)}; vramplan refuses {describe(bound)}.")
        return v

    def opt_int(self, *names: str) -> int | None:
        return self.int(*names, default=None)

    def int_list(self, name: str, limit: int) -> list[int]:
        """A list of integers in [0, limit) such as layer numbers (absent or null: empty)."""
        v = self.d.get(name)
        if v is None:
            return []
        if not isinstance(v, list) or any(isinstance(x, bool) or not isinstance(x, int) for x in v):
            raise self.bad(name, f"must be a list of layer numbers, got {show(v)}.")
        out = [x for x in v if not 0 <= x < limit]
        if out:
            raise self.bad(name, f"lists layer {show(out[0])}, but the layers are numbered 0 to {limit - 1:,}.")
        return v

    def fraction(self, *names: str, default: float = 1.0) -> float:
        """A number in (0, 1] such as partial_rotary_factor."""
        name, v = self._find(names)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
            raise self.bad(name, f"must be a fraction in (0, 1], got {show(v)}.")
        return float(v)

    def bool(self, *names: str, default: bool = False) -> bool:
        name, v = self._find(names)
        if v is None:
            return default
        if isinstance(v, bool):
            return v
        if isinstance(v, int) and v in (0, 1):
            return bool(v)
        raise self.bad(name, f"must be true or false, got {show(v)}.")

    def str(self, *names: str, default: str | None = None) -> str | None:
        name, v = self._find(names)
        if v is None:
            return default
        if not isinstance(v, str):
            raise self.bad(name, f"must be a string, got {show(v)}.")
        return v

    def prob(self, *names: str, default: float = 0.0) -> float:
        """A probability in [0, 1) such as a dropout rate."""
        name, v = self._find(names)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise self.bad(name, f"must be a probability in [0, 1), got {show(v)}.")
        return float(v)

    def require_all(self, names: tuple[str, ...]) -> None:
        """BadConfig naming every missing key at once."""
        missing = [n for n in names if self.d.get(n) is None]
        if missing:
            keys = ", ".join(f"'{self._key(n)}'" for n in missing)
            raise BadConfig(
                f"config.json of {self.who} lacks {keys}, which vramplan needs to size the model. "
                f"Check that the file is a complete Hugging Face config.json."
            )

    def warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)


def _clip(name) -> str:
    """A model id or model_type as a message prints it (units.printable; a non-string as `show`)."""
    return printable(name if isinstance(name, str) else show(name))


# --- dtypes -------------------------------------------------------------------------------------

_DTYPES = {
    "bfloat16": "bf16", "bf16": "bf16",
    "float16": "fp16", "fp16": "fp16", "half": "fp16",
    "float32": "fp32", "fp32": "fp32", "float": "fp32",
}


def torch_dtype(cfg: Cfg, *nested: Cfg) -> str:
    """The checkpoint's floating dtype from `torch_dtype` (transformers <5) or `dtype` (5.x).

    Absent: transformers instantiates in float32, so we say fp32 and leave a note."""
    value = None
    for c in (cfg, *nested):
        value = c.raw("torch_dtype", "dtype")
        if value is not None:
            break
    if value is None:
        # Not a warning here: it matters only when a plan really uses fp32 (planner.py says so then).
        cfg.root.dtype_assumed = True
        return "fp32"
    key = value.strip().lower().removeprefix("torch.") if isinstance(value, str) else None
    if key not in _DTYPES:
        raise BadConfig(f"'torch_dtype' in config.json of {cfg.who} is {show(value)}, not a dtype vramplan "
                        f"knows (bfloat16, float16, float32).")
    return _DTYPES[key]


# --- tensors ------------------------------------------------------------------------------------

# vLLM's tensor-parallel layer for the module names families share (Tensor.split, read by
# memory/parallel.py): RowParallelLinear for the projections back to the hidden size
# (attention o_proj, MLP down_proj, Mamba / SigLIP out_proj, SigLIP fc2), QKVParallelLinear's K
# and V rows for k_proj / v_proj. A family passes split= for names of its own.
ROW_PARALLEL = frozenset({"o_proj", "out_proj", "down_proj", "fc2"})
KV_PROJECTIONS = frozenset({"k_proj", "v_proj"})
# The same for module names read without a family (a checkpoint's tensors, models/checkpoint.py;
# layers derived from transformers, derive/assemble.py): vLLM's fused QKVParallelLinear, the
# other row-parallel outputs (GPT-2 c_proj, GPT-NeoX dense_4h_to_h, GPT-J fc_out, Mixtral w2,
# T5/BERT wo and dense), Llama-2-style wk/wv, and column-parallel inputs (Mamba in/x/dt_proj,
# Qwen3-Next's in_proj_qkvz/_ba, T5 wi). Anything else is counted whole on every rank by the
# callers (the conservative side); DeepSeek's q_a_proj / kv_a_proj_with_mqa are ReplicatedLinear.
FUSED_QKV_NAMES = frozenset({"qkv_proj", "query_key_value", "c_attn", "Wqkv", "W_pack", "qkv"})
ROW_NAMES = ROW_PARALLEL | frozenset({"w2", "c_proj", "dense_4h_to_h", "fc_out", "wo", "dense", "down"})
KV_NAMES = KV_PROJECTIONS | frozenset({"wk", "wv"})
COLUMN_NAMES = frozenset({"q_proj", "gate_proj", "up_proj", "gate_up_proj", "gate_up", "w1", "w3", "fc1",
                          "fc_in", "c_fc", "dense_h_to_4h", "wq", "in_proj", "query", "key", "value",
                          "q_b_proj", "kv_b_proj", "wi", "wi_0", "wi_1", "x_proj", "dt_proj",
                          "in_proj_qkvz", "in_proj_ba"})
_REPLICATED_ROLES = ("norm", "router", "other", "conv")   # vLLM: RMSNorm / LayerNorm, ReplicatedLinear
                                                           # routers, conv1d weights, bare parameters


def default_split(name: str, role: Role) -> Split:
    """The split of a tensor whose family says nothing: by role, then by the shared names above."""
    if role in _REPLICATED_ROLES:
        return "replicated"
    if role in ("embedding", "lm_head"):
        return "vocab"
    leaf = name.rsplit(".", 1)[-1]
    if leaf in KV_PROJECTIONS:
        return "kv_heads"
    if leaf in ROW_PARALLEL:
        return "row"
    return "column"


class Tensors:
    """Collects Tensor entries with a name prefix: weights without '.weight', biases as '<m>.bias'.
    `split` (how tensor parallelism splits the tensor) defaults to `default_split`; a bias splits
    with its module."""

    __slots__ = ("prefix", "items")

    def __init__(self, prefix: str = ""):
        self.prefix = prefix
        self.items: list[Tensor] = []

    def _name(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def add(self, name: str, shape: tuple[int, ...], role: Role, count: int = 1,
            split: Split | None = None) -> None:
        full = self._name(name)
        split = split or default_split(full, role)
        self.items.append(Tensor(name=full, shape=tuple(shape), role=role, split=split, count=count))

    def linear(self, name: str, out_features: int, in_features: int, bias: bool = False,
               role: Role = "linear", count: int = 1, dtype: str = "", split: Split | None = None) -> None:
        full = self._name(name)
        split = split or default_split(full, role)
        self.items.append(Tensor(name=full, shape=(out_features, in_features), role=role, split=split,
                                 count=count, dtype=dtype))
        if bias:
            # a router's bias is counted split (Split "column"), as vramplan always has
            self.items.append(Tensor(name=full + ".bias", shape=(out_features,), role="bias",
                                     split="column" if role == "router" else split, count=count))

    def norm(self, name: str, dim: int, bias: bool = False, split: Split = "replicated",
             per_head: PerHead = "") -> None:
        """RMSNorm (weight only) or LayerNorm (bias=True: weight and bias). The bias of a LayerNorm
        is counted split (Split "column"), as vramplan always has; vLLM replicates it (a few KB)."""
        full = self._name(name)
        self.items.append(Tensor(name=full, shape=(dim,), role="norm", split=split, per_head=per_head))
        if bias:
            self.items.append(Tensor(name=full + ".bias", shape=(dim,), role="bias", split="column"))

    def param(self, name: str, shape: tuple[int, ...], role: Role = "other", count: int = 1,
              split: Split | None = None) -> None:
        """A bare nn.Parameter (not a module weight): the name is the full parameter path."""
        self.add(name, shape, role, count, split)

    def extend(self, other: "Tensors") -> None:
        self.items.extend(other.items)

    def tuple(self) -> tuple[Tensor, ...]:
        return tuple(self.items)


def embedding_and_head(vocab: int, hidden: int, embed_name: str, norm_name: str | None,
                       tied: bool, norm_bias: bool = False, head_name: str = "lm_head") -> list[Tensor]:
    """Token embedding, final norm and (when untied) the lm_head."""
    t = Tensors()
    t.add(embed_name, (vocab, hidden), "embedding")
    if norm_name:
        t.norm(norm_name, hidden, bias=norm_bias)
    if not tied:
        t.add(head_name, (vocab, hidden), "lm_head")
    return t.items


# --- layer kinds --------------------------------------------------------------------------------

FULL, SLIDING, CHUNKED = "full_attention", "sliding_attention", "chunked_attention"
_KIND = {FULL: "full", SLIDING: "sliding", CHUNKED: "chunked"}


def explicit_layer_types(cfg: Cfg, n_layers: int) -> list[str] | None:
    """`layer_types` as written in the config (transformers >= 4.54 configs carry it), checked."""
    lt = cfg.raw("layer_types")
    if lt is None:
        return None
    if not isinstance(lt, list) or not all(isinstance(x, str) for x in lt):
        raise cfg.bad("layer_types", f"must be a list of strings, got {show(lt)}.")
    if len(lt) != n_layers:
        raise cfg.bad("layer_types", f"has {len(lt):,} entries for {n_layers:,} layers; the two must agree "
                      f"(transformers' validate_layer_type).")
    bad = sorted({x for x in lt if x not in _KIND})
    if bad:
        raise cfg.bad("layer_types", f"holds {', '.join(show(x) for x in bad[:3])}; vramplan knows "
                      f"full_attention, sliding_attention and chunked_attention here.")
    return lt


def attention(layer_type: str, heads: int, kv_heads: int, head_dim: int,
              window: int | None, chunk: int | None = None) -> Attention:
    """One attention mixer. A sliding layer without a window behaves (and caches) as full, as
    transformers' DynamicCache does."""
    kind = _KIND[layer_type]
    if kind == "sliding" and not window:
        kind, window = "full", None
    elif kind == "chunked":
        if not chunk:
            kind = "full"
        window = chunk or None
    else:
        window = window if kind == "sliding" else None
    return Attention(kind=kind, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim, v_head_dim=head_dim,
                     window=window)


# peft's default LoRA targets of most decoders (peft/utils/constants.py
# TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING: llama, mistral, mixtral, gemma, gemma2,
# gemma3_text, qwen2, qwen3 ...).
PEFT_Q_V = ("q_proj", "v_proj")
# peft 0.21's v4 -> v5 MoE target renaming for qwen2_moe's layout (its _MOE_TARGET_MODULE_MAPPING,
# keyed through transformers' conversion patterns, which map qwen3_moe and deepseek_v2/v3 to it).
PEFT_MOE_QWEN2 = (("gate", "router"), ("gate_proj", "gate_up"), ("up_proj", "gate_up"), ("down_proj", "down"))

# What the generic decoder's implementations do; a family replaces the fields that differ
# (dataclasses.replace), citing its source.
GENERIC_TRAITS = Traits(
    residual_tensors=4,            # embedding output, layer input, residual, normed input (trace tier,
                                   # docs/trace.md gap 1)
    hf_attention=None,             # transformers runs the requested attention
    norm_fp32=False,
    dropout_residual=0.0,          # released decoder configs train without dropout
    dropout_embedding=0.0,
    hf_linear_subclass="",         # plain nn.Linear modules
    hf_linear_subclass_modules=(),
    mamba_ssm_cache_dtype=None,    # no Mamba state
    attention_module="self_attn",  # transformers' <Family>DecoderLayer.self_attn
    fused_qkv_saved_whole=False,   # separate q/k/v projections
    lora_targets=None,             # a family with an entry in peft's mapping says so
    lora_moe=(),
    towers=(),                     # text only
)


# The model types Liger-Kernel patches (Liger-Kernel src/liger_kernel/transformers/monkey_patch.py:3534
# MODEL_TYPE_TO_APPLY_LIGER_FN, commit ead96b6); _apply_liger_kernel_to_instance (:3637-3639) leaves
# any other type unpatched. Text model types only: a step here runs the text model.
LIGER_MODEL_TYPES = frozenset((
    "deepseek_v4", "gemma", "gemma2", "gemma3_text", "gemma3", "gemma4_text", "gemma4", "glm4", "gpt_oss",
    "llama", "llama4_text", "llama4", "granite", "ministral", "mistral", "mixtral", "nemotron", "olmo2",
    "olmo3", "qwen2", "qwen3", "qwen3_moe", "qwen3_next", "qwen3_5", "qwen3_5_text", "qwen3_5_moe",
    "qwen3_5_moe_text", "smollm3", "phi3", "falcon_h1", "hunyuan_v1_dense", "hunyuan_v1_moe", "exaone4"))


def make_spec(cfg: Cfg, *, family: str, hidden: int, vocab: int, layers: list[LayerSpec],
              tensors: list[Tensor], tied: bool, dtype: str, quant: Quantization | None,
              max_pos: int | None, traits: Traits = GENERIC_TRAITS, mtp_layers: int = 0,
              vision: VisionTower | None = None) -> ModelSpec:
    root = cfg.root
    spec = ModelSpec(
        id=root.model,
        model_type=root.model_type,
        family=family,
        hidden_size=hidden,
        vocab_size=vocab,
        layers=tuple(layers),
        tensors=tuple(tensors),
        tie_word_embeddings=tied,
        torch_dtype=dtype,
        torch_dtype_assumed=root.dtype_assumed,
        quantization=quant,
        max_position_embeddings=max_pos,
        traits=replace(traits, liger=True) if root.model_type in LIGER_MODEL_TYPES else traits,
        mtp_layers=mtp_layers,
        vision=vision,
        warnings=tuple(root.warnings),
    )
    # Each key within its bound can still multiply into an absurd model (1,000 layers of width 2**20).
    if spec.params > PARAMS.limit:
        raise BadConfig(f"config.json of {root.who} describes a model of {spec.params:,} parameters; "
                        f"vramplan refuses {describe(PARAMS)}.")
    return spec
