"""The Python API: resolve a model and a GPU, build the workload, call the pure core.

This is the adapter layer between the user's words ("meta-llama/Llama-3.1-8B", "l40s:2",
"32k") and the core's dataclasses. The CLI is a thin shell around it.
"""

from __future__ import annotations

from dataclasses import replace

from vramplan import planner as core_plan
from vramplan.memory.dtypes import KV_FORMATS, WEIGHT_FORMATS, normalize
from vramplan.errors import BadInput
from vramplan.loading import load_model  # noqa: F401  (part of the API)
from vramplan.spec import GpuTarget, ModelSpec, Plan, ServeOptions, Workload
from vramplan.units import parse_bytes, parse_tokens

from vramplan.request import (ENGINE_OF_MODE, MODES, TRAINING_MODES, TRANSFORMERS_MAJORS,  # noqa: F401
                              transformers_major)


def resolve_target(gpu: str | GpuTarget | None = None, gpu_mem: str | int | None = None,
                   gpu_free: str | int | None = None, default: str = "l40s") -> GpuTarget:
    """--gpu ID[:COUNT] or --gpu-mem SIZE (not both); neither means the default card.
    --gpu-free says how much of each card is free now (other processes hold the rest)."""
    if isinstance(gpu, GpuTarget):
        return gpu
    if gpu is not None and gpu_mem is not None:
        raise BadInput("Give either --gpu or --gpu-mem, not both.")
    if gpu_mem is not None:
        target = GpuTarget(gpu=None, count=1, memory_bytes=parse_bytes(gpu_mem))
    elif isinstance(gpu, str) and gpu.strip().lower() == "auto":
        target = auto_target()
    else:
        from vramplan import catalog

        target = catalog.parse_gpu_arg(gpu or default)
    if gpu_free is not None:
        free = parse_bytes(gpu_free, "--gpu-free")
        if free > target.per_gpu_bytes:
            raise BadInput(f"--gpu-free {gpu_free} is more than the card's CUDA total "
                           f"({target.per_gpu_bytes / 2**30:.2f} GiB).")
        target = replace(target, free_bytes=free)
    return target


def make_workload(mode: str = "serve", batch: int | str = 1, ctx: int | str = 4096,
                  dtype: str = "auto", kv_dtype: str = "auto", *, tp: int | None = None,
                  pp: int = 1, gpu_memory_utilization: float = 0.9,
                  max_num_batched_tokens: int | str | None = None,
                  max_num_seqs: int | None = None, block_size: int = 16,
                  enforce_eager: bool = False, kv_cache_memory: int | str | None = None,
                  vllm_version: str | None = None, gpu_count: int = 1,
                  transformers: int | str | None = None, **train_options) -> Workload:
    """Validate every knob and build the Workload; bad values raise BadInput.

    `transformers` is the major version whose module layout infer and training assume (4 or 5);
    None means the installed transformers, else 5 (the current major).

    Training modes take TrainingArguments / LoraConfig names: optim, grad_ckpt, lora_r,
    lora_alpha, lora_targets, lora_dropout, precision, zero, attn (engines/hf_trainer/options.py)."""
    if mode not in MODES:
        raise BadInput(f"--mode {mode!r} is not one of: {', '.join(MODES)}.")
    train = None
    if mode in TRAINING_MODES:
        from vramplan.engines.hf_trainer.phases import normalize_train_options

        train = normalize_train_options(world=gpu_count, **train_options)
    elif train_options:
        flags = ", ".join("--" + k.replace("_", "-") for k in train_options)
        verb = "applies" if len(train_options) == 1 else "apply"
        raise BadInput(f"{flags} only {verb} to the training modes (--mode full, lora or qlora).")
    if not 0.0 < gpu_memory_utilization <= 1.0:
        raise BadInput(f"--gpu-memory-utilization must be in (0, 1], got {gpu_memory_utilization}.")
    if block_size not in (1, 8, 16, 32, 64, 128, 256):
        raise BadInput(f"--block-size must be a power of two from 1 to 256 (vLLM's choices), got {block_size}.")
    tp = (gpu_count if mode == "serve" else 1) if tp is None else tp
    if tp < 1 or pp < 1:
        raise BadInput("--tp and --pp must be at least 1.")
    if mode == "serve" and tp * pp > gpu_count:
        raise BadInput(f"--tp {tp} x --pp {pp} needs {tp * pp} GPUs but --gpu gives {gpu_count}; "
                       f"ask for them with --gpu ID:{tp * pp}.")
    serve = ServeOptions(
        gpu_memory_utilization=gpu_memory_utilization,
        max_num_batched_tokens=(parse_tokens(max_num_batched_tokens, "--max-num-batched-tokens")
                                if max_num_batched_tokens is not None else None),
        max_num_seqs=parse_tokens(max_num_seqs, "--max-num-seqs") if max_num_seqs is not None else None,
        block_size=block_size, tp=tp, pp=pp, enforce_eager=enforce_eager,
        vllm_version=vllm_version or "",
        kv_cache_memory=parse_bytes(kv_cache_memory, "--kv-cache-memory") if kv_cache_memory is not None else None,
    )
    return Workload(
        mode=mode, batch=parse_tokens(batch, "--batch"), ctx=parse_tokens(ctx, "--ctx"),
        dtype=normalize(dtype, WEIGHT_FORMATS, "--dtype"),
        kv_dtype=normalize(kv_dtype, KV_FORMATS, "--kv-dtype"), serve=serve, train=train,
        transformers=transformers_major(transformers) if mode != "serve" else TRANSFORMERS_MAJORS[-1],
        engine=ENGINE_OF_MODE[mode],
    )




