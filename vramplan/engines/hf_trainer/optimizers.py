"""Optimizer state and step temporaries, per optimizer as the HF Trainer builds it.

Why a module of its own: the bytes an optimizer holds depend on the implementation, not on the
algorithm. torch's AdamW keeps its moments in the parameter's dtype; bitsandbytes quantizes
them blockwise to 8 bits (but not for small tensors or for embeddings under the HF Trainer) and
its paged variants put them in CUDA managed memory, outside torch's allocator; Adafactor keeps
factored row/column statistics; SGD with the Trainer's defaults keeps nothing. The step itself
allocates temporaries (foreach AdamW: about one parameter-sized tensor list). Every constant
below is sourced in docs/training.md ("Optimizer state").
"""

from __future__ import annotations

from dataclasses import dataclass

from vramplan.errors import BadInput
from vramplan.units import ceil_div

# bitsandbytes Optimizer2State.init_state: tensors with fewer elements keep 32-bit states.
BNB_MIN_8BIT_SIZE = 4096
# Blockwise 8-bit states: one fp32 absmax per block of 256 values per state (bnb >= 0.44.0,
# PR #1365 "Change 8bit optimizer blocksize 2048->256"; 2048 before).
BNB_STATE_BLOCK = 256
# Optimizer8bit.get_state_buffer: paged buffers only for tensors of at least 1e5 elements.
BNB_PAGED_MIN_NUMEL = 100_000


@dataclass(frozen=True)
class Optim:
    """A resolved optimizer: which algorithm, which implementation, where its state lives."""

    name: str        # the canonical HF Trainer `optim` name
    family: str      # "adamw" | "adafactor" | "sgd"
    impl: str        # "foreach" | "fused" | "forloop" | "bnb" | "hf"
    bits: int = 0    # bnb: 8 or 32; torch: 0 = the parameter's own dtype
    paged: bool = False


# HF TrainingArguments.optim values (transformers OptimizerNames) and the classes the Trainer
# builds for them (Trainer.get_optimizer_cls_and_kwargs).
_OPTIMS = {
    "adamw_torch": Optim("adamw_torch", "adamw", "foreach"),
    "adamw_torch_fused": Optim("adamw_torch_fused", "adamw", "fused"),
    "adamw_hf": Optim("adamw_hf", "adamw", "forloop"),
    "adamw_bnb_8bit": Optim("adamw_bnb_8bit", "adamw", "bnb", bits=8),
    "paged_adamw_8bit": Optim("paged_adamw_8bit", "adamw", "bnb", bits=8, paged=True),
    "paged_adamw_32bit": Optim("paged_adamw_32bit", "adamw", "bnb", bits=32, paged=True),
    "adafactor": Optim("adafactor", "adafactor", "hf"),
    "sgd": Optim("sgd", "sgd", "foreach"),
}
_ALIASES = {
    "adamw": "adamw_torch", "adamw_torch_foreach": "adamw_torch", "torch_adamw": "adamw_torch",
    "adamw_fused": "adamw_torch_fused", "fused_adamw": "adamw_torch_fused",
    "adamw_8bit": "adamw_bnb_8bit", "bnb_adamw_8bit": "adamw_bnb_8bit", "adam8bit": "adamw_bnb_8bit",
    "adamw8bit": "adamw_bnb_8bit", "paged_adamw8bit": "paged_adamw_8bit",
    "paged_adamw": "paged_adamw_32bit", "paged_adamw32bit": "paged_adamw_32bit",
}
OPTIM_NAMES = tuple(_OPTIMS)
_DTYPE_NAMES = {4: "fp32", 2: "bf16"}      # bytes of a torch optimizer's state value


def resolve_optim(name: str) -> Optim:
    key = str(name).strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in _OPTIMS:
        raise BadInput(f"{{optim}} {name!r} is not an optimizer vramplan models; use one of: "
                       f"{', '.join(OPTIM_NAMES)} (HF spellings such as adamw_8bit are accepted).")
    return _OPTIMS[key]


@dataclass(frozen=True, kw_only=True)
class Param:
    """One trainable parameter as the optimizer sees it (stacked experts are one 3-D tensor)."""

    numel: int
    rows: int          # prod(shape[:-1]): Adafactor's row statistics
    cols: int          # prod(shape[:-2]) * shape[-1]: Adafactor's column statistics
    ndim: int
    embedding: bool    # nn.Embedding weight: the HF Trainer keeps 32-bit bnb states for it
    decay: bool        # in the Trainer's weight-decay group (not a bias, not a norm)


