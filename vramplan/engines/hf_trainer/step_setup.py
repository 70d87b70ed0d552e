"""Per-model constants of a training step: what does not depend on batch or context.

Why separate and cached: weights, trainable parameters, gradients, optimizer state, sharding
and each layer's per-token costs are fixed once the model, mode, options and dtype are; a
solver then calls `training_peak` many times with only batch and ctx changing. `step_setup`
is cached (functools.lru_cache on the hashable ModelSpec and options) for that reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from vramplan.errors import BadInput
from vramplan.spec import ModelSpec, Recurrent, Tensor
from vramplan.units import ceil_div
from vramplan.engines.hf_trainer.lora import Adapted, adapted_modules
from vramplan.engines.hf_trainer.optimizers import (Param, describe_state, describe_step_temporaries, param_of, resolve_optim,
                         state_bytes, step_temp_bytes)
from vramplan.engines.hf_trainer.saved_activations import LayerCost, dropout_masks, fp32_norms, head_saved, layer_cost
from vramplan.engines.hf_trainer.numerics import numerics, qlora_base, stored_weights
from vramplan.engines.hf_trainer.options import TRAIN_MODES, TrainOptions
from vramplan.memory.weights import quantizes, shared_state_bytes

# Tensor names of vision/audio towers: a text-only step runs none of them.
_TOWER_WORDS = ("vision", "visual", "multi_modal", "audio")


@dataclass(frozen=True)
class StepSetup:
    layers: tuple[LayerCost, ...]
    static: dict            # name -> bytes, alive in every phase (allocator)
    paged: int              # optimizer state in managed memory
    step_temp: int
    grads_total: int        # per GPU, after sharding
    grad_shard: int         # divisor for gradients (ZeRO-2/3)
    out_saved: int          # bytes per token saved outside the layers (final norm, lm_head input)
    head_copy: int          # autocast copy of an fp32 lm_head weight (alive fwd -> lm_head bwd)
    copies_are_weights: bool
    g_head: int             # lm_head (or tied embedding) gradient, created first in the backward
    g_norm: int
    g_emb: int              # untied embedding(s) gradient, created last
    tied_tmp: int           # tied embedding: the embedding backward's grad before accumulation
    vocab: int
    resid: int              # bytes per element of the residual stream (its gradient too)
    logits: int             # bytes per logit of the lm_head output
    attn_bytes: int
    gather_fwd: int
    gather_bwd: int
    dequant: int            # bitsandbytes: one dequantized matrix alive during each 4/8-bit matmul
    math_fallback: bool     # sdpa on fp32 GQA attention runs the math backend
    notes: dict
    frozen_prefix: int = 0  # LoRA without checkpointing: leading layers no gradient reaches (no
                            # adapter yet, inputs not requiring grad) save nothing for a backward


def _uses_layer_norm(model: ModelSpec) -> bool:
    """nn.LayerNorm (weight and bias) rather than RMSNorm: GPT-2, Falcon."""
    norms = {t.name for t in model.all_tensors() if t.role == "norm"}
    return any(t.role == "bias" and t.name.removesuffix(".bias") in norms for t in model.all_tensors())


def _qlora_base_checked(model: ModelSpec, fmt, o: TrainOptions, transformers: int) -> bool:
    """Whether bitsandbytes quantizes any decoder matmul of this QLoRA base; BadInput for the two
    setups whose step would not be the QLoRA step planned:
    - no 4-bit decoder matmul (Falcon's FalconLinear, fused MoE experts under transformers 5, the
      rest on the checkpoint's skip list) with peft's or TRL's preparation, which would upcast the
      whole 16-bit base to fp32 (QLoRA's numerics assume 4-bit linears that cast back);
    - a 4-bit Mamba out_proj: mamba_ssm's fused training kernel (mamba_split_conv1d_scan_combined)
      applies it as F.linear on its raw weight, which a bitsandbytes layer cannot provide."""
    name = model.id or "this model"
    decoder = [(l, t) for l in model.layers for t in l.tensors if quantizes(t, fmt.quant)]
    if not decoder and o.kbit_prepare != "none":
        raise BadInput(f"transformers {transformers}'s bitsandbytes quantizes none of the decoder matmuls of "
                       f"{name} (not exact nn.Linear modules, or on its skip list), so {{mode}} qlora would "
                       f"train an unquantized base. Plan it with {{kbit_prepare}} none (the base stays "
                       f"16-bit), with {{transformers}} 4, or as {{mode}} lora.")
    if any(isinstance(l.mixer, Recurrent) and t.leaf == "out_proj" for l, t in decoder):
        raise BadInput(f"QLoRA cannot train {name}'s Mamba layers: mamba_ssm's fused training kernel "
                       f"applies out_proj to its raw weight, which bitsandbytes 4-bit cannot provide, so "
                       f"the step fails. Use {{mode}} lora.")
    return bool(decoder)


def _frozen_prefix(mode: str, o: TrainOptions, adapted) -> int:
    """Decoder layers before the first adapter, when nothing upstream requires grad: their ops
    record no autograd graph (Nemotron-H with attention-only targets: 4 Mamba and 3 MLP blocks;
    trace tier). Not applied with gradient checkpointing, where each layer's input is kept anyway
    (small: one hidden-size tensor per token)."""
    if mode == "full" or o.grad_ckpt:
        return 0
    return min((a.layer for a in adapted if a.layer is not None), default=0)


def _is_tower(name: str) -> bool:
    return any(w in name for w in _TOWER_WORDS)


def _param(t: Tensor) -> Param:
    return param_of(t.shape, t.count, embedding=t.role == "embedding", decay=t.role not in ("norm", "bias"))


@lru_cache(maxsize=128)
def step_setup(model: ModelSpec, mode: str, o: TrainOptions, weight_dtype: str,
               transformers: int = 5) -> StepSetup:
    """Everything of a training step that batch and context do not change, for the module
    layout of that transformers major version."""
    if mode not in TRAIN_MODES:
        raise BadInput(f"{{mode}} {mode!r} is not a training mode; use one of: {', '.join(TRAIN_MODES)}.")
    base = qlora_base(model, weight_dtype, transformers) if mode == "qlora" else None
    bnb_linears = base is not None and _qlora_base_checked(model, base, o, transformers)
    n = numerics(mode, o, weight_dtype, _uses_layer_norm(model), bnb_linears)
    opt = resolve_optim(o.optim)
    N = o.world
    z = o.zero if N > 1 else 0
    wfn, wlabel = stored_weights(mode, o, model, weight_dtype, transformers)
    adapted_all = () if mode == "full" else adapted_modules(model, o.lora_targets, transformers)
    if o.lora_dropout > 0 and any(a.merged for a in adapted_all):
        raise BadInput(f"peft wraps the fused MoE experts of {model.id or 'this model'} with ParamWrapper, "
                       f"which refuses {{lora_dropout}} {o.lora_dropout:g}; pass {{lora_dropout}} 0 (or target "
                       f"the attention projections only, e.g. {{lora_targets}} q_proj,v_proj).")
    by_layer: dict[int | None, dict[str, Adapted]] = {}
    for a in adapted_all:
        by_layer.setdefault(a.layer, {})[a.tensor.name] = a
    wb: dict[str, int] = {}

    def wbytes(t: Tensor) -> int:
        b = wb.get(t.name)
        if b is None:
            b = wb[t.name] = wfn(t)
        return b

    memo: dict[tuple, LayerCost] = {}
    built = []
    for l in model.layers:                      # identical layers are computed once
        ad = by_layer.get(l.index, {})
        sig = (l.mixer, l.mlp, tuple((t.leaf, t.shape, t.role, t.count, wbytes(t), t.name in ad)
                                     for t in l.tensors))
        if sig not in memo:
            memo[sig] = layer_cost(l, model, o, n, ad, wbytes)
        built.append(memo[sig])
    layers = tuple(built)

    text = [t for t in model.tensors if not _is_tower(t.name)]
    h, V = model.hidden_size, model.vocab_size
    notes: dict[str, str] = {}

    # --- trainable parameters, gradients, optimizer ---------------------------------------
    if mode == "full":
        trainable = text + [t for l in model.layers for t in l.tensors]
        params = tuple(_param(t) for t in trainable)
        n_train = sum(t.numel for t in trainable)
    else:
        # Adapters in a vision/audio tower exist (trainable memory) but a text-only step gives
        # them no gradient, so torch never creates their optimizer state.
        live = [a for a in adapted_all if not _is_tower(a.tensor.name)]
        params = tuple(p for a in live for p in
                       (param_of((o.lora_r * a.rank_mult, a.in_features), a.matrices),
                        param_of((a.out_features, o.lora_r * a.rank_mult), a.matrices)))
        n_train = sum(a.params(o.lora_r) for a in live)
    n_adapter = sum(a.params(o.lora_r) for a in adapted_all)
    grad_shard = N if z >= 2 else 1
    grads_total = ceil_div(n_train * n.grad_bytes, grad_shard)
    opt_shard = N if z >= 1 else 1
    st_in, st_paged = state_bytes(opt, params, n.param_bytes)
    step_temp = ceil_div(step_temp_bytes(opt, params, n.param_bytes), opt_shard)

    # --- static memory ------------------------------------------------------------------------
    w_shard = N if z == 3 else 1
    static: dict[str, int] = {}
    all_weights = sum(wbytes(t) for t in model.all_tensors())
    if mode == "qlora":
        all_weights += shared_state_bytes(model, base.quant)
    copies_are_weights = mode == "full" and n.layer_copies
    static["weights"] = 0 if copies_are_weights else ceil_div(all_weights, w_shard)
    if mode != "full":
        static["trainable"] = ceil_div(n_adapter * n.lora_w, w_shard)
    if mode == "full" and o.precision == "mixed":
        static["master_weights"] = ceil_div(4 * n_train, opt_shard)
    static["optimizer"] = ceil_div(st_in, opt_shard)
    paged = ceil_div(st_paged, opt_shard)
    if N > 1 and o.zero == 0:
        static["ddp_buckets"] = grads_total     # DDP gradient_as_bucket_view=False: a flat copy

    # --- outside the decoder layers -------------------------------------------------------------
    out_saved = head_saved(text, h, n, fp32_norms(model)) + dropout_masks(model)[1]
    head = [t for t in text if t.role == "lm_head"] or ([t for t in text if t.role == "embedding"][:1]
                                                        if model.tie_word_embeddings else [])
    head_numel = sum(t.numel for t in head)
    head_copy = 2 * head_numel if (n.head_copy and n.autocast) else 0
    if mode == "full":
        g_head = head_numel * n.grad_bytes
        g_norm = sum(t.numel for t in text if t.role in ("norm", "bias")) * n.grad_bytes
        g_emb = sum(t.numel for t in text if t.role not in ("norm", "bias", "lm_head")
                    and t not in head) * n.grad_bytes
        tied_tmp = head_numel * n.grad_bytes if model.tie_word_embeddings else 0
    else:
        outside = [a for a in adapted_all if a.layer is None and not _is_tower(a.tensor.name)]
        g_head = g_norm = tied_tmp = 0
        g_emb = sum(a.params(o.lora_r) for a in outside) * n.grad_bytes
    if grad_shard > 1:
        g_head, g_norm, g_emb, tied_tmp = (ceil_div(x, grad_shard) for x in (g_head, g_norm, g_emb, tied_tmp))

    # --- ZeRO-3 / FSDP full shard: what is gathered while computing ------------------------------
    gather_fwd = gather_bwd = 0
    if z == 3:
        root = sum(wbytes(t) for t in text)         # FSDP root unit (embeddings, norm, lm_head)
        unit = max((l.work for l in layers), default=0)
        gather_fwd = root + 2 * unit                # current unit + the prefetched one, unsharded
        gather_bwd = gather_fwd + max((l.grads for l in layers), default=0)   # unsharded grads before reduce-scatter

    # --- quantized base: F.dequantize_4bit(B) in the compute dtype inside every matmul, forward
    # and backward (bitsandbytes MatMul4Bit); one matrix at a time.
    dequant = 0
    if mode == "qlora":
        q = base.quant
        dequant = 2 * max((t.shape[-1] * t.shape[-2] for t in model.all_tensors()
                           if quantizes(t, q) and len(t.shape) >= 2), default=0)

    # --- notes ----------------------------------------------------------------------------------
    if copies_are_weights:
        notes["weights"] = ("bf16 copies autocast makes of every matmul weight and keeps for the "
                            "backward (HF Trainer AMP); freed before the optimizer step")
    else:
        notes["weights"] = wlabel + (f", sharded over {N} GPUs" if z == 3 else "")
    q0 = model.quantization
    if mode != "qlora" and q0 is not None and q0.method != "none":
        notes["weights"] += f" (the {q0.method} checkpoint dequantized for training)"
    if mode != "full":
        notes["trainable"] = (f"LoRA r={o.lora_r} on {len(adapted_all)} modules: {n_adapter:,} params "
                              f"in {'fp32' if n.lora_w == 4 else 'bf16'}")
    if "master_weights" in static:
        notes["master_weights"] = "fp32 copy of the trainable parameters" + (f", sharded over {N}" if z >= 1 else "")
    notes["gradients"] = (f"{n_train:,} trainable params x {n.grad_bytes} B"
                          + (f", sharded over {N}" if grad_shard > 1 else ""))
    notes["optimizer"] = describe_state(opt, n.param_bytes) + (f", sharded over {N}" if opt_shard > 1 else "")
    if paged:
        notes["optimizer_paged"] = ("bitsandbytes paged state in CUDA managed memory: outside "
                                    "torch.cuda.max_memory_allocated, evicted to CPU under pressure")
    notes["optimizer_step_temporaries"] = describe_step_temporaries(opt)
    if "ddp_buckets" in static:
        notes["ddp_buckets"] = "DDP gradient buckets (gradient_as_bucket_view=False): one more gradient copy"
    if z == 3:
        notes["zero3_gather"] = "all-gathered parameters: FSDP root unit + current and prefetched layer"
    if head_copy or any(l.copies for l in layers):
        notes["autocast_copies"] = "bf16 copies autocast makes of fp32 matmul weights, kept for the backward"

    return StepSetup(layers, static, paged, step_temp, grads_total, grad_shard, out_saved, head_copy,
                     copies_are_weights, g_head, g_norm, g_emb, tied_tmp, V, n.resid, n.logits, n.attn,
                     gather_fwd, gather_bwd, dequant,
                     n.attn == 4 and any(a.num_kv_heads < a.num_heads for a in
                                         (l.mixer for l in model.attention_layers)), notes,
                     _frozen_prefix(mode, o, adapted_all))
