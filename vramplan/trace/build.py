"""Build the real transformers model from config.json with no weights in memory.

The model is instantiated on the `meta` device (shapes only), adapted there (peft LoRA, the
bitsandbytes 4-bit layout), and only then materialized: every parameter and buffer becomes a
FakeTensor on device `cpu`. Why `cpu` and not `meta` or `cuda`: transformers and torch pick
kernels by device (SDPA's fused path, grouped_mm for MoE experts); on `meta` SDPA falls back to
the naive math path that materializes seq x seq scores, and fake `cuda` needs a CUDA build. On
`cpu` the fused paths are chosen, as on a GPU, and the same code runs on real CPU tensors,
which is how the tests prove the fake run exact.

Materializing happens under the tracker, so the weights are counted storage by storage (tied
embeddings once), exactly as a checkpoint loads them.
"""

from __future__ import annotations

import re

import torch

from vramplan.trace import device
from torch import nn

from vramplan.errors import BadConfig, BadInput, VramplanError

TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

# Configs of the original custom-code Falcon releases, read by transformers' own Falcon model:
# RefinedWeb (40B/180B) is the new decoder architecture, RefinedWebModel (7B) the old one.
_FALCON_KEYS = {"n_layer": "num_hidden_layers", "n_head": "num_attention_heads",
                "n_head_kv": "num_kv_heads", "n_embed": "hidden_size"}


def hf_config(raw: dict, model_id: str = "", dtype: str = "bf16"):
    """A transformers config from config.json data, without remote code.

    Quantization settings are dropped: vramplan lays out quantized weights itself (trace/quant.py)
    and transformers would otherwise demand the quantization library at build time."""
    from transformers import CONFIG_MAPPING, AutoConfig

    d = {k: v for k, v in raw.items() if k not in ("quantization_config", "auto_map")}
    model_type = d.pop("model_type", "") or ""
    if model_type in ("RefinedWeb", "RefinedWebModel"):
        d = {_FALCON_KEYS.get(k, k): v for k, v in d.items()}
        d["new_decoder_architecture"] = model_type == "RefinedWeb"
        model_type = "falcon"
    if model_type not in CONFIG_MAPPING:
        raise BadInput(
            f"The trace cannot build {model_id or 'this model'}: model_type {model_type!r} is not part of "
            f"the installed transformers, and vramplan never runs remote code. Use {{method}} analytic.")
    d["dtype"] = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[dtype]
    d.pop("torch_dtype", None)
    return AutoConfig.for_model(model_type, **d)


def build(raw: dict, model_id: str, dtype: str, attn: str = "sdpa"):
    """(config, model on the meta device). Whatever transformers raises while it builds them is
    about this config.json (nothing else has run yet), so it becomes one BadConfig sentence
    naming the problem, not a traceback. The analytic reader (models/) refuses most such configs
    first; this catches what transformers checks beyond it (e.g. its strict field types)."""
    try:
        config = hf_config(raw, model_id, dtype)
        return config, meta_model(config, dtype, attn)
    except (VramplanError, ImportError, MemoryError):
        raise
    except Exception as e:      # noqa: BLE001 - any refusal by transformers' config or model code
        raise refusal(e, model_id) from e


def refusal(e: BaseException, model_id: str) -> BadConfig:
    """transformers' refusal as one sentence: the innermost cause (huggingface_hub's strict
    dataclass errors wrap the ValueError that says what is wrong, and name the field or validator
    on their first line), first sentence, clipped."""
    inner, seen = e, {id(e)}
    while inner.__cause__ is not None and id(inner.__cause__) not in seen:
        inner = inner.__cause__
        seen.add(id(inner))
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    text = lines[0] if lines else type(inner).__name__
    text = re.split(r"(?<=[.!?])\s+(?=[A-Z])", text)[0].rstrip(".")
    outer = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    if inner is not e and outer.endswith(":") and "'" in outer:     # "Validation error for field 'x':"
        text = f"{outer} {text}"
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > 200:
        text = text[:200] + "..."
    return BadConfig(f"transformers cannot build {model_id or 'this model'} from its config.json: {text} "
                     f"({type(inner).__name__}).")


def meta_model(config, dtype: str, attn: str = "sdpa") -> nn.Module:
    """The causal-LM class transformers maps this config to, on the meta device.

    MoE experts use transformers' grouped implementation (one grouped_mm per projection), its
    default on GPUs; the per-expert eager loop would allocate differently."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=TORCH_DTYPES[dtype],
                                                     attn_implementation=attn)
        except ValueError as e:        # no SDPA path for this architecture (e.g. gpt-oss sinks)
            if attn != "sdpa" or "scaled_dot_product_attention" not in str(e):
                raise
            model = AutoModelForCausalLM.from_config(config, dtype=TORCH_DTYPES[dtype],
                                                     attn_implementation="eager")
    impl = getattr(model.config, "_experts_implementation", None)
    if impl not in (None, "grouped_mm") and model._can_set_experts_implementation():
        model.set_experts_implementation("grouped_mm")
    model.eval()
    return model


def notes(model: nn.Module, attn: str) -> list[str]:
    """What in the traced program differs from the same model on a GPU with its usual kernels."""
    out = []
    used = getattr(model.config, "_attn_implementation", attn)
    if used != attn:
        out.append(f"transformers has no {attn} attention for {type(model).__name__}; the trace ran "
                   f"{used} attention, which materializes seq x seq scores, as transformers does on a GPU.")
    if device.kind() == "cpu" and any("Mamba" in type(m).__name__ for m in model.modules()):
        out.append("Mamba layers allocated what the mamba_ssm and causal_conv1d CUDA kernels allocate "
                   "(emulated on the trace's CPU device: outputs, fp32 chunk states, saved tensors and "
                   "gradients), as on a GPU with both packages installed; without them transformers' "
                   "reference scan needs several times the activation memory. A few MiB of split "
                   "buffers are sized for an H100's 132 SMs.")
    return out


def materialize(model: nn.Module, fake: bool) -> None:
    """Give every meta parameter and buffer a storage on the trace device (`cpu` unless
    verify runs on a GPU): a FakeTensor when `fake` (call
    this inside the FakeTensorMode), else a real tensor filled with small random values so real
    runs stay finite. Shared tensors (tied embeddings) stay shared."""
    made: dict[int, torch.Tensor] = {}

    def new(t: torch.Tensor) -> torch.Tensor:
        x = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=device.current())
        if not fake:
            with torch.no_grad():
                x.normal_(0, 0.02) if x.is_floating_point() else x.zero_()
        return x

    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and p.device.type == "meta":
                if id(p) not in made:
                    made[id(p)] = nn.Parameter(new(p), requires_grad=p.requires_grad)
                module._parameters[name] = made[id(p)]
        for name, b in list(module._buffers.items()):
            if b is not None and b.device.type == "meta":
                if id(b) not in made:
                    made[id(b)] = new(b)
                module._buffers[name] = made[id(b)]
    _restore_rope(model, fake)


def _restore_rope(model: nn.Module, fake: bool) -> None:
    """Rotary inverse frequencies are computed in __init__; on meta they have no values. Real runs
    recompute them so cos/sin stay finite (fake runs have no values to care about)."""
    if fake:
        return
    for module in model.modules():
        inv = getattr(module, "inv_freq", None)
        if isinstance(inv, torch.Tensor) and inv.dim() == 1:
            with torch.no_grad():
                n = inv.numel()
                inv.copy_(1.0 / (10000 ** (torch.arange(n, dtype=torch.float32) / n)))


def parameters_and_buffers(model: nn.Module):
    seen = set()
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            yield t
