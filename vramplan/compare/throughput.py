"""Speed helpers shared by the serving estimate (compare/speed.py) and the training estimate.

What one decode step reads and multiplies (streamed weights, KV bytes, active parameters,
attention FLOPs), the PCIe bandwidth of a card, and the training roofline:
tokens/s = GPUs x dense BF16 TFLOPS x MFU / FLOPs per token (PaLM's model-FLOPs count), or the
ZeRO traffic over PCIe where that is longer. docs/compare.md explains both models and every
constant.
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
