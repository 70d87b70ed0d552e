"""The command line: parse flags, call the API, render. The one place that maps errors to
exit codes: 0 fits, 1 does not fit, 2 bad input, 3 environment problem."""

from __future__ import annotations

import functools
import json
import sys
from typing import Optional

import typer

from vramplan.cli import options as O
from vramplan.errors import VramplanError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Plan GPU memory for large language models: will it fit, how every byte is spent, "
         "and what fits instead. Analytic answers need no GPU and no network.",
)



def _errors_to_exit_codes(command):
    """Our errors become one message on stderr and the class's exit code; --debug re-raises."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except VramplanError as e:
            if kwargs.get("debug"):
                raise
            typer.echo(f"vramplan: {e}", err=True)
            raise typer.Exit(e.exit_code)

    return run


def command(fn):
    return app.command()(_errors_to_exit_codes(fn))


def _emit(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


@command
def fit(
    model: str = O.MODEL, gpu: Optional[str] = O.GPU, gpu_mem: Optional[str] = O.GPU_MEM,
    ctx: str = O.CTX, batch: str = O.BATCH, mode: str = O.MODE, dtype: str = O.DTYPE,
    kv_dtype: str = O.KV,
    method: str = typer.Option("analytic", "--method", help="analytic (closed form, ~0.1 s) or trace (the real transformers model on fake tensors; needs the 'trace' extra)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="trace: ignore the on-disk cache of earlier traces."),
    as_json: bool = O.JSON, gpu_free: Optional[str] = O.GPU_FREE,
    gpu_memory_utilization: float = O.UTIL, max_num_batched_tokens: Optional[str] = O.MNBT,
    max_num_seqs: Optional[str] = O.MNS, tp: Optional[int] = O.TP, pp: int = O.PP,
    block_size: int = O.BLOCK, enforce_eager: bool = O.EAGER, vllm_version: Optional[str] = O.VLLM,
    kv_cache_memory: Optional[str] = O.KVMEM,
    optim: Optional[str] = O.OPTIM, grad_ckpt: bool = O.CKPT, lora_r: Optional[int] = O.LORA_R,
    lora_alpha: Optional[int] = O.LORA_ALPHA, lora_targets: Optional[str] = O.LORA_TARGETS,
    lora_dropout: Optional[float] = O.LORA_DROPOUT, precision: Optional[str] = O.PRECISION,
    zero: Optional[int] = O.ZERO, attn: Optional[str] = O.ATTN,
    lora_dtype: Optional[str] = O.LORA_DTYPE, kbit_prepare: Optional[str] = O.KBIT,
    transformers: Optional[int] = O.HF, debug: bool = O.DEBUG,
) -> None:
    """Will MODEL fit on the GPU with this workload? Exit 0 fits, 1 does not."""
    from vramplan import api
    from vramplan import render

    opts = O.plan_options_from(locals())
    p = api.plan(model, gpu, gpu_mem=gpu_mem, gpu_free=gpu_free, mode=mode, batch=batch, ctx=ctx,
                 dtype=dtype, kv_dtype=kv_dtype, method=method, no_cache=no_cache, tp=tp, pp=pp,
                 **opts)
    if as_json:
        _emit(render.plan_json(p))
    else:
        print(render.plan_table(p))
    raise typer.Exit(0 if p.fits else 1)


@command
def kv(
    model: str = O.MODEL,
    as_json: bool = typer.Option(False, "--json"),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """KV cache bytes per token, per layer kind, for each cache dtype."""
    from vramplan import api
    from vramplan import render
    from vramplan.memory import kv_cache
    from vramplan.memory.dtypes import FLOAT_BYTES

    m = api.load_model(model)
    state = FLOAT_BYTES["fp32" if m.torch_dtype == "fp32" else m.torch_dtype]
    per_token = {d: kv_cache.kv_bytes_per_token(m, FLOAT_BYTES[d]) for d in ("bf16", "fp8", "fp32")}
    rows = kv_cache.kv_kinds(m, 2, state)
    if as_json:
        _emit({"model": render.model_json(m), "kv_bytes_per_token": per_token,
               "recurrent_state_bytes_per_sequence": kv_cache.recurrent_bytes_per_sequence(m, state),
               "kinds": [r.__dict__ for r in rows]})
    else:
        print(render.kv_table(m, rows, per_token))


@command
def models(
    query: Optional[str] = typer.Argument(None, help="Substring to filter ids, e.g. llama."),
    as_json: bool = typer.Option(False, "--json"),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Bundled model configs (available offline)."""
    from vramplan import api, catalog
    from vramplan import render
    from vramplan.memory import kv_cache

    ids = [i for i in catalog.bundled_model_ids() if not query or query.lower() in i.lower()]
    rows = []
    for i in ids:
        m = api.load_model(i)
        rows.append((i, m.model_type, m.params, kv_cache.kv_bytes_per_token(m, 2)))
    if as_json:
        _emit([{"id": i, "model_type": t, "params": p, "kv_bytes_per_token_bf16": k} for i, t, p, k in rows])
    else:
        print(render.models_table(rows) if rows else f"No bundled model matches {query!r}.")


@command
def gpus(
    as_json: bool = typer.Option(False, "--json"),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """The GPU catalog: memory, bandwidth, compute and dated prices."""
    from vramplan import catalog
    from vramplan import render

    gs = catalog.load_gpus()
    if as_json:
        _emit([render.gpu_json(g) for g in gs])
    else:
        print(render.gpus_table(gs))


from vramplan.cli.probe import probe as _probe  # noqa: E402  (typer-only imports, ~2 ms)
from vramplan.cli.verify import verify as _verify  # noqa: E402
from vramplan.cli.compare import compare as _compare, sweep as _sweep  # noqa: E402

command(_probe)
command(_verify)
command(_compare)
command(_sweep)


def main() -> None:
    app()
