"""`--engine unsloth`: Unsloth's LoRA/QLoRA recipe (issue #14 item 5), held to Unsloth's own
published context-length table (https://docs.unsloth.ai/basics/unsloth-benchmarks, "Llama 3.1
(8B) max. context length": Llama 3.1 8B Instruct, 4-bit QLoRA on q,k,v,o,gate,up,down, rank 32,
batch 1, sequences padded to the length; the same table in https://unsloth.ai/blog/llama3-3)."""

from __future__ import annotations

import pytest

import vramplan
from tests.bad_input.contract import assert_cli_refuses
from vramplan.engines.hf_trainer.numerics import numerics
from vramplan.engines.hf_trainer.options import TrainOptions
from vramplan.engines.unsloth.kernels import unsloth_layer_cost
from vramplan.engines.hf_trainer.step_setup import step_setup
from vramplan.loading import load_model

LLAMA = "meta-llama/Llama-3.1-8B"
ALL7 = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
# GPU VRAM (GB) -> Unsloth context length, from the table cited above
PUBLISHED_8B = [(12, 21_848), (16, 40_724), (24, 78_475), (40, 153_977), (48, 191_728), (80, 342_733)]


def _max_ctx(gb: int, model: str = LLAMA) -> int:
    p = vramplan.plan(model, gpu_mem=f"{gb}GB", engine="unsloth", mode="qlora", lora_r=32,
                      lora_targets=ALL7, batch=1, ctx=2048)
    return p.max_ctx


@pytest.mark.parametrize("gb,published", PUBLISHED_8B)
def test_llama31_8b_max_context_within_10_percent(gb, published):
    ours = _max_ctx(gb)
    err = ours / published - 1
    assert abs(err) < 0.10, f"{gb} GB: {ours:,} vs {published:,} published ({err:+.1%})"


def test_per_layer_saved_by_hand():
    """Llama-3.1-8B under Unsloth, bf16 (kbit_prepare none), per token per layer:
    two RMSNorms save X and an fp32 r: 2 x (4096 x 2 + 4) = 16,392; LoRA_QKV's and LoRA_MLP's
    X: 2 x 4096 x 2 = 16,384; the attention kernel: q 4096 + K, V expanded to 32 heads by
    xFormers (2 x 4096) + out 4096, x 2 B = 32,768, + lse 32 x 4 = 128; LoRA_MLP's e, g:
    2 x 14,336 x 2 = 57,344. Total 122,016 B (peft + HF modules save 200 KB+ for the same layer)."""
    spec = load_model(LLAMA)
    o = TrainOptions(lora_r=32, lora_targets=tuple(ALL7.split(",")), grad_ckpt=True, kbit_prepare="none",
                     offload_activations=True, loss="cut")
    s = step_setup(spec, "qlora", o, "nf4", 5, unsloth_layer_cost)
    assert s.layers[0].saved == 16_392 + 16_384 + 32_768 + 128 + 57_344
    hf = step_setup(spec, "qlora", o, "nf4", 5)
    assert hf.layers[0].saved > s.layers[0].saved + 60_000


def test_partial_targets_fall_back_to_peft_modules():
    """Attention-only targets: Unsloth runs the MLP through its plain path; the HF formula is kept."""
    spec = load_model(LLAMA)
    o = TrainOptions(lora_targets=("q_proj", "v_proj"), grad_ckpt=True, kbit_prepare="none")
    assert step_setup(spec, "qlora", o, "nf4", 5, unsloth_layer_cost).layers == step_setup(spec, "qlora", o, "nf4", 5).layers


def test_recipe_defaults_and_refusals():
    p = vramplan.plan(LLAMA, "rtx-4090", engine="unsloth", mode="qlora", batch=1, ctx=4096)
    o = p.workload.train
    # the plan's workload is the user's; the engine plans Unsloth's recipe (checkpointing offloaded,
    # fused loss, adamw_8bit): far below the HF trainer's plan of the same request
    hf = vramplan.plan(LLAMA, "rtx-4090", mode="qlora", batch=1, ctx=4096)
    assert p.total_bytes < hf.total_bytes - 4 * 2**30 and o.lora_r == 8
    assert "Unsloth" in p.component_notes["logits_and_loss"]
    assert_cli_refuses(["fit", LLAMA, "--engine", "unsloth", "--mode", "full"], 2, "hf-trainer")
    assert_cli_refuses(["fit", LLAMA, "--engine", "unsloth", "--mode", "serve"], 2, "--engine")
    assert_cli_refuses(["fit", LLAMA, "--engine", "unsloth", "--mode", "qlora", "--gpu", "h100:2"], 2, "one GPU")


@pytest.mark.parametrize("model,published", [("meta-llama/Llama-3.1-8B", 342_733),
                                             ("meta-llama/Llama-3.3-70B-Instruct", 89_389)])
def test_80gb_a100_rows_on_the_real_card(model, published):
    """The 80 GB row of both tables, planned on the catalog A100-SXM4-80GB (79.15 GiB CUDA total),
    the card the 70B test names ("We tested Llama 3.3 (70B) Instruct on a 80GB A100",
    https://unsloth.ai/blog/llama3-3): 8B 360,327 (+5.1 %), 70B 88,720 (-0.7 %)."""
    p = vramplan.plan(model, "a100-80gb", engine="unsloth", mode="qlora", lora_r=32, lora_targets=ALL7,
                      batch=1, ctx=2048)
    assert abs(p.max_ctx / published - 1) < 0.10, (p.max_ctx, published)
