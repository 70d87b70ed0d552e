"""Serving speed, an estimate: a roofline per phase, checked against published measurements.

Decode (one step of `batch` sequences, per tensor-parallel rank):

    memory  = (streamed weights + batch x KV read at the context) / bandwidth
    compute = batch x (2 x active params + attention over the context) / tp / TFLOPS(dtype)
    comm    = 2 x layers x (LINK_LATENCY + 2 (tp-1)/tp x batch x hidden x bytes / link GB/s)
    step    = STEP_OVERHEAD + max(memory / MEM_EFF, compute / COMPUTE_EFF) + comm

Prefill of `batch` prompts of `input_len` tokens is the same with batch x input_len tokens, the
weights read once and causal attention over the prompt (width x input_len^2 per layer). A
request cycle (prefill, then output_len decode steps at the mean context) gives aggregate
tokens per second; the same formula recomputes a static-batch benchmark. Every constant and the
validation table are in docs/compare.md; benchmarks/speed_validation.py recomputes it.
"""

from __future__ import annotations

from dataclasses import dataclass

from vramplan.compare import throughput as th
from vramplan.compare.result import Estimate, Phase
from vramplan.memory.setup import Setup
from vramplan.spec import GpuSpec

# Calibrated on the subset marked "fit" in vramplan/compare/validation.py (docs/compare.md,
# "Calibration"): least squares on the log error of those points, rounded.
MEM_EFF = 0.95            # share of peak bandwidth a decode step streams at
COMPUTE_EFF = 0.30        # share of the dense tensor peak a decode GEMM reaches
PREFILL_EFF = 0.70        # share of the dense tensor peak prefill reaches
STEP_OVERHEAD_S = 2.9e-3  # per forward pass: scheduling, sampling, launches (vLLM v0.6.0 blog)
LINK_LATENCY_S = 20e-6    # per all-reduce: launch + small-message latency of NCCL / RCCL
FP8_EFF = 0.6             # FP8/FP4 GEMMs: their share of the 16-bit efficiency above (fitted)
ROCM_EFF = 0.5            # AMD cards: the share of the above vLLM on ROCm reached (fitted)

# The error band printed with every speed: all validation points but one lie within it (the one
# outside, +83 %, is TensorRT-LLM 0.5's GQA attention kernel on a 70B at 2,048 output tokens:
# docs/compare.md). tests/test_speed.py recomputes the table and holds it to this band.
ERROR_BAND = 0.30

# Weight formats whose GEMMs run on the FP8 / FP4 tensor cores; weight-only int4/int8/nf4
# (AWQ, GPTQ, Marlin, bitsandbytes) dequantize and multiply in 16 bits.
FP8_METHODS = ("fp8",)
FP4_METHODS = ("mxfp4", "nvfp4", "fp4")


@dataclass(frozen=True, kw_only=True)
class Constants:
    mem_eff: float = MEM_EFF
    compute_eff: float = COMPUTE_EFF
    prefill_eff: float = PREFILL_EFF
    step_overhead_s: float = STEP_OVERHEAD_S
    link_latency_s: float = LINK_LATENCY_S
    rocm_eff: float = ROCM_EFF
    fp8_eff: float = FP8_EFF


DEFAULT = Constants()


def compute_tflops(gpu: GpuSpec, method: str) -> float | None:
    """Dense tensor peak for the weights' GEMM dtype: FP4 / FP8 where the card has those tensor
    cores, else 16-bit (an FP4 checkpoint on a card without FP4 cores runs weight-only kernels
    that multiply in 16 bits, as int4 does)."""
    if method in FP4_METHODS and gpu.fp4_tflops:
        return gpu.fp4_tflops
    if method in FP8_METHODS and gpu.fp8 and gpu.fp8_tflops:
        return gpu.fp8_tflops
    return gpu.bf16_tflops


def link_gbs(gpu: GpuSpec) -> float:
    """Per-direction GB/s between two cards: NVLink / Infinity Fabric, else PCIe."""
    return gpu.link_gbs if gpu.link_gbs else th.pcie_gbs(gpu)


