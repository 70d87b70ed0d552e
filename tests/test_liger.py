"""Liger kernels, chunked and cut cross-entropy, activation offloading (issue #14 item 5).

The fused linear cross-entropy is held to Liger's own published memory benchmark
(Liger-Kernel benchmark/data/all_benchmark_data.csv, rows fused_linear_cross_entropy, liger,
full, memory; A100-SXM4-80GB, liger 0.4.2, H 4096, V 128256, bf16; MiB = max_memory_allocated
/ 2**20, benchmark/scripts/utils.py:92-106)."""

from __future__ import annotations

import pytest

import vramplan
from tests.bad_input.contract import assert_cli_refuses
from vramplan.engines.hf_trainer.loss import liger_chunk, loss_terms
from vramplan.engines.hf_trainer.numerics import numerics
from vramplan.engines.hf_trainer.options import TrainOptions
from vramplan.engines.hf_trainer.saved_activations import _mlp, _norm_saved
from vramplan.loading import load_model

LLAMA = "meta-llama/Llama-3.1-8B"
H, V = 4096, 128_256
MiB = 2**20

# (BT, published MiB) from all_benchmark_data.csv
LIGER_FLCE_PUBLISHED = [(4096, 4245.5478515625), (8192, 4466.9697265625), (16384, 4910.4384765625),
                        (32768, 5794.6259765625)]


def test_liger_chunk_rule():
    """fused_linear_cross_entropy.py:68-69: inc_factor = cdiv(V, H) = cdiv(128256, 4096) = 32;
    chunk = next_power_of_2(cdiv(BT, 32)). The source's own example (:63): BT 16384, V 32000,
    H 4096 -> inc 8, chunk 2048."""
    assert liger_chunk(4096, V, H) == 128
    assert liger_chunk(12_288, V, H) == 512          # cdiv(12288, 32) = 384 -> 512
    assert liger_chunk(4 * 4096, 32_000, 4096) == 2048


def test_chunked_loss_terms_by_hand():
    """Liger at T = 4,096 tokens, bf16 hidden states: grad_input 4096 x 4096 x 2 = 33,554,432;
    loss_1d 4 x 4096 = 16,384; one chunk of logits 128 x 128,256 x 2 = 32,833,536; the chunk's
    grad_logits @ W 128 x 4096 x 2 = 1,048,576. Saved for the backward: grad_input only.
    transformers' default at the same T: 4096 x 128,256 x (2 + 8) in the forward and 12 B per
    logit in the backward (6,304,038,912 B), the tensor Liger removes."""
    t = loss_terms("chunked", 4096, V, H, 2, 2)
    assert t.forward == 33_554_432 + 16_384 + 32_833_536 + 1_048_576
    assert (t.backward, t.lm_head) == (33_554_432, 0)
    d = loss_terms("default", 4096, V, H, 2, 2)
    assert d.forward == 4096 * V * 10 and d.backward == 4096 * V * 12 and d.lm_head == 4096 * V * 2
    c = loss_terms("cut", 4096, V, H, 2, 2)
    assert c.forward == 8 * 4096 and c.backward == 4 * 4096 + 33_554_432


@pytest.mark.parametrize("bt,published", LIGER_FLCE_PUBLISHED)
def test_liger_flce_against_published_benchmark(bt, published):
    """The benchmark (benchmark_fused_linear_cross_entropy.py, v0.4.2) builds BOTH an HF and a
    Liger lm_head (two V x H bf16 weights), one input x (BT x H, requires grad), int64 targets,
    and runs fwd + backward 10 times: from the second run W.grad and x.grad exist when the
    forward makes grad_weight (zeros_like(W)) and grad_input. v0.4.2 upcast each chunk's logits
    (`logits_chunk.float()` beside the bf16 matmul output: 6 B per chunk logit; the current
    source works in place on the 2-byte output). Everything else is loss.py's chunked term."""
    w = V * H * 2
    t = loss_terms("chunked", bt, V, H, 2, 2)
    chunk = liger_chunk(bt, V, H)
    ours = (4 * w                        # two weights, W.grad, grad_weight
            + 2 * bt * H * 2             # x and x.grad
            + t.forward                  # grad_input, loss_1d, chunk logits (2 B), chunk @ W
            + chunk * V * 4              # v0.4.2's fp32 copy of the chunk's logits
            + bt * 8)                    # targets
    err = ours / MiB / published - 1
    assert abs(err) < 0.10, f"BT {bt}: {ours / MiB:.1f} MiB vs {published:.1f} published ({err:+.1%})"


