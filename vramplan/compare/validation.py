"""Published serving measurements the speed estimate is checked against (docs/compare.md).

Each point names its source, engine, GPU, model, weights and KV dtype, batch (or concurrency),
prompt and output lengths, and what was measured:

- "static": a static batch (every sequence starts together): total output tokens / total time,
  prefill included (TensorRT-LLM's gptSessionBenchmark, vLLM's benchmark_latency.py);
- "decode": aggregate decode tokens per second at that batch, prefill excluded;
- "ttft": time to first token of one prompt at batch 1, in seconds.

`fit` marks the subset the constants of vramplan.compare.speed were calibrated on; every point,
fitted or not, is reported with its error.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from vramplan import catalog
from vramplan import planner as core_plan
from vramplan.compare import speed
from vramplan.loading import load_model
from vramplan.request import PlanRequest, build_workload
from vramplan.spec import GpuTarget

TRT_05 = ("https://raw.githubusercontent.com/NVIDIA/TensorRT-LLM/release/0.5.0/docs/source/performance.md "
          "(High Throughput tables, static batching, gptSessionBenchmark)")
TRT_06 = ("https://github.com/NVIDIA/TensorRT-LLM/blob/main/docs/source/performance.md at the v0.6.1 "
          "update (its L40S table and the Low Latency tables are marked 'from TensorRT-LLM v0.5')")
ORACLE = ("https://blogs.oracle.com/cloud-infrastructure/post/serving-llama-31-405b-model-with-amd-mi300x-gpus "
          "(2024-10-10, vLLM benchmark_latency.py, 128 in / 128 out)")
YOBI = ("https://yobitelcomm.github.io/bench/recipes/concurrency-sweep/ (InferenceBench, single H100-80GB-HBM3, "
        "vLLM 0.21.0, fp16, 2026-05-16; TPOT p50)")
MUSHFIQ = ("https://mushfiqrahman.dev/?p=1668 (vLLM OpenAI server, one RTX 4090, 300 prompts, max concurrency "
           "sweep, 256 in / 128 out, output tok/s)")
MUSGRAVE = ("https://johnmusgrave.com/p/vllm-throughput-latency-sweep-on (vLLM 0.23.0, A100 40GB on Lambda, "
            "1024 in / 128 out, 'decode at one request per time runs at about 75 tokens/sec')")
SEED0 = "shared/seeds/000_a21dacbd61b0fcc3.txt (Spheron L40S guide, vLLM, Llama 3.1 8B FP16)"
SEED2 = "shared/seeds/002_a069b6395e0a86db.txt (Fluence L40S page, Llama 3.1 8B)"


@dataclass(frozen=True, kw_only=True)
class Point:
    id: str
    source: str
    engine: str
    gpu: str
    tp: int
    model: str
    dtype: str
    kv_dtype: str
    batch: int
    input_len: int
    output_len: int
    metric: str               # "static" | "decode" | "ttft"
    measured: float           # tokens/s, or seconds for ttft
    fit: bool = False
    note: str = ""


L2_7B, L31_8B, L31_70B, L31_405B = ("meta-llama/Llama-2-7b-hf", "meta-llama/Llama-3.1-8B",
                                     "meta-llama/Llama-3.1-70B", "meta-llama/Llama-3.1-405B")
TRT = "TensorRT-LLM 0.5.0"
VLLM_ROCM = "vLLM (ROCm build of Oct 2024; version not stated)"
VLLM_SEED = "vLLM (version not stated)"
_70B_NOTE = ("Llama 2 70B measured; planned as Llama-3.1-70B (same 80 x 8192 layers and GQA; the 3.1 "
             "vocabulary adds 1.6 GB of embedding/lm_head, 1.2% of the weights)")

POINTS: tuple[Point, ...] = (
    # TensorRT-LLM 0.5.0, H100 SXM, FP8 weights and KV, static batch 64
    Point(id="trt-h100-7b-b64-128-128", source=TRT_05, engine=TRT, gpu="h100", tp=1, model=L2_7B, dtype="fp8",
          kv_dtype="fp8", batch=64, input_len=128, output_len=128, metric="static", measured=9193, fit=True),
    Point(id="trt-h100-7b-b64-128-2048", source=TRT_05, engine=TRT, gpu="h100", tp=1, model=L2_7B, dtype="fp8",
          kv_dtype="fp8", batch=64, input_len=128, output_len=2048, metric="static", measured=5367),
    Point(id="trt-h100-7b-b64-2048-128", source=TRT_05, engine=TRT, gpu="h100", tp=1, model=L2_7B, dtype="fp8",
          kv_dtype="fp8", batch=64, input_len=2048, output_len=128, metric="static", measured=2058, fit=True),
    Point(id="trt-h100-7b-b32-2048-2048", source=TRT_05, engine=TRT, gpu="h100", tp=1, model=L2_7B, dtype="fp8",
          kv_dtype="fp8", batch=32, input_len=2048, output_len=2048, metric="static", measured=2230),
    Point(id="trt-h100x4-70b-b64-128-128", source=TRT_05, engine=TRT, gpu="h100", tp=4, model=L31_70B, dtype="fp8",
          kv_dtype="fp8", batch=64, input_len=128, output_len=128, metric="static", measured=3317, note=_70B_NOTE),
    Point(id="trt-h100x4-70b-b64-128-2048", source=TRT_05, engine=TRT, gpu="h100", tp=4, model=L31_70B, dtype="fp8",
          kv_dtype="fp8", batch=64, input_len=128, output_len=2048, metric="static", measured=2616, note=_70B_NOTE),
    Point(id="trt-h100x4-70b-b64-2048-128", source=TRT_05, engine=TRT, gpu="h100", tp=4, model=L31_70B, dtype="fp8",
          kv_dtype="fp8", batch=64, input_len=2048, output_len=128, metric="static", measured=843, note=_70B_NOTE),
    # TensorRT-LLM 0.5, L40S, FP8
    Point(id="trt-l40s-7b-b64-128-128", source=TRT_06, engine=TRT, gpu="l40s", tp=1, model=L2_7B, dtype="fp8",
          kv_dtype="fp8", batch=64, input_len=128, output_len=128, metric="static", measured=3240),
    Point(id="trt-l40s-7b-b64-128-2048", source=TRT_06, engine=TRT, gpu="l40s", tp=1, model=L2_7B, dtype="fp8",
          kv_dtype="fp8", batch=64, input_len=128, output_len=2048, metric="static", measured=1622),
    Point(id="trt-l40s-7b-b32-2048-128", source=TRT_06, engine=TRT, gpu="l40s", tp=1, model=L2_7B, dtype="fp8",
          kv_dtype="fp8", batch=32, input_len=2048, output_len=128, metric="static", measured=581),
    # TensorRT-LLM 0.5 first-token latency at batch 1 (Low Latency tables)
    Point(id="trt-h100-7b-ttft-2048", source=TRT_06, engine=TRT, gpu="h100", tp=1, model=L2_7B, dtype="fp8",
          kv_dtype="fp8", batch=1, input_len=2048, output_len=1, metric="ttft", measured=0.036, fit=True),
    Point(id="trt-l40s-7b-ttft-2048", source=TRT_06, engine=TRT, gpu="l40s", tp=1, model=L2_7B, dtype="fp8",
          kv_dtype="fp8", batch=1, input_len=2048, output_len=1, metric="ttft", measured=0.073),
    Point(id="trt-a100-7b-ttft-2048", source=TRT_06, engine=TRT, gpu="a100-80gb", tp=1, model=L2_7B, dtype="fp16",
          kv_dtype="fp16", batch=1, input_len=2048, output_len=1, metric="ttft", measured=0.133, fit=True),
    Point(id="trt-h100x4-70b-ttft-2048", source=TRT_06, engine=TRT, gpu="h100", tp=4, model=L31_70B, dtype="fp8",
          kv_dtype="fp8", batch=1, input_len=2048, output_len=1, metric="ttft", measured=0.109, note=_70B_NOTE),
    Point(id="trt-a100x4-70b-ttft-2048", source=TRT_06, engine=TRT, gpu="a100-80gb", tp=4, model=L31_70B,
          dtype="fp16", kv_dtype="fp16", batch=1, input_len=2048, output_len=1, metric="ttft", measured=0.377,
          note=_70B_NOTE),
    # vLLM on 8x MI300X, Llama 3.1 405B FP8, static batches of 128 in / 128 out
    *(Point(id=f"vllm-mi300x8-405b-b{b}", source=ORACLE, engine=VLLM_ROCM, gpu="mi300x", tp=8, model=L31_405B,
            dtype="fp8", kv_dtype="auto", batch=b, input_len=128, output_len=128, metric="static", measured=v,
            fit=b in (1, 64))
      for b, v in ((1, 36), (4, 137), (16, 468), (32, 798), (64, 1184), (128, 1585), (256, 1846))),
    # vLLM 0.21.0 on one H100, Llama 3.1 8B fp16: TPOT p50 6.48 ms at concurrency 1, 6.59 ms at 4
    # ("chatbot-short" lengths not stated: 512 + 64 of context assumed; at 16 and 64 the TPOT holds
    # other requests' prefill chunks, which the unknown lengths do not let us model: left out)
    *(Point(id=f"vllm021-h100-8b-c{b}-tpot", source=YOBI, engine="vLLM 0.21.0", gpu="h100", tp=1, model=L31_8B,
            dtype="fp16", kv_dtype="auto", batch=b, input_len=512, output_len=128, metric="decode",
            measured=round(b / t, 1), note=f"TPOT {t * 1e3} ms -> {b} / TPOT tok/s")
      for b, t in ((1, 6.48e-3), (4, 6.59e-3))),
    # vLLM on one RTX 4090, Mistral-7B-Instruct-v0.3, 256 in / 128 out, output tok/s by concurrency
    *(Point(id=f"vllm-4090-mistral7b-c{b}", source=MUSHFIQ, engine="vLLM (version not stated)", gpu="rtx-4090",
            tp=1, model="mistralai/Mistral-7B-Instruct-v0.3", dtype="auto", kv_dtype="auto", batch=b,
            input_len=256, output_len=128, metric="static", measured=v)
      for b, v in ((4, 210), (8, 377), (16, 644), (32, 975), (48, 1190))),
    # vLLM 0.23.0 on one A100 40GB, Llama 3.1 8B BF16, one request at a time
    Point(id="vllm023-a100-40gb-8b-c1", source=MUSGRAVE, engine="vLLM 0.23.0", gpu="a100-40gb", tp=1, model=L31_8B,
          dtype="bf16", kv_dtype="auto", batch=1, input_len=1024, output_len=128, metric="decode", measured=75),
    # the seeds: vLLM, Llama 3.1 8B FP16 decode (context assumed 512 + 64, docs/compare.md)
    Point(id="seed-l40s-8b-b1", source=SEED0, engine=VLLM_SEED, gpu="l40s", tp=1, model=L31_8B, dtype="bf16",
          kv_dtype="auto", batch=1, input_len=512, output_len=128, metric="decode", measured=46, fit=True),
    Point(id="seed-l40s-8b-b8", source=SEED0, engine=VLLM_SEED, gpu="l40s", tp=1, model=L31_8B, dtype="bf16",
          kv_dtype="auto", batch=8, input_len=512, output_len=128, metric="decode", measured=336),
    Point(id="seed-a100-8b-b8", source=SEED0, engine=VLLM_SEED, gpu="a100-80gb", tp=1, model=L31_8B, dtype="bf16",
          kv_dtype="auto", batch=8, input_len=512, output_len=128, metric="decode", measured=648),
    Point(id="seed2-l40s-8b-b1", source=SEED2, engine=VLLM_SEED, gpu="l40s", tp=1, model=L31_8B, dtype="bf16",
          kv_dtype="auto", batch=1, input_len=512, output_len=128, metric="decode", measured=43.79),
)


@dataclass(frozen=True)
class Result:
    point: Point
    estimate: float

    @property
    def error(self) -> float:
        """Signed relative error of the estimate."""
        return self.estimate / self.point.measured - 1


def setup_for(p: Point):
    gpu = catalog.find_gpu(p.gpu)
    request = PlanRequest.from_keywords(p.model, mode="serve", batch=p.batch, ctx=p.input_len + p.output_len,
                                        dtype=p.dtype, kv_dtype=p.kv_dtype)
    workload = build_workload(replace(request, gpu=None), p.tp)
    return gpu, core_plan.setup(load_model(p.model), GpuTarget(gpu, count=p.tp), workload)


def predict(p: Point, c: speed.Constants = speed.DEFAULT) -> float:
    gpu, s = setup_for(p)
    if p.metric == "ttft":
        return speed.prefill(s, gpu, 1, p.input_len, c).seconds
    est = speed.estimate(s, gpu, p.batch, p.input_len, p.output_len, c)
    if p.metric == "decode":
        return p.batch * est.per_sequence_tokens_per_s
    return est.output_tokens_per_s


def run(c: speed.Constants = speed.DEFAULT, points=POINTS) -> list[Result]:
    return [Result(p, predict(p, c)) for p in points]
