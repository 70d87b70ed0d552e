"""One training step (full, LoRA, QLoRA) of the HF Trainer + peft + bitsandbytes kind, per GPU.

Why phases and not a sum: the tensors of a step are never all alive at once. Gradients are
freed (zero_grad(set_to_none=True)) before the forward; saved activations die layer by layer
in the backward while gradients appear; the optimizer step sees all gradients and its own
temporaries but no activations. We evaluate the live bytes at the end of the forward (the loss),
at every point of the backward sweep (loss, lm_head, each decoder layer, embedding) and in the
optimizer step, and report the largest with its phase. Every formula and constant, with its
source, is in docs/training.md; the numbered measurements the model reproduces are in
tests/test_training.py.

Pure: dataclasses in, integers out; per-model constants are cached (functools.lru_cache on the
hashable ModelSpec and options) so a solver can call `training_peak` many times.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from ..errors import BadInput
from ..spec import Attention, LayerSpec, Mlp, ModelSpec, Recurrent, Tensor
from ..units import ceil_div
from . import activations as act
from . import lora as lora_mod
from .optimizers import Param, param_of, resolve_optim, state_bytes, step_temp_bytes
from .weights import quantized_bytes, quantizes, resolve_format

TRAIN_MODES = ("full", "lora", "qlora")
PRECISIONS = ("bf16", "mixed")
ATTN_IMPLS = ("sdpa", "eager", "flash_attention_2")
KBIT_PREPARE = ("peft", "trl", "none")
LORA_DTYPES = ("fp32", "bf16")

# Bytes per logit element (N = batch x ctx positions, V = vocabulary) in transformers >= 4.49
# ForCausalLMLoss (logits.float(); labels padded, not logits sliced; F.cross_entropy =
# log_softmax + nll_loss). Forward, at log_softmax: 16-bit logits (kept in outputs) + fp32 copy +
# fp32 log-probs = 2 + 4 + 4 (8 when the logits are already fp32: .float() is a no-op).
# The log-probs (4) are saved into the backward, where log_softmax's backward holds them, the
# dense grad from nll_loss and its own input grad: 4 + 4 + 4.
LOSS_FWD_EXTRA_PER_LOGIT = 8
LOSS_BWD_PER_LOGIT = 12
# The efficient/flash SDPA kernels keep a fp32 logsumexp per head and query.
LSE_BYTES = 4
# Module names whose input is the output of the block before them (attention output, MLP
# product), not the normalized residual stream.
_OUT_NAMES = frozenset({"o_proj", "out_proj", "dense", "c_proj", "down_proj", "fc2",
                        "dense_4h_to_h", "w2", "wo"})
_ATTN_PARENTS = frozenset({"self_attn", "attn", "self_attention", "attention"})
_TOWER_WORDS = ("vision", "visual", "multi_modal", "audio")


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainOptions:
    """Training settings, named as in HF TrainingArguments / peft LoraConfig.

    precision "bf16": parameters stored and computed in 16 bits, no autocast (pure bf16);
    "mixed": trainable parameters kept in fp32 and the forward/backward under bf16 autocast.
    QLoRA always runs under autocast (the Trainer's bf16=True), whatever `precision` says.
    zero 1/2/3 shard optimizer state / + gradients / + parameters over `world` GPUs (FSDP
    full-shard counts as 3). kbit_prepare says what QLoRA keeps out of 4 bits and in which dtype:
    "peft" = peft.prepare_model_for_kbit_training (embeddings, norms, lm_head upcast to fp32),
    "trl" = TRL SFTTrainer / qlora.py (norms fp32, embeddings and adapters bf16, autocast),
    "none" = everything left 16-bit. lora_dtype is the adapters' dtype (peft upcasts to fp32).
    """

    optim: str = "adamw_torch"
    grad_ckpt: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_targets: tuple[str, ...] | None = None
    lora_dropout: float = 0.05
    precision: str = "bf16"
    zero: int = 0
    world: int = 1
    attn: str = "sdpa"
    lora_dtype: str = "fp32"
    kbit_prepare: str = "peft"


_FLAGS = {"optim": "--optim", "grad_ckpt": "--grad-ckpt", "lora_r": "--lora-r",
          "lora_alpha": "--lora-alpha", "lora_targets": "--lora-targets",
          "lora_dropout": "--lora-dropout", "precision": "--precision", "zero": "--zero",
          "world": "the GPU count (--gpu ID:COUNT)", "attn": "--attn",
          "lora_dtype": "--lora-dtype", "kbit_prepare": "--kbit-prepare"}


def _int(value, flag: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            if isinstance(value, bool) or float(value) != int(value):
                raise ValueError
            value = int(value)
        except (TypeError, ValueError):
            raise BadInput(f"{flag} must be a whole number, got {value!r}.") from None
    if value < low or (high is not None and value > high):
        span = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise BadInput(f"{flag} must be {span}, got {value}.")
    return value


def _choice(value, flag: str, allowed: tuple[str, ...], aliases: dict | None = None) -> str:
    key = str(value).strip().lower()
    key = (aliases or {}).get(key, key)
    if key not in allowed:
        raise BadInput(f"{flag} {value!r} is not one of: {', '.join(allowed)}.")
    return key


def _bool(value, flag: str) -> bool:
    if isinstance(value, bool):
        return value
    key = str(value).strip().lower()
    if key in ("1", "true", "yes", "on"):
        return True
    if key in ("0", "false", "no", "off"):
        return False
    raise BadInput(f"{flag} must be true or false, got {value!r}.")


def normalize_train_options(**kwargs) -> TrainOptions:
    """Validate and canonicalize training settings; a bad value raises BadInput naming the flag."""
    unknown = sorted(set(kwargs) - set(_FLAGS))
    if unknown:
        raise BadInput(f"unknown training option {unknown[0]!r}; known: {', '.join(_FLAGS)}.")
    d = {k: v for k, v in kwargs.items() if v is not None or k == "lora_targets"}
    out = {}
    if "optim" in d:
        out["optim"] = resolve_optim(d["optim"]).name
    if "grad_ckpt" in d:
        out["grad_ckpt"] = _bool(d["grad_ckpt"], _FLAGS["grad_ckpt"])
    if "lora_r" in d:
        out["lora_r"] = _int(d["lora_r"], _FLAGS["lora_r"], 1, 65536)
    if "lora_alpha" in d:
        a = d["lora_alpha"]
        try:
            ok = not isinstance(a, bool) and float(a) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise BadInput(f"--lora-alpha must be a positive number, got {a!r}.")
        out["lora_alpha"] = int(a) if float(a) == int(float(a)) else float(a)
    if "lora_targets" in d:
        out["lora_targets"] = lora_mod.normalize_targets(d["lora_targets"])
    if "lora_dropout" in d:
        p = d["lora_dropout"]
        try:
            p = float(p)
            ok = 0.0 <= p < 1.0 and not isinstance(d["lora_dropout"], bool)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise BadInput(f"--lora-dropout must be a probability in [0, 1), got {d['lora_dropout']!r}.")
        out["lora_dropout"] = p
    if "precision" in d:
        out["precision"] = _choice(d["precision"], "--precision", PRECISIONS,
                                   {"bfloat16": "bf16", "pure": "bf16", "amp": "mixed", "fp32-master": "mixed"})
    if "zero" in d:
        out["zero"] = _int(d["zero"], "--zero", 0, 3)
    if "world" in d:
        out["world"] = _int(d["world"], _FLAGS["world"], 1, 65536)
    if "attn" in d:
        out["attn"] = _choice(d["attn"], "--attn", ATTN_IMPLS,
                              {"flash": "flash_attention_2", "fa2": "flash_attention_2",
                               "flash_attention": "flash_attention_2"})
    if "lora_dtype" in d:
        out["lora_dtype"] = _choice(d["lora_dtype"], "--lora-dtype", LORA_DTYPES,
                                    {"float32": "fp32", "bfloat16": "bf16", "fp16": "bf16"})
    if "kbit_prepare" in d:
        out["kbit_prepare"] = _choice(d["kbit_prepare"], "--kbit-prepare", KBIT_PREPARE)
    return TrainOptions(**out)


# ---------------------------------------------------------------------------------------------
# Result
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainingPeak:
    components: dict[str, int]        # name -> bytes per GPU at the peak phase, display order
    notes: dict[str, str]
    phase: str                        # "forward" | "backward" | "optimizer step"
    peak_allocated_bytes: int         # torch.cuda.max_memory_allocated() equivalent
    outside_allocator: dict[str, int] = field(default_factory=dict)
    phases: dict[str, int] = field(default_factory=dict)   # allocator bytes at each phase's peak


# ---------------------------------------------------------------------------------------------
# Dtype plan
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Num:
    """Bytes per element of each activation stream and of the trainable state."""

    resid: int          # residual stream between layers
    norm_out: int       # norm outputs = inputs of the projections
    lin_out: int        # projection outputs, MLP intermediates
    attn: int           # q, k, v, out as the attention kernel saves them
    logits: int
    autocast: bool
    base_trainable: bool
    lora_w: int         # adapter dtype bytes (0: full fine-tuning)
    peft_cast: bool     # peft casts the adapter input to the adapter dtype (lora.Linear always;
                        # the bnb 4/8-bit LoRA layers only outside autocast)
    param_bytes: int    # dtype the optimizer steps (fp32 master under "mixed")
    grad_bytes: int
    layer_copies: bool  # autocast keeps bf16 copies of every fp32 matmul weight (HF AMP, full)
    head_copy: bool     # lm_head weight stored fp32 and run under autocast
    int8_base: bool = False   # bnb MatMul8bitLt saves its input A and int8 CAt even for frozen B


def _float_bytes(weight_dtype: str, model: ModelSpec, mode: str) -> int:
    """16 bits for "auto" (an fp32 checkpoint is trained in bf16; an fp8/mxfp4 one is dequantized)."""
    wd = weight_dtype.strip().lower()
    if wd in ("auto", "bf16", "fp16", "bfloat16", "float16"):
        return 2
    if wd in ("fp32", "float32"):
        return 4
    raise BadInput(f"--dtype {weight_dtype!r} does not apply to --mode {mode}: "
                   f"it trains 16- or 32-bit weights (bf16, fp16, fp32); for a 4-bit base use --mode qlora.")


def _numerics(mode: str, o: TrainOptions, weight_dtype: str, model: ModelSpec) -> _Num:
    mixed = o.precision == "mixed"
    lw = 4 if o.lora_dtype == "fp32" else 2
    if mode == "full":
        e = _float_bytes(weight_dtype, model, mode)
        if mixed and o.zero == 0:          # HF Trainer AMP: fp32 params, bf16 autocast
            return _Num(4, 4, 2, 2, 2, True, True, 0, False, 4, 4, True, True)
        if mixed:                          # DeepSpeed/FSDP bf16: 16-bit params, fp32 master in the optimizer
            return _Num(2, 2, 2, 2, 2, False, True, 0, False, 4, 2, False, False)
        return _Num(e, e, e, e, e, False, True, 0, False, e, e, False, False)
    if mode == "lora":
        b = _float_bytes(weight_dtype, model, mode)
        if mixed:
            return _Num(b, b, 2, 2, 2, True, False, lw, True, lw, lw, False, False)
        return _Num(b, b, b, b, b, False, False, lw, True, lw, lw, False, False)
    # qlora: always under autocast (Trainer bf16=True / fp16=True: bnb's compute dtype is the
    # autocast dtype; "bf16" and "mixed" are the same here, the adapters being the fp32 masters).
    # bnb Linear4bit casts its input to the compute dtype and its output back to the input's
    # dtype, so fp32 norms (peft, trl) make every projection output fp32.
    int8 = weight_dtype.strip().lower() == "int8"
    kp = o.kbit_prepare
    if kp == "trl":                        # qlora.py / TRL bf16: adapters bf16, lm_head bf16
        return _Num(4, 4, 4, 2, 2, True, False, 2, False, 2, 2, False, False, int8)
    if kp == "peft":                       # fp32 lm_head under autocast: a bf16 weight copy
        return _Num(4, 4, 4, 2, 2, True, False, lw, False, lw, lw, False, True, int8)
    return _Num(2, 2, 2, 2, 2, True, False, lw, False, lw, lw, False, False, int8)


# ---------------------------------------------------------------------------------------------
# Per-layer activations
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Layer:
    saved: int          # bytes per token the backward keeps (no checkpointing)
    saved_q: int        # ... per token per context position (eager attention scores)
    window: int         # sdpa builds a (b, 1, s, s) float mask for this layer when ctx >= window
    bwd: int            # transient bytes per token while this layer runs backward
    bwd_q: int
    fwd: int            # transient bytes per token of a no-grad forward (checkpointed layers)
    fwd_q: int
    ckpt: int           # bytes per token a checkpointed layer keeps (its input)
    copies: int         # autocast weight copies kept for this layer's backward
    grads: int          # gradient bytes of this layer's trainable parameters (unsharded)
    work: int           # bytes of this layer's weights in their working dtype (ZeRO-3 gather)


def _is_tower(name: str) -> bool:
    return any(w in name for w in _TOWER_WORDS)


def _parent(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def _norm_cost(t: Tensor, layer: LayerSpec, names: set[str], h: int, n: _Num, trainable: bool) -> int:
    w = t.shape[0]
    m = layer.mixer
    leaf = t.leaf
    if isinstance(m, Attention) and leaf == "q_norm":
        width, rows, x = m.num_heads * m.head_dim, m.num_heads, n.lin_out
    elif isinstance(m, Attention) and leaf == "k_norm":
        width, rows, x = m.num_kv_heads * m.head_dim, m.num_kv_heads, n.lin_out
    elif w == h:
        width, rows, x = h, 1, n.resid
    else:
        width, rows, x = w, 1, n.lin_out
    if t.name + ".bias" in names:       # nn.LayerNorm: saves its input (fp32 under autocast), mean, rstd
        return width * (4 if n.autocast else x) + 8 * rows
    # RMSNorm: x.float() (saved by pow/mul), rsqrt per row, and the normalized tensor in the
    # input dtype when the weight is trained (for the weight's gradient).
    return 4 * width + 4 * rows + (x * width if trainable else 0)


def _attention(a: Attention, o: TrainOptions, n: _Num) -> tuple[int, int, int, int, int]:
    """(saved, saved_q, bwd, bwd_q, window) per token for the attention core."""
    H = a.num_heads
    q = H * a.head_dim
    out = H * a.v_head_dim
    if a.kind == "mla":
        k, v = H * a.head_dim, H * a.v_head_dim
        extra = H * (a.head_dim - a.rope_dim + a.v_head_dim) * n.lin_out   # kv_b_proj output kept (k_nope, v views)
    else:
        k, v = a.num_kv_heads * a.head_dim, a.num_kv_heads * a.v_head_dim
        extra = 0
    # fp32 q/k/v with GQA: flash needs 16-bit and the efficient kernel rejects enable_gqa, so SDPA
    # falls back to its math backend, which materializes the probabilities like eager attention.
    eager = o.attn == "eager" or (o.attn == "sdpa" and n.attn == 4 and a.num_kv_heads < H)
    if eager and a.num_kv_heads < H:       # repeat_kv copies, saved by the two matmuls
        k, v = H * a.head_dim, H * a.v_head_dim
    saved = (q + k + v) * n.attn + extra
    saved_q = bwd_q = 0
    if eager:
        probs_copy = n.attn if (n.attn != 4 or n.autocast) else 0
        saved_q = H * (4 + probs_copy)     # fp32 softmax output + the copy the PV matmul saves
        bwd_q = H * (4 + n.attn)           # grad of probs and of scores
        bwd = (q + k + v + out) * n.attn
    else:
        saved += out * n.attn + LSE_BYTES * H
        bwd = (q + k + v + out) * n.attn + 4 * q   # dq, dk, dv, dout + fp32 dq accumulator
    window = (a.window or 0) if (o.attn == "sdpa" and not eager and a.kind in ("sliding", "chunked")) else 0
    return saved, saved_q, bwd, bwd_q, window


def _mlp(m: Mlp, h: int, n: _Num) -> tuple[int, int]:
    """(saved, bwd) per token for the MLP's elementwise chain (projection inputs excluded)."""
    I, e = m.intermediate, n.lin_out
    if m.kind == "dense":
        if m.gated:
            return 3 * I * e, 3 * I * e        # gate (act input), act(gate), up; 3 grads in backward
        return I * e, 2 * I * e                # act input
    k = max(m.top_k, 1)
    per_slot = (3 * I + h) * e                 # gate, act, up, expert output x routing weight
    if n.base_trainable:
        per_slot += h * n.norm_out + I * e     # gathered input and product, saved for weight grads
    shared = 3 * m.shared_intermediate * e
    router = 4 * m.num_experts                 # fp32 softmax of the router logits
    return k * per_slot + shared + router, k * 3 * I * e + 3 * m.shared_intermediate * e


def _linears(layer: LayerSpec, o: TrainOptions, n: _Num, adapted: dict[str, lora_mod.Adapted],
             sdpa_like: bool) -> int:
    """Bytes per token saved for the projections: their inputs (when a weight needs a gradient)
    and the adapters' inputs and rank-r intermediates."""
    shared: dict[tuple, int] = {}
    per_module = 0
    attn_mixer = isinstance(layer.mixer, Attention)
    for t in layer.tensors:
        if t.role not in ("linear", "router") or len(t.shape) < 2:
            continue
        inp = t.shape[-1]
        parent = _parent(t.name)
        is_out = t.leaf in _OUT_NAMES
        attn_out = is_out and attn_mixer and parent.rsplit(".", 1)[-1] in _ATTN_PARENTS
        x_e = n.attn if attn_out else (n.lin_out if is_out else n.norm_out)
        key = (parent, inp, is_out)
        free = attn_out and sdpa_like          # the kernel already keeps this tensor (its `out`)
        if n.base_trainable:
            if n.autocast and x_e != 2:
                per_module += 2 * inp          # autocast's bf16 copy of the input, per module
            elif not free:
                shared[key] = x_e * inp
        elif n.int8_base and t.role == "linear":
            per_module += inp                  # CAt: the int8-quantized input
            if not free:
                shared[key] = x_e * inp        # A itself
        a = adapted.get(t.name)
        if a is None:
            continue
        cast = (n.peft_cast or not n.autocast) and x_e != n.lora_w
        x1 = n.lora_w if cast else x_e
        if o.lora_dropout > 0:
            per_module += inp                  # dropout mask (bool)
        if n.autocast and x1 != 2:
            per_module += 2 * inp              # autocast copy lora_A saves
        elif o.lora_dropout > 0 or cast:
            per_module += x1 * inp             # dropout output / dtype copy lora_A saves
        elif not free:
            shared[key] = x_e * inp
        per_module += o.lora_r * (2 if n.autocast else n.lora_w)   # lora_A output, saved by lora_B
    return per_module + sum(shared.values())


def _layer(layer: LayerSpec, model: ModelSpec, o: TrainOptions, n: _Num,
           adapted: dict[str, lora_mod.Adapted], work_bytes) -> _Layer:
    h = model.hidden_size
    names = {t.name for t in layer.tensors}
    m = layer.mixer
    math = (isinstance(m, Attention) and o.attn == "sdpa" and n.attn == 4 and m.num_kv_heads < m.num_heads)
    sdpa_like = o.attn != "eager" and not math     # the kernel keeps its output (o_proj's input)
    saved = _linears(layer, o, n, adapted, sdpa_like)
    for t in layer.tensors:
        if t.role == "norm":
            saved += _norm_cost(t, layer, names, h, n, n.base_trainable)
    saved_q = bwd_q = window = 0
    bwd_mix = bwd_mlp = 0
    if isinstance(m, Attention):
        s, saved_q, bwd_mix, bwd_q, window = _attention(m, o, n)
        saved += s
    elif isinstance(m, Recurrent):
        proj = max((t.shape[0] for t in layer.tensors if t.leaf == "in_proj"), default=0)
        d_inner = m.num_heads * m.head_dim
        saved += (proj + m.conv_channels + 2 * d_inner) * n.lin_out   # approximate: see docs
        bwd_mix = 2 * proj * n.lin_out
    if layer.mlp is not None:
        s, bwd_mlp = _mlp(layer.mlp, h, n)
        saved += s
    lora_in = max((a.in_features for a in adapted.values()), default=0) * n.lora_w
    bwd = max(bwd_mix, bwd_mlp) + 2 * h * n.resid + lora_in
    peak_elems, _ = act.layer_peak_elems(layer, h)
    fwd = peak_elems * n.lin_out
    fwd_q = (m.num_heads * (n.attn + 4 + 2)) if (isinstance(m, Attention) and (saved_q or o.attn == "eager")) else 0
    matmul = sum(t.numel for t in layer.tensors if t.role in ("linear", "expert", "router"))
    if n.base_trainable:
        copies = 2 * matmul if n.layer_copies else 0
        grads = layer.params * n.grad_bytes
    else:
        lp = sum(a.params(o.lora_r) for a in adapted.values())
        copies = 2 * lp if (n.autocast and n.lora_w == 4) else 0
        grads = lp * n.grad_bytes
    work = sum(work_bytes(t) for t in layer.tensors)
    return _Layer(saved, saved_q, window, bwd, bwd_q, fwd, fwd_q, n.resid * h, copies, grads, work)


# ---------------------------------------------------------------------------------------------
# Per-model constants (cached)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Setup:
    layers: tuple[_Layer, ...]
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


def _weight_fn(mode: str, n: _Num, o: TrainOptions, model: ModelSpec, weight_dtype: str):
    """(bytes of one tensor as stored, label) for the frozen/working copy of the weights."""
    if mode in ("full", "lora"):
        e = 2 if (mode == "full" and o.precision == "mixed") else _float_bytes(weight_dtype, model, mode)
        name = {2: "bf16" if model.torch_dtype != "fp16" else "fp16", 4: "fp32"}[e]
        return (lambda t: t.numel * e), name
    wd = "nf4" if weight_dtype in ("auto", None) else weight_dtype.strip().lower()
    if wd not in ("nf4", "fp4", "int8"):
        raise BadInput(f"--dtype {weight_dtype!r} does not apply to --mode qlora; use nf4 (default), fp4 or int8.")
    fmt = resolve_format(model, wd)
    q = fmt.quant
    kp = o.kbit_prepare

    def kept(t: Tensor) -> int:
        if kp == "peft":
            return 4                                   # every non-quantized param upcast to fp32
        if kp == "trl":
            return 4 if t.role in ("norm", "bias", "other", "router", "conv") else 2
        return 2

    def fn(t: Tensor) -> int:
        return quantized_bytes(t, q) if quantizes(t, q) else t.numel * kept(t)

    kept_label = {"peft": "rest fp32 (peft prepare_model_for_kbit_training)",
                  "trl": "norms fp32, embeddings/lm_head 16-bit (TRL/qlora.py)", "none": "rest 16-bit"}[kp]
    return fn, f"{fmt.label.split(' + ')[0]}, {kept_label}"


def _param(t: Tensor) -> Param:
    return param_of(t.shape, t.count, embedding=t.role == "embedding", decay=t.role not in ("norm", "bias"))


@lru_cache(maxsize=128)
def _setup(model: ModelSpec, mode: str, o: TrainOptions, weight_dtype: str) -> _Setup:
    if mode not in TRAIN_MODES:
        raise BadInput(f"--mode {mode!r} is not a training mode; use one of: {', '.join(TRAIN_MODES)}.")
    n = _numerics(mode, o, weight_dtype, model)
    opt = resolve_optim(o.optim)
    N = o.world
    z = o.zero if N > 1 else 0
    wfn, wlabel = _weight_fn(mode, n, o, model, weight_dtype)
    adapted_all = () if mode == "full" else lora_mod.adapted_modules(model, o.lora_targets)
    by_layer: dict[int | None, dict[str, lora_mod.Adapted]] = {}
    for a in adapted_all:
        by_layer.setdefault(a.layer, {})[a.tensor.name] = a
    wb: dict[str, int] = {}

    def wbytes(t: Tensor) -> int:
        b = wb.get(t.name)
        if b is None:
            b = wb[t.name] = wfn(t)
        return b

    memo: dict[tuple, _Layer] = {}
    built = []
    for l in model.layers:                      # identical layers are computed once
        ad = by_layer.get(l.index, {})
        sig = (l.mixer, l.mlp, tuple((t.leaf, t.shape, t.role, t.count, wbytes(t), t.name in ad)
                                     for t in l.tensors))
        if sig not in memo:
            memo[sig] = _layer(l, model, o, n, ad, wbytes)
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
                       (param_of((o.lora_r, a.in_features), a.matrices), param_of((a.out_features, o.lora_r), a.matrices)))
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
    norms = [t for t in text if t.role == "norm" and t.shape == (h,)]
    names = {t.name for t in text}
    out_saved = 0
    for t in norms[-1:]:                           # the final norm
        if t.name + ".bias" in names:              # LayerNorm
            out_saved += h * (4 if n.autocast else n.resid) + 8
        else:                                      # RMSNorm
            out_saved += 4 * h + 4 + (n.resid * h if n.base_trainable else 0)
    if n.base_trainable:                            # lm_head saves its input for the weight grad
        out_saved += h * (2 if n.autocast and n.norm_out != 2 else n.norm_out)
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
        q = resolve_format(model, "nf4" if weight_dtype in ("auto", None) else weight_dtype.strip().lower()).quant
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
    state_dtype = {4: "fp32", 2: "bf16"}[n.param_bytes]
    opt_desc = {"adamw": "AdamW 2 moments", "adafactor": "Adafactor factored fp32 moments",
                "sgd": "SGD, momentum 0: no state"}[opt.family]
    if opt.impl == "bnb":
        opt_desc = f"bitsandbytes AdamW {opt.bits}-bit" + (", paged" if opt.paged else "")
    elif opt.family == "adamw":
        opt_desc += f" in {state_dtype} ({opt.name})"
    notes["optimizer"] = opt_desc + (f", sharded over {N}" if opt_shard > 1 else "")
    if paged:
        notes["optimizer_paged"] = ("bitsandbytes paged state in CUDA managed memory: outside "
                                    "torch.cuda.max_memory_allocated, evicted to CPU under pressure")
    notes["optimizer_step_temporaries"] = {
        "foreach": "foreach AdamW: one tensor list the size of the parameters (sqrt of exp_avg_sq)",
        "fused": "fused kernel: no parameter-sized temporaries", "forloop": "per-tensor loop: the largest tensor",
        "bnb": "in-place bitsandbytes kernels", "hf": "fp32 copies of the largest parameter"}[opt.impl]
    if opt.family == "sgd":
        notes["optimizer_step_temporaries"] = "in-place update"
    if "ddp_buckets" in static:
        notes["ddp_buckets"] = "DDP gradient buckets (gradient_as_bucket_view=False): one more gradient copy"
    if z == 3:
        notes["zero3_gather"] = "all-gathered parameters: FSDP root unit + current and prefetched layer"
    if head_copy or any(l.copies for l in layers):
        notes["autocast_copies"] = "bf16 copies autocast makes of fp32 matmul weights, kept for the backward"

    return _Setup(layers, static, paged, step_temp, grads_total, grad_shard, out_saved, head_copy,
                  copies_are_weights, g_head, g_norm, g_emb, tied_tmp, V, n.resid, n.logits, n.attn,
                  gather_fwd, gather_bwd, dequant,
                  n.attn == 4 and any(a.num_kv_heads < a.num_heads for a in
                                      (l.mixer for l in model.attention_layers)), notes)