def test_liger_norm_and_swiglu_saved():
    """Liger's RMSNorm saves X (2 B here) and an fp32 rstd per row: 4096 x 2 + 4 = 8,196 B per
    token, against HF's x.float() + rsqrt (4 x 4096 + 4) when the weight is frozen. Its SwiGLU
    saves gate and up only (2 x 14,336 x 2) and its backward works in place (one incoming grad)."""
    spec = load_model(LLAMA)
    o = TrainOptions(liger=True, loss="chunked")
    n = numerics("lora", o, "bf16", False, False)
    assert _norm_saved(H, 1, 2, False, n, liger=True) == 8196
    assert _norm_saved(H, 1, 2, False, n) == 4 * H + 4
    mlp = spec.layers[0].mlp
    assert _mlp(mlp, H, n, liger=True) == (2 * 14_336 * n.lin_out, 14_336 * n.lin_out)
    assert _mlp(mlp, H, n) == (3 * 14_336 * n.lin_out, 3 * 14_336 * n.lin_out)


def test_liger_removes_the_logits_in_a_plan():
    """Llama-3.1-8B LoRA, bf16, checkpointed, micro-batch 4 x 4,096: transformers' loss holds
    4 x 4096 x 128,256 x 12 B = 25,216,155,648 B at its backward; Liger's fused loss holds the
    16,384 x 4,096 x 2 B hidden-state gradient instead."""
    base = vramplan.plan(LLAMA, "h100", mode="lora", batch=4, ctx=4096, grad_ckpt=True)
    lig = vramplan.plan(LLAMA, "h100", mode="lora", batch=4, ctx=4096, grad_ckpt=True, liger=True)
    assert base.components["logits_and_loss"] == 4 * 4096 * V * 12
    assert lig.total_bytes < base.total_bytes - 20 * 2**30
    assert lig.components.get("logits_and_loss", 0) <= loss_terms("chunked", 16384, V, H, 2, 2).forward


def test_liger_is_a_no_op_where_liger_does_not_patch():
    """GPT-2 is not in MODEL_TYPE_TO_APPLY_LIGER_FN: its RMSNorm/MLP are unchanged; only the
    loss flag (chunked) would act, and --liger without a patch leaves the step as it was."""
    spec = load_model("openai-community/gpt2") if False else None   # noqa: F841 (bundled ids below)
    gpt2 = vramplan.plan("gpt2", "l4", mode="full", batch=1, ctx=1024)
    with_liger = vramplan.plan("gpt2", "l4", mode="full", batch=1, ctx=1024, liger=True)
    assert not load_model("gpt2").traits.liger
    assert with_liger.components["activations"] == gpt2.components["activations"]


def test_offload_activations_host_bytes():
    """Checkpointed Llama-3.1-8B LoRA in bf16, 1 x 4,096: each layer keeps its input, 4096 x
    4096 x 2 = 33,554,432 B; offloaded, the 32 of them (1,073,741,824 B) are in host RAM."""
    p = vramplan.plan(LLAMA, "h100", mode="lora", batch=1, ctx=4096, grad_ckpt=True, offload_activations=True)
    assert p.outside["activations_offloaded"] == 32 * 4096 * 4096 * 2
    q = vramplan.plan(LLAMA, "h100", mode="lora", batch=1, ctx=4096, grad_ckpt=True)
    assert p.total_bytes < q.total_bytes


def test_loss_refusals():
    assert_cli_refuses(["fit", LLAMA, "--mode", "lora", "--liger", "--loss", "cut"], 2, "--liger")
    assert_cli_refuses(["fit", LLAMA, "--mode", "lora", "--loss", "blocked"], 2, "--loss")


def test_live_arguments_carry_liger_and_accumulation():
    """preflight(args=...) reads use_liger_kernel and gradient_accumulation_steps from a real
    TrainingArguments (transformers as installed), so the pre-flight plans what the Trainer runs."""
    transformers = pytest.importorskip("transformers")
    import tempfile

    from vramplan.engines.hf_trainer.live import read_args

    with tempfile.TemporaryDirectory() as d:
        a = transformers.TrainingArguments(output_dir=d, use_liger_kernel=True, gradient_accumulation_steps=4,
                                           per_device_train_batch_size=2, report_to=[])
        s = read_args(a).settings
    assert (s["batch"], s["grad_accum"], s["liger"]) == (2, 4, True)
    p = vramplan.plan(LLAMA, "h100", mode="lora", batch=s["batch"], grad_accum=s["grad_accum"], liger=s["liger"])
    assert p.workload.train.liger and p.workload.train.grad_accum == 4
