"""`vramplan verify` as a plain function with a typer signature; cli.py registers it with its
error-to-exit-code wrapper (`command(verify)`). Imports only typer at module level.

Exit codes: 0 the run completed (read the errors in the report), 1 it would not fit in free
memory (refused) or ran out of memory, 2 bad input, 3 no usable device / timeout.
"""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer


def verify(
    model: str = typer.Argument(..., help="Hub id, bundled id, local directory or config.json."),
    level: str = typer.Option("alloc", "--level", help="alloc: allocate the planned components; run: build the model with random weights and run the workload."),
    device: str = typer.Option("cuda:0", "--device", help="cuda:N, or cpu (tiny models; measured with the trace tier's tracker)."),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="Plan for this catalog GPU instead of the probed one."),
    gpu_mem: Optional[str] = typer.Option(None, "--gpu-mem", help="Plan for this memory size instead of the probed GPU."),
    ctx: str = typer.Option("4k", "--ctx", help="Tokens per sequence."),
    batch: str = typer.Option("1", "--batch", help="Sequences (training: the micro-batch)."),
    mode: str = typer.Option("infer", "--mode", help="infer | serve | full | lora | qlora."),
    dtype: str = typer.Option("auto", "--dtype", help="Weight precision."),
    kv_dtype: str = typer.Option("auto", "--kv-dtype", help="KV cache precision."),
    optim: Optional[str] = typer.Option(None, "--optim", help="train: optimizer (adamw_torch, adamw_torch_fused, adamw_8bit, adafactor, sgd)."),
    grad_ckpt: bool = typer.Option(False, "--grad-ckpt", help="train: gradient checkpointing."),
    lora_r: Optional[int] = typer.Option(None, "--lora-r", help="train: LoRA rank."),
    lora_targets: Optional[str] = typer.Option(None, "--lora-targets", help="train: all-linear or q_proj,v_proj,..."),
    force: bool = typer.Option(False, "--force", help="Try even when NVML says it will not fit in free memory."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Stop (and free everything) after this many seconds."),
    record: Optional[str] = typer.Option(None, "--record", help="Append a self-describing JSON line to this file."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (docs/verify.md)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Allocate or run the planned workload on the device and compare predicted with measured
    memory, per component and in total. Refuses (exit 1) when NVML says it will not fit."""
    from .render import result_text
    from .session import verify as run_verify

    train = {k: v for k, v in {"optim": optim, "grad_ckpt": grad_ckpt or None, "lora_r": lora_r,
                                "lora_targets": lora_targets}.items() if v is not None}
    result = run_verify(model, level=level, device=device, force=force, timeout=timeout,
                        record=record, gpu=gpu, gpu_mem=gpu_mem, mode=mode, batch=batch, ctx=ctx,
                        dtype=dtype, kv_dtype=kv_dtype, **train)
    if as_json:
        sys.stdout.write(json.dumps(result.to_json(), indent=2) + "\n")
    else:
        print(result_text(result))
    raise typer.Exit(0 if result.completed else 1)
