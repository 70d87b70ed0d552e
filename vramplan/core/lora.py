"""Which linear modules peft's LoRA wraps, and how many adapter parameters that makes.

Why from the tensors and not a parameter fraction: LoRA adds r x (in + out) values per wrapped
module, so the count depends on the real shapes (GQA k/v projections are narrow, MLP ones wide).
Target names follow peft: a target matches a module whose name equals it or ends in "." + it;
"all-linear" is every linear module except the output layer (peft
`_maybe_include_all_linear_layers`); None means peft's default for the model_type
(`TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`, peft/utils/constants.py).

Only tensors with role "linear" can be wrapped: the fused 3-D expert tensors of current
transformers MoE blocks are parameters, not nn.Linear modules (peft reaches them only through
`target_parameters`), and routers are not nn.Linear either.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ..errors import BadInput
from ..spec import ModelSpec, Tensor

ALL_LINEAR = "all-linear"

# peft/utils/constants.py TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING (entries for the
# model types vramplan parses; peft raises "Please specify `target_modules`" for the others).
PEFT_DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "llama": ("q_proj", "v_proj"), "llama4": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"), "mixtral": ("q_proj", "v_proj"),
    "gemma": ("q_proj", "v_proj"), "gemma2": ("q_proj", "v_proj"), "gemma3_text": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"), "qwen3": ("q_proj", "v_proj"),
    "gpt2": ("c_attn",), "falcon": ("query_key_value",), "phi": ("q_proj", "v_proj", "fc1", "fc2"),
    "opt": ("q_proj", "v_proj"), "gptj": ("q_proj", "v_proj"), "gpt_neox": ("query_key_value",),
    "stablelm": ("q_proj", "v_proj"), "bloom": ("query_key_value",),
    "nemotron_h": ("q_proj", "k_proj", "v_proj", "o_proj"),
}


def normalize_targets(targets) -> tuple[str, ...] | None:
    """None, "all-linear", "q_proj,v_proj" or a sequence of names -> a tuple (or None)."""
    if targets is None:
        return None
    if isinstance(targets, str):
        items = [s for s in (p.strip() for p in targets.split(",")) if s]
    else:
        try:
            items = [str(s).strip() for s in targets]
        except TypeError:
            raise BadInput(f"--lora-targets {targets!r} is not a list of module names.") from None
        items = [s for s in items if s]
    if not items:
        raise BadInput("--lora-targets is empty; give all-linear or module names such as q_proj,v_proj.")
    if any(s.lower() == ALL_LINEAR for s in items):
        if len(items) > 1:
            raise BadInput("--lora-targets all-linear cannot be combined with module names.")
        return (ALL_LINEAR,)
    return tuple(dict.fromkeys(items))


def default_targets(model: ModelSpec) -> tuple[str, ...]:
    """peft's target_modules for this model_type when the user names none. Old config spellings
    (RefinedWeb) are looked up under the family transformers maps them to (falcon), as peft sees
    the transformers config."""
    t = PEFT_DEFAULT_TARGETS.get(model.model_type) or PEFT_DEFAULT_TARGETS.get(model.family)
    if t is None:
        raise BadInput(f"peft has no default LoRA targets for model_type '{model.model_type}' "
                       f"({model.id or 'this model'}); pass --lora-targets, e.g. all-linear.")
    return t


@dataclass(frozen=True)
class Adapted:
    """One linear module LoRA wraps: its tensor, decoder layer (None outside layers) and sizes."""

    tensor: Tensor
    layer: int | None
    in_features: int
    out_features: int
    matrices: int          # stacked copies (leading dims x count); 1 for an ordinary Linear

    def params(self, r: int) -> int:
        return self.matrices * r * (self.in_features + self.out_features)


def _matches(name: str, targets: tuple[str, ...]) -> bool:
    return any(name == k or name.endswith("." + k) for k in targets)


def _adapted(t: Tensor, layer: int | None) -> Adapted:
    *lead, out, inp = t.shape
    n = t.count
    for d in lead:
        n *= d
    return Adapted(t, layer, inp, out, n)


@lru_cache(maxsize=256)
def adapted_modules(model: ModelSpec, targets: tuple[str, ...] | None) -> tuple[Adapted, ...]:
    """The modules a LoraConfig(target_modules=targets) wraps, in model order."""
    names = default_targets(model) if targets is None else targets
    every = names == (ALL_LINEAR,)

    def wrapped(t: Tensor) -> bool:
        return t.role == "linear" and len(t.shape) >= 2 and (every or _matches(t.name, names))

    out = [_adapted(t, None) for t in model.tensors if wrapped(t)]
    out += [_adapted(t, layer.index) for layer in model.layers for t in layer.tensors if wrapped(t)]
    if not out:
        leaves = sorted({t.leaf for t in model.all_tensors() if t.role == "linear"})
        raise BadInput(f"--lora-targets {','.join(names)} matches no linear module of "
                       f"{model.id or 'this model'}; its linear modules are: {', '.join(leaves)}.")
    return tuple(out)


def lora_params(model: ModelSpec, targets, r: int) -> int:
    """Exact LoRA parameter count: r x (in + out) for every wrapped module (bias="none")."""
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise BadInput(f"--lora-r must be a whole number of at least 1, got {r!r}.")
    return sum(a.params(r) for a in adapted_modules(model, normalize_targets(targets)))
