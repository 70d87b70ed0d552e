"""`vramplan compare` and `vramplan sweep` as plain functions with typer signatures;
cli/__init__.py registers them with its error-to-exit-code wrapper (`command(compare)`), so
importing this module costs only typer. Exit codes: 0 when some configuration fits, 1 when none
does."""

from __future__ import annotations

import json
import sys
from typing import List, Optional

import typer

from vramplan.cli import options as O


def _format(fmt: str, as_json: bool) -> str:
    from vramplan.errors import BadInput
    from vramplan.render.compare import FORMATS

    fmt = fmt.strip().lower()
    if fmt not in FORMATS:
        raise BadInput(f"--format {fmt!r} is not one of: {', '.join(FORMATS)}.")
    if as_json and fmt not in ("table", "json"):
        raise BadInput(f"--json and --format {fmt} ask for two outputs; give one.")
    return "json" if as_json else fmt


def compare(
    model: str = O.MODEL,
    gpus: Optional[str] = typer.Option(None, "--gpus", help="Catalog ids to compare, e.g. l40s,h100,a100-80gb (default: all)."),
    ctx: str = typer.Option("4k", "--ctx", help="Tokens per sequence (max model length): 4096, 32k."),
    batch: str = typer.Option("1", "--batch", help="Concurrent sequences (training: per-device micro-batch)."),
    mode: str = O.MODE, dtype: str = O.DTYPE, kv_dtype: str = O.KV,
    price: Optional[List[str]] = typer.Option(None, "--price", help="Override a price per GPU-hour: l40s=0.79 (repeatable or comma-separated)."),
    price_source: str = typer.Option("median", "--price-source", help="Which catalog quote: median, min, max, latest, or a provider (spheron, runpod, aws, ...)."),
    efficiency: Optional[float] = typer.Option(None, "--efficiency", help="serve: share of peak bandwidth decode reaches (calibrated 0.94); training: MFU (0.40)."),
    plot: Optional[str] = O.PLOT, fmt: str = O.FORMAT, as_json: bool = O.JSON,
    gpu_memory_utilization: float = O.UTIL, max_num_batched_tokens: Optional[str] = O.MNBT,
    max_num_seqs: Optional[str] = O.MNS, block_size: int = O.BLOCK, enforce_eager: bool = O.EAGER,
    vllm_version: Optional[str] = O.VLLM, kv_cache_memory: Optional[str] = O.KVMEM,
    optim: Optional[str] = O.OPTIM, grad_ckpt: bool = O.CKPT, lora_r: Optional[int] = O.LORA_R,
    lora_alpha: Optional[int] = O.LORA_ALPHA, lora_targets: Optional[str] = O.LORA_TARGETS,
    lora_dropout: Optional[float] = O.LORA_DROPOUT, precision: Optional[str] = O.PRECISION,
    zero: Optional[int] = O.ZERO, attn: Optional[str] = O.ATTN, lora_dtype: Optional[str] = O.LORA_DTYPE,
    kbit_prepare: Optional[str] = O.KBIT, transformers: Optional[int] = O.HF, debug: bool = O.DEBUG,
) -> None:
    """The same workload on every catalog GPU: fits on one card, GPUs needed, max batch and ctx,
    $/h, estimated tok/s and $/M tokens, cheapest first. Exit 0 when some GPU fits, 1 when none."""
    from vramplan.render import compare as render
    from vramplan.compare.table import compare as run

    out = _format(fmt, as_json)
    if plot:
        from vramplan.compare.plot import check_target

        check_target(plot)
    opts = O.plan_options_from(locals())
    c = run(model, gpus, mode=mode, batch=batch, ctx=ctx, dtype=dtype, kv_dtype=kv_dtype, prices=price,
            price_source=price_source, efficiency=efficiency, **opts)
    _print(out, lambda: render.comparison_json(c), lambda: render.comparison_table(c),
           lambda: render.comparison_csv(c), lambda: render.comparison_markdown(c))
    if plot:
        from vramplan.compare.plot import comparison_chart

        comparison_chart(c, plot)
        typer.echo(f"vramplan: wrote {plot}", err=True)
    raise typer.Exit(0 if c.cheapest is not None else 1)


def sweep(
    model: str = O.MODEL,
    gpu: Optional[str] = typer.Option(None, "--gpu", help="Catalog GPU id, optionally with a count: l40s, h100:2. Default l40s."),
    gpu_mem: Optional[str] = typer.Option(None, "--gpu-mem", help="Any other card by its memory: 48GB, 44.5GiB."),
    ctx: str = typer.Option("4k..128k", "--ctx", help="Contexts: a doubling range 4k..128k or a list 4k,32k."),
    batch: str = typer.Option("1..64", "--batch", help="Batches: a doubling range 1..64 or a list 1,8,32."),
    mode: str = O.MODE, dtype: str = O.DTYPE, kv_dtype: str = O.KV,
    tp: Optional[int] = typer.Option(None, "--tp", help="serve: tensor-parallel size (default: the GPU count)."),
    pp: int = typer.Option(1, "--pp", help="serve: pipeline-parallel size."),
    plot: Optional[str] = O.PLOT, fmt: str = O.FORMAT, as_json: bool = O.JSON,
    gpu_memory_utilization: float = O.UTIL, max_num_batched_tokens: Optional[str] = O.MNBT,
    max_num_seqs: Optional[str] = O.MNS, block_size: int = O.BLOCK, enforce_eager: bool = O.EAGER,
    vllm_version: Optional[str] = O.VLLM, kv_cache_memory: Optional[str] = O.KVMEM,
    optim: Optional[str] = O.OPTIM, grad_ckpt: bool = O.CKPT, lora_r: Optional[int] = O.LORA_R,
    lora_alpha: Optional[int] = O.LORA_ALPHA, lora_targets: Optional[str] = O.LORA_TARGETS,
    lora_dropout: Optional[float] = O.LORA_DROPOUT, precision: Optional[str] = O.PRECISION,
    zero: Optional[int] = O.ZERO, attn: Optional[str] = O.ATTN, lora_dtype: Optional[str] = O.LORA_DTYPE,
    kbit_prepare: Optional[str] = O.KBIT, transformers: Optional[int] = O.HF, debug: bool = O.DEBUG,
) -> None:
    """Where a workload fits on a card: every context x batch of a grid, fit or not, and the
    largest batch at each context. Exit 0 when some point fits, 1 when none does."""
    from vramplan.render import compare as render
    from vramplan.compare.grid import sweep as run

    out = _format(fmt, as_json)
    if plot:
        from vramplan.compare.plot import check_target

        check_target(plot)
    opts = O.plan_options_from(locals())
    s = run(model, gpu, ctx=ctx, batch=batch, gpu_mem=gpu_mem, mode=mode,
            dtype=dtype, kv_dtype=kv_dtype, tp=tp, pp=pp, **opts)
    _print(out, lambda: render.sweep_json(s), lambda: render.sweep_table(s), lambda: render.sweep_csv(s),
           lambda: render.sweep_table(s, markdown=True))
    if plot:
        from vramplan.compare.plot import sweep_heatmap

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
