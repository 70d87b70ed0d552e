"""Which linear modules peft's LoRA wraps, and how many adapter parameters that makes.

Why from the tensors and not a parameter fraction: LoRA adds r x (in + out) values per wrapped
module, so the count depends on the real shapes (GQA k/v projections are narrow, MLP ones wide).
Target names follow peft: a target matches a module whose name equals it or ends in "." + it;
"all-linear" is every linear module except the output layer (peft
`_maybe_include_all_linear_layers`); None means peft's default for the model_type, which the
model's family records (ModelSpec.traits.lora_targets).

Only tensors with role "linear" are nn.Linear modules in transformers 5: its MoE blocks hold the
experts as fused 3-D parameters and the router as a custom module. peft (>= 0.18, with
transformers 5: peft/utils/transformers_weight_conversion.py) translates the v4 names of the
experts and the router into `target_parameters` for the model types whose layout changed
(ModelSpec.traits.lora_moe), and wraps those parameters in `ParamWrapper`: one adapter over the
whole expert stack (rank r per expert, 2r for the fused gate_up when both of its halves are
targeted), whose forward folds W + B A into a new weight tensor that the grouped matmul saves
for the backward (`merged`). peft refuses lora_dropout > 0 there. Under transformers 4 the
experts and the router were nn.Linear modules, wrapped one by one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

from vramplan.errors import BadInput
from vramplan.spec import ModelSpec, Tensor

ALL_LINEAR = "all-linear"

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
            raise BadInput(f"{{lora_targets}} {targets!r} is not a list of module names.") from None
        items = [s for s in items if s]
    if not items:
        raise BadInput("{lora_targets} is empty; give all-linear or module names such as q_proj,v_proj.")
    if any(s.lower() == ALL_LINEAR for s in items):
        if len(items) > 1:
            raise BadInput("{lora_targets} all-linear cannot be combined with module names.")
        return (ALL_LINEAR,)
    return tuple(dict.fromkeys(items))


def default_targets(model: ModelSpec) -> tuple[str, ...]:
    """peft's target_modules for this model_type when the user names none."""
    t = model.traits.lora_targets
    if t is None:
        raise BadInput(f"peft has no default LoRA targets for model_type '{model.model_type}' "
                       f"({model.id or 'this model'}); pass {{lora_targets}}, e.g. all-linear.")
    return t


@dataclass(frozen=True, kw_only=True)
class Adapted:
    """One module (or parameter) LoRA wraps: its tensor, decoder layer (None outside layers) and
    sizes. A peft ParamWrapper over a fused expert stack has rank `rank_mult` x r (its experts'
    adapters side by side) and folds W + B A into a new weight each forward (`merged`)."""

    tensor: Tensor
    layer: int | None
    in_features: int
    out_features: int
    matrices: int          # stacked copies (leading dims x count); 1 for an ordinary Linear
    rank_mult: int = 1
    merged: bool = False

    def params(self, r: int) -> int:
        return self.matrices * r * self.rank_mult * (self.in_features + self.out_features)


def _matches(name: str, targets: tuple[str, ...]) -> bool:
    return any(name == k or name.endswith("." + k) for k in targets)


def _adapted(t: Tensor, layer: int | None) -> Adapted:
    *lead, out, inp = t.shape
    n = t.count
    for d in lead:
        n *= d
    return Adapted(tensor=t, layer=layer, in_features=inp, out_features=out, matrices=n)


def _moe_targets(model: ModelSpec, names: tuple[str, ...], every: bool) -> tuple[set[str], set[str]]:
    """(module names left, fused parameters targeted) after peft's v4 -> v5 name conversion."""
    mapping = dict(model.traits.lora_moe)
    if every:
        names = tuple({t.leaf for t in model.all_tensors() if t.role == "linear"} | set(mapping))
    params: dict[str, set[str]] = {}
    modules = set()
    for n in names:
        old = next((k for k in mapping if n == k or n.endswith("." + k)), None)
        if old is None:
            modules.add(n)
        else:
            params.setdefault(mapping[old], set()).add(old)
    halves = {k for k, v in mapping.items() if v == "gate_up"}
    if params.get("gate_up") and params["gate_up"] != halves:
        raise BadInput(f"peft cannot target {', '.join(sorted(params['gate_up']))} without "
                       f"{', '.join(sorted(halves - params['gate_up']))}: transformers 5 fuses them into "
                       f"one gate_up_proj. Target both, or neither.")
    return modules, set(params)


def _expert_adapters(t: Tensor, layer: int, kind: str, experts: int, transformers: int) -> list[Adapted]:
    """Adapters on one fused expert tensor [E, out, in]: a ParamWrapper under transformers 5,
    per-expert nn.Linear modules (gate_up as its two halves) under 4."""
    *_, out, inp = t.shape
    if transformers >= 5:
        mult = 2 * experts if kind == "gate_up" else experts
        return [Adapted(tensor=t, layer=layer, in_features=inp, out_features=out, matrices=1,
                        rank_mult=mult, merged=True)]
    if kind == "gate_up":
        return [Adapted(tensor=t, layer=layer, in_features=inp, out_features=out // 2, matrices=2 * experts)]
    return [Adapted(tensor=t, layer=layer, in_features=inp, out_features=out, matrices=experts)]


@lru_cache(maxsize=256)
def adapted_modules(model: ModelSpec, targets: tuple[str, ...] | None,
                    transformers: int = 5) -> tuple[Adapted, ...]:
    """The modules (and fused MoE parameters) a LoraConfig(target_modules=targets) wraps, in model
    order, with the module layout of that transformers major version."""
    names = default_targets(model) if targets is None else targets
    every = names == (ALL_LINEAR,)
    params: set[str] = set()
    if model.traits.lora_moe and targets is not None:
        modules, params = _moe_targets(model, names, every)
        if transformers >= 5:          # the converted names replace the given ones
            names, every = tuple(modules), False

    def wrapped(t: Tensor) -> bool:
        return t.role == "linear" and len(t.shape) >= 2 and (every or _matches(t.name, names))

    out = [_adapted(t, None) for t in model.tensors if wrapped(t)]
    for layer in model.layers:
        for t in layer.tensors:
            if wrapped(t):
                out.append(_adapted(t, layer.index))
            elif t.role == "router" and "router" in params:
                out.append(replace(_adapted(t, layer.index), merged=transformers >= 5))
            elif t.role == "expert" and layer.mlp is not None:
                kind = "down" if t.split == "row" else "gate_up"     # the fused parameter it is
                if kind in params:
                    out += _expert_adapters(t, layer.index, kind, layer.mlp.num_experts, transformers)
    if not out:
        leaves = sorted({t.leaf for t in model.all_tensors() if t.role == "linear"})
        raise BadInput(f"{{lora_targets}} {','.join(names)} matches no linear module of "
                       f"{model.id or 'this model'}; its linear modules are: {', '.join(leaves)}.")
    return tuple(out)


def lora_params(model: ModelSpec, targets, r: int, transformers: int = 5) -> int:
    """Exact LoRA parameter count: r x (in + out) for every wrapped module (bias="none")."""
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise BadInput(f"{{lora_r}} must be a whole number of at least 1, got {r!r}.")
    return sum(a.params(r) for a in adapted_modules(model, normalize_targets(targets), transformers))
