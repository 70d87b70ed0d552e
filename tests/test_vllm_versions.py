"""vLLM as of its current release (issue #13 items 1-3): --vllm-version and its eras, the profile's
sampler pass per path, vLLM's own model code (residual stream, rotary cache, MXFP4 layouts per
backend), what vLLM does (starts vs holds, its refusals), and 2026 start-up logs reproduced.

Sources are cited beside each test and in docs/sources/vllm-accounting.md (A.9, Part C) and
docs/serving.md. Tolerance on a logged "Available KV cache memory" or "Model loading took": 3 %.
"""

import json
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from tests.bad_input.contract import assert_api_refuses, assert_cli_refuses
from vramplan import api, catalog
from vramplan import planner as core_plan
from vramplan.cli import app
from vramplan.engines.vllm import serving
from vramplan.errors import BadInput
from vramplan.memory import activations as act
from vramplan.spec import GpuTarget
from vramplan.units import GiB, MiB


GPUS = {g.id: g for g in catalog.load_gpus()}
runner = CliRunner()


def serve(model, gpu="h100", version="", count=1, **options):
    target = GpuTarget(GPUS[gpu], count)
    w = api.make_workload(gpu_count=count, **options)
    w = replace(w, serve=replace(w.serve, vllm_version=version))
    return core_plan.build(api.load_model(model), target, w, suggest=False)


def close(ours, logged, tol=0.03):
    return abs(ours - logged) <= tol * abs(logged)


# ------------------------------------------------------------------ versions and eras

@pytest.mark.parametrize("text, release, era", [
    ("0.9", (0, 9, 0), "0.9-0.10"), ("0.10.1", (0, 10, 1), "0.9-0.10"),
    ("0.11", (0, 11, 0), "0.11-0.16"), ("v0.14.1", (0, 14, 1), "0.11-0.16"), ("0.16.0", (0, 16, 0), "0.11-0.16"),
    ("0.17.0", (0, 17, 0), "0.17-0.20"), ("0.20.1rc1", (0, 20, 1), "0.17-0.20"),   # PR #33538 landed in v0.17.0
    ("0.21", (0, 21, 0), "0.21+"), ("0.29.1rc1.dev17+gd2d649e67", (0, 29, 1), "0.21+"),
    ("0.31.0", (0, 31, 0), "0.21+"), ("", (0, 31, 0), "0.21+"),
])
def test_every_release_maps_onto_its_era(text, release, era):
    v = serving.resolve_version(text)
    assert (v.release, v.era, v.note) == (release, era, "")


def test_the_default_is_the_newest_release_and_the_output_names_it():
    assert serving.NEWEST_RELEASE == (0, 31, 0)
    r = runner.invoke(app, ["fit", "Qwen/Qwen3-0.6B", "--gpu", "h100", "--ctx", "8k"])
    assert r.exit_code == 0 and "engine    vLLM 0.31.0 (default: the newest release known); 0.21+ accounting" in r.stdout
    data = json.loads(runner.invoke(app, ["fit", "Qwen/Qwen3-0.6B", "--gpu", "h100", "--ctx", "8k", "--json",
                                          "--vllm-version", "0.14.1"]).stdout)
    assert data["serve"]["engine"].startswith("vLLM 0.14.1; 0.11-0.16 accounting")


def test_a_future_release_is_planned_as_the_newest_era_with_a_note():
    v = serving.resolve_version("0.40")
    assert v.era == "0.21+" and "newer than the newest release" in v.note
    p = serve("Qwen/Qwen3-0.6B", version="1.2.3", ctx=8192)
    assert any("1.2.3 is newer than the newest release" in w for w in p.warnings)
    assert p.serve.available_bytes == serve("Qwen/Qwen3-0.6B", ctx=8192).serve.available_bytes


def test_versions_that_are_not_releases_are_refused():
    assert_cli_refuses(["fit", "Qwen/Qwen3-0.6B", "--gpu", "h100", "--vllm-version", "0.8.5"], 2, "before 0.9")
    assert_cli_refuses(["fit", "Qwen/Qwen3-0.6B", "--gpu", "h100", "--vllm-version", "latest"], 2,
                       "not a version")
    with pytest.raises(BadInput, match="not a version"):
        serving.resolve_version("0.x")