def allreduce_s(s: Setup, gpu: GpuSpec, tokens: int, c: Constants = DEFAULT) -> float:
    """Megatron TP: two all-reduces of [tokens, hidden] per layer; a ring sends 2(n-1)/n of each."""
    if s.tp <= 1:
        return 0.0
    m = s.model
    per = 2 * (s.tp - 1) / s.tp * tokens * m.hidden_size * s.act_elem / (link_gbs(gpu) * 1e9)
    return 2 * m.num_layers * (c.link_latency_s + per)


def _phase(gpu: GpuSpec, method: str, memory_s: float, compute_s: float, comm_s: float, eff: float,
           c: Constants, nbytes: int, flops: float) -> Phase:
    vendor = c.rocm_eff if gpu.vendor == "amd" else 1.0
    low = c.fp8_eff if compute_tflops(gpu, method) != gpu.bf16_tflops else 1.0
    mem, comp = memory_s / (c.mem_eff * vendor), compute_s / (eff * vendor * low)
    return Phase(seconds=c.step_overhead_s + max(mem, comp) + comm_s, memory_s=memory_s,
                 compute_s=compute_s, comm_s=comm_s, bound="compute" if comp > mem else "memory",
                 bytes_read=nbytes, flops=flops)


def decode_step(s: Setup, gpu: GpuSpec, batch: int, context: int, c: Constants = DEFAULT) -> Phase | None:
    """One decode step of `batch` sequences each holding `context` tokens; None without bandwidth."""
    if not gpu.memory_bandwidth_gbs:
        return None
    m = s.model
    nbytes = th.streamed_weight_bytes(s, batch) + batch * th.kv_read_bytes(s, context)
    flops = batch * (2 * th.active_matmul_params(m) + th.decode_attention_flops(m, context)) / s.tp
    tflops = compute_tflops(gpu, s.fmt.quant.method)
    compute_s = flops / (tflops * 1e12) if tflops else 0.0
    return _phase(gpu, s.fmt.quant.method, nbytes / (gpu.memory_bandwidth_gbs * 1e9), compute_s, allreduce_s(s, gpu, batch, c),
                  c.compute_eff, c, nbytes, flops)


def prefill(s: Setup, gpu: GpuSpec, batch: int, input_len: int, c: Constants = DEFAULT) -> Phase | None:
    """Prefill of `batch` prompts of `input_len` tokens (weights read once, causal attention)."""
    if not gpu.memory_bandwidth_gbs:
        return None
    m = s.model
    tokens = batch * input_len
    attention = th.decode_attention_flops(m, input_len) * input_len / 2      # width x L^2 per layer
    flops = (tokens * 2 * th.active_matmul_params(m) + batch * attention) / s.tp
    nbytes = th.streamed_weight_bytes(s, tokens) + batch * th.kv_read_bytes(s, input_len)
    tflops = compute_tflops(gpu, s.fmt.quant.method)
    compute_s = flops / (tflops * 1e12) if tflops else 0.0
    return _phase(gpu, s.fmt.quant.method, nbytes / (gpu.memory_bandwidth_gbs * 1e9), compute_s, allreduce_s(s, gpu, tokens, c),
                  c.prefill_eff, c, nbytes, flops)


def estimate(s: Setup, gpu: GpuSpec, concurrency: int, input_len: int, output_len: int,
             c: Constants = DEFAULT) -> Estimate | None:
    """`concurrency` sequences in flight, each `input_len` in and `output_len` out; None when the
    catalog has no bandwidth or no tensor TFLOPS for the weights' dtype (prefill and large
    batches are compute-bound: without a peak there is no honest estimate)."""
    if not compute_tflops(gpu, s.fmt.quant.method):
        return None
    step = decode_step(s, gpu, concurrency, input_len + output_len // 2, c)
    if step is None:
        return None
    return Estimate(decode=step, prefill=prefill(s, gpu, 1, input_len, c),
                    batch_prefill=prefill(s, gpu, concurrency, input_len, c), concurrency=concurrency,
                    input_len=input_len, output_len=output_len)


def band_text(rate: float) -> str:
    """"~1,234 tok/s (±35 %, estimate)"."""
    shown = f"{rate:,.0f}" if rate >= 10 else f"{rate:.1f}"
    return f"~{shown} tok/s (±{ERROR_BAND:.0%}, estimate)".replace("%", " %")



