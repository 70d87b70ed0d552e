"""Estimated speed: a decode roofline for serving and a compute roofline for training.

Memory is what vramplan computes exactly; speed is only estimated, so that GPUs can be ranked
by cost per token. Both models and every constant are explained in docs/compare.md.

Serving, one decode step of `batch` sequences on one tensor-parallel rank:

    step = STEP_OVERHEAD_S + max(bytes read / bandwidth, FLOPs / dense TFLOPS) / efficiency
    tokens/s = batch / step              (x (1 - PCIE_TP_PENALTY) for TP without NVLink)

bytes read = the weights a step streams (decoder layers and lm_head, only the experts a batch
touches in an MoE) + every sequence's KV cache. Training: tokens/s = GPUs x dense TFLOPS x MFU /
FLOPs per token (PaLM's model-FLOPs count).

Several cards talk every step (TP all-reduces, ZeRO gathers). A configuration "needs NVLink"
when that traffic, sent over the card's PCIe link, would take longer than the step's own work;
on a card without NVLink the step then takes at least the transfer time.
"""

from __future__ import annotations

import re
from dataclasses import replace

from vramplan.spec import Attention, GpuSpec, ModelSpec
from vramplan.memory import kv_cache as kv
from vramplan.memory.parallel import tp_divisor
from vramplan.memory.setup import Setup
from vramplan.memory.weights import weight_bytes
from vramplan.compare.result import Throughput

# Fitted (least squares on log error) to the seeds' vLLM figures for Llama-3.1-8B FP16: L40S
# 46 and 336 tok/s at batch 1 and 8, A100-80GB 1.9x and 1.93x that (seeds/000), each sequence
# holding CALIBRATION_CONTEXT tokens of KV: all four within 3.2%. Decode streams at 94% of peak
# bandwidth and each step adds a fixed 3.85 ms of engine time (scheduling, sampling, launches;
# vLLM's v0.6.0 blog measured such CPU time as most of a Llama-3-8B step on an H100). A single
# efficiency factor cannot fit both cards (docs/compare.md, calibration).
EFFICIENCY = 0.94
STEP_OVERHEAD_S = 3.85e-3
CALIBRATION_CONTEXT = 576          # vLLM benchmark: 512-token prompts + half of 128 outputs

# Tensor parallelism over PCIe all-reduces twice per layer without NVLink: "~10-20% overhead
# vs NVLink-equipped H100/H200 setups" (seeds/004); we take the middle.
PCIE_TP_PENALTY = 0.15

# PCIe bandwidth per direction and lane, GB/s: Gen4 x16 "approximately 32 GB/s unidirectional"
# (seeds/000); each generation doubles the rate (Gen3 8, Gen4 16, Gen5 32 GT/s).
PCIE_GBS_PER_LANE = {3: 1.0, 4: 2.0, 5: 4.0}

# Model-FLOPs utilisation of a training step: Llama 3 reached 38-43% BF16 MFU on H100s
# (Dubey et al. 2024, "The Llama 3 Herd of Models", table 4); we take 0.40.
TRAIN_MFU = 0.40


def pcie_gbs(gpu: GpuSpec) -> float:
    """Per-direction PCIe bandwidth from the catalog's interconnect text ("PCIe Gen4 x16")."""
    gen = re.search(r"PCIe Gen\s*(\d)", gpu.interconnect)
    lanes = re.search(r"Gen\s*\d\s*x(\d+)", gpu.interconnect)
    return PCIE_GBS_PER_LANE.get(int(gen.group(1)) if gen else 4, 2.0) * (int(lanes.group(1)) if lanes else 16)


def _compute_tflops(gpu: GpuSpec, fmt_method: str) -> float | None:
    """Dense tensor-core peak for the weights' compute dtype: FP8 checkpoints run FP8 GEMMs on
    cards that have them; everything else (16-bit, weight-only int4/int8/nf4) computes in 16 bits."""
    if fmt_method == "fp8" and gpu.fp8 and gpu.fp8_tflops:
        return gpu.fp8_tflops
    return gpu.bf16_tflops


def _moe(model: ModelSpec) -> tuple[int, int]:
    """(experts, top_k) of the first MoE layer, (0, 0) for a dense model."""
    m = next((l.mlp for l in model.layers if l.mlp is not None and l.mlp.kind == "moe"), None)
    return (m.num_experts, m.top_k) if m else (0, 0)


def active_matmul_params(model: ModelSpec) -> int:
    """Parameters one token multiplies: decoder linears (top_k of the routed experts) and the
    output projection (the embedding when tied). The embedding lookup is not a matmul."""
    experts, k = _moe(model)
    n = 0
    for layer in model.layers:
        for t in layer.tensors:
            if t.role == "linear":
                n += t.numel
            elif t.role == "expert":
                n += t.numel * k // experts
    for t in model.tensors:
        if t.role == "lm_head" or (model.tie_word_embeddings and t.role == "embedding"):
            n += t.numel
    return n


def _attention_width(a: Attention) -> int:
    return a.num_heads * (a.head_dim + a.v_head_dim)


def decode_attention_flops(model: ModelSpec, context: int) -> int:
    """QK^T and AV of one new token against `context` cached tokens, all layers."""
    return sum(2 * _attention_width(a) * kv.kept_tokens(a, context) for a in kv.attention_layers(model))


