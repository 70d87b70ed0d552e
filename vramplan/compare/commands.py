"""`vramplan compare` and `vramplan sweep` as plain functions with typer signatures; cli.py
registers them with its error-to-exit-code wrapper (`command(compare)`), so importing this
module costs only typer. Exit codes: 0 when some configuration fits, 1 when none does."""

from __future__ import annotations

import json
import sys
from typing import List, Optional

import typer

_MODEL = typer.Argument(..., help="Hub id (meta-llama/Llama-3.1-8B), bundled id, local directory or config.json.")
_MODE = typer.Option("serve", "--mode", help="serve (vLLM engine), infer (transformers generate), or one training step: full, lora, qlora.")
_DTYPE = typer.Option("auto", "--dtype", help="Weights: auto|bf16|fp16|fp32|fp8|int8|int4|gptq|awq|nf4|fp4|mxfp4.")
_KV = typer.Option("auto", "--kv-dtype", help="KV cache: auto|bf16|fp16|fp32|fp8|int8.")
_JSON = typer.Option(False, "--json", help="Print one JSON object (docs/compare.md); same as --format json.")
_FORMAT = typer.Option("table", "--format", help="table, csv, markdown or json.")
_PLOT = typer.Option(None, "--plot", help="Also draw a chart to FILE.png or FILE.svg (needs the 'plot' extra: matplotlib).")
_UTIL = typer.Option(0.9, "--gpu-memory-utilization", help="serve: share of each GPU vLLM may use.")
_MNBT = typer.Option(None, "--max-num-batched-tokens", help="serve: token budget per step (default: vLLM's).")
_MNS = typer.Option(None, "--max-num-seqs", help="serve: max concurrent requests (default: vLLM's).")
_BLOCK = typer.Option(16, "--block-size", help="serve: tokens per KV block.")
_EAGER = typer.Option(False, "--enforce-eager", help="serve: no CUDA graphs.")
_VLLM = typer.Option(None, "--vllm-version", help="serve: whose accounting: 0.10, 0.11-0.20 (default), 0.21.")
_KVMEM = typer.Option(None, "--kv-cache-memory", help="serve: explicit KV cache size per GPU, bypassing the profile.")
_OPTIM = typer.Option(None, "--optim", help="train: adamw_torch|adamw_torch_fused|adamw_8bit|paged_adamw_8bit|adafactor|sgd.")
_CKPT = typer.Option(False, "--grad-ckpt", help="train: gradient checkpointing.")
_LORA_R = typer.Option(None, "--lora-r", help="lora/qlora: rank (default 16).")
_LORA_ALPHA = typer.Option(None, "--lora-alpha", help="lora/qlora: alpha (no memory effect).")
_LORA_TARGETS = typer.Option(None, "--lora-targets", help="lora/qlora: all-linear or q_proj,v_proj,...")
_LORA_DROPOUT = typer.Option(None, "--lora-dropout", help="lora/qlora: dropout.")
_PRECISION = typer.Option(None, "--precision", help="train: bf16 (pure) or mixed.")
_ZERO = typer.Option(None, "--zero", help="train: ZeRO stage on several GPUs (compare's default: 3).")
_ATTN = typer.Option(None, "--attn", help="train: sdpa, eager or flash_attention_2.")
_LORA_DTYPE = typer.Option(None, "--lora-dtype", help="lora/qlora: adapter dtype, fp32 or bf16.")
_KBIT = typer.Option(None, "--kbit-prepare", help="qlora: peft, trl or none.")
_DEBUG = typer.Option(False, "--debug", help="Show tracebacks.")


def _options(**kw) -> dict:
    """Serve flags always (the API validates them in every mode); training flags only when given."""
    serve = ("gpu_memory_utilization", "max_num_batched_tokens", "max_num_seqs", "block_size",
             "enforce_eager", "vllm_version", "kv_cache_memory")
    out = {k: kw.pop(k) for k in serve}
    kw["grad_ckpt"] = kw["grad_ckpt"] or None
    out.update({k: v for k, v in kw.items() if v is not None})
    return out