def plan(model: str | ModelSpec, gpu: str | GpuTarget | None = None, *, gpu_mem: str | int | None = None,
         gpu_free: str | int | None = None,
         mode: str = "serve", batch: int | str = 1, ctx: int | str = 4096, dtype: str = "auto",
         kv_dtype: str = "auto", method: str = "analytic", no_cache: bool = False,
         **options) -> Plan:
    """Plan one workload. Returns a `Plan` (see vramplan.spec); raises VramplanError subclasses.

    >>> p = plan("meta-llama/Llama-3.1-8B", "l40s", ctx="32k", batch=8)
    >>> p.fits, p.components["weights"]
    (False, 16060522496)
    """
    if method not in ("analytic", "trace"):
        raise BadInput(f"--method {method!r} is not one of: analytic, trace.")
    from vramplan import catalog

    target = resolve_target(gpu, gpu_mem, gpu_free)
    workload = make_workload(mode, batch, ctx, dtype, kv_dtype, gpu_count=target.count, **options)
    if method == "trace":           # tier 2: the real transformers model on fake tensors
        from vramplan import trace

        return trace.plan(model, target, workload, no_cache=no_cache)
    spec = load_model(model)
    return core_plan.build(spec, target, workload, catalog=catalog.load_gpus())


def preflight(model: str | ModelSpec | dict, mode: str = "lora", batch: int | str = 4,
              ctx: int | str = 2048, gpu: str | int | GpuTarget = "auto", **options) -> Plan:
    """One-line check for a training script: the plan when it fits, else `DoesNotFit`.

    `gpu` is "auto" (the attached GPU, read through NVML: its real capacity and free memory),
    a catalog id such as "l40s" or "h100:8", a GpuTarget, or a memory size in bytes. The message
    of `DoesNotFit` names the largest batch and context that fit and the cheapest change that
    would. Bad arguments raise `BadInput`, a ValueError.
    """
    from vramplan.errors import DoesNotFit

    if isinstance(model, dict):
        from vramplan import models as families

        model = families.parse(model, model_id=str(model.get("_name_or_path", "config")), source="dict")
    if isinstance(gpu, bool) or not isinstance(gpu, (str, int, GpuTarget)):
        raise BadInput(f"gpu={gpu!r}: give 'auto', a catalog id such as 'l40s', or a size in bytes.")
    target = resolve_target(gpu_mem=gpu) if isinstance(gpu, int) else resolve_target(gpu)
    p = plan(model, target, mode=mode, batch=batch, ctx=ctx, **options)
    if p.fits:
        return p
    w = p.workload
    need, cap = p.total_bytes / 2**30, p.capacity_bytes / 2**30
    fixes = [f"{s.change} ({', '.join(f'{k}={v!r}' for k, v in s.flags.items())})"
             for s in p.suggestions if s.fits]
    limits = (f"The largest micro-batch that fits at {w.ctx:,} tokens is {p.max_batch}; the longest "
              f"sequence at batch {w.batch} is {p.max_ctx:,} tokens.")
    change = f" Cheapest change that fits: {fixes[0]}." if fixes else ""
    raise DoesNotFit(f"{w.mode} of {p.model.id} at batch {w.batch} x {w.ctx:,} tokens needs "
                     f"{need:.2f} GiB per GPU but {cap:.2f} GiB is available. {limits}{change}", p)


def auto_target() -> GpuTarget:
    """`--gpu auto`: the first CUDA-visible GPU through NVML (vramplan.probe), with its real
    capacity and current free memory; an EnvironmentProblem (exit 3) when there is none."""
    from vramplan.probe import auto_target as probe_auto

    return probe_auto(0)
