"""The training recipe the trace runs, from the same `TrainOptions` the analytic tier reads.

Each option becomes the code a user's script would run (transformers 5, peft, HF Trainer):
- full: every parameter trains; "bf16" = the model loaded in bf16, no autocast; "mixed" = fp32
  parameters under bf16 autocast (Trainer `bf16=True` on an fp32 model).
- lora / qlora: peft `get_peft_model(LoraConfig(r, alpha, dropout, target_modules))` on the meta
  device (targets None = peft's default for the model type); adapters fp32
  (`autocast_adapter_dtype=True`) or bf16 (`lora_dtype`). qlora puts the bitsandbytes 4-bit base
  under them (trace/quant.py) and keeps the rest as `kbit_prepare` says: "peft" =
  `prepare_model_for_kbit_training` (every other 16-bit parameter upcast to fp32), "trl" = TRL's
  casting (norms and biases fp32, embeddings and lm_head 16-bit, autocast on), "none".
- gradient checkpointing: transformers' `gradient_checkpointing_enable()` (non-reentrant);
  peft's kbit preparation also makes the embedding output require grad, as it does.
- optimizer: the Trainer's two parameter groups and the implementation `--optim` selects on
  CUDA, passed explicitly, because on FakeTensors torch silently falls back from foreach/fused
  to the per-parameter loop (a whole-model difference in the step's temporaries).
"""

from __future__ import annotations

import torch
from torch import nn

from vramplan.errors import BadInput
from vramplan.trace import device
from vramplan.engines.hf_trainer.optimizers import BNB_MIN_8BIT_SIZE, BNB_PAGED_MIN_NUMEL, BNB_STATE_BLOCK, resolve_optim

LR = 1e-5


def prepare_model(model: nn.Module, opts, mode: str) -> nn.Module:
    """On meta, before any quantization: checkpointing, trainable parameters, adapters."""
    if opts.grad_ckpt:
        enable = getattr(model, "activation_checkpointing_enable", None)   # transformers >= 5.x name
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if mode == "qlora" and opts.kbit_prepare == "peft":
            model.enable_input_require_grads()
    model.config.use_cache = False
    if mode == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    targets = opts.lora_targets
    if targets is not None:
        targets = "all-linear" if tuple(targets) == ("all-linear",) else list(targets)
    try:
        config = LoraConfig(r=opts.lora_r, lora_alpha=opts.lora_alpha, lora_dropout=opts.lora_dropout,
                            target_modules=targets, task_type="CAUSAL_LM")
        return get_peft_model(model, config, autocast_adapter_dtype=opts.lora_dtype == "fp32")
    except (ValueError, TypeError, RuntimeError) as e:     # peft's own refusals, verbatim
        import peft

        raise BadInput(f"peft {peft.__version__} refuses this LoRA setup for {model.config.model_type}: "
                       f"{e} (a training script with the same settings would fail the same way; "
                       f"try explicit {{lora_targets}} or {{lora_dropout}} 0).") from None


def cast_for_kbit(model: nn.Module, opts) -> None:
    """After the 4-bit swap: the dtypes `kbit_prepare` leaves the other parameters in.
    peft's prepare_model_for_kbit_training upcasts every 16-bit parameter that is not 4-bit
    (embeddings, norms, lm_head, and fused MoE experts too); TRL's peft_module_casting_to_bf16
    upcasts the norms only and puts the adapters in bf16."""
    kp = opts.kbit_prepare
    if kp == "none":
        return
    if kp == "trl":
        for name, p in model.named_parameters():
            if "lora_" in name and p.dtype == torch.float32:
                p.data = p.data.to(torch.bfloat16)
    for mname, module in model.named_modules():
        norm = "norm" in type(module).__name__.lower() or "norm" in mname.rsplit(".", 1)[-1]
        if kp == "trl" and not norm:
            continue
        for pname, p in module.named_parameters(recurse=False):
            if "lora_" in f"{mname}.{pname}" or p.dtype not in (torch.bfloat16, torch.float16):
                continue
            p.data = p.data.to(torch.float32)


