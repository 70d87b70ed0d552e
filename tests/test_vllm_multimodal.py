"""vLLM's start-up profile of a vision encoder (issue #12 item 4, #13 Done-means: one multimodal
model): its dummy images, the encoder budget, --limit-mm-per-prompt, and what the encoder's
transient and its cached outputs take from "Available KV cache memory".

vLLM's rules are read from its code (engines/vllm/encoder_profile.py cites each function); the
encoder's activation peak is modelled, and checked on one public start-up log (below).
"""

from dataclasses import replace

from typer.testing import CliRunner

from vramplan import api, catalog
from vramplan.cli import app
from vramplan import planner as core_plan
from vramplan.engines.vllm import encoder_profile as ep
from vramplan.models import parse
from vramplan.spec import GpuTarget
from vramplan.units import GiB
from tests.test_generic_reader import QWEN25_VL_7B

GPUS = {g.id: g for g in catalog.load_gpus()}


def serve(model, gpu="h100", version="", **options):
    w = api.make_workload(**options)
    w = replace(w, serve=replace(w.serve, vllm_version=version))
    spec = api.load_model(model) if isinstance(model, str) else model
    return core_plan.build(spec, GpuTarget(GPUS[gpu], 1), w, suggest=False)


def test_gemma3_4b_profile_by_hand():
    # gemma-3-4b-it: SigLIP 896 px / 14 px patches = 4,096 patches, E 1,152, I 4,304, 256 tokens per
    # image, text hidden 2,560. On an H100 vLLM batches 8,192 tokens: budget max(8,192, 256) =
    # 8,192, so 8,192 // 256 = 32 dummy images (max_num_seqs 1,024 x 999 does not bind).
    spec = api.load_model("google/gemma-3-4b-it")
    mm = ep.encoder_profile(spec, 8192, 1024, (), 2)
    assert (mm.budget, mm.items, mm.tokens_per_item) == (8192, 32, 256)
    n = 32 * 4096                                       # patch tokens through the tower at once
    # fc1 -> gelu: input + norm (2E) + fc1 out + act out (2I); pixel_values 3 x 14^2 per patch
    assert mm.forward == n * (2 * 1152 + 2 * 4304) * 2 + n * 588 * 2 == 3_014_656_000
    assert mm.cache == 32 * 256 * 2560 * 2 == 41_943_040
    assert mm.log == ("Encoder cache will be initialized with a budget of 8192 tokens, and profiled with 32 "
                      "image items of the maximum feature size.")


def test_small_cards_batch_fewer_images():
    # L40S: 2,048 batched tokens -> 8 images; --max-num-seqs 2 caps them at 2 x 999 (no effect),
    # --limit-mm-per-prompt image=1 with 4 sequences at 4 x 1 = 4.
    spec = api.load_model("google/gemma-3-4b-it")
    assert ep.encoder_profile(spec, 2048, 256, (), 2).items == 8
    assert ep.encoder_profile(spec, 2048, 4, (("image", 1),), 2).items == 4
    assert ep.encoder_profile(spec, 100, 4, (), 2).budget == 256        # never below one image


def test_limit_image_zero_skips_the_profile():
    """image=0 disables the only modality: vLLM's budget is 0 and it profiles no encoder (the
    "explicitly disabled via limit_mm_per_prompt" warning of compute_mm_encoder_budget)."""
    spec = api.load_model("google/gemma-3-4b-it")
    assert ep.encoder_profile(spec, 8192, 1024, (("image", 0),), 2) is None
    on = serve("google/gemma-3-4b-it", ctx=8192).serve
    off = serve("google/gemma-3-4b-it", ctx=8192, limit_mm_per_prompt="image=0").serve
    # On an H100 the 0.21+ sampler (3.7 GiB) outweighs the encoder's 2.8 GiB transient, so the
    # profile adds exactly the cached outputs to the peak.
    assert off.available_bytes - on.available_bytes == 41_943_040
    assert any("32 image items" in n for n in on.kv_notes)
    assert not any("Encoder cache" in n for n in off.kv_notes)


def test_text_models_have_no_encoder_profile():
    spec = api.load_model("meta-llama/Llama-3.1-8B")
    assert ep.encoder_profile(spec, 8192, 1024, (), 2) is None


def test_encoder_transient_dominates_when_the_sampler_is_small():
    # --max-num-seqs 8: the sampler pass is small, the 32-image encoder pass is the peak.
    p = serve("google/gemma-3-4b-it", ctx=8192, max_num_seqs=8)
    assert p.components["activations"] == 3_014_656_000
    assert "profile vision encoder, 32 dummy images of 256 tokens (modelled)" in p.component_notes["activations"]


