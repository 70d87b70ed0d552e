"""Suggestions a vLLM user pastes (suggestions.py, engines/vllm/engine.py levers): vLLM's own flags
first, then pairs of them, each re-planned, ranked by the default dated price per hour; never a
change that needs more memory. Figures that depend on vLLM's accounting are planned as 0.11 (the
sorting sampler, CUDA graphs outside the budget, Marlin MXFP4 on Hopper)."""

from __future__ import annotations

import pytest

from vramplan import api
from vramplan.catalog import load_gpus
from vramplan.pricing import default_price
from vramplan.engines.vllm.serving import SAMPLER_BYTES_PER_LOGIT
from vramplan.units import GiB

GPT_OSS = ("openai/gpt-oss-120b", "h100")


def replan(model, gpu, base: dict, flags: dict):
    """A suggestion's flags applied to the plan's own request, through the API."""
    kw = {**base, **flags}
    return api.plan(model, kw.pop("gpu", gpu), **kw)


def price(gpu_id: str) -> float:
    """The default dated on-demand price of one card (what compare charges)."""
    return default_price(next(g for g in load_gpus() if g.id == gpu_id)).usd_per_hour


def test_no_change_that_needs_more_memory_for_an_mxfp4_model():
    # before: "--dtype fp8" was offered for gpt-oss-120b on one H100 and needed 123-138 GiB
    p = api.plan(*GPT_OSS, ctx="128k")
    assert not p.fits
    for s in p.suggestions:
        assert s.fits or s.total_bytes < p.total_bytes, s
        assert "dtype" not in s.flags, s           # MXFP4 weights: no weight-format change is smaller


@pytest.mark.parametrize("model, gpu, kw", [
    ("openai/gpt-oss-120b", "h100", dict(ctx="128k")),
    ("meta-llama/Llama-3.1-8B", "l40s", dict(ctx="32k", batch=8)),
    ("Qwen/Qwen3-32B", "h100", dict(ctx="32k", batch=4)),
    ("deepseek-ai/DeepSeek-V3", "h100:8", dict(ctx="8k")),
])
def test_every_suggestion_is_its_own_replan(model, gpu, kw):
    p = api.plan(model, gpu, **kw)
    assert p.suggestions
    for s in p.suggestions:
        again = replan(model, gpu, kw, s.flags)
        assert (again.total_bytes, again.fits) == (s.total_bytes, s.fits), s.change
        assert s.fits or s.total_bytes < p.total_bytes


def test_pair_of_vllm_knobs_for_gpt_oss_on_one_h100():
    # Neither fits alone: 1,024 sequences x 201,088 logits x 38.5 B = 7.38 GiB of profiled sampler;
    # --max-num-seqs 256 cuts it to 38.5 x 256 x 201,088 = 1,981,923,328 B, and an fp8 cache halves
    # the KV; together they fit.
    p = api.plan(*GPT_OSS, ctx="128k", vllm_version="0.11")
    changes = {s.change: s for s in p.suggestions}
    assert not changes["--max-num-seqs 256"].fits and not changes["--kv-cache-dtype fp8"].fits
    pair = changes["--max-num-seqs 256 --kv-cache-dtype fp8"]
    assert pair.fits and pair.flags == {"max_num_seqs": 256, "kv_dtype": "fp8"}
    both = api.plan(*GPT_OSS, ctx="128k", max_num_seqs=256, kv_dtype="fp8", vllm_version="0.11")
    assert both.components["activations"] == int(SAMPLER_BYTES_PER_LOGIT["sort"] * 256 * 201_088) == 1_981_923_328
    assert both.fits and both.total_bytes == pair.total_bytes


def test_ranked_by_price_per_hour():
    p = api.plan(*GPT_OSS, ctx="128k")
    fitting = [s for s in p.suggestions if s.fits]
    priced = [s.usd_per_hour for s in fitting if s.usd_per_hour is not None]
    assert priced == sorted(priced)
    assert all(fitting.index(s) >= len(priced) for s in fitting if s.usd_per_hour is None)
    h100 = price("h100")
    same_card = next(s for s in fitting if "gpu" not in s.flags)
    assert same_card.usd_per_hour == round(h100, 4)
    two = next(s for s in fitting if s.flags.get("gpu") == "h100:2")
    assert two.usd_per_hour == round(2 * h100, 4) and two.change == "--gpu h100:2 -tp 2"


def test_utilization_up_to_what_vllm_keeps_outside_its_budget():
    # Llama-3.1-8B on an L40S (44.52 GiB CUDA total): outside the budget, the CUDA context (446,693,376 B)
    # and CUDA graphs (773,094,113 B) leave (47,802,482,688 - 1,219,787,489) / 47,802,482,688 = 0.974,
    # so 0.97 would do; vramplan offers at most 0.95 (UTIL_CAP).
    p = api.plan("meta-llama/Llama-3.1-8B", "l40s", ctx="32k", batch=6, vllm_version="0.11")
    util = next(s for s in p.suggestions if s.flags.get("gpu_memory_utilization"))
    assert util.flags == {"gpu_memory_utilization": 0.95} and util.change == "--gpu-memory-utilization 0.95"
    assert util.fits
    room = p.target.per_gpu_bytes - sum(p.serve.outside_budget.values())
    assert room * 100 // p.target.per_gpu_bytes == 97


def test_cpu_offload_moves_whole_parameters_from_the_first_layer():
    # Llama-3.1-8B bf16 layer: q 33,554,432 + k 8,388,608 + v 8,388,608 + o 33,554,432 + gate, up,
    # down 117,440,512 each + two norms of 8,192 = 436,224,000 B. 1 GiB = 1,073,741,824: two layers
    # (872,448,000), then q, k, v, o (950,  ... 956,334,080) and gate_proj (1,073,774,592 >= 1 GiB).
    base = api.plan("meta-llama/Llama-3.1-8B", "h100")
    off = api.plan("meta-llama/Llama-3.1-8B", "h100", cpu_offload_gb=1)
    assert base.components["weights"] - off.components["weights"] == 2 * 436_224_000 + 33_554_432 + 2 * 8_388_608 \
        + 33_554_432 + 117_440_512 == 1_073_774_592
    assert "offloaded to CPU" in off.component_notes["weights"]


def test_quantization_is_offered_only_for_16_bit_weights():
    dense = api.plan("meta-llama/Llama-3.1-8B", "l40s", ctx="32k", batch=8)
    flags = [s.flags for s in dense.suggestions]
    assert {"dtype": "nf4"} in flags and {"dtype": "fp8"} in flags      # -q bitsandbytes, -q fp8
    fp8 = api.plan("deepseek-ai/DeepSeek-V3", "h100:8", ctx="8k")
    assert not any("quantization" in s.change for s in fp8.suggestions)


def test_multi_node_scale_out():
    p = api.plan("deepseek-ai/DeepSeek-V3", "h100:8", ctx="8k")
    out = next(s for s in p.suggestions if s.flags.get("gpu") == "h100:16")
    assert out.change == "--gpu h100:16 -tp 8 -pp 2" and out.fits


def test_suggestion_text_uses_vllm_names():
    p = api.plan("meta-llama/Llama-3.1-8B", "l40s", ctx="32k", batch=8)
    changes = [s.change for s in p.suggestions]
    assert "--kv-cache-dtype fp8" in changes
    assert any(c.startswith("--max-model-len ") for c in changes)
    assert not any(c.startswith(("--kv-dtype", "--ctx ", "--dtype")) for c in changes)