def param_groups(model: nn.Module) -> list[dict]:
    """The HF Trainer's groups: weight decay for all but biases and norms."""
    from transformers.trainer_pt_utils import get_parameter_names

    patterns = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]
    decay = set(get_parameter_names(model, [nn.LayerNorm], patterns))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in named if n in decay], "weight_decay": 0.0},
            {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, opts) -> torch.optim.Optimizer:
    o = resolve_optim(opts.optim)
    groups = param_groups(model)
    if o.impl == "bnb":
        bnb = device.bitsandbytes()
        if bnb is not None:
            return _bnb_optimizer(bnb, model, groups, o)
        embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
        return Adam8bitLike(groups, bits=o.bits, paged=o.paged, embeddings=embeddings)
    if o.family == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=LR, scale_parameter=False, relative_step=False)
    impl = {"foreach": dict(foreach=True), "fused": dict(fused=True), "forloop": dict(foreach=False)}[o.impl]
    if o.family == "sgd":
        return torch.optim.SGD(groups, lr=LR, **impl)
    return torch.optim.AdamW(groups, lr=LR, **impl)


def _bnb_optimizer(bnb, model: nn.Module, groups, o) -> torch.optim.Optimizer:
    """bitsandbytes' own AdamW (a GPU run with the library): the class the HF Trainer picks for
    the optim name, and 32-bit state for embeddings as the Trainer registers it
    (GlobalOptimManager.register_module_override(module, "weight", {"optim_bits": 32}))."""
    name = ("Paged" if o.paged else "") + ("AdamW8bit" if o.bits == 8 else "AdamW32bit")
    optimizer = getattr(bnb.optim, name)(groups, lr=LR)
    manager = bnb.optim.GlobalOptimManager.get_instance()
    for m in model.modules():
        if isinstance(m, nn.Embedding):
            manager.register_module_override(m, "weight", {"optim_bits": 32})
    return optimizer


class Adam8bitLike(torch.optim.Optimizer):
    """bitsandbytes AdamW (8- or 32-bit, paged or not): its state allocated as
    `Optimizer2State.init_state` allocates it, updated in place as its fused kernel does (no
    temporaries). The HF Trainer registers 32-bit state for nn.Embedding weights. Paged buffers
    live in CUDA managed memory, outside torch's allocator: labelled `optimizer_paged`."""

    def __init__(self, params, bits: int, paged: bool, embeddings: set[int]):
        super().__init__(params, {"lr": LR})
        self.bits, self.paged, self.embeddings = bits, paged, embeddings
        self.qmaps: list[torch.Tensor] = []

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None or self.state[p]:
                    continue
                s = self.state[p]
                s["step"] = 0
                eight = self.bits == 8 and p.numel() >= BNB_MIN_8BIT_SIZE and id(p) not in self.embeddings
                dtype = torch.uint8 if eight else torch.float32
                s["state1"] = torch.zeros_like(p, dtype=dtype)
                s["state2"] = torch.zeros_like(p, dtype=dtype)
                if eight:
                    if not self.qmaps:     # the "dynamic" and "udynamic" maps, shared
                        self.qmaps = [torch.empty(256, dtype=torch.float32, device=p.device) for _ in range(2)]
                    blocks = -(-p.numel() // BNB_STATE_BLOCK)
                    s["absmax1"] = torch.zeros(blocks, dtype=torch.float32, device=p.device)
                    s["absmax2"] = torch.zeros(blocks, dtype=torch.float32, device=p.device)
                    s["qmap1"], s["qmap2"] = self.qmaps
        return None


def state_categories(optimizer: torch.optim.Optimizer) -> dict[str, list[torch.Tensor]]:
    """Optimizer state by where it lives on a GPU. torch's non-fused, non-capturable AdamW keeps
    its `step` counters on the host, so they are not GPU memory."""
    fused = any(g.get("fused") or g.get("capturable") for g in optimizer.param_groups)
    paged = (optimizer.paged if isinstance(optimizer, Adam8bitLike)
             else bool(getattr(optimizer, "is_paged", False)))
    out: dict[str, list[torch.Tensor]] = {"optimizer_paged": [], "host": [], "optimizer": []}
    for state in optimizer.state.values():
        for k, v in state.items():
            if not isinstance(v, torch.Tensor):
                continue
            if k == "step" and not fused:
                out["host"].append(v)
            elif paged and k in ("state1", "state2") and v.numel() >= BNB_PAGED_MIN_NUMEL:
                out["optimizer_paged"].append(v)
            else:
                out["optimizer"].append(v)
    return out