def param_of(shape: tuple[int, ...], count: int = 1, embedding: bool = False, decay: bool = True) -> Param:
    dims = ((count,) if count > 1 else ()) + tuple(shape)
    numel = 1
    for d in dims:
        numel *= d
    if len(dims) >= 2:
        rows = numel // dims[-1]
        cols = (numel // (dims[-1] * dims[-2])) * dims[-1]
    else:
        rows, cols = numel, 0
    return Param(numel=numel, rows=rows, cols=cols, ndim=len(dims), embedding=embedding, decay=decay)


def _bnb_state(p: Param, o: Optim) -> tuple[int, int]:
    """(bytes in torch's allocator, bytes in managed memory) for one parameter's two states."""
    eight = o.bits == 8 and p.numel >= BNB_MIN_8BIT_SIZE and not p.embedding
    if eight:
        buffers = 2 * p.numel                                  # state1, state2: uint8
        absmax = 2 * 4 * ceil_div(p.numel, BNB_STATE_BLOCK)    # absmax1, absmax2: fp32, on device
    else:
        buffers, absmax = 2 * 4 * p.numel, 0                   # two fp32 states
    if o.paged and p.numel >= BNB_PAGED_MIN_NUMEL:
        return absmax, buffers
    return buffers + absmax, 0


def state_bytes(o: Optim, params: tuple[Param, ...], param_bytes: int) -> tuple[int, int]:
    """Optimizer state for `params` whose optimizer-side dtype has `param_bytes` per value.

    Returns (in torch's allocator, in CUDA managed memory outside it).
    """
    if o.family == "sgd":
        return 0, 0        # HF passes only lr: torch SGD momentum=0 keeps no buffer
    if o.family == "adafactor":
        # transformers Adafactor(beta1=None): no first moment; fp32 (row, col) for >= 2-D,
        # a full fp32 exp_avg_sq otherwise (states are created .to(grad) after grad.float()).
        return sum(4 * (p.rows + p.cols) if p.ndim >= 2 else 4 * p.numel for p in params), 0
    if o.impl == "bnb":
        inside = outside = 0
        for p in params:
            a, b = _bnb_state(p, o)
            inside += a
            outside += b
        return inside, outside
    # torch AdamW: exp_avg and exp_avg_sq = torch.zeros_like(p): the parameter's dtype.
    return 2 * param_bytes * sum(p.numel for p in params), 0


def step_temp_bytes(o: Optim, params: tuple[Param, ...], param_bytes: int) -> int:
    """Peak extra bytes the optimizer step allocates on top of its state."""
    if not params:
        return 0
    largest = max(p.numel for p in params)
    if o.family == "adafactor":
        # Per parameter, one at a time: grad.float() and p.float() copies when 16-bit, then
        # `update = grad**2 + eps` (two live) and _approx_sq_grad's product: 4 (16-bit) or 2 (fp32)
        # fp32 tensors of the largest parameter.
        return 4 * largest * (4 if param_bytes < 4 else 2)
    if o.family == "sgd" or o.impl in ("bnb", "fused"):
        return 0           # in-place kernels (bnb update kernels, _fused_adamw_, foreach add_)
    if o.impl == "forloop":
        return param_bytes * largest          # denom = exp_avg_sq.sqrt().add_(eps), per tensor
    # foreach (_multi_tensor_adamw): exp_avg_sq_sqrt = torch._foreach_sqrt(exp_avg_sqs) is one
    # tensor list the size of the group's states; the Trainer makes a decay and a no-decay group.
    decay = sum(p.numel for p in params if p.decay)
    no_decay = sum(p.numel for p in params if not p.decay)
    return param_bytes * max(decay, no_decay)


def describe_state(o: Optim, param_bytes: int) -> str:
    """The optimizer state in words, for the breakdown's notes."""
    if o.impl == "bnb":
        return f"bitsandbytes AdamW {o.bits}-bit" + (", paged" if o.paged else "")
    if o.family == "adamw":
        return f"AdamW 2 moments in {_DTYPE_NAMES[param_bytes]} ({o.name})"
    return {"adafactor": "Adafactor factored fp32 moments", "sgd": "SGD, momentum 0: no state"}[o.family]


def describe_step_temporaries(o: Optim) -> str:
    """What `step_temp_bytes` counts, in words, for the breakdown's notes."""
    if o.family == "sgd":
        return "in-place update"
    return {"foreach": "foreach AdamW: one tensor list the size of the parameters (sqrt of exp_avg_sq)",
            "fused": "fused kernel: no parameter-sized temporaries", "forloop": "per-tensor loop: the largest tensor",
            "bnb": "in-place bitsandbytes kernels", "hf": "fp32 copies of the largest parameter"}[o.impl]
