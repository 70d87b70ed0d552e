"""Per-model constants of a training step: what does not depend on batch or context.

Why separate and cached: weights, trainable parameters, gradients, optimizer state, sharding
and each layer's per-token costs are fixed once the model, method, options and dtype are; a
solver then calls `training_peak` many times with only batch and ctx changing. `step_setup`
is cached (functools.lru_cache on the hashable ModelSpec and options) for that reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

from vramplan.errors import BadInput
from vramplan.spec import ModelSpec, Recurrent, Tensor
from vramplan.units import ceil_div
from vramplan.engines.hf_trainer.lora import Adapted, adapted_modules
from vramplan.engines.hf_trainer.optimizers import (Optim, Param, describe_state, describe_step_temporaries, param_of,
                                                    resolve_optim, state_bytes, step_temp_bytes)
from vramplan.engines.hf_trainer.saved_activations import LayerCost, dropout_masks, fp32_norms, head_saved, layer_cost
from vramplan.engines.hf_trainer.numerics import Numerics, numerics, qlora_base, stored_weights
from vramplan.engines.hf_trainer.options import TRAIN_MODES, Method, TrainOptions, deepspeed_masters
from vramplan.engines.hf_trainer.sharding import ZeroConfig
from vramplan.memory.weights import WeightFormat, quantizes, shared_state_bytes

@dataclass(frozen=True, kw_only=True)
class StepSetup:
    """What the phase walk (phases.training_peak) reads for every batch and context: per-layer
    costs per token, bytes fixed per GPU, and the dtypes that scale the rest."""

    layers: tuple[LayerCost, ...]
    static: dict            # name -> bytes, alive in every phase (allocator)
    paged: int              # optimizer state in managed memory
    step_temp: int
    grads_total: int        # per GPU, after sharding
    grad_shard: int         # divisor for gradients (ZeRO-2/3)
    out_saved: int          # bytes per token saved outside the layers (final norm, lm_head input)
    head_copy: int          # autocast copy of an fp32 lm_head weight (alive fwd -> lm_head bwd)
    copies_are_weights: bool    # HF AMP full fine-tuning: autocast's bf16 copies are the "weights"
    g_head: int             # lm_head (or tied embedding) gradient, created first in the backward
    g_norm: int
    g_emb: int              # untied embedding(s) gradient, created last
    tied_tmp: int           # tied embedding: the embedding backward's grad before accumulation
    vocab: int
    resid: int              # bytes per element of the residual stream (its gradient too)
    logits: int             # bytes per logit of the lm_head output
    attn_bytes: int         # bytes per element of q, k, v as the attention kernel saves them
    gather_fwd: int         # ZeRO-3: parameters all-gathered during the forward
    gather_bwd: int         # ... and during the backward (with a layer's unsharded gradients)
    dequant: int            # bitsandbytes: one dequantized matrix alive during each 4/8-bit matmul
    math_fallback: bool     # sdpa on fp32 GQA attention runs the math backend
    notes: dict
    frozen_prefix: int = 0  # LoRA without checkpointing: leading layers no gradient reaches (no
                            # adapter yet, inputs not requiring grad) save nothing for a backward
    buckets: int = 0        # DeepSpeed ZeRO-1/2 reduce (IPG) buckets, alive through the backward
    fp32_grads: int = 0     # DeepSpeed: the fp32 copy of this rank's gradient partition, at the step
    host: dict = field(default_factory=dict)    # offloaded to host RAM: name -> bytes per rank


def _uses_layer_norm(model: ModelSpec) -> bool:
    """nn.LayerNorm (weight and bias) rather than RMSNorm: GPT-2, Falcon."""
    norms = {t.name for t in model.all_tensors() if t.role == "norm"}
    return any(t.role == "bias" and t.name.removesuffix(".bias") in norms for t in model.all_tensors())


def _qlora_base_checked(model: ModelSpec, fmt: WeightFormat, o: TrainOptions, transformers: int) -> bool:
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
    if any(isinstance(l.mixer, Recurrent) and t.split == "row" for l, t in decoder):     # out_proj
        raise BadInput(f"QLoRA cannot train {name}'s Mamba layers: mamba_ssm's fused training kernel "
                       f"applies out_proj to its raw weight, which bitsandbytes 4-bit cannot provide, so "
                       f"the step fails. Use {{mode}} lora.")
    return bool(decoder)


def _frozen_prefix(method: Method, o: TrainOptions, adapted: tuple[Adapted, ...]) -> int:
    """Decoder layers before the first adapter, when nothing upstream requires grad: their ops
    record no autograd graph (Nemotron-H with attention-only targets: 4 Mamba and 3 MLP blocks;
    trace tier). Not applied with gradient checkpointing, where each layer's input is kept anyway
    (small: one hidden-size tensor per token)."""
    if method == "full" or o.grad_ckpt:
        return 0
    return min((a.layer for a in adapted if a.layer is not None), default=0)


def _is_tower(model: ModelSpec, name: str) -> bool:
    """A vision/audio tower tensor (ModelSpec.traits.towers): a text-only step runs none of them."""
    return name.startswith(model.traits.towers)


def _param(t: Tensor) -> Param:
    return param_of(t.shape, t.count, embedding=t.role == "embedding", decay=t.role not in ("norm", "bias"))


@dataclass(frozen=True)
class Shards:
    """How many ways ZeRO / FSDP splits each kind of state (1: not split): stage 1 the optimizer
    state (and fp32 master weights), 2 also the gradients, 3 also the weights, over the shard
    group: every GPU, or one node under FSDP hybrid shard (replicated across nodes). Plain DDP
    (stage 0) splits nothing."""

    world: int
    zero: int               # the stage in effect: 0 on one GPU
    group: int = 0          # GPUs one copy is sharded over (0: the world)

    @classmethod
    def of(cls, o: TrainOptions) -> Shards:
        group = o.world
        if o.fsdp is not None and o.fsdp.mode.startswith("hybrid"):
            group = min(o.world, o.fsdp.gpus_per_node)
        # DeepSpeed runs its ZeRO stage on one GPU too (a partition of one, its buffers and fp32
        # masters all there; ZeRO-Offload is mostly a one-GPU setup); FSDP/DDP on one GPU is none
        return cls(o.world, o.zero if (o.world > 1 or o.deepspeed is not None) else 0, group)

    @property
    def n(self) -> int:
        return self.group or self.world

    @property
    def optimizer(self) -> int:
        return self.n if self.zero >= 1 else 1

    @property
    def grads(self) -> int:
        return self.n if self.zero >= 2 else 1

    @property
    def weights(self) -> int:
        return self.n if self.zero == 3 else 1


@dataclass(frozen=True)
class OutsideGrads:
    """Gradients of the parameters outside the decoder layers, per GPU, in the order the
    backward creates them."""

    head: int               # lm_head (or tied embedding): first, right after the loss
    norm: int               # final norm
    emb: int                # untied embedding(s): last
    tied_tmp: int           # tied embedding: the embedding backward's grad before accumulation


def _check_method(method: str) -> None:
    """The trainer plans full, lora and qlora only; anything else is a caller's mistake."""
    if method not in TRAIN_MODES:
        raise BadInput(f"{{mode}} {method!r} is not a training mode; use one of: {', '.join(TRAIN_MODES)}.")


