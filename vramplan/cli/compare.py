"""`vramplan compare` and `vramplan sweep`. Exit codes: 0 when some configuration fits, 1 when
none does."""

from __future__ import annotations

from typing import List, Optional

import typer

from vramplan import api, render
from vramplan.cli import options as O
from vramplan.cli.output import emit


def _format(fmt: str, as_json: bool) -> str:
    fmt = fmt.strip().lower()
    if fmt not in render.compare.FORMATS:
        raise api.BadInput(f"--format {fmt!r} is not one of: {', '.join(render.compare.FORMATS)}.")
    if as_json and fmt not in ("table", "json"):
        raise api.BadInput(f"--json and --format {fmt} ask for two outputs; give one.")
    return "json" if as_json else fmt


def compare(
    model: str = O.MODEL,
    gpus: Optional[str] = typer.Option(None, "--gpus", help="Catalog ids to compare, e.g. l40s,h100,a100-80gb (default: all)."),
    ctx: str = typer.Option("4k", "--ctx", help="Tokens per sequence (max model length): 4096, 32k."),
    batch: str = typer.Option("1", "--batch", help="Concurrent sequences (training: per-device micro-batch)."),
    mode: str = O.MODE, dtype: str = O.DTYPE, kv_dtype: str = O.KV,
    price: Optional[List[str]] = typer.Option(None, "--price", help="Override a price per GPU-hour: l40s=0.79 (repeatable or comma-separated)."),
    price_source: str = typer.Option("cheapest", "--price-source", help="Which catalog quote: cheapest (dated on-demand, the default), median, spot, hyperscaler, min, max, latest, or a provider (runpod, lambda, aws, ...)."),
    efficiency: Optional[float] = typer.Option(None, "--efficiency", help="serve: share of peak bandwidth decode reaches (calibrated 0.95); training: MFU (0.40)."),
    input_len: Optional[str] = typer.Option(None, "--input-len", help="serve: prompt tokens per request (default: half of --ctx)."),
    output_len: Optional[str] = typer.Option(None, "--output-len", help="serve: output tokens per request (default: 512, within --ctx)."),
    concurrency: Optional[str] = typer.Option(None, "--concurrency", help="serve: requests in flight (the same as --batch)."),
    max_ttft: Optional[str] = typer.Option(None, "--max-ttft", help="serve: latency target, time to first token: 0.5 (seconds) or 500ms."),
    min_tokens_per_s: Optional[float] = typer.Option(None, "--min-tokens-per-s", help="serve: latency target, decode tokens/s each sequence must see."),
    plot: Optional[str] = O.PLOT, fmt: str = O.FORMAT, as_json: bool = O.JSON,
    gpu_memory_utilization: Optional[float] = O.UTIL, max_num_batched_tokens: Optional[str] = O.MNBT,
    max_num_seqs: Optional[str] = O.MNS, block_size: Optional[int] = O.BLOCK, enforce_eager: bool = O.EAGER,
    vllm_version: Optional[str] = O.VLLM, kv_cache_memory: Optional[str] = O.KVMEM,
    allow_long_max_model_len: bool = O.LONG, cpu_offload_gb: Optional[float] = O.OFFLOAD,
    optim: Optional[str] = O.OPTIM, grad_ckpt: Optional[bool] = O.CKPT, lora_r: Optional[int] = O.LORA_R,
    lora_alpha: Optional[int] = O.LORA_ALPHA, lora_targets: Optional[str] = O.LORA_TARGETS,
    lora_dropout: Optional[float] = O.LORA_DROPOUT, precision: Optional[str] = O.PRECISION,
    zero: Optional[int] = O.ZERO, attn: Optional[str] = O.ATTN, lora_dtype: Optional[str] = O.LORA_DTYPE,
    kbit_prepare: Optional[str] = O.KBIT, transformers: Optional[int] = O.HF, debug: bool = O.DEBUG,
) -> None:
    """The same workload on every catalog GPU: fits on one card, GPUs needed, max batch and ctx,
    $/h, estimated tok/s and $/M tokens, cheapest first. Exit 0 when some GPU fits, 1 when none."""
    out = _format(fmt, as_json)
    if plot:
        render.plot.check_target(plot)
    request = api.PlanRequest(
        model=model, mode=mode, batch=batch, ctx=ctx, dtype=dtype, kv_dtype=kv_dtype,
        transformers=transformers,
        serve=api.ServeFlags(
            gpu_memory_utilization=gpu_memory_utilization, max_num_batched_tokens=max_num_batched_tokens,
            max_num_seqs=max_num_seqs, block_size=block_size, enforce_eager=enforce_eager or None,
            vllm_version=vllm_version, kv_cache_memory=kv_cache_memory,
            allow_long_max_model_len=allow_long_max_model_len or None, cpu_offload_gb=cpu_offload_gb),
        train=api.TrainFlags(
            optim=optim, grad_ckpt=grad_ckpt, lora_r=lora_r, lora_alpha=lora_alpha,
            lora_targets=lora_targets, lora_dropout=lora_dropout, precision=precision, zero=zero,
            attn=attn, lora_dtype=lora_dtype, kbit_prepare=kbit_prepare),
    )
    c = api.compare_request(request, gpus, prices=price, price_source=price_source, efficiency=efficiency,
                            input_len=input_len, output_len=output_len, concurrency=concurrency,
                            max_ttft=max_ttft, min_tokens_per_s=min_tokens_per_s)
    table = render.compare
    emit(out, lambda: table.comparison_json(c), lambda: table.comparison_table(c),
         lambda: table.comparison_csv(c), lambda: table.comparison_markdown(c))
    if plot:
        render.plot.comparison_chart(c, plot)
        typer.echo(f"vramplan: wrote {plot}", err=True)
    raise typer.Exit(0 if c.cheapest is not None else 1)