# ------------------------------------------------------------------ the profile's sampler pass

def test_sampler_pass_per_path_by_hand():
    # Llama-3.1-8B on an H100 with `vllm serve` defaults: 8,192 tokens, 1,024 requests x 128,256 vocab.
    rows, vocab = 1024, 128_256
    sort = serve("meta-llama/Llama-3.1-8B", version="0.16", ctx=8192).components["activations"]
    assert sort == int(38.5 * rows * vocab)                                   # 4.71 GiB
    # 0.17+: 14 B per logit, the Triton buffer min(132 SMs, next_pow2(132)) x vocab x 4 B, and the
    # forward's 8,192 x 4,096 bf16 hidden states the profile still holds.
    triton = serve("meta-llama/Llama-3.1-8B", version="0.17", ctx=8192).components["activations"]
    assert triton == 14 * rows * vocab + 132 * vocab * 4 + 8192 * 4096 * 2   # 1.84 GiB
    assert serve("meta-llama/Llama-3.1-8B", version="0.21", ctx=8192).components["activations"] == triton
    # fewer requests than SMs: the buffer has next_pow2(rows) rows (here 8)
    small = serve("meta-llama/Llama-3.1-8B", version="0.21", ctx=8192, max_num_seqs=6).components["activations"]
    fwd = act.forward_peak(api.load_model("meta-llama/Llama-3.1-8B"), 8192, 2,
                           act.widest_layer(api.load_model("meta-llama/Llama-3.1-8B"), layout="vllm")).bytes
    assert small == max(14 * 6 * vocab + 8 * vocab * 4 + 8192 * 4096 * 2, fwd)


def test_cuda_graphs_move_inside_the_budget_at_0_21_only():
    before = serve("meta-llama/Llama-3.1-8B", version="0.20", ctx=8192)
    later = serve("meta-llama/Llama-3.1-8B", version="0.21", ctx=8192)
    assert "cuda_graphs" in before.serve.outside_budget and "cuda_graphs" in later.components
    assert before.serve.available_bytes - later.serve.available_bytes == serving.CUDA_GRAPHS_BYTES


# ------------------------------------------------------------------ vLLM's own model code

def test_vllm_llama_keeps_three_residual_tensors():
    # LlamaDecoderLayer: the caller's layer input, the residual and the post-attention normed
    # hidden states (fused add + RMSNorm in place). MLP point: 3 x 4,096 + gate_up 2 x 14,336 +
    # act 14,336 = 55,296 elements per token; transformers keeps 4 hidden-size tensors: 59,392.
    m = api.load_model("meta-llama/Llama-3.1-8B")
    assert act.widest_layer(m, layout="vllm")[0] == 3 * 4096 + 3 * 14336
    assert act.widest_layer(m, layout="transformers")[0] == 4 * 4096 + 3 * 14336


def test_rotary_cache_is_in_the_weights():
    # cos_sin_cache [131,072 positions, 128 rotary dims] bf16 = 32 MiB. With it the weights are
    # 16,094,076,928 B = 14.9888 GiB against "Model loading took 14.9889 GiB" (vllm PR #17122, B.2).
    m = api.load_model("meta-llama/Llama-3.1-8B")
    assert serving.rope_cache_bytes(m, 2) == 131072 * 128 * 2 == 32 * MiB
    w = serve("meta-llama/Llama-3.1-8B", ctx=8192).components["weights"]
    assert w == 16_060_522_496 + 32 * MiB and abs(w / GiB - 14.9889) < 0.0005
    # gpt-oss: YaRN over 64-dim heads, 4,096 x 32 = 131,072 rows: 16 MiB; GPT-2 has no rotary cache
    assert serving.rope_cache_bytes(api.load_model("openai/gpt-oss-20b"), 2) == 16 * MiB
    assert serving.rope_cache_bytes(api.load_model("openai-community/gpt2"), 2) == 0