def _format(fmt: str, as_json: bool) -> str:
    from ..errors import BadInput
    from .render import FORMATS

    fmt = fmt.strip().lower()
    if fmt not in FORMATS:
        raise BadInput(f"--format {fmt!r} is not one of: {', '.join(FORMATS)}.")
    if as_json and fmt not in ("table", "json"):
        raise BadInput(f"--json and --format {fmt} ask for two outputs; give one.")
    return "json" if as_json else fmt


def compare(
    model: str = _MODEL,
    gpus: Optional[str] = typer.Option(None, "--gpus", help="Catalog ids to compare, e.g. l40s,h100,a100-80gb (default: all)."),
    ctx: str = typer.Option("4k", "--ctx", help="Tokens per sequence (max model length): 4096, 32k."),
    batch: str = typer.Option("1", "--batch", help="Concurrent sequences (training: per-device micro-batch)."),
    mode: str = _MODE, dtype: str = _DTYPE, kv_dtype: str = _KV,
    price: Optional[List[str]] = typer.Option(None, "--price", help="Override a price per GPU-hour: l40s=0.79 (repeatable or comma-separated)."),
    price_source: str = typer.Option("median", "--price-source", help="Which catalog quote: median, min, max, latest, or a provider (spheron, runpod, aws, ...)."),
    efficiency: Optional[float] = typer.Option(None, "--efficiency", help="serve: share of peak bandwidth decode reaches (calibrated 0.94); training: MFU (0.40)."),
    plot: Optional[str] = _PLOT, fmt: str = _FORMAT, as_json: bool = _JSON,
    gpu_memory_utilization: float = _UTIL, max_num_batched_tokens: Optional[str] = _MNBT,
    max_num_seqs: Optional[str] = _MNS, block_size: int = _BLOCK, enforce_eager: bool = _EAGER,
    vllm_version: Optional[str] = _VLLM, kv_cache_memory: Optional[str] = _KVMEM,
    optim: Optional[str] = _OPTIM, grad_ckpt: bool = _CKPT, lora_r: Optional[int] = _LORA_R,
    lora_alpha: Optional[int] = _LORA_ALPHA, lora_targets: Optional[str] = _LORA_TARGETS,
    lora_dropout: Optional[float] = _LORA_DROPOUT, precision: Optional[str] = _PRECISION,
    zero: Optional[int] = _ZERO, attn: Optional[str] = _ATTN, lora_dtype: Optional[str] = _LORA_DTYPE,
    kbit_prepare: Optional[str] = _KBIT, debug: bool = _DEBUG,
) -> None:
    """The same workload on every catalog GPU: fits on one card, GPUs needed, max batch and ctx,
    $/h, estimated tok/s and $/M tokens, cheapest first. Exit 0 when some GPU fits, 1 when none."""
    from . import render
    from .table import compare as run

    out = _format(fmt, as_json)
    if plot:
        from .plot import check_target

        check_target(plot)
    opts = _options(gpu_memory_utilization=gpu_memory_utilization, max_num_batched_tokens=max_num_batched_tokens,
                    max_num_seqs=max_num_seqs, block_size=block_size, enforce_eager=enforce_eager,
                    vllm_version=vllm_version, kv_cache_memory=kv_cache_memory, optim=optim,
                    grad_ckpt=grad_ckpt, lora_r=lora_r, lora_alpha=lora_alpha, lora_targets=lora_targets,
                    lora_dropout=lora_dropout, precision=precision, zero=zero, attn=attn,
                    lora_dtype=lora_dtype, kbit_prepare=kbit_prepare)
    c = run(model, gpus, mode=mode, batch=batch, ctx=ctx, dtype=dtype, kv_dtype=kv_dtype, prices=price,
            price_source=price_source, efficiency=efficiency, **opts)
    _print(out, lambda: render.comparison_json(c), lambda: render.comparison_table(c),
           lambda: render.comparison_csv(c), lambda: render.comparison_markdown(c))
    if plot:
        from .plot import comparison_chart

        comparison_chart(c, plot)
        typer.echo(f"vramplan: wrote {plot}", err=True)
    raise typer.Exit(0 if c.cheapest is not None else 1)


