"""What autograd keeps per token for the backward, per decoder layer and outside the layers.

Why per op and per layer kind: an op saves only what its backward formula needs for the inputs
that require a gradient, so a frozen projection keeps nothing while a trained one keeps its
input, and attention, MLP, MoE and Mamba layers each save different tensors. Sizes are bytes
per token (some per token per context position); the step multiplies them by batch x ctx.
The formulas, with sources, are docs/training.md §4.
"""

from __future__ import annotations

from dataclasses import dataclass

from vramplan.spec import Attention, LayerSpec, Mlp, ModelSpec, Recurrent, Tensor
from vramplan.memory import activations as act
from vramplan.engines.hf_trainer.lora import Adapted
from vramplan.engines.hf_trainer.numerics import Numerics
from vramplan.engines.hf_trainer.options import TrainOptions

# The efficient/flash SDPA kernels keep a fp32 logsumexp per head and query.
LSE_BYTES = 4
# gpt-oss eager attention's backward: score-sized gradients alive at once (softmax, max and cat
# backward), in the compute dtype; fitted to the trace tier on gpt-oss-20b (docs/trace.md gap 5).
EAGER_SINKS_BWD = 3
# Liger's RMSNorm keeps rstd in fp32 per row in the llama and gemma casting modes (rms_norm.py:452).
LIGER_RSTD = 4


@dataclass(frozen=True, kw_only=True)
class LayerCost:
    """One decoder layer's memory in a training step, per token unless said otherwise."""

    saved: int          # bytes per token the backward keeps (no checkpointing)
    saved_q: int        # ... per token per context position (eager attention scores)
    window: int         # sdpa builds a (b, 1, s, s) float mask for this layer when ctx >= window
    masked: int         # ... and then saves K/V repeated to every head: bytes per token more
    bwd: int            # transient bytes per token while this layer runs backward
    bwd_q: int
    fwd: int            # transient bytes per token of a no-grad forward (checkpointed layers)
    fwd_q: int
    ckpt: int           # bytes per token a checkpointed layer keeps (its input)
    copies: int         # autocast weight copies kept for this layer's backward
    merged: int         # peft ParamWrapper: W + B A of each wrapped fused parameter, saved by the
                        # grouped matmul until this layer's backward (bytes, not per token)
    merged_grad: int    # ... and the gradient of the largest one, made in the backward (bytes)
    grads: int          # gradient bytes of this layer's trainable parameters (unsharded)
    work: int           # bytes of this layer's weights in their working dtype (ZeRO-3 gather)