@pytest.mark.parametrize("gpu, version, backend", [
    ("h100", "0.10.1", "marlin"), ("h100", "0.11.0", "marlin"), ("h100", "0.11.1", "triton"),
    ("h100", "", "triton"), ("h200", "0.20", "triton"), ("a100-80gb", "", "marlin"),
    ("l40s", "", "marlin"), ("b200", "", "flashinfer"), ("rtx-pro-6000", "", "marlin"),
])
def test_mxfp4_backend_per_gpu_and_release(gpu, version, backend):
    assert serving.mxfp4_backend(GPUS[gpu], serving.resolve_version(version).release) == backend


def test_gpt_oss_120b_h100_triton_layout_and_its_start():
    # https://github.com/vllm-project/vllm/issues/33155 (vLLM 0.14.1, one H100): "[mxfp4.py:165]
    # Using Triton backend", "Model loading took 64.38 GiB memory". Triton layout: the contraction
    # dimension rounded to 256 (2,880 -> 3,072), fp32 biases: 36 x 128 x (2 x 2,880 x 3,072 +
    # 2,880 x 3,072) FP4 values with E8M0 scales = 65,134,264,320 B of experts with biases.
    p = serve("openai/gpt-oss-120b", version="0.14.1", ctx=32768)
    assert p.serve.mxfp4_backend == "triton" and close(p.components["weights"] / GiB, 64.38, 0.005)   # 64.64: +0.4 %
    marlin = serve("openai/gpt-oss-120b", version="0.11.0", ctx=32768)
    assert marlin.serve.mxfp4_backend == "marlin"
    assert close(marlin.components["weights"] / GiB, 65.9651, 0.005)       # issue #23278 (Marlin): 65.91
    # Today's defaults (0.31, FlashInfer sampler, CUDA graphs in the budget): with the Triton layout
    # it starts at 64K tokens (2.72 GiB available, one request needs 18 x 32 KiB x 4,169 blocks =
    # 2.29 GiB); the Marlin layout's 1.27 GiB more would leave 1.45 GiB: refused.
    now = serve("openai/gpt-oss-120b", ctx=65536)
    extra = marlin.components["weights"] - p.components["weights"]
    needed = 18 * 32768 * (4096 + 73)
    assert now.serve.starts and now.serve.available_bytes >= needed > now.serve.available_bytes - extra
    assert not serve("openai/gpt-oss-120b", ctx=131072).serve.starts     # 128K: 4.54 GiB needed


# ------------------------------------------------------------------ what vLLM does

def test_starts_and_holds_are_said_apart():
    # Starts (one 16K request fits its cache) but holds 26 of 32 at once: exit 1, both in the JSON.
    argv = ["fit", "meta-llama/Llama-3.1-8B", "--gpu", "h100", "--ctx", "16k", "--batch", "32"]
    r = runner.invoke(app, argv)
    assert r.exit_code == 1
    assert "✗ does not fit: vLLM starts (max_model_len 16,384), but holds only 26 of 32 x 16,384 tokens" in r.stdout
    s = json.loads(runner.invoke(app, argv + ["--json"]).stdout)["serve"]
    assert s["starts"] is True and s["holds"] is False
    ok = json.loads(runner.invoke(app, argv[:-1] + ["8", "--json"]).stdout)
    assert ok["fits"] and ok["serve"]["starts"] and ok["serve"]["holds"]
    # Does not start: max_model_len above the model's, vLLM's own message and its override
    r = runner.invoke(app, ["fit", "Qwen/Qwen3-0.6B", "--gpu", "h100", "--ctx", "64k"])
    assert r.exit_code == 1 and "✗ does not fit: vLLM does not start with max_model_len 65,536" in r.stdout
    assert "User-specified max_model_len (65536) is greater than the derived max_model_len" in r.stdout
    assert "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1" in r.stdout


def test_max_ctx_is_capped_at_the_models_length():
    p = serve("Qwen/Qwen3-0.6B", ctx=8192)
    assert p.max_ctx == p.serve.max_model_len_that_starts == 40_960      # max_position_embeddings