def _adapters(model: ModelSpec, method: Method, o: TrainOptions, transformers: int) -> tuple[Adapted, ...]:
    """The modules LoRA wraps (none in full fine-tuning). peft refuses dropout on a fused MoE
    expert stack, so that combination is a BadInput rather than a plan of a step that fails."""
    if method == "full":
        return ()
    adapted = adapted_modules(model, o.lora_targets, transformers)
    if o.lora_dropout > 0 and any(a.merged for a in adapted):
        raise BadInput(f"peft wraps the fused MoE experts of {model.id or 'this model'} with ParamWrapper, "
                       f"which refuses {{lora_dropout}} {o.lora_dropout:g}; pass {{lora_dropout}} 0 (or target "
                       f"the attention projections only, e.g. {{lora_targets}} q_proj,v_proj).")
    return adapted


def _memoized(stored: Callable[[Tensor], int]) -> Callable[[Tensor], int]:
    """`stored` cached by tensor name: the same weight's bytes are asked for by the layer
    signature, the layer costs, the static sum and the ZeRO-3 gather."""
    cache: dict[str, int] = {}

    def wbytes(t: Tensor) -> int:
        b = cache.get(t.name)
        if b is None:
            b = cache[t.name] = stored(t)
        return b

    return wbytes


def _layer_costs(model: ModelSpec, o: TrainOptions, n: Numerics, adapted: tuple[Adapted, ...],
                 wbytes: Callable[[Tensor], int]) -> tuple[LayerCost, ...]:
    """Each decoder layer's cost. Most models repeat a few layer kinds many times, so layers with
    the same mixer, MLP, tensors and adapters are computed once."""
    by_layer: dict[int | None, dict[str, Adapted]] = {}
    for a in adapted:
        by_layer.setdefault(a.layer, {})[a.tensor.name] = a
    memo: dict[tuple, LayerCost] = {}
    built = []
    for l in model.layers:
        ad = by_layer.get(l.index, {})
        sig = (l.mixer, l.mlp, tuple((t.leaf, t.shape, t.role, t.count, wbytes(t), t.name in ad)
                                     for t in l.tensors))
        if sig not in memo:
            memo[sig] = layer_cost(l, model, o, n, ad, wbytes)
        built.append(memo[sig])
    return tuple(built)


