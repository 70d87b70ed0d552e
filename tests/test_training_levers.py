"""Issue #14 item 6 and case 6: the levers a trainer pulls, each re-planned, and `compare` in a
training mode trading the micro-batch for gradient accumulation before adding cards."""

from __future__ import annotations

import vramplan
from tests.bad_input.contract import assert_cli_refuses
from vramplan.compare import compare
from vramplan.engines.hf_trainer.engine import traded_batches
from vramplan.units import GiB

LLAMA = "meta-llama/Llama-3.1-8B"
V = 128_256


def test_traded_batches_keep_the_effective_batch():
    assert traded_batches(3, 1) == [(1, 3)]
    assert traded_batches(8, 1) == [(4, 2), (2, 4), (1, 8)]
    assert traded_batches(6, 2) == [(4, 3), (3, 4), (2, 6), (1, 12)]
    assert traded_batches(1, 4) == []
    assert all(b * a == 12 for b, a in traded_batches(6, 2))


def test_case6_compare_qlora_micro_batch_3_is_one_rtx4090_at_1_x_3():
    """Case 6: compare said this QLoRA job "needs more than 64 GPUs"; it runs on one RTX 4090.

    By hand (Llama-3.1-8B, QLoRA as peft prepares it, checkpointed, 4,096 tokens): the loss
    backward holds 12 B per logit (loss.LOSS_BWD_PER_LOGIT), so at micro-batch 3 the logits
    alone are 3 x 4,096 x 128,256 x 12 = 18,912,116,736 B = 17.61 GiB of the 4090's 23.64 GiB,
    and the step needs 34.12 GiB: no card count helps (ZeRO-3 shards no logits). At micro-batch
    1 x accumulation 3 (the same 3 sequences per optimizer step) they are 6,304,038,912 B and the
    step needs 17.47 GiB: one card."""
    c = compare(LLAMA, "rtx-4090", mode="qlora", batch=3, ctx=4096)
    row = c.rows[0]
    assert not row.fits and row.one_card.components["logits_and_loss"] == 3 * 4096 * V * 12
    assert row.gpus_needed == 1 and row.cheapest
    assert row.plan.workload.batch == 1 and row.plan.workload.train.grad_accum == 3
    assert row.plan.fits and row.plan.components["logits_and_loss"] == 1 * 4096 * V * 12
    assert 17.4 * GiB < row.plan.total_bytes < 17.5 * GiB
    from vramplan.render.compare import layout, row_json
    assert layout(row) == "1 GPU, micro-batch 1 x 3 accum"
    j = row_json(row)
    assert (j["gpus_needed"], j["micro_batch"], j["grad_accum"]) == (1, 1, 3)


def test_fit_levers_ranked_cheapest_first():
    """`fit` offers the same trade first among the changes that keep the batch and the model:
    Liger (no cost), then --batch 1 --grad-accum 3; each is a full re-plan."""
    p = vramplan.plan(LLAMA, "rtx-4090", mode="qlora", batch=3, ctx=4096)
    assert not p.fits
    changes = [s.change for s in p.suggestions]
    assert changes[:2] == ["--liger", "--batch 1 --grad-accum 3"]
    trade = p.suggestions[1]
    again = vramplan.plan(LLAMA, "rtx-4090", mode="qlora", batch=1, ctx=4096, grad_accum=3)
    assert trade.total_bytes == again.total_bytes and trade.fits
    assert "--batch 1" not in changes          # the bare smaller batch (a smaller effective batch) is not repeated


def test_grad_accum_keeps_gradients_alive_in_the_forward():
    """gradient_accumulation_steps > 1: the gradients of the previous micro-batch are alive in
    the next forward (the Trainer zeroes them after optimizer.step()). Full fine-tuning of
    Llama-3.1-8B in bf16: 8,030,261,248 params x 2 B = 16,060,522,496 B more in the forward."""
    one = vramplan.plan(LLAMA, "h200", mode="full", batch=1, ctx=1024, grad_ckpt=True)
    acc = vramplan.plan(LLAMA, "h200", mode="full", batch=1, ctx=1024, grad_ckpt=True, grad_accum=4)
    from vramplan.engines.hf_trainer.phases import training_peak
    from vramplan.loading import load_model
    spec = load_model(LLAMA)
    a = training_peak(spec, "full", 1, 1024, one.workload.train)
    b = training_peak(spec, "full", 1, 1024, acc.workload.train)
    assert b.phases["forward"] - a.phases["forward"] == 8_030_261_248 * 2
    assert b.phases["optimizer step"] == a.phases["optimizer step"]
    assert acc.total_bytes >= one.total_bytes


def test_grad_accum_refusals():
    assert_cli_refuses(["fit", LLAMA, "--mode", "lora", "--grad-accum", "0"], 2, "--grad-accum")
    assert_cli_refuses(["fit", LLAMA, "--grad-accum", "2"], 2, "training modes")