def test_int8_kv_cache_is_refused():
    assert_cli_refuses(["fit", "Qwen/Qwen3-0.6B", "--gpu", "h100", "--kv-dtype", "int8"], 2, "int8_per_token_head")
    assert_api_refuses(api.plan, "Qwen/Qwen3-0.6B", "h100", kv_dtype="int8", exc=BadInput, needle="fp8")


# ------------------------------------------------------------------ 2026 start-up logs

def test_2026_gpt_oss_20b_a100_v0_19():
    # https://myoceane.fr/index.php/ai-vllm-a100-gemma-4/ (2026-04-18): vLLM 0.19.0, A100 80GB,
    # `vllm serve openai/gpt-oss-20b --max-model-len 131072 --gpu-memory-utilization 0.65`:
    # "Model loading took 13.72 GiB memory", "Available KV cache memory: 36.56 GiB". MXFP4 with the
    # Marlin layout (A100), Triton sampler (0.17-0.20): 256 x 201,088 logits x 14 B + 108 x 201,088 x 4.
    p = serve("openai/gpt-oss-20b", "a100-80gb", version="0.19.0", ctx=131072, gpu_memory_utilization=0.65)
    assert p.serve.mxfp4_backend == "marlin" and p.serve.starts
    assert close(p.components["weights"] / GiB, 13.72)                  # 13.69: -0.2 %
    assert close(p.serve.available_bytes / GiB, 36.56)                   # 36.65: +0.2 %
    # the sorting sampler of <= 0.16 would have taken 1.1 GiB more: 35.55, -2.8 %
    assert serve("openai/gpt-oss-20b", "a100-80gb", version="0.16", ctx=131072,
                 gpu_memory_utilization=0.65).serve.available_bytes < p.serve.available_bytes - GiB


def test_2026_qwen2_5_0_5b_a100_40gb_eager():
    # https://github.com/ovg-project/kvcached/pull/448 (comment of 2026-08-19; vLLM of that month,
    # 0.21+ accounting): A100, enforce_eager, util 0.92, requested 36.33 GiB; Qwen2.5-0.5B
    # weights_memory 0.93 GiB, torch_peak_increase 0.59 GiB, non_torch_increase 0.11 GiB, real KV
    # capacity 34.70 GiB. The 36.33 GiB request makes the card the 40 GB A100 (0.92 x 39.49).
    p = serve("Qwen/Qwen2.5-0.5B", "a100-40gb", version="0.27", ctx=32768, gpu_memory_utilization=0.92,
              enforce_eager=True)
    assert close(p.capacity_bytes / GiB, 36.33, 0.001)
    assert close(p.components["activations"] / GiB, 0.59, 0.05)         # 0.57: -3 %
    assert close(p.serve.available_bytes / GiB, 34.70)                   # 34.49: -0.6 %


def test_logged_kv_tokens_of_a_hybrid_model_by_release():
    # gemma-3-27b-it, 32K: 7 groups, one request needs 2,048 + 6 x 577 = 5,510 block slots.
    # Up to 0.20: num_blocks // 7 x 16 (vllm issue #40691 shows it on v0.19.0); later releases log
    # int(max_concurrency x max_model_len) (PR #40694; a v0.24.0 log of 567,978 tokens at 4.33x of
    # 131,072 in noonghunna/club-3090 issue #612 is not a multiple of any block size).
    old = serve("google/gemma-3-27b-it", version="0.16", ctx=32768, batch=8).serve
    assert old.kv_cache_tokens == old.num_gpu_blocks // 7 * 16 == 19_072
    now = serve("google/gemma-3-27b-it", ctx=32768, batch=8).serve
    assert now.kv_cache_tokens == int(now.num_gpu_blocks / 5510 * 32768) == 74_938
    dense = serve("meta-llama/Llama-3.1-8B", ctx=16384).serve             # one group: the same
    assert dense.kv_cache_tokens == dense.num_gpu_blocks * 16