def _trainable(model: ModelSpec, method: Method, o: TrainOptions, text: list[Tensor],
               adapted: tuple[Adapted, ...]) -> tuple[tuple[Param, ...], int]:
    """(the parameters the optimizer steps, how many values they hold): every text weight in
    full fine-tuning, else the LoRA A and B matrices."""
    if method == "full":
        trainable = text + [t for l in model.layers for t in l.tensors]
        return tuple(_param(t) for t in trainable), sum(t.numel for t in trainable)
    # Adapters in a vision/audio tower exist (trainable memory) but a text-only step gives
    # them no gradient, so torch never creates their optimizer state.
    live = [a for a in adapted if not _is_tower(model, a.tensor.name)]
    params = tuple(p for a in live for p in
                   (param_of((o.lora_r * a.rank_mult, a.in_features), a.matrices),
                    param_of((a.out_features, o.lora_r * a.rank_mult), a.matrices)))
    return params, sum(a.params(o.lora_r) for a in live)


def _optimizer(opt: Optim, params: tuple[Param, ...], n: Numerics, shards: Shards) -> tuple[int, int, int]:
    """(state in torch's allocator, state in managed memory, step temporaries) per GPU: what the
    optimizer holds depends on its implementation, and ZeRO >= 1 shards all three."""
    inside, paged = state_bytes(opt, params, n.param_bytes)
    temporaries = step_temp_bytes(opt, params, n.param_bytes)
    return tuple(ceil_div(b, shards.optimizer) for b in (inside, paged, temporaries))


def _static(model: ModelSpec, method: Method, o: TrainOptions, n: Numerics, base: WeightFormat | None,
            wbytes: Callable[[Tensor], int], *, n_train: int, n_adapter: int, optimizer: int,
            grads_total: int, copies_are_weights: bool, shards: Shards) -> dict[str, int]:
    """Bytes alive in every phase of the step, by component, in display order: the weights
    (none of their own when autocast's copies stand for them), adapters, fp32 master weights,
    optimizer state and DDP's gradient buckets."""
    all_weights = sum(wbytes(t) for t in model.all_tensors())
    if method == "qlora":
        all_weights += shared_state_bytes(model, base.quant)
    static = {"weights": 0 if copies_are_weights else ceil_div(all_weights, shards.weights)}
    if method != "full":
        static["trainable"] = ceil_div(n_adapter * n.lora_w, shards.weights)
    if method == "full" and (o.precision == "mixed" or deepspeed_masters(o)):
        static["master_weights"] = ceil_div(4 * n_train, shards.optimizer)
    static["optimizer"] = optimizer
    if shards.world > 1 and o.zero == 0:
        static["ddp_buckets"] = grads_total     # DDP gradient_as_bucket_view=False: a flat copy
    return static