def sweep(
    model: str = _MODEL,
    gpu: Optional[str] = typer.Option(None, "--gpu", help="Catalog GPU id, optionally with a count: l40s, h100:2. Default l40s."),
    gpu_mem: Optional[str] = typer.Option(None, "--gpu-mem", help="Any other card by its memory: 48GB, 44.5GiB."),
    ctx: str = typer.Option("4k..128k", "--ctx", help="Contexts: a doubling range 4k..128k or a list 4k,32k."),
    batch: str = typer.Option("1..64", "--batch", help="Batches: a doubling range 1..64 or a list 1,8,32."),
    mode: str = _MODE, dtype: str = _DTYPE, kv_dtype: str = _KV,
    tp: Optional[int] = typer.Option(None, "--tp", help="serve: tensor-parallel size (default: the GPU count)."),
    pp: int = typer.Option(1, "--pp", help="serve: pipeline-parallel size."),
    plot: Optional[str] = _PLOT, fmt: str = _FORMAT, as_json: bool = _JSON,
    gpu_memory_utilization: float = _UTIL, max_num_batched_tokens: Optional[str] = _MNBT,
    max_num_seqs: Optional[str] = _MNS, block_size: int = _BLOCK, enforce_eager: bool = _EAGER,
    vllm_version: Optional[str] = _VLLM, kv_cache_memory: Optional[str] = _KVMEM,
    optim: Optional[str] = _OPTIM, grad_ckpt: bool = _CKPT, lora_r: Optional[int] = _LORA_R,
    lora_alpha: Optional[int] = _LORA_ALPHA, lora_targets: Optional[str] = _LORA_TARGETS,
    lora_dropout: Optional[float] = _LORA_DROPOUT, precision: Optional[str] = _PRECISION,
    zero: Optional[int] = _ZERO, attn: Optional[str] = _ATTN, lora_dtype: Optional[str] = _LORA_DTYPE,
    kbit_prepare: Optional[str] = _KBIT, debug: bool = _DEBUG,
) -> None:
    """Where a workload fits on a card: every context x batch of a grid, fit or not, and the
    largest batch at each context. Exit 0 when some point fits, 1 when none does."""
    from . import render
    from .grid import sweep as run

    out = _format(fmt, as_json)
    if plot:
        from .plot import check_target

        check_target(plot)
    opts = _options(gpu_memory_utilization=gpu_memory_utilization, max_num_batched_tokens=max_num_batched_tokens,
                    max_num_seqs=max_num_seqs, block_size=block_size, enforce_eager=enforce_eager,
                    vllm_version=vllm_version, kv_cache_memory=kv_cache_memory, optim=optim,
                    grad_ckpt=grad_ckpt, lora_r=lora_r, lora_alpha=lora_alpha, lora_targets=lora_targets,
                    lora_dropout=lora_dropout, precision=precision, zero=zero, attn=attn,
                    lora_dtype=lora_dtype, kbit_prepare=kbit_prepare)
    s = run(model, gpu, ctx=ctx, batch=batch, gpu_mem=gpu_mem, mode=mode,
            dtype=dtype, kv_dtype=kv_dtype, tp=tp, pp=pp, **opts)
    _print(out, lambda: render.sweep_json(s), lambda: render.sweep_table(s), lambda: render.sweep_csv(s),
           lambda: render.sweep_table(s, markdown=True))
    if plot:
        from .plot import sweep_heatmap

        sweep_heatmap(s, plot)
        typer.echo(f"vramplan: wrote {plot}", err=True)
    raise typer.Exit(0 if s.any_fits else 1)


def _print(fmt: str, as_json, table, as_csv, markdown) -> None:
    if fmt == "json":
        sys.stdout.write(json.dumps(as_json(), indent=2) + "\n")
    elif fmt == "csv":
        sys.stdout.write(as_csv())
    else:
        print(markdown() if fmt == "markdown" else table())
