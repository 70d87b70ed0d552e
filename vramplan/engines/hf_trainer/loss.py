"""The loss at the end of the forward and the start of the backward, by how it is computed.

Why its own module: at 128k-262k vocabularies the logits are often the largest tensor of a
step, and the three ways people compute the loss keep very different amounts of them
(docs/training.md §15). Sizes are bytes for the whole micro-batch of T = batch x ctx tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

# Bytes per logit element (N = batch x ctx positions, V = vocabulary) in transformers >= 4.49
# ForCausalLMLoss (logits.float(); labels padded, not logits sliced; F.cross_entropy =
# log_softmax + nll_loss). Forward, at log_softmax: 16-bit logits (kept in outputs) + fp32 copy +
# fp32 log-probs = 2 + 4 + 4 (8 when the logits are already fp32: .float() is a no-op).
# The log-probs (4) are saved into the backward, where log_softmax's backward holds them, the
# dense grad from nll_loss and its own input grad: 4 + 4 + 4.
LOSS_FWD_EXTRA_PER_LOGIT = 8
LOSS_BWD_PER_LOGIT = 12
# The per-token fp32 vectors a fused loss keeps: Liger's loss_1d (fused_linear_cross_entropy.py:86),
# cut cross-entropy's lse and neg_dot (cce_lse_forward.py:193, cce.py).
FP32 = 4


@dataclass(frozen=True)
class LossTerms:
    """What the loss holds at the three points the phase walk visits."""

    forward: int        # at the loss in the forward (beside the saved activations)
    backward: int       # at the loss's backward (its gradient wrt the hidden states included)
    lm_head: int        # at lm_head's backward (0: the fused loss returns the hidden grad itself)
    head_grad_in_forward: bool = False   # lm_head's weight gradient is made during the forward


def next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def liger_chunk(tokens: int, vocab: int, hidden: int) -> int:
    """Tokens per chunk of Liger's fused linear cross-entropy: the chunk's logits are about as
    large as the input (fused_linear_cross_entropy.py:68-69: inc_factor = cdiv(V, H),
    chunk_size = next_power_of_2(cdiv(BT, inc_factor)))."""
    inc = -(-vocab // hidden)
    return min(next_pow2(-(-tokens // inc)), next_pow2(tokens))


def loss_terms(kind: str, tokens: int, vocab: int, hidden: int, logit_bytes: int, hidden_bytes: int) -> LossTerms:
    """`kind` default | chunked | cut; `logit_bytes` the lm_head output's element size,
    `hidden_bytes` that of the hidden states (and their gradient)."""
    NV = tokens * vocab
    if kind == "chunked":
        # Liger (fused_linear_cross_entropy.py): grad_input = zeros_like(input) (:72) and
        # loss_1d (:86) for all tokens; per chunk its logits (:114, chunk x V, overwritten in
        # place by their gradient, :162-212) and grad_logits @ weight (:231, chunk x H). The
        # forward saves grad_input only (:431-435) and the backward returns it (scaled in place).
        c = liger_chunk(tokens, vocab, hidden)
        grad_in = tokens * hidden * hidden_bytes
        fwd = grad_in + FP32 * tokens + c * vocab * logit_bytes + c * hidden * logit_bytes
        return LossTerms(fwd, grad_in, 0, head_grad_in_forward=True)
    if kind == "cut":
        # Apple cut cross-entropy (cce.py:141 saves e, c, lse, targets; cce_lse_forward.py:193
        # lse fp32 per token): the forward keeps two fp32 vectors; the backward allocates
        # de = zeros_like(e) (cce_backward.py:391) and, for a trained classifier, dc (counted
        # with the lm_head gradient), computing the logits block by block in registers.
        return LossTerms(2 * FP32 * tokens, FP32 * tokens + tokens * hidden * hidden_bytes, 0)
    fwd = NV * ((logit_bytes + LOSS_FWD_EXTRA_PER_LOGIT) if logit_bytes != 4 else LOSS_FWD_EXTRA_PER_LOGIT)
    return LossTerms(fwd, NV * LOSS_BWD_PER_LOGIT, NV * logit_bytes)
