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
from vramplan.engines.hf_trainer.loss import (LOSS_BWD_PER_LOGIT, LOSS_FWD_EXTRA_PER_LOGIT,  # noqa: F401 (re-exported)
                                              liger_chunk, loss_terms)
from vramplan.engines.hf_trainer.options import Method, TrainOptions, normalize_train_options
from vramplan.engines.hf_trainer.saved_activations import effective_loss
from vramplan.engines.hf_trainer.step_setup import step_setup as _setup   # cached; tests clear it as training._setup

__all__ = ["TrainOptions", "normalize_train_options", "TrainingPeak", "training_peak", "lora_params"]

# The loss's bytes by how it is computed (transformers' default, chunked, cut): loss.py.


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
                  weight_dtype: str = "auto", transformers: int = 5, layer_fn=None) -> TrainingPeak:
    """Peak bytes per GPU of one training step and the phase where it falls, with the module
    layout of that transformers major version."""
    _check_count(batch, "{batch}")
    _check_count(ctx, "{ctx}")
    s = _setup(model, method, opts, weight_dtype or "auto", transformers, layer_fn)
    T = batch * ctx
    gc = opts.grad_ckpt
    static = s.static
    S = sum(static.values())
    loss_kind = effective_loss(model, opts)
    lt = loss_terms(loss_kind, T, s.vocab, model.hidden_size, s.logits, s.resid)
    loss_fwd, loss_bwd, dlogits = lt.forward, lt.backward, lt.lm_head
    if loss_kind == "cut" and not s.g_head:
        # cut cross-entropy saves its input e even when lm_head is frozen (cce.py:141)
        loss_fwd += T * model.hidden_size * s.resid
        loss_bwd += T * model.hidden_size * s.resid
    out_saved = T * s.out_saved
    # gradient_accumulation_steps > 1: the Trainer zeroes the gradients only after the optimizer
    # step (transformers trainer.py, model.zero_grad() after optimizer.step()), so from the second
    # micro-batch on every gradient is alive through the forward and the backward; a layer's new
    # gradient is then accumulated into it (AccumulateGrad adds in place: one layer transient)
    held = s.grads_total if opts.grad_accum > 1 else 0
    # the fused linear cross-entropy makes lm_head's weight gradient in the forward (Liger
    # fused_linear_cross_entropy.py:77, zeros_like(weight)): alive from the loss on
    head_fwd = s.g_head if (lt.head_grad_in_forward and not held) else 0

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
    off = opts.offload_activations
    host_acts = A if off else 0
    if off:
        # activation offloading (TRL models/activation_offloading.py OffloadActivations, Unsloth's
        # offloaded checkpointing): every saved tensor of at least min_offload_size (1,024 bytes,
        # :128) moves to host RAM as the forward saves it; the backward brings a layer's tensors
        # back as it reaches them and prefetches the next layer's on a side stream (:280-300).
        # On the GPU: the layer in flight (forward) or the running and the prefetched layer
        # (backward); the fused loss's and the final norm's tensors stay (needed first).
        A = max(acts, default=0)

    gfwd, gbwd = s.gather_fwd, s.gather_bwd
    bk = s.buckets
    head = s.head_copy
    dq = s.dequant

    # forward: everything saved; the peak is the loss (or, checkpointed, a layer's no-grad forward)
    if loss_fwd >= fwd_x:
        fwd_pt = Point(copies=C + head, activations=A + out_saved, logits=loss_fwd, gather=gfwd,
                       grads=held + head_fwd)
    else:
        fwd_pt = Point(copies=C + head, activations=A + fwd_x + dq, gather=gfwd, grads=held)
    # backward: the loss, the lm_head, each layer from the last, then the embedding
    bwd_pts = [Point(copies=C + head, activations=A + out_saved, logits=loss_bwd, gather=gbwd, buckets=bk,
                     grads=held + head_fwd),
               Point(copies=C + head, grads=held + s.g_head,
                     activations=A + out_saved + T * model.hidden_size * s.resid,
                     logits=dlogits, gather=gbwd, buckets=bk)]
    done = s.g_head + s.g_norm
    c_left, a_left = C, (sum(acts) if not off else 0)
    for i in range(len(s.layers) - 1, -1, -1):
        a_left = a_left - acts[i] if not off else (acts[i - 1] if i > 0 else 0)
        new = grads[i] if held else done + grads[i]
        bwd_pts.append(Point(copies=c_left, grads=held + new,
                             activations=a_left + acts[i] + recs[i] + bwds[i] + dq, gather=gbwd, buckets=bk))
        c_left -= copies[i]
        done += grads[i]
    bwd_pts.append(Point(grads=(held + s.g_emb + s.tied_tmp) if held else done + s.g_emb + s.tied_tmp, buckets=bk))
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
    notes["logits_and_loss"] = {
        "default": f"{batch} x {ctx:,} x {s.vocab:,} logits: fp32 upcast, log-softmax and its gradient",
        "chunked": f"fused linear cross-entropy: {liger_chunk(T, s.vocab, model.hidden_size):,}-token chunks of "
                   f"{s.vocab:,} logits + the hidden-state gradient made in the forward",
        "cut": "cut cross-entropy: no logits; per-token log-sum-exp + the hidden-state gradient"}[loss_kind]
    if opts.offload_activations:
        notes["activations"] += "; saved tensors offloaded to host RAM (running + prefetched layer on the GPU)"
    if opts.grad_accum > 1:
        notes["gradients"] = notes.get("gradients", "") + f"; alive through every micro-batch ({opts.grad_accum} accumulated)"
    notes = {k: notes[k] for k in (*comp, *s.host) if k in notes}
    outside = {"optimizer_paged": s.paged} if s.paged else {}
    host = dict(s.host)
    if host_acts:
        host["activations_offloaded"] = host_acts
        notes["activations_offloaded"] = "host RAM: the saved activations of every layer (activation offloading)"
    return TrainingPeak(components=dict(comp), notes=notes, phase=phase,
                        peak_allocated_bytes=phases[phase], outside_allocator=outside, phases=phases,
                        host=host)