def _head_weights(model: ModelSpec, text: list[Tensor]) -> list[Tensor]:
    """The output projection's weight: lm_head, or the token embedding when it is tied."""
    return [t for t in text if t.role == "lm_head"] or ([t for t in text if t.role == "embedding"][:1]
                                                        if model.tie_word_embeddings else [])


def _outside_grads(model: ModelSpec, method: Method, o: TrainOptions, n: Numerics, text: list[Tensor],
                   head: list[Tensor], adapted: tuple[Adapted, ...], shards: Shards) -> OutsideGrads:
    """Gradients outside the decoder layers: the backward makes them at its two ends (lm_head
    and final norm first, embeddings last), so the phase walk needs them apart."""
    head_numel = sum(t.numel for t in head)
    if method == "full":
        g = OutsideGrads(
            head=head_numel * n.grad_bytes,
            norm=sum(t.numel for t in text if t.role in ("norm", "bias")) * n.grad_bytes,
            emb=sum(t.numel for t in text if t.role not in ("norm", "bias", "lm_head")
                    and t not in head) * n.grad_bytes,
            tied_tmp=head_numel * n.grad_bytes if model.tie_word_embeddings else 0)
    else:
        outside = [a for a in adapted if a.layer is None and not _is_tower(model, a.tensor.name)]
        g = OutsideGrads(head=0, norm=0, emb=sum(a.params(o.lora_r) for a in outside) * n.grad_bytes,
                         tied_tmp=0)
    if shards.grads > 1:
        g = OutsideGrads(*(ceil_div(x, shards.grads) for x in (g.head, g.norm, g.emb, g.tied_tmp)))
    return g


def _zero3_gather(text: list[Tensor], layers: tuple[LayerCost, ...], wbytes: Callable[[Tensor], int],
                  shards: Shards, ds: ZeroConfig | None = None, model: ModelSpec | None = None,
                  grad_bytes: int = 2) -> tuple[int, int]:
    """(forward, backward) bytes ZeRO-3 / FSDP full shard gathers while computing.

    FSDP: the root unit (embeddings, norm, lm_head) plus the current and the prefetched layer,
    unsharded; the backward also holds a layer's unsharded gradients before the reduce-scatter.
    DeepSpeed ZeRO-3 fetches module by module (stage3.py, PartitionedParameterCoordinator): the
    module running (the largest: the embedding or lm_head) plus up to stage3_prefetch_bucket_size
    elements fetched ahead, never more than stage3_max_live_parameters; the backward adds that
    module's unsharded gradient before it is reduced into the bucket."""
    if shards.zero != 3:
        return 0, 0
    if ds is not None and model is not None:
        largest = max((t.numel for t in model.all_tensors()), default=0)
        live = min(ds.max_live_parameters, largest + ds.prefetch_bucket_size)
        return 2 * live, 2 * live + grad_bytes * largest
    root = sum(wbytes(t) for t in text)
    unit = max((l.work for l in layers), default=0)
    forward = root + 2 * unit
    return forward, forward + max((l.grads for l in layers), default=0)


@dataclass(frozen=True, kw_only=True)
class ZeroExtras:
    """What DeepSpeed holds besides the shards, and what offload moves to host RAM, per rank."""

    buckets: int = 0            # ZeRO-1/2 IPG buffers, backward
    static: dict = field(default_factory=dict)   # ZeRO-3 IPG buffer and persistent parameters
    fp32_grads: int = 0         # the optimizer step's fp32 gradient partition (+ ZeRO-3's flatten)
    host: dict = field(default_factory=dict)


