"""The serving speed estimate against published measurements (vramplan/compare/validation.py,
docs/compare.md) and by hand."""

from __future__ import annotations

import statistics

import pytest

from vramplan.compare import speed, validation

RESULTS = {r.point.id: r for r in validation.run()}


def test_validation_table_holds_its_band():
    errors = [abs(r.error) for r in RESULTS.values()]
    assert len(errors) >= 15
    assert statistics.median(errors) < 0.15
    outside = sorted(i for i, r in RESULTS.items() if abs(r.error) > speed.ERROR_BAND)
    # the one known exception (docs/compare.md): TensorRT-LLM 0.5's GQA attention on a 70B, 2k out
    assert outside == ["trt-h100x4-70b-b64-128-2048"]
    gpus = {r.point.gpu for r in RESULTS.values()}
    assert {"h100", "l40s", "a100-80gb", "a100-40gb", "rtx-4090", "mi300x"} <= gpus
    assert min(r.point.batch for r in RESULTS.values()) == 1 and max(r.point.batch for r in RESULTS.values()) >= 64
    assert any(r.point.tp > 1 and "70B" in r.point.model for r in RESULTS.values())


@pytest.mark.parametrize("point_id,measured,lo,hi", [
    # TensorRT-LLM 0.5.0 docs: Llama 2 7B FP8 on one H100, static batch 64, 128 in / 128 out
    ("trt-h100-7b-b64-128-128", 9193, -0.05, 0.05),
    # same, L40S FP8: 3,240 tok/s
    ("trt-l40s-7b-b64-128-128", 3240, 0.0, 0.15),
    # Oracle, vLLM on 8 x MI300X, Llama 3.1 405B FP8, batch 1: 36 tok/s (3.53 s for 128 tokens)
    ("vllm-mi300x8-405b-b1", 36, -0.05, 0.05),
    # seeds/000: vLLM Llama 3.1 8B FP16 on an L40S, batch 8: 336 tok/s
    ("seed-l40s-8b-b8", 336, 0.0, 0.15),
    # TensorRT-LLM 0.5 first token, Llama 2 7B FP16, A100, 2,048-token prompt: 133 ms
    ("trt-a100-7b-ttft-2048", 0.133, -0.05, 0.05),
    # vLLM 0.23.0, one A100 40GB, Llama 3.1 8B BF16, one request: "about 75 tokens/sec"
    ("vllm023-a100-40gb-8b-c1", 75, 0.0, 0.10),
    # vLLM on one RTX 4090, Mistral 7B, 256 in / 128 out, concurrency 16: 644 output tok/s
    ("vllm-4090-mistral7b-c16", 644, 0.05, 0.20),
])
def test_pinned_points(point_id, measured, lo, hi):
    r = RESULTS[point_id]
    assert r.point.measured == measured
    assert lo <= r.error <= hi


def test_decode_step_by_hand():
    # Llama-3.1-8B BF16 on one L40S, batch 1, context 576: 15,009,849,344 B of streamed weights
    # (all but the untied input embedding) + 576 x 131,072 B of KV, at 95% of 864 GB/s, + 2.9 ms.
    gpu, s = validation.setup_for(validation.Point(
        id="x", source="", engine="", gpu="l40s", tp=1, model=validation.L31_8B, dtype="bf16",
        kv_dtype="auto", batch=1, input_len=512, output_len=128, metric="decode", measured=1))
    step = speed.decode_step(s, gpu, 1, 576)
    nbytes = 15_009_849_344 + 576 * 131_072
    assert step.bytes_read == nbytes and step.bound == "memory" and step.comm_s == 0
    assert step.seconds == pytest.approx(2.9e-3 + nbytes / (864e9 * 0.95))
    # at batch 512 the BF16 GEMMs bind: 512 x (2 x 7.5 G + attention) FLOPs at 30% of 362 TFLOPS
    assert speed.decode_step(s, gpu, 512, 576).bound == "compute"
    # prefill of 2,048 tokens is compute-bound at 70% of 362 TFLOPS
    pre = speed.prefill(s, gpu, 1, 2048)
    assert pre.bound == "compute"
    assert pre.seconds == pytest.approx(2.9e-3 + pre.flops / (362e12 * 0.70))


def test_fp8_uses_fp8_tensor_cores_and_int4_does_not():
    from vramplan import catalog
    h100 = catalog.find_gpu("h100")
    assert speed.compute_tflops(h100, "fp8") == 1979
    assert speed.compute_tflops(h100, "awq") == 989          # weight-only int4: 16-bit GEMMs
    assert speed.compute_tflops(catalog.find_gpu("a100-80gb"), "fp8") == 312   # no FP8 cores
    assert speed.compute_tflops(catalog.find_gpu("mi355x"), "mxfp4") == 10066.4


def test_band_text():
    assert speed.band_text(1234.4) == "~1,234 tok/s (±30 %, estimate)"
