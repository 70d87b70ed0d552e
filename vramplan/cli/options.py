"""Flags shared by the commands that plan a workload (fit, compare, sweep, verify), declared
once so their names, defaults and help stay identical across commands. fit, compare and sweep
turn them into a `vramplan.api.PlanRequest`, naming every field."""

from __future__ import annotations

import typer

MODEL = typer.Argument(..., help="Hub id (meta-llama/Llama-3.1-8B), bundled id, local directory or config.json.")
GPU = typer.Option(None, "--gpu", help="Catalog GPU id, optionally with a count: l40s, h100:8, or auto (the attached GPU). Default l40s.")
GPU_MEM = typer.Option(None, "--gpu-mem", help="Any other card by its memory: 48GB, 44.5GiB.")
GPU_FREE = typer.Option(None, "--gpu-free", help="Memory free on each GPU now (other processes hold the rest), e.g. 40GiB.")
CTX = typer.Option("4k", "--ctx", help="Tokens per sequence (serve: max model length; training: sequence length): 4096, 32k.")
BATCH = typer.Option("1", "--batch", help="Concurrent sequences (training: per-device micro-batch).")
MODE = typer.Option("serve", "--mode", help="serve (vLLM engine), infer (transformers generate), or one training step: full, lora, qlora.")
DTYPE = typer.Option("auto", "--dtype", help="Weights: auto|bf16|fp16|fp32|fp8|int8|int4|gptq|awq|nf4|fp4|mxfp4.")
KV = typer.Option("auto", "--kv-dtype", help="KV cache: auto|bf16|fp16|fp32|fp8|int8.")
METHOD = typer.Option("analytic", "--method", help="analytic (closed form, ~0.1 s) or trace (the real transformers model on fake tensors; needs the 'trace' extra).")
NO_CACHE = typer.Option(False, "--no-cache", help="trace: ignore the on-disk cache of earlier traces.")
JSON = typer.Option(False, "--json", help="Print one JSON object (docs/json-schema.md, docs/compare.md).")
FORMAT = typer.Option("table", "--format", help="table, csv, markdown or json.")
PLOT = typer.Option(None, "--plot", help="Also draw a chart to FILE.png or FILE.svg (needs the 'plot' extra: matplotlib).")
TP = typer.Option(None, "--tp", help="serve: tensor-parallel size (default: the GPU count).")
PP = typer.Option(1, "--pp", help="serve: pipeline-parallel size.")
UTIL = typer.Option(0.9, "--gpu-memory-utilization", help="serve: share of each GPU vLLM may use.")
MNBT = typer.Option(None, "--max-num-batched-tokens", help="serve: token budget per step (default: vLLM's).")
MNS = typer.Option(None, "--max-num-seqs", help="serve: max concurrent requests (default: vLLM's).")
BLOCK = typer.Option(16, "--block-size", help="serve: tokens per KV block.")
EAGER = typer.Option(False, "--enforce-eager", help="serve: no CUDA graphs.")
VLLM = typer.Option(None, "--vllm-version", help="serve: whose accounting: 0.10, 0.11-0.20 (default), 0.21 (CUDA graphs inside the budget).")
KVMEM = typer.Option(None, "--kv-cache-memory", help="serve: explicit KV cache size per GPU (e.g. 20GiB), bypassing the profile.")
OPTIM = typer.Option(None, "--optim", help="train: adamw_torch|adamw_torch_fused|adamw_8bit|paged_adamw_8bit|adafactor|sgd (HF names).")
CKPT = typer.Option(False, "--grad-ckpt", help="train: gradient checkpointing.")
LORA_R = typer.Option(None, "--lora-r", help="lora/qlora: rank (default 16).")
LORA_ALPHA = typer.Option(None, "--lora-alpha", help="lora/qlora: alpha (no memory effect).")
LORA_TARGETS = typer.Option(None, "--lora-targets", help="lora/qlora: all-linear or q_proj,v_proj,...")
LORA_DROPOUT = typer.Option(None, "--lora-dropout", help="lora/qlora: dropout (> 0 keeps a copy of each adapted input).")
PRECISION = typer.Option(None, "--precision", help="train: bf16 (pure) or mixed (fp32 master weights + autocast).")
ZERO = typer.Option(None, "--zero", help="train: ZeRO stage 0-3 over the GPU count (3 = FSDP full shard).")
ATTN = typer.Option(None, "--attn", help="train: sdpa, eager or flash_attention_2.")
LORA_DTYPE = typer.Option(None, "--lora-dtype", help="lora/qlora: adapter dtype, fp32 (peft's default) or bf16.")
KBIT = typer.Option(None, "--kbit-prepare", help="qlora: peft (prepare_model_for_kbit_training: fp32 embeddings/norms), trl, or none.")
HF = typer.Option(None, "--transformers", help="infer/train: the transformers major version planned, 4 or 5 (default: the installed one, else 5). Under 5, bitsandbytes leaves fused MoE experts and FalconLinear in 16 bits.")
DEBUG = typer.Option(False, "--debug", help="Show tracebacks.")