def _zero_extras(model: ModelSpec, o: TrainOptions, n: Numerics, shards: Shards, n_train: int,
                 static: dict[str, int]) -> ZeroExtras:
    """DeepSpeed's buffers (engines/hf_trainer/sharding.py has the defaults), and offload.

    ZeRO-1/2 (stage_1_and_2.py): with contiguous_gradients each backward allocates IPG buffers of
    reduce_bucket_size elements in the dtype of the trainable parameters (setup_buckets, :2493-2515;
    a second one with overlap_comm); the step turns this rank's flat gradient partition into fp32
    (`flat_grad_partition.to(single_partition_of_fp32_groups[i].dtype)`, :2361) for the optimizer:
    4 B x trainable / N, a no-op when the gradients already are fp32. allgather_bucket_size adds no
    buffer: the updated partitions are gathered in place (runtime/utils.py all_gather_dp_groups:
    all_gather_into_tensor into the flat 16-bit groups, or narrow views).
    ZeRO-3 (stage3.py): one IPG buffer of reduce_bucket_size elements from the start (:731-735);
    parameters under stage3_param_persistence_threshold elements stay gathered (persistent); the
    step flattens each sub-group's gradient partition and casts it to fp32
    (_prepare_fp32_grad_for_sub_group, :2401-2402): (grad bytes + 4) x min(trainable / N,
    sub_group_size).
    Offload: offload_optimizer keeps the fp32 master partition, the optimizer state and the fp32
    gradients in host RAM (none on the GPU); offload_param (ZeRO-3) the 16-bit partition too.
    FSDP offload (CPUOffloadPolicy) moves parameters and optimizer state to host RAM."""
    ds = o.deepspeed.resolved(model.hidden_size) if o.deepspeed is not None else None
    out_static: dict[str, int] = {}
    host: dict[str, int] = {}
    buckets = fp32 = 0
    part = ceil_div(n_train, shards.optimizer)
    offload_opt = (ds is not None and ds.offload_optimizer) or (o.fsdp is not None and o.fsdp.offload)
    offload_par = (ds is not None and ds.offload_param and shards.zero == 3) or (o.fsdp is not None and o.fsdp.offload)
    if ds is not None and shards.zero >= 1:
        bucket = ds.reduce_bucket_size * n.grad_bytes if ds.contiguous_gradients else 0
        if shards.zero in (1, 2):
            buckets = bucket * (2 if ds.overlap else 1)
            fp32 = 4 * part if n.grad_bytes < 4 else 0
        else:
            out_static["zero_buckets"] = bucket
            small = sum(t.numel for t in model.all_tensors() if t.numel < ds.param_persistence_threshold)
            out_static["zero3_persistent"] = 2 * small
            sg = min(part, ds.sub_group_size)
            fp32 = n.grad_bytes * sg + (4 * sg if n.grad_bytes < 4 else 0)
        if offload_opt:
            host["optimizer_offloaded"] = fp32
            fp32 = 0
    if offload_opt:
        moved = static.get("master_weights", 0) + static.get("optimizer", 0)
        host["optimizer_offloaded"] = host.get("optimizer_offloaded", 0) + moved
    if offload_par:
        host["params_offloaded"] = static.get("weights", 0)
    return ZeroExtras(buckets=buckets, static=out_static, fp32_grads=fp32, host=host)


def _dequant_bytes(model: ModelSpec, base: WeightFormat | None) -> int:
    """A quantized base: bitsandbytes' MatMul4Bit dequantizes B (F.dequantize_4bit) into the
    compute dtype inside every matmul, forward and backward; one matrix at a time, so the
    largest one counts."""
    if base is None:
        return 0
    q = base.quant
    return 2 * max((t.shape[-1] * t.shape[-2] for t in model.all_tensors()
                    if quantizes(t, q) and len(t.shape) >= 2), default=0)


