"""The command line: parse flags, call the API, render. The one place that maps errors to
exit codes: 0 fits, 1 does not fit, 2 bad input, 3 environment problem."""

from __future__ import annotations

import functools
import json
import sys
from typing import Optional

import typer

from .errors import VramplanError

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


ModelArg = typer.Argument(..., help="Hub id (meta-llama/Llama-3.1-8B), bundled id, local directory or config.json.")


def _emit(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


@command
def fit(
    model: str = ModelArg,
    gpu: Optional[str] = typer.Option(None, "--gpu", help="Catalog GPU id, optionally with a count: l40s, h100:8. Default l40s."),
    gpu_mem: Optional[str] = typer.Option(None, "--gpu-mem", help="Any other card by its memory: 48GB, 44.5GiB."),
    ctx: str = typer.Option("4k", "--ctx", help="Tokens per sequence (max model length): 4096, 32k."),
    batch: str = typer.Option("1", "--batch", help="Concurrent sequences."),
    mode: str = typer.Option("serve", "--mode", help="serve (vLLM engine), infer (transformers generate), or one training step: full, lora, qlora."),
    dtype: str = typer.Option("auto", "--dtype", help="Weights: auto|bf16|fp16|fp32|fp8|int8|int4|gptq|awq|nf4|fp4|mxfp4."),
    kv_dtype: str = typer.Option("auto", "--kv-dtype", help="KV cache: auto|bf16|fp16|fp32|fp8|int8."),
    method: str = typer.Option("analytic", "--method", help="analytic (closed form)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (docs/json-schema.md)."),
    gpu_memory_utilization: float = typer.Option(0.9, "--gpu-memory-utilization", help="serve: share of the GPU vLLM may use."),
    max_num_batched_tokens: Optional[str] = typer.Option(None, "--max-num-batched-tokens", help="serve: token budget per step (default: vLLM's)."),
    max_num_seqs: Optional[str] = typer.Option(None, "--max-num-seqs", help="serve: max concurrent requests (default: vLLM's)."),
    tp: Optional[int] = typer.Option(None, "--tp", help="serve: tensor-parallel size (default: the GPU count)."),
    pp: int = typer.Option(1, "--pp", help="serve: pipeline-parallel size."),
    block_size: int = typer.Option(16, "--block-size", help="serve: tokens per KV block."),
    enforce_eager: bool = typer.Option(False, "--enforce-eager", help="serve: no CUDA graphs."),
    vllm_version: Optional[str] = typer.Option(None, "--vllm-version", help="serve: whose accounting: 0.10, 0.11-0.20 (default), 0.21 (CUDA graphs inside the budget)."),
    kv_cache_memory: Optional[str] = typer.Option(None, "--kv-cache-memory", help="serve: explicit KV cache size per GPU (e.g. 20GiB), bypassing the profile."),
    gpu_free: Optional[str] = typer.Option(None, "--gpu-free", help="Memory free on each GPU now (other processes hold the rest), e.g. 40GiB."),
    optim: Optional[str] = typer.Option(None, "--optim", help="train: adamw_torch|adamw_torch_fused|adamw_8bit|paged_adamw_8bit|adafactor|sgd (HF names)."),
    grad_ckpt: bool = typer.Option(False, "--grad-ckpt", help="train: gradient checkpointing."),
    lora_r: Optional[int] = typer.Option(None, "--lora-r", help="lora/qlora: rank (default 16)."),
    lora_alpha: Optional[int] = typer.Option(None, "--lora-alpha", help="lora/qlora: alpha (no memory effect)."),
    lora_targets: Optional[str] = typer.Option(None, "--lora-targets", help="lora/qlora: all-linear or q_proj,v_proj,..."),
    lora_dropout: Optional[float] = typer.Option(None, "--lora-dropout", help="lora/qlora: dropout (> 0 keeps a copy of each adapted input)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="train: bf16 (pure) or mixed (fp32 master weights + autocast)."),
    zero: Optional[int] = typer.Option(None, "--zero", help="train: ZeRO stage 0-3 over the --gpu count (3 = FSDP full shard)."),
    attn: Optional[str] = typer.Option(None, "--attn", help="train: sdpa, eager or flash_attention_2."),
    lora_dtype: Optional[str] = typer.Option(None, "--lora-dtype", help="lora/qlora: adapter dtype, fp32 (peft's default) or bf16."),
    kbit_prepare: Optional[str] = typer.Option(None, "--kbit-prepare", help="qlora: peft (prepare_model_for_kbit_training: fp32 embeddings/norms), trl, or none."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Will MODEL fit on the GPU with this workload? Exit 0 fits, 1 does not."""
    from . import api, render

    train = {k: v for k, v in dict(optim=optim, grad_ckpt=grad_ckpt or None, lora_r=lora_r,
                                   lora_alpha=lora_alpha, lora_targets=lora_targets,
                                   lora_dropout=lora_dropout, precision=precision, zero=zero,
                                   attn=attn, lora_dtype=lora_dtype,
                                   kbit_prepare=kbit_prepare).items() if v is not None}
    p = api.plan(model, gpu, gpu_mem=gpu_mem, gpu_free=gpu_free, mode=mode, batch=batch, ctx=ctx, dtype=dtype,
                 kv_dtype=kv_dtype, method=method, tp=tp, pp=pp,
                 gpu_memory_utilization=gpu_memory_utilization,
                 max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs,
                 block_size=block_size, enforce_eager=enforce_eager,
                 kv_cache_memory=kv_cache_memory, vllm_version=vllm_version, **train)
    if as_json:
        _emit(render.plan_json(p))
    else:
        print(render.plan_table(p))
    raise typer.Exit(0 if p.fits else 1)


@command
def kv(
    model: str = ModelArg,
    as_json: bool = typer.Option(False, "--json"),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """KV cache bytes per token, per layer kind, for each cache dtype."""
    from . import api, render
    from .core import kv_cache
    from .core.dtypes import FLOAT_BYTES

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
    from . import api, catalog, render
    from .core import kv_cache

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
    from . import catalog, render

    gs = catalog.load_gpus()
    if as_json:
        _emit([render.gpu_json(g) for g in gs])
    else:
        print(render.gpus_table(gs))


from .probe.commands import probe as _probe  # noqa: E402  (typer-only imports, ~2 ms)
from .verify.commands import verify as _verify  # noqa: E402
from .compare.commands import compare as _compare, sweep as _sweep  # noqa: E402

command(_probe)
command(_verify)
command(_compare)
command(_sweep)


def main() -> None:
    app()