def test_qwen25_vl_profiles_one_largest_image():
    # Qwen2.5-VL: max_pixels 12,845,056 / 14^2 = 65,536 patches, / 2^2 merge = 16,384 tokens, which
    # exceed the batched tokens, so the budget is 16,384 and one image is profiled: the line vLLM
    # logged for this model (below) and on vLLM 0.19-0.2x for Qwen3.x-VL ("budget of 16384 tokens,
    # and profiled with 1 image items").
    spec = parse(QWEN25_VL_7B, model_id="Qwen/Qwen2.5-VL-7B-Instruct")
    v = spec.vision
    assert (v.patches_per_image, v.tokens_per_image, v.intermediate_size, v.gated_mlp) == (65536, 16384, 3420, True)
    mm = ep.encoder_profile(spec, 2048, 256, (), 2)
    assert (mm.budget, mm.items) == (16384, 1)
    # gated MLP: input + norm + gate_up + act + out = 3E + 3I; pixel_values 3 x 2 x 14^2 per patch
    assert mm.forward == 65536 * (3 * 1280 + 3 * 3420) * 2 + 65536 * 1176 * 2 == 2_002_255_872
    assert mm.cache == 16384 * 3584 * 2


def test_tensor_parallel_shards_the_mlp_width():
    spec = api.load_model("google/gemma-3-4b-it")
    mm = ep.encoder_profile(spec, 8192, 1024, (), 2, tp=2)
    assert mm.forward == 32 * 4096 * (2 * 1152 + 2 * 2152 + 588) * 2


def test_qwen25_vl_7b_l4_log():
    """Public start-up log: Qwen2.5-VL-7B-Instruct, vLLM 0.9.0.1 (V1), NVIDIA L4, max_model_len 2048,
    defaults otherwise (0.9 utilization, 2,048 batched tokens, 256 sequences), quoted in full in a
    public OpenShift AI / KServe guide, "Bring-Your-Own-Model" (stored in the search index's code
    corpus as file id 70974742012; its repository was not named by the index), dated 2025-08-31:
    "Model loading took 15.6271 GiB", "Encoder cache will be
    initialized with a budget of 16384 tokens, and profiled with 1 image items of the maximum
    feature size.", "Available KV cache memory: 1.81 GiB", "GPU KV cache size: 33,824 tokens").

    Ours: 2.17 GiB, +20 % (+0.36 GiB). Half of it is the weights: 15.45 GiB counted against 15.63
    logged (0.18 GiB vLLM loads beyond the checkpoint's tensors that we do not know). The other
    0.18 GiB is the encoder's transient beyond the modelled MLP peak (the rotary's fp32 copies of q
    and k, the window reordering). Without the encoder profile the plan said 2.63 GiB (+45 %)."""
    spec = parse(QWEN25_VL_7B, model_id="Qwen/Qwen2.5-VL-7B-Instruct")
    p = serve(spec, gpu="l4", version="0.9.0", ctx=2048)
    s = p.serve
    assert s.kv_notes[-1] == ("Encoder cache will be initialized with a budget of 16384 tokens, and profiled "
                              "with 1 image items of the maximum feature size.")
    assert p.components["activations"] == 2_002_255_872          # the encoder pass is the peak
    ours, logged = s.available_bytes / GiB, 1.81
    assert 0.19 < (ours - logged) / logged < 0.21                  # the stated error, not hidden
    without = serve(spec, gpu="l4", version="0.9.0", ctx=2048, limit_mm_per_prompt="image=0,video=0")
    assert (without.serve.available_bytes / GiB - logged) / logged > 0.4


def test_launch_line_limits_reach_the_profile():
    """--limit-mm-per-prompt pasted in a launch line, in both of vLLM's syntaxes: image=2 with
    --max-num-seqs 4 caps the images at 4 x min(2, 8,192 // 256) = 8 (below 8,192 // 256 = 32);
    image=0 removes the profile."""
    runner = CliRunner()
    r = runner.invoke(app, ["fit", "--cmd", "vllm serve google/gemma-3-4b-it --limit-mm-per-prompt image=2 "
                            "--max-num-seqs 4", "--gpu", "h100"], env={"HF_HUB_OFFLINE": "1", "COLUMNS": "200"})
    assert "budget of 8192 tokens, and profiled with 8 image items" in r.stdout
    assert "profile vision encoder, 8 dummy images of 256 tokens (modelled)" in r.stdout
    r = runner.invoke(app, ["fit", "--cmd", "vllm serve google/gemma-3-4b-it --limit-mm-per-prompt "
                            "'{\"image\": 0}'", "--gpu", "h100"], env={"HF_HUB_OFFLINE": "1", "COLUMNS": "200"})
    assert "Encoder cache" not in r.stdout and "encoder cache" not in r.stdout