def _math_fallback(model: ModelSpec, n: Numerics) -> bool:
    """sdpa on fp32 GQA attention runs the math backend (flash needs 16 bits, the efficient
    kernel rejects enable_gqa), which materializes the probabilities."""
    return n.attn == 4 and any(a.num_kv_heads < a.num_heads for a in
                               (l.mixer for l in model.attention_layers))


def _notes(model: ModelSpec, method: Method, o: TrainOptions, n: Numerics, *, weights_label: str,
           copies_are_weights: bool, shards: Shards, static: dict[str, int], paged: int, opt: Optim,
           n_train: int, adapted: tuple[Adapted, ...], n_adapter: int, head_copy: int,
           layers: tuple[LayerCost, ...]) -> dict[str, str]:
    """What each component is, in words, for the breakdown: the same facts the bytes came from."""
    N, z = shards.n, shards.zero
    notes: dict[str, str] = {}
    if copies_are_weights:
        notes["weights"] = ("bf16 copies autocast makes of every matmul weight and keeps for the "
                            "backward (HF Trainer AMP); freed before the optimizer step")
    else:
        notes["weights"] = weights_label + (f", sharded over {N} GPUs" if z == 3 else "")
    q0 = model.quantization
    if method != "qlora" and q0 is not None and q0.method != "none":
        notes["weights"] += f" (the {q0.method} checkpoint dequantized for training)"
    if method != "full":
        notes["trainable"] = (f"LoRA r={o.lora_r} on {len(adapted)} modules: {n_adapter:,} params "
                              f"in {'fp32' if n.lora_w == 4 else 'bf16'}")
    if "master_weights" in static:
        notes["master_weights"] = "fp32 copy of the trainable parameters" + (f", sharded over {N}" if z >= 1 else "")
    notes["gradients"] = (f"{n_train:,} trainable params x {n.grad_bytes} B"
                          + (f", sharded over {N}" if shards.grads > 1 else ""))
    notes["optimizer"] = describe_state(opt, n.param_bytes) + (f", sharded over {N}" if shards.optimizer > 1 else "")
    if paged:
        notes["optimizer_paged"] = ("bitsandbytes paged state in CUDA managed memory, outside torch's "
                                    "allocator: the driver pages it to host RAM when the GPU is full "
                                    "(slower steps, no OOM); not in the total")
    notes["optimizer_step_temporaries"] = describe_step_temporaries(opt)
    if "ddp_buckets" in static:
        notes["ddp_buckets"] = "DDP gradient buckets (gradient_as_bucket_view=False): one more gradient copy"
    if z == 3:
        notes["zero3_gather"] = ("all-gathered parameters: the module running + stage3_prefetch_bucket_size "
                                 "(DeepSpeed ZeRO-3)" if o.deepspeed is not None else
                                 "all-gathered parameters: FSDP root unit + current and prefetched layer")
    if o.deepspeed is not None and z >= 1:
        notes["zero_buckets"] = (f"DeepSpeed reduce (IPG) buffer{'s' if z < 3 and o.deepspeed.overlap else ''}: "
                                 f"reduce_bucket_size elements in the gradients' dtype")
        notes["zero_fp32_grads"] = f"fp32 copy of this rank's gradient partition for the optimizer step (1/{N})"
        notes["zero3_persistent"] = ("parameters under stage3_param_persistence_threshold elements, "
                                     "kept gathered")
    if o.deepspeed is not None and o.deepspeed.offload_optimizer or o.fsdp is not None and o.fsdp.offload:
        notes["optimizer_offloaded"] = ("host RAM per rank: fp32 master partition, optimizer state and "
                                        "fp32 gradients (CPU offload), not on the GPU")
        notes["params_offloaded"] = "host RAM per rank: the parameter shard (offload_param / FSDP offload)"
    if head_copy or any(l.copies for l in layers):
        notes["autocast_copies"] = "bf16 copies autocast makes of fp32 matmul weights, kept for the backward"
    return notes


