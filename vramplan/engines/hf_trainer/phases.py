"""One training step (full, LoRA, QLoRA) of the HF Trainer + peft + bitsandbytes kind, per GPU.

Why phases and not a sum: the tensors of a step are never all alive at once. Gradients are
freed (zero_grad(set_to_none=True)) before the forward; saved activations die layer by layer
in the backward while gradients appear; the optimizer step sees all gradients and its own
temporaries but no activations. We evaluate the live bytes at the end of the forward (the loss),
at every point of the backward sweep (loss, lm_head, each decoder layer, embedding) and in the
optimizer step, and report the largest with its phase. Every formula and constant, with its
source, is in docs/training.md; the numbered measurements the model reproduces are in
tests/test_training.py.

The pieces: options.py (settings), numerics.py (bytes per element), saved_activations.py (what
each layer saves), step_setup.py (per-model constants, cached); this module walks the phases and
is the public entry point.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vramplan.errors import BadInput
from vramplan.spec import ModelSpec
from vramplan.units import ceil_div
from vramplan.memory.activations import attention_impl
from vramplan.engines.hf_trainer.lora import lora_params
from vramplan.engines.hf_trainer.options import Method, TrainOptions, normalize_train_options
from vramplan.engines.hf_trainer.step_setup import step_setup as _setup   # cached; tests clear it as training._setup

__all__ = ["TrainOptions", "normalize_train_options", "TrainingPeak", "training_peak", "lora_params"]

# Bytes per logit element (N = batch x ctx positions, V = vocabulary) in transformers >= 4.49
# ForCausalLMLoss (logits.float(); labels padded, not logits sliced; F.cross_entropy =
# log_softmax + nll_loss). Forward, at log_softmax: 16-bit logits (kept in outputs) + fp32 copy +
# fp32 log-probs = 2 + 4 + 4 (8 when the logits are already fp32: .float() is a no-op).
# The log-probs (4) are saved into the backward, where log_softmax's backward holds them, the
# dense grad from nll_loss and its own input grad: 4 + 4 + 4.
LOSS_FWD_EXTRA_PER_LOGIT = 8
LOSS_BWD_PER_LOGIT = 12


@dataclass(frozen=True, kw_only=True)
class TrainingPeak:
    """The step at its peak: components per GPU, the phase, and the allocator bytes per phase."""

    components: dict[str, int]        # name -> bytes per GPU at the peak phase, display order
    notes: dict[str, str]
    phase: str                        # "forward" | "backward" | "optimizer step"
    peak_allocated_bytes: int         # torch.cuda.max_memory_allocated() equivalent
    outside_allocator: dict[str, int] = field(default_factory=dict)
    phases: dict[str, int] = field(default_factory=dict)   # allocator bytes at each phase's peak
    host: dict[str, int] = field(default_factory=dict)     # offloaded to host RAM, per rank


@dataclass(frozen=True, kw_only=True)
class Point:
    """The live bytes at one point of the step, by what holds them; the phase peak is the point
    with the largest total."""

    copies: int = 0         # autocast weight copies still alive
    grads: int = 0          # gradients created so far
    activations: int = 0    # saved activations (+ the running layer's transients)
    logits: int = 0         # logits, loss and their gradients
    gather: int = 0         # ZeRO-3 all-gathered parameters
    temporaries: int = 0    # the optimizer step's temporaries
    buckets: int = 0        # DeepSpeed ZeRO-1/2 reduce buckets (backward)
    fp32_grads: int = 0     # DeepSpeed's fp32 gradient partition (optimizer step)

    @property
    def total(self) -> int:
        return (self.copies + self.grads + self.activations + self.logits + self.gather + self.temporaries
                + self.buckets + self.fp32_grads)


def _check_count(value, flag: str) -> None:
    """batch and ctx come from callers (a solver, the API) as ints: anything else is a mistake."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadInput(f"{flag} must be a whole number of at least 1, got {value!r}.")


def _mask_bytes(L, batch: int, ctx: int, attn_bytes: int) -> int:
    """sdpa with a sliding/chunked window: transformers passes a boolean (b, 1, s, s) mask, which
    SDPA converts to a float bias (last dim padded to 16) that the efficient kernel saves, and
    repeats K/V to every head (no enable_gqa with a mask), which the kernel saves too."""
    if L.window <= 0 or ctx < L.window:
        return 0
    return batch * ctx * (ceil_div(ctx, 16) * 16) * attn_bytes + batch * ctx * L.masked


