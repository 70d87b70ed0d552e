"""`vramplan verify`: allocate or run the planned workload on a device and compare.

Exit codes: 0 the run completed (read the errors in the report), 1 it would not fit in free
memory (refused) or ran out of memory, 2 bad input, 3 no usable device / timeout, 130 Ctrl-C
(after everything verify allocated was freed; click's own handling would say exit 1, which
here means "does not fit").
"""

from __future__ import annotations

from typing import Optional

import typer

from vramplan import api, render
from vramplan.cli import options as O
from vramplan.cli.output import emit_json


def verify(
    model: str = O.MODEL,
    level: str = typer.Option("alloc", "--level", help="alloc: allocate the planned components; run: build the model with random weights and run the workload."),
    device: str = typer.Option("cuda:0", "--device", help="cuda:N, or cpu (tiny models; measured with the trace tier's tracker)."),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="Plan for this catalog GPU instead of the probed one."),
    gpu_mem: Optional[str] = typer.Option(None, "--gpu-mem", help="Plan for this memory size instead of the probed GPU."),
    ctx: str = O.CTX,
    batch: str = O.BATCH,
    mode: str = typer.Option("infer", "--mode", help="infer | serve | full | lora | qlora."),
    dtype: str = O.DTYPE,
    kv_dtype: str = O.KV,
    optim: Optional[str] = O.OPTIM,
    grad_ckpt: Optional[bool] = O.CKPT,
    lora_r: Optional[int] = O.LORA_R,
    lora_targets: Optional[str] = O.LORA_TARGETS,
    force: bool = typer.Option(False, "--force", help="Try even when NVML says it will not fit in free memory."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Stop (and free everything) after this many seconds; if the device does not give control back 10 s later, exit (exit 3)."),
    record: Optional[str] = typer.Option(None, "--record", help="Append a self-describing JSON line to this file."),
    emulate: bool = typer.Option(False, "--emulate", help="On a GPU without bitsandbytes, run vramplan's emulation of its 4-bit layers and 8-bit optimizers (marked emulated) instead of refusing."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (docs/verify.md)."),
    debug: bool = O.DEBUG,
) -> None:
    """Allocate or run the planned workload on the device and compare predicted with measured
    memory, per component and in total. Refuses (exit 1) when NVML says it will not fit."""
    try:
        result = _verify(model, level, device, force, timeout, record, gpu, gpu_mem, emulate, mode,
                         batch, ctx, dtype, kv_dtype, optim, grad_ckpt, lora_r, lora_targets)
    except KeyboardInterrupt:
        if debug:
            raise
        typer.echo("vramplan: interrupted; everything verify allocated was freed.", err=True)
        raise typer.Exit(130) from None
    if as_json:
        emit_json(result.to_json())
    else:
        print(render.verify.result_text(result))
    raise typer.Exit(0 if result.completed else 1)


def _verify(model, level, device, force, timeout, record, gpu, gpu_mem, emulate, mode, batch, ctx,
            dtype, kv_dtype, optim, grad_ckpt, lora_r, lora_targets):
    return api.verify(model, level=level, device=device, force=force, timeout=timeout,
                      record=record, gpu=gpu, gpu_mem=gpu_mem, emulate=emulate, hard_timeout=True,
                      mode=mode, batch=batch, ctx=ctx, dtype=dtype, kv_dtype=kv_dtype, optim=optim,
                      grad_ckpt=grad_ckpt, lora_r=lora_r, lora_targets=lora_targets)