@lru_cache(maxsize=128)
def step_setup(model: ModelSpec, method: Method, o: TrainOptions, weight_dtype: str,
               transformers: int = 5) -> StepSetup:
    """Everything of a training step that batch and context do not change, for the module
    layout of that transformers major version. The order of the steps is the order in which
    their refusals (BadInput) are checked."""
    _check_method(method)
    base = qlora_base(model, weight_dtype, transformers) if method == "qlora" else None
    bnb_linears = base is not None and _qlora_base_checked(model, base, o, transformers)
    n = numerics(method, o, weight_dtype, _uses_layer_norm(model), bnb_linears)
    opt = resolve_optim(o.optim)
    shards = Shards.of(o)
    stored, weights_label = stored_weights(method, o, model, weight_dtype, transformers)
    wbytes = _memoized(stored)
    adapted = _adapters(model, method, o, transformers)
    layers = _layer_costs(model, o, n, adapted, wbytes)
    text = [t for t in model.tensors if not _is_tower(model, t.name)]

    params, n_train = _trainable(model, method, o, text, adapted)
    n_adapter = sum(a.params(o.lora_r) for a in adapted)
    grads_total = ceil_div(n_train * n.grad_bytes, shards.grads)
    optimizer, paged, step_temp = _optimizer(opt, params, n, shards)
    copies_are_weights = method == "full" and n.layer_copies
    static = _static(model, method, o, n, base, wbytes, n_train=n_train, n_adapter=n_adapter,
                     optimizer=optimizer, grads_total=grads_total,
                     copies_are_weights=copies_are_weights, shards=shards)

    extras = _zero_extras(model, o, n, shards, n_train, static)
    for k in extras.host:
        if k == "optimizer_offloaded":
            # the reduced gradients go straight to the host buffers (stage_1_and_2.py:1650-1668
            # copy_grads_in_partition under cpu_offload; stage3.py:742-746 the flat gradient
            # partition in host memory): none is left on the GPU for the step
            if shards.zero == 3:
                extras.host[k] += grads_total
            grads_total = 0
            static["optimizer"] = 0
            static.pop("master_weights", None)
            step_temp = 0      # the optimizer runs on the CPU (DeepSpeedCPUAdam / the host tensors)
        elif k == "params_offloaded":
            static["weights"] = 0
    static.update(extras.static)
    head = _head_weights(model, text)
    head_copy = 2 * sum(t.numel for t in head) if (n.head_copy and n.autocast) else 0
    grads = _outside_grads(model, method, o, n, text, head, adapted, shards)
    # the largest module's gradient before its reduce: only full fine-tuning trains it (LoRA's
    # frozen embedding has none)
    gather_fwd, gather_bwd = _zero3_gather(text, layers, wbytes, shards, o.deepspeed, model,
                                           n.grad_bytes if method == "full" else 0)
    notes = _notes(model, method, o, n, weights_label=weights_label,
                   copies_are_weights=copies_are_weights, shards=shards, static=static, paged=paged, opt=opt, n_train=n_train, adapted=adapted, n_adapter=n_adapter,
                   head_copy=head_copy, layers=layers)
    return StepSetup(
        layers=layers, static=static, paged=paged, step_temp=step_temp, grads_total=grads_total,
        grad_shard=shards.grads,
        out_saved=head_saved(text, model.hidden_size, n, fp32_norms(model)) + dropout_masks(model)[1],
        head_copy=head_copy, copies_are_weights=copies_are_weights, g_head=grads.head,
        g_norm=grads.norm, g_emb=grads.emb, tied_tmp=grads.tied_tmp, vocab=model.vocab_size,
        resid=n.resid, logits=n.logits, attn_bytes=n.attn, gather_fwd=gather_fwd,
        gather_bwd=gather_bwd, dequant=_dequant_bytes(model, base),
        math_fallback=_math_fallback(model, n), notes=notes,
        frozen_prefix=_frozen_prefix(method, o, adapted), buckets=extras.buckets,
        fp32_grads=extras.fp32_grads, host=extras.host)