def _parent(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def _norm_saved(width: int, rows: int, x: int, layer_norm: bool, n: Numerics, fp32: bool = False,
                liger: bool = False) -> int:
    """Bytes one norm saves for `rows` rows of `width` values whose input has `x` bytes each.
    `fp32`: a Gemma RMSNorm, which scales by (1 + weight) in fp32 and casts only its result.
    `liger`: Liger's RMSNorm, which saves its input as given and an fp32 rstd per row, and
    recomputes the normalized tensor for the weight's gradient (Liger-Kernel
    src/liger_kernel/ops/rms_norm.py:449-453 Y and RSTD, :656-659 save_for_backward(X, W, RSTD))."""
    if liger and not layer_norm:
        return x * width + LIGER_RSTD * rows
    if layer_norm:                      # nn.LayerNorm: saves its input (fp32 under autocast), mean, rstd
        return width * (4 if n.autocast else x) + 8 * rows
    # RMSNorm: x.float() (saved by pow/mul), rsqrt per row, and the normalized tensor (input
    # dtype; Gemma: fp32) when the weight is trained (for the weight's gradient).
    return 4 * width + 4 * rows + ((4 if fp32 else x) * width if n.base_trainable else 0)


def fp32_norms(model: ModelSpec) -> bool:
    return model.traits.norm_fp32


def _norm_cost(t: Tensor, layer: LayerSpec, names: set[str], h: int, n: Numerics, fp32: bool,
               liger: bool = False) -> int:
    """A norm inside a layer: the residual norms, per-head q/k norms, or a narrower one (MLA)."""
    w = t.shape[0]
    m = layer.mixer
    if isinstance(m, Attention) and t.per_head == "q":
        width, rows, x = m.num_heads * m.head_dim, m.num_heads, n.lin_out
    elif isinstance(m, Attention) and t.per_head == "kv":
        width, rows, x = m.num_kv_heads * m.head_dim, m.num_kv_heads, n.lin_out
    elif w == h:
        width, rows, x = h, 1, n.resid
    else:
        width, rows, x = w, 1, n.lin_out
    return _norm_saved(width, rows, x, t.name + ".bias" in names, n, fp32, liger)


@dataclass(frozen=True, kw_only=True)
class AttentionCost:
    """The attention core's share of a LayerCost (same units and meanings as its fields)."""

    saved: int
    saved_q: int
    bwd: int
    bwd_q: int
    window: int


def _attention(a: Attention, impl: str, n: Numerics) -> AttentionCost:
    """What the attention core run by `impl` (activations.attention_impl: sdpa, eager,
    eager_sinks or flash_attention_2) saves and holds per token."""
    H = a.num_heads
    q = H * a.head_dim
    out = H * a.v_head_dim
    if a.kind == "mla":
        k, v = H * a.head_dim, H * a.v_head_dim
        extra = H * (a.head_dim - a.rope_dim + a.v_head_dim) * n.lin_out   # kv_b_proj output kept (k_nope, v views)
        if n.attn == n.lin_out:
            v = 0      # the kernel's v is a view into that output, not a tensor of its own (trace tier)
    else:
        k, v = a.num_kv_heads * a.head_dim, a.num_kv_heads * a.v_head_dim
        extra = 0
    # fp32 q/k/v with GQA: flash needs 16-bit and the efficient kernel rejects enable_gqa, so SDPA
    # falls back to its math backend, which materializes the probabilities like eager attention.
    sinks = impl == "eager_sinks"
    eager = impl in ("eager", "eager_sinks") or (impl == "sdpa" and n.attn == 4 and a.num_kv_heads < H)
    if eager and a.num_kv_heads < H:       # repeat_kv copies, saved by the two matmuls
        k, v = H * a.head_dim, H * a.v_head_dim
    saved = (q + k + v) * n.attn + extra
    saved_q = bwd_q = 0
    if sinks:
        # gpt-oss: the softmax over [scores, sink] runs in the input dtype and its output is what
        # the softmax and the PV matmul save; the row max keeps its int64 argmax per head
        saved += 8 * H
        saved_q = H * n.attn
        bwd_q = EAGER_SINKS_BWD * H * n.attn
        bwd = (q + k + v + out) * n.attn
    elif eager:
        probs_copy = n.attn if (n.attn != 4 or n.autocast) else 0
        saved_q = H * (4 + probs_copy)     # fp32 softmax output + the copy the PV matmul saves
        bwd_q = H * (4 + n.attn)           # grad of probs and of scores
        bwd = (q + k + v + out) * n.attn
    else:
        saved += out * n.attn + LSE_BYTES * H
        bwd = (q + k + v + out) * n.attn + 4 * q   # dq, dk, dv, dout + fp32 dq accumulator
    window = (a.window or 0) if (impl == "sdpa" and not eager and a.kind in ("sliding", "chunked")) else 0
    return AttentionCost(saved=saved, saved_q=saved_q, bwd=bwd, bwd_q=bwd_q, window=window)


def _mlp(m: Mlp, h: int, n: Numerics, liger: bool = False) -> tuple[int, int]:
    """(saved, bwd) per token for the MLP's elementwise chain (projection inputs excluded).
    `liger`: LigerSiLUMulFunction saves only gate and up (swiglu.py:262 save_for_backward(a, b))
    and its backward writes both gradients into them in place (swiglu.py:191-228 returns a, b),
    so the backward holds only the incoming gradient."""
    I, e = m.intermediate, n.lin_out
    extra = act.PYTHON_ACTS.get(m.act, (0, 0))[1]   # a Python activation's saved intermediates
    if liger and m.kind == "dense" and m.gated:    # LigerSwiGLUMLP / LigerGEGLUMLP (same saves)
        return 2 * I * e, I * e
    if m.kind == "dense":
        if m.gated:
            return 3 * I * e, 3 * I * e        # gate (act input), act(gate), up; 3 grads in backward
        return (1 + extra) * I * e, 2 * I * e  # act input
    k = max(m.top_k, 1)
    per_slot = (3 * I + h + extra * I) * e     # gate, act, up, expert output x routing weight
    if n.base_trainable:
        per_slot += h * n.norm_out + I * e     # gathered input and product, saved for weight grads
    shared = 3 * m.shared_intermediate * e
    router = 4 * m.num_experts                 # fp32 softmax of the router logits
    return k * per_slot + shared + router, k * 3 * I * e + 3 * m.shared_intermediate * e


def _linears(layer: LayerSpec, o: TrainOptions, n: Numerics, adapted: dict[str, Adapted],
             sdpa_like: bool, attention_module: str) -> int:
    """Bytes per token saved for the projections: their inputs (when a weight needs a gradient)
    and the adapters' inputs and rank-r intermediates."""
    shared: dict[tuple, int] = {}
    per_module = 0
    attn_mixer = isinstance(layer.mixer, Attention)
    fused_mamba = isinstance(layer.mixer, Recurrent)
    for t in layer.tensors:
        if t.role not in ("linear", "router") or len(t.shape) < 2:
            continue
        if fused_mamba and t.split == "row":
            continue        # out_proj, inside mamba_ssm's fused kernel, which recomputes its input
        inp = t.shape[-1]
        parent = _parent(t.name)
        is_out = t.split == "row"      # reads the block's inner output, not the normalized residual
        attn_out = is_out and attn_mixer and parent.rsplit(".", 1)[-1] == attention_module
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
        if a is None or a.merged:              # a ParamWrapper saves its merged weight instead
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


def dropout_masks(model: ModelSpec) -> tuple[int, int]:
    """Bytes per token of the masks training-mode dropout keeps for the backward (CUDA's fused
    native_dropout: one bool per element): (per decoder layer, outside the layers). A config's
    residual dropout acts on the attention and the MLP outputs (2 x hidden per layer), its
    embedding dropout once on the embeddings (GPT-2's resid_pdrop, embd_pdrop)."""
    t = model.traits
    h = model.hidden_size
    return (2 * h if t.dropout_residual > 0 else 0), (h if t.dropout_embedding > 0 else 0)


def _fused_qkv_extra(layer: LayerSpec, a: Attention, impl: str, n: Numerics) -> int:
    """The q and k widths of a fused QKV output the kernel keeps whole, because v stays a view of
    it (ModelSpec.traits.fused_qkv_saved_whole: Phi-3, Falcon; trace tier)."""
    if n.attn != n.lin_out or impl not in ("sdpa", "flash_attention_2") or a.kind == "mla":
        return 0           # v is cast (a copy of its own) or repeated by eager attention
    if not any(t.split == "qkv" for t in layer.tensors):
        return 0
    return (a.num_heads + a.num_kv_heads) * a.head_dim * n.lin_out


def layer_cost(layer: LayerSpec, model: ModelSpec, o: TrainOptions, n: Numerics,
               adapted: dict[str, Adapted], work_bytes) -> LayerCost:
    """Everything the step needs from one decoder layer; `adapted` are its LoRA-wrapped modules
    by tensor name, `work_bytes(tensor)` the bytes of a weight as stored."""
    h = model.hidden_size
    names = {t.name for t in layer.tensors}
    m = layer.mixer
    liger = uses_liger(model, o)
    impl = act.attention_impl(model, o.attn)
    eager = impl in ("eager", "eager_sinks")
    math = (isinstance(m, Attention) and impl == "sdpa" and n.attn == 4 and m.num_kv_heads < m.num_heads)
    sdpa_like = not eager and not math     # the kernel keeps its output (o_proj's input)
    saved = _linears(layer, o, n, adapted, sdpa_like, model.traits.attention_module) + dropout_masks(model)[0]
    for t in layer.tensors:
        # a Mamba layer's gated norm (split by head) runs inside mamba_ssm's fused kernel
        if t.role == "norm" and not (isinstance(m, Recurrent) and t.split == "heads"):
            saved += _norm_cost(t, layer, names, h, n, fp32_norms(model), liger)
    saved_q = bwd_q = window = 0
    bwd_mix = bwd_mlp = 0
    if isinstance(m, Attention):
        core = _attention(m, impl, n)
        saved += core.saved + (_fused_qkv_extra(layer, m, impl, n) if model.traits.fused_qkv_saved_whole else 0)
        saved_q, bwd_mix, bwd_q, window = core.saved_q, core.bwd, core.bwd_q, core.window
    elif isinstance(m, Recurrent):
        # mamba_ssm's fused training kernel (MambaSplitConv1dScanCombinedFn) saves the in_proj
        # output, the scan output and the gated norm's fp32 rstd per group; it recomputes the
        # conv and norm outputs in its backward, which holds in_proj- and conv-sized gradients,
        # d_inner-sized recomputations and six chunk-state-sized tensors (trace/mamba.py)
        saved += (m.in_proj + m.d_inner) * n.lin_out + 4 * m.n_groups
        bwd_mix = (m.in_proj + 2 * m.conv_channels + 4 * m.d_inner + 6 * m.chunk_state_elems) * n.lin_out
    if layer.mlp is not None:
        s, bwd_mlp = _mlp(layer.mlp, h, n, liger)
        saved += s
    lora_in = max((a.in_features for a in adapted.values()), default=0) * n.lora_w
    bwd = max(bwd_mix, bwd_mlp) + 2 * h * n.resid + lora_in
    peak_elems, _ = act.layer_peak_elems(layer, h, act.residual_tensors(model), layout="transformers")
    fwd = peak_elems * n.lin_out
    if isinstance(m, Recurrent):       # a checkpointed layer recomputes through the fused kernel
        fwd = (act.residual_tensors(model) * h + m.in_proj + m.conv_channels + 4 * m.num_heads
               + 3 * m.chunk_state_elems) * n.lin_out
    fwd_q = 0
    if isinstance(m, Attention) and impl == "eager_sinks":
        fwd_q = m.num_heads * act.EAGER_SCORES[impl] * n.attn
    elif isinstance(m, Attention) and (saved_q or eager):
        fwd_q = m.num_heads * (n.attn + 4 + 2)
    matmul = sum(t.numel for t in layer.tensors if t.role in ("linear", "expert", "router"))
    if n.base_trainable:
        copies = 2 * matmul if n.layer_copies else 0
        grads = layer.params * n.grad_bytes
    else:
        lp = sum(a.params(o.lora_r) for a in adapted.values())
        copies = 2 * lp if (n.autocast and n.lora_w == 4) else 0
        if n.autocast:
            # a frozen matmul weight kept in fp32 (peft's kbit preparation upcasts whatever
            # bitsandbytes did not quantize: Falcon's FalconLinear under transformers 5) runs on
            # autocast's bf16 copy, which its backward keeps
            copies += 2 * sum(t.numel for t in layer.tensors
                              if t.role in ("linear", "expert") and work_bytes(t) >= 4 * t.numel)
        grads = lp * n.grad_bytes
    work = sum(work_bytes(t) for t in layer.tensors)
    # with a mask, transformers repeats K/V for SDPA (no enable_gqa) and the kernel saves the copies
    masked = (m.num_heads - m.num_kv_heads) * (m.head_dim + m.v_head_dim) * n.attn if window else 0
    merged = [work_bytes(a.tensor) for a in adapted.values() if a.merged]
    return LayerCost(saved=saved, saved_q=saved_q, window=window, masked=masked, bwd=bwd, bwd_q=bwd_q,
                     fwd=fwd, fwd_q=fwd_q, ckpt=n.resid * h, copies=copies, merged=sum(merged),
                     merged_grad=max(merged, default=0), grads=grads, work=work)


def head_saved(text: list[Tensor], h: int, n: Numerics, fp32: bool = False, liger: bool = False,
               head_input: bool = True) -> int:
    """Bytes per token saved outside the decoder layers: the final norm and lm_head's input
    (`head_input` False: a fused linear cross-entropy computes lm_head's weight gradient in its
    forward and keeps no input)."""
    names = {t.name for t in text}
    norms = [t for t in text if t.role == "norm" and t.shape == (h,)]
    saved = sum(_norm_saved(h, 1, n.resid, t.name + ".bias" in names, n, fp32, liger) for t in norms[-1:])
    if n.base_trainable and head_input:             # lm_head saves its input for the weight grad
        saved += h * (2 if n.autocast and n.norm_out != 2 else n.norm_out)
    return saved


def uses_liger(model: ModelSpec, o: TrainOptions) -> bool:
    """Liger's kernels run only where it patches the model type (ModelSpec.traits.liger)."""
    return o.liger and model.traits.liger


def effective_loss(model: ModelSpec, o: TrainOptions) -> str:
    """The loss the step computes: --liger on a model type Liger does not patch changes nothing
    (transformers' apply_liger_kernel warns and leaves the model as it is), loss included."""
    if o.liger and not model.traits.liger:
        return "default"
    return o.loss


# The attention core's cost, for engines that replace the rest of a layer's saved tensors
# (engines/unsloth/kernels.py): the same kernel saves the same tensors whoever calls it.
attention_cost = _attention