def sweep(
    model: str = O.MODEL,
    gpu: Optional[str] = typer.Option(None, "--gpu", help="Catalog GPU id, optionally with a count: l40s, h100:2. Default l40s."),
    gpu_mem: Optional[str] = typer.Option(None, "--gpu-mem", help="Any other card by its memory: 48GB, 44.5GiB."),
    ctx: str = typer.Option("4k..128k", "--ctx", help="Contexts: a doubling range 4k..128k or a list 4k,32k."),
    batch: str = typer.Option("1..64", "--batch", help="Batches: a doubling range 1..64 or a list 1,8,32."),
    mode: str = O.MODE, dtype: str = O.DTYPE, kv_dtype: str = O.KV,
    tp: Optional[int] = O.TP, pp: Optional[int] = O.PP, dp: Optional[int] = O.DP,
    enable_expert_parallel: bool = O.EP, cpu_offload_gb: Optional[float] = O.OFFLOAD,
    plot: Optional[str] = O.PLOT, fmt: str = O.FORMAT, as_json: bool = O.JSON,
    gpu_memory_utilization: Optional[float] = O.UTIL, max_num_batched_tokens: Optional[str] = O.MNBT,
    max_num_seqs: Optional[str] = O.MNS, block_size: Optional[int] = O.BLOCK, enforce_eager: bool = O.EAGER,
    vllm_version: Optional[str] = O.VLLM, kv_cache_memory: Optional[str] = O.KVMEM,
    allow_long_max_model_len: bool = O.LONG,
    optim: Optional[str] = O.OPTIM, grad_ckpt: Optional[bool] = O.CKPT, lora_r: Optional[int] = O.LORA_R,
    lora_alpha: Optional[int] = O.LORA_ALPHA, lora_targets: Optional[str] = O.LORA_TARGETS,
    lora_dropout: Optional[float] = O.LORA_DROPOUT, precision: Optional[str] = O.PRECISION,
    zero: Optional[int] = O.ZERO, attn: Optional[str] = O.ATTN, lora_dtype: Optional[str] = O.LORA_DTYPE,
    kbit_prepare: Optional[str] = O.KBIT, transformers: Optional[int] = O.HF, debug: bool = O.DEBUG,
) -> None:
    """Where a workload fits on a card: every context x batch of a grid, fit or not, and the
    largest batch at each context. Exit 0 when some point fits, 1 when none does."""
    out = _format(fmt, as_json)
    if plot:
        render.plot.check_target(plot)
    request = api.PlanRequest(
        model=model, gpu=gpu, gpu_mem=gpu_mem, mode=mode, batch=batch, ctx=ctx, dtype=dtype,
        kv_dtype=kv_dtype, transformers=transformers,
        serve=api.ServeFlags(
            gpu_memory_utilization=gpu_memory_utilization, max_num_batched_tokens=max_num_batched_tokens,
            max_num_seqs=max_num_seqs, block_size=block_size, tp=tp, pp=pp, enforce_eager=enforce_eager or None,
            vllm_version=vllm_version, kv_cache_memory=kv_cache_memory,
            allow_long_max_model_len=allow_long_max_model_len or None, dp=dp,
            enable_expert_parallel=enable_expert_parallel or None, cpu_offload_gb=cpu_offload_gb),
        train=api.TrainFlags(
            optim=optim, grad_ckpt=grad_ckpt, lora_r=lora_r, lora_alpha=lora_alpha,
            lora_targets=lora_targets, lora_dropout=lora_dropout, precision=precision, zero=zero,
            attn=attn, lora_dtype=lora_dtype, kbit_prepare=kbit_prepare),
    )
    s = api.sweep_request(request)
    table = render.compare
    emit(out, lambda: table.sweep_json(s), lambda: table.sweep_table(s), lambda: table.sweep_csv(s),
         lambda: table.sweep_table(s, markdown=True))
    if plot:
        render.plot.sweep_heatmap(s, plot)
        typer.echo(f"vramplan: wrote {plot}", err=True)
    raise typer.Exit(0 if s.any_fits else 1)