def training_peak(model: ModelSpec, method: Method, batch: int, ctx: int, opts: TrainOptions,
                  weight_dtype: str = "auto", transformers: int = 5) -> TrainingPeak:
    """Peak bytes per GPU of one training step and the phase where it falls, with the module
    layout of that transformers major version."""
    _check_count(batch, "{batch}")
    _check_count(ctx, "{ctx}")
    s = _setup(model, method, opts, weight_dtype or "auto", transformers)
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
    for i, L in enumerate(s.layers):
        full = T * (L.saved + L.saved_q * ctx) + _mask_bytes(L, batch, ctx, s.attn_bytes)
        if gc:          # a checkpointed layer's merged LoRA weights live only while it runs
            acts.append(T * L.ckpt)
            recs.append(full + L.merged)
            fwd_x = max(fwd_x, T * (L.fwd + L.fwd_q * ctx) + L.merged)
        else:
            acts.append(full + L.merged)
            recs.append(0)
        bwds.append(T * (L.bwd + L.bwd_q * ctx) + L.merged_grad)
        if i < s.frozen_prefix:          # no gradient reaches this layer: nothing saved, no backward
            acts[-1] = recs[-1] = bwds[-1] = 0
        copies.append(L.copies)
        grads.append(ceil_div(L.grads, s.grad_shard))
    A, C = sum(acts), sum(copies)
    gfwd, gbwd = s.gather_fwd, s.gather_bwd
    bk = s.buckets
    head = s.head_copy
    dq = s.dequant

    # forward: everything saved; the peak is the loss (or, checkpointed, a layer's no-grad forward)
    if loss_fwd >= fwd_x:
        fwd_pt = Point(copies=C + head, activations=A + out_saved, logits=loss_fwd, gather=gfwd)
    else:
        fwd_pt = Point(copies=C + head, activations=A + fwd_x + dq, gather=gfwd)
    # backward: the loss, the lm_head, each layer from the last, then the embedding
    bwd_pts = [Point(copies=C + head, activations=A + out_saved, logits=loss_bwd, gather=gbwd, buckets=bk),
               Point(copies=C + head, grads=s.g_head, activations=A + out_saved + T * model.hidden_size * s.resid,
                     logits=dlogits, gather=gbwd, buckets=bk)]
    done = s.g_head + s.g_norm
    c_left, a_left = C, A
    for i in range(len(s.layers) - 1, -1, -1):
        a_left -= acts[i]
        bwd_pts.append(Point(copies=c_left, grads=done + grads[i],
                             activations=a_left + acts[i] + recs[i] + bwds[i] + dq, gather=gbwd, buckets=bk))
        c_left -= copies[i]
        done += grads[i]
    bwd_pts.append(Point(grads=done + s.g_emb + s.tied_tmp, buckets=bk))
    bwd_pt = max(bwd_pts, key=lambda p: p.total)
    step_pt = Point(grads=s.grads_total, temporaries=s.step_temp, fp32_grads=s.fp32_grads)
    cands = (("forward", fwd_pt), ("backward", bwd_pt), ("optimizer step", step_pt))
    phases = {name: S + pt.total for name, pt in cands}
    phase, pt = max(cands, key=lambda c: c[1].total)
    comp = {"weights": static["weights"] + (pt.copies if s.copies_are_weights else 0)}
    for k in ("trainable", "master_weights"):
        if k in static:
            comp[k] = static[k]
    comp["gradients"] = pt.grads
    comp["optimizer"] = static["optimizer"]
    if s.paged:
        comp["optimizer_paged"] = s.paged
    comp["optimizer_step_temporaries"] = pt.temporaries
    comp["activations"] = pt.activations
    comp["logits_and_loss"] = pt.logits
    if not s.copies_are_weights and (C or head):
        comp["autocast_copies"] = pt.copies
    if s.gather_fwd:
        comp["zero3_gather"] = pt.gather
    if "ddp_buckets" in static:
        comp["ddp_buckets"] = static["ddp_buckets"]
    for k in ("zero_buckets", "zero3_persistent"):       # DeepSpeed ZeRO-3: alive throughout
        if k in static:
            comp[k] = static[k]
    if s.buckets:
        comp["zero_buckets"] = pt.buckets
    if s.fp32_grads:
        comp["zero_fp32_grads"] = pt.fp32_grads
    notes = dict(s.notes)
    impl = attention_impl(model, opts.attn)
    attn = {"eager": "eager attention (seq x seq probabilities)", "sdpa": "SDPA flash/efficient kernel",
            "flash_attention_2": "flash-attention 2",
            "eager_sinks": "eager attention with sinks (transformers has no SDPA path for this model)"}[impl]
    if impl == "sdpa" and s.math_fallback:
        attn = "SDPA math backend for fp32 GQA (seq x seq probabilities)"
    notes["activations"] = ("checkpointed layer inputs + one layer recomputed" if gc else
                            "tensors saved for the backward, all layers") + "; " + attn
    notes["logits_and_loss"] = (f"{batch} x {ctx:,} x {s.vocab:,} logits: fp32 upcast, log-softmax "
                                f"and its gradient")
    notes = {k: notes[k] for k in (*comp, *s.host) if k in notes}
    outside = {"optimizer_paged": s.paged} if s.paged else {}
    return TrainingPeak(components=dict(comp), notes=notes, phase=phase,
                        peak_allocated_bytes=phases[phase], outside_allocator=outside, phases=phases,
                        host=dict(s.host))