def streamed_weight_bytes(s: Setup, batch: int) -> int:
    """Weight bytes one decode step reads on one rank. An untied input embedding is only
    indexed (batch rows), and of an MoE layer's E experts a batch touches E(1 - (1 - k/E)^B)
    on average (uniform routing)."""
    m = s.model
    top = tuple(t for t in m.tensors
                if t.role in ("lm_head", "norm") or (m.tie_word_embeddings and t.role == "embedding"))
    report = weight_bytes(replace(m, tensors=top), s.fmt, tp_divisor(m, s.tp) if s.tp > 1 else None,
                          layout="vllm")
    experts, k = _moe(m)
    expert = report.by_role.get("expert", 0)
    touched = 1 - (1 - k / experts) ** batch if experts else 1.0
    return round(report.total - expert * (1 - touched))


def kv_read_bytes(s: Setup, context: int) -> int:
    """KV cache (and recurrent state) one sequence holding `context` tokens reads per step, per rank."""
    m = s.model
    per_token = sum(kv.kv_elems_per_rank(a, s.tp) * kv.kept_tokens(a, context) for a in kv.attention_layers(m))
    state = kv.recurrent_bytes_per_sequence(m, s.act_elem) // s.tp
    return per_token * s.kv_elem + state


def decode(s: Setup, gpu: GpuSpec, batch: int, context: int, efficiency: float = EFFICIENCY,
           step_overhead_s: float = STEP_OVERHEAD_S) -> Throughput | None:
    """Output tokens per second of the whole configuration (all TP ranks), or None when the
    catalog has no bandwidth for the card."""
    if not gpu.memory_bandwidth_gbs:
        return None
    m = s.model
    nbytes = streamed_weight_bytes(s, batch) + batch * kv_read_bytes(s, context)
    per_token = 2 * active_matmul_params(m) + decode_attention_flops(m, context)
    memory_s = nbytes / (gpu.memory_bandwidth_gbs * 1e9)
    tflops = _compute_tflops(gpu, s.fmt.quant.method)
    compute_s = batch * per_token / s.tp / (tflops * 1e12) if tflops else 0.0
    work = step_overhead_s + max(memory_s, compute_s) / efficiency
    # Megatron TP: two all-reduces of [batch, hidden] per layer; a ring moves 2(n-1)/n of each.
    traffic = 2 * m.num_layers * batch * m.hidden_size * s.act_elem * 2 * (s.tp - 1) / s.tp
    comm = traffic / (pcie_gbs(gpu) * 1e9)
    link_bound = s.tp > 1 and comm > work
    step, rate = work, batch / work
    if s.tp > 1 and not gpu.nvlink:
        step = max(work, comm)
        rate = batch / step * (1 - PCIE_TP_PENALTY)
    bound = "pcie" if link_bound and not gpu.nvlink else "compute" if compute_s > memory_s else "memory"
    return Throughput(tokens_per_s=rate, bound=bound, step_s=step, bytes_per_step=nbytes,
                      flops_per_token=per_token, efficiency=efficiency, comm_s=comm, needs_nvlink=link_bound)


def training_flops_per_token(model: ModelSpec, weight_grads: bool, seq: int, grad_ckpt: bool) -> float:
    """PaLM's model FLOPs (appendix B): 6N + 12 x layers x heads x head_dim x seq per token,
    attention counted per layer over the tokens it sees. LoRA and QLoRA skip the frozen
    weights' gradients (4N); gradient checkpointing runs the forward twice (+2N and +4/12 of
    attention)."""
    n = active_matmul_params(model)
    attention = sum(6 * _attention_width(a) * kv.kept_tokens(a, seq) for a in kv.attention_layers(model))
    dense = (6 if weight_grads else 4) * n
    if grad_ckpt:
        dense += 2 * n
        attention += attention // 3
    return float(dense + attention)


def training(model: ModelSpec, gpu: GpuSpec, gpus: int, weight_grads: bool, batch: int, seq: int,
             grad_ckpt: bool, zero: int, model_bytes: int, efficiency: float = TRAIN_MFU) -> Throughput | None:
    """Training tokens per second of `gpus` cards, compute-bound at `efficiency` MFU; None when
    the catalog has no BF16 rate for the card. Per step each GPU sends (ZeRO paper, 7.2): plain
    data parallelism and ZeRO-1/2 2x the gradients, ZeRO-3 also gathers the weights twice
    (forward and backward). Gradients are 16-bit and only full fine-tuning has many."""
    if not gpu.bf16_tflops:
        return None
    per_token = training_flops_per_token(model, weight_grads, seq, grad_ckpt)
    compute = batch * seq * per_token / (gpu.bf16_tflops * 1e12 * efficiency)
    grads = 2 * model.params if weight_grads else 0
    traffic = (2 * model_bytes + grads if zero == 3 else 2 * grads) * (gpus - 1) / gpus
    comm = traffic / (pcie_gbs(gpu) * 1e9)
    step = compute if gpu.nvlink or gpus == 1 else max(compute, comm)
    rate = gpus * batch * seq / step
    return Throughput(tokens_per_s=rate, bound="compute" if step == compute else "pcie", step_s=step,
                      bytes_per_step=0, flops_per_token=per_token, efficiency=efficiency, comm_s=comm,
                      needs_nvlink=gpus > 1 and comm > compute)