# ---------------------------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------------------------

def _mask_bytes(window: int, batch: int, ctx: int, attn_bytes: int) -> int:
    """sdpa with a sliding/chunked window: transformers passes a boolean (b, 1, s, s) mask, which
    SDPA converts to a float bias (last dim padded to 16) that the efficient kernel saves."""
    if window <= 0 or ctx < window:
        return 0
    return batch * ctx * (ceil_div(ctx, 16) * 16) * attn_bytes


def training_peak(model: ModelSpec, mode: str, batch: int, ctx: int, opts: TrainOptions,
                  weight_dtype: str = "auto") -> TrainingPeak:
    """Peak bytes per GPU of one training step and the phase where it falls."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise BadInput(f"--batch must be a whole number of at least 1, got {batch!r}.")
    if isinstance(ctx, bool) or not isinstance(ctx, int) or ctx < 1:
        raise BadInput(f"--ctx must be a whole number of at least 1, got {ctx!r}.")
    s = _setup(model, mode, opts, weight_dtype or "auto")
    T = batch * ctx
    gc = opts.grad_ckpt
    static = s.static
    S = sum(static.values())
    NV = T * s.vocab
    l = s.logits
    loss_fwd = NV * ((l + LOSS_FWD_EXTRA_PER_LOGIT) if l != 4 else LOSS_FWD_EXTRA_PER_LOGIT)
    loss_bwd = NV * LOSS_BWD_PER_LOGIT
    dlogits = NV * l
    out_saved = T * s.out_saved

    acts, recs, bwds, copies, grads = [], [], [], [], []
    fwd_x = 0
    for L in s.layers:
        full = T * (L.saved + L.saved_q * ctx) + _mask_bytes(L.window, batch, ctx, s.attn_bytes)
        if gc:
            acts.append(T * L.ckpt)
            recs.append(full)
            fwd_x = max(fwd_x, T * (L.fwd + L.fwd_q * ctx))
        else:
            acts.append(full)
            recs.append(0)
        bwds.append(T * (L.bwd + L.bwd_q * ctx))
        copies.append(L.copies)
        grads.append(ceil_div(L.grads, s.grad_shard))
    A, C = sum(acts), sum(copies)
    gfwd, gbwd = s.gather_fwd, s.gather_bwd
    head = s.head_copy
    dq = s.dequant

    # A point of the step: (copies alive, gradients, activations, logits/loss, gather, temporaries).
    # forward: everything saved; the peak is the loss (or, checkpointed, a layer's no-grad forward)
    if loss_fwd >= fwd_x:
        fwd_pt = (C + head, 0, A + out_saved, loss_fwd, gfwd, 0)
    else:
        fwd_pt = (C + head, 0, A + fwd_x + dq, 0, gfwd, 0)
    # backward: the loss, the lm_head, each layer from the last, then the embedding
    bwd_pts = [(C + head, 0, A + out_saved, loss_bwd, gbwd, 0),
               (C + head, s.g_head, A + out_saved + T * model.hidden_size * s.resid, dlogits, gbwd, 0)]
    done = s.g_head + s.g_norm
    c_left, a_left = C, A
    for i in range(len(s.layers) - 1, -1, -1):
        a_left -= acts[i]
        bwd_pts.append((c_left, done + grads[i], a_left + acts[i] + recs[i] + bwds[i] + dq, 0, gbwd, 0))
        c_left -= copies[i]
        done += grads[i]
    bwd_pts.append((0, done + s.g_emb + s.tied_tmp, 0, 0, 0, 0))
    bwd_pt = max(bwd_pts, key=sum)
    step_pt = (0, s.grads_total, 0, 0, 0, s.step_temp)
    cands = (("forward", fwd_pt), ("backward", bwd_pt), ("optimizer step", step_pt))
    phases = {name: S + sum(pt) for name, pt in cands}
    phase, pt = max(cands, key=lambda c: sum(c[1]))
    copies_now, grad, activ, logits, gather, temp = pt
    comp = {"weights": static["weights"] + (copies_now if s.copies_are_weights else 0)}
    for k in ("trainable", "master_weights"):
        if k in static:
            comp[k] = static[k]
    comp["gradients"] = grad
    comp["optimizer"] = static["optimizer"]
    if s.paged:
        comp["optimizer_paged"] = s.paged
    comp["optimizer_step_temporaries"] = temp
    comp["activations"] = activ
    comp["logits_and_loss"] = logits
    if not s.copies_are_weights and (C or head):
        comp["autocast_copies"] = copies_now
    if s.gather_fwd:
        comp["zero3_gather"] = gather
    if "ddp_buckets" in static:
        comp["ddp_buckets"] = static["ddp_buckets"]
    notes = dict(s.notes)
    attn = {"eager": "eager attention (seq x seq probabilities)", "sdpa": "SDPA flash/efficient kernel",
            "flash_attention_2": "flash-attention 2"}[opts.attn]
    if opts.attn == "sdpa" and s.math_fallback:
        attn = "SDPA math backend for fp32 GQA (seq x seq probabilities)"
    notes["activations"] = ("checkpointed layer inputs + one layer recomputed" if gc else
                            "tensors saved for the backward, all layers") + "; " + attn
    notes["logits_and_loss"] = (f"{batch} x {ctx:,} x {s.vocab:,} logits: fp32 upcast, log-softmax "
                                f"and its gradient")
    notes = {k: notes[k] for k in comp if k in notes}
    outside = {"optimizer_paged": s.paged} if s.paged else {}
    return TrainingPeak(components=dict(comp), notes=notes, phase=phase,
                        peak_allocated_bytes=phases[phase], outside_allocator=outside, phases=phases)


def lora_params(model: ModelSpec, targets, r: int) -> int:
    """Exact LoRA parameter count from the real target-module shapes (see core.lora)."""
    return lora_mod.lora_params(model, targets, r)
