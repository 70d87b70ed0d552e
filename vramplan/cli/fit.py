"""`vramplan fit`: will MODEL fit on the GPU with this workload? Exit 0 fits, 1 does not."""

from __future__ import annotations

from typing import Optional

import typer

from vramplan import api, render
from vramplan.cli import launch as L
from vramplan.cli import options as O
from vramplan.cli.output import emit_json


def fit(
    context: typer.Context,
    model: Optional[str] = O.FIT_MODEL, gpu: Optional[str] = O.GPU, gpu_mem: Optional[str] = O.GPU_MEM,
    ctx: str = O.CTX, batch: str = O.BATCH, mode: str = O.MODE, dtype: str = O.DTYPE,
    kv_dtype: str = O.KV, method: str = O.METHOD, no_cache: bool = O.NO_CACHE,
    as_json: bool = O.JSON, gpu_free: Optional[str] = O.GPU_FREE,
    gpu_memory_utilization: Optional[float] = O.UTIL, max_num_batched_tokens: Optional[str] = O.MNBT,
    max_num_seqs: Optional[str] = O.MNS, tp: Optional[int] = O.TP, pp: Optional[int] = O.PP,
    block_size: Optional[int] = O.BLOCK, enforce_eager: bool = O.EAGER, vllm_version: Optional[str] = O.VLLM,
    kv_cache_memory: Optional[str] = O.KVMEM,
    allow_long_max_model_len: bool = O.LONG,
    optim: Optional[str] = O.OPTIM, grad_ckpt: Optional[bool] = O.CKPT, lora_r: Optional[int] = O.LORA_R,
    lora_alpha: Optional[int] = O.LORA_ALPHA, lora_targets: Optional[str] = O.LORA_TARGETS,
    lora_dropout: Optional[float] = O.LORA_DROPOUT, precision: Optional[str] = O.PRECISION,
    zero: Optional[int] = O.ZERO, attn: Optional[str] = O.ATTN,
    lora_dtype: Optional[str] = O.LORA_DTYPE, kbit_prepare: Optional[str] = O.KBIT,
    deepspeed: Optional[str] = O.DEEPSPEED, fsdp: Optional[str] = O.FSDP,
    gpus_per_node: Optional[int] = O.GPUS_PER_NODE,
    grad_accum: Optional[int] = O.GRAD_ACCUM, liger: Optional[bool] = O.LIGER, loss: Optional[str] = O.LOSS,
    offload_activations: Optional[bool] = O.OFFLOAD_ACTS, new_tokens: Optional[str] = O.NEW_TOKENS,
    transformers: Optional[int] = O.HF, debug: bool = O.DEBUG,
    engine: Optional[str] = O.ENGINE, parallel: Optional[str] = O.PARALLEL, n_gpu_layers: Optional[str] = O.NGL,
    tensor_split: Optional[str] = O.TS, n_cpu_moe: Optional[int] = O.NCMOE, cpu_moe: bool = O.CPUMOE,
    override_tensor: Optional[str] = O.OT, cache_type_k: Optional[str] = O.CTK, cache_type_v: Optional[str] = O.CTV,
    flash_attn: Optional[str] = O.FA, ubatch_size: Optional[str] = O.UB, batch_size: Optional[str] = O.BS,
    kv_unified: Optional[bool] = O.KVU, ram: Optional[str] = O.RAM, ram_bandwidth: Optional[float] = O.RAMBW,
    mem_fraction_static: Optional[float] = O.MFS, page_size: Optional[int] = O.PAGE,
    chunked_prefill_size: Optional[str] = O.CPS, max_running_requests: Optional[str] = O.MRR,
    cuda_graph_max_bs: Optional[str] = O.CGBS, disable_cuda_graph: bool = O.NOGRAPH,
    max_total_tokens: Optional[str] = O.MTT, dp_size: Optional[int] = O.DPS, ep_size: Optional[int] = O.EPS,
    enable_dp_attention: bool = O.DPA,
    dp: Optional[int] = O.DP, enable_expert_parallel: bool = O.EP, max_model_len: Optional[str] = O.MAXLEN,
    quantization: Optional[str] = O.QUANT, cpu_offload_gb: Optional[float] = O.OFFLOAD,
    limit_mm_per_prompt: Optional[str] = O.MM, swap_space: Optional[float] = O.SWAP, cmd: Optional[str] = O.CMD,
    weights_from: str = O.WEIGHTS_FROM,
    strict: bool = O.STRICT,
    layers_from: str = O.LAYERS_FROM,
) -> None:
    """Will MODEL fit on the GPU with this workload? Exit 0 fits, 1 does not."""
    given = {name for name in context.params if _given(context, name)}
    values = _vllm_names(dict(context.params), given)
    launch = None
    if cmd is not None:
        launch = L.parse(cmd)
        values = _apply_launch(launch, values, given)
    elif model is None:
        raise api.BadInput("Name a model (vramplan fit MODEL ...) or paste a launch line with --cmd.")
    v = values
    model, gpu, ctx, dtype, kv_dtype, engine = v["model"], v["gpu"], v["ctx"], v["dtype"], v["kv_dtype"], v["engine"]
    tp, pp, dp, block_size, max_num_seqs = v["tp"], v["pp"], v["dp"], v["block_size"], v["max_num_seqs"]
    max_num_batched_tokens, gpu_memory_utilization = v["max_num_batched_tokens"], v["gpu_memory_utilization"]
    enforce_eager, enable_expert_parallel = v["enforce_eager"], v["enable_expert_parallel"]
    cpu_offload_gb, limit_mm_per_prompt, swap_space = v["cpu_offload_gb"], v["limit_mm_per_prompt"], v["swap_space"]
    kv_cache_memory, allow_long_max_model_len = v["kv_cache_memory"], v["allow_long_max_model_len"]
    request = api.PlanRequest(
        model=model, gpu=gpu, gpu_mem=gpu_mem, gpu_free=gpu_free, mode=mode, batch=batch, ctx=ctx,
        dtype=dtype, kv_dtype=kv_dtype, method=method, no_cache=no_cache, transformers=transformers,
        new_tokens=new_tokens,
        serve=api.ServeFlags(
            gpu_memory_utilization=gpu_memory_utilization, max_num_batched_tokens=max_num_batched_tokens,
            max_num_seqs=max_num_seqs, block_size=block_size, tp=tp, pp=pp, enforce_eager=enforce_eager or None,
            vllm_version=vllm_version, kv_cache_memory=kv_cache_memory,
            allow_long_max_model_len=allow_long_max_model_len or None,
            dp=dp, enable_expert_parallel=enable_expert_parallel or None, cpu_offload_gb=cpu_offload_gb,
            limit_mm_per_prompt=limit_mm_per_prompt, swap_space=swap_space),
        train=api.TrainFlags(
            optim=optim, grad_ckpt=grad_ckpt, lora_r=lora_r, lora_alpha=lora_alpha,
            lora_targets=lora_targets, lora_dropout=lora_dropout, precision=precision, zero=zero,
            attn=attn, lora_dtype=lora_dtype, kbit_prepare=kbit_prepare, deepspeed=deepspeed, fsdp=fsdp,
            gpus_per_node=gpus_per_node, grad_accum=grad_accum, liger=liger, loss=loss,
            offload_activations=offload_activations),
        engine=engine, llama=api.LlamaFlags(
            parallel=parallel, n_gpu_layers=n_gpu_layers, tensor_split=tensor_split, n_cpu_moe=n_cpu_moe,
            cpu_moe=cpu_moe or None, override_tensor=override_tensor, cache_type_k=cache_type_k,
            cache_type_v=cache_type_v, flash_attn=flash_attn, ubatch_size=ubatch_size, batch_size=batch_size,
            kv_unified=kv_unified, ram=ram, ram_bandwidth=ram_bandwidth),
        sglang=api.SglangFlags(
            mem_fraction_static=v["mem_fraction_static"], page_size=v["page_size"],
            chunked_prefill_size=v["chunked_prefill_size"], max_running_requests=v["max_running_requests"],
            cuda_graph_max_bs=v["cuda_graph_max_bs"], disable_cuda_graph=v["disable_cuda_graph"] or None,
            max_total_tokens=v["max_total_tokens"], dp_size=v["dp_size"], ep_size=v["ep_size"],
            enable_dp_attention=v["enable_dp_attention"] or None),
        weights_from=weights_from,
        strict=strict,
        layers_from=layers_from,
    )
    p = api.plan_request(request)
    for note in launch.notes if launch is not None else ():
        typer.echo(f"vramplan: note: {note}", err=True)
    if as_json:
        emit_json(render.plan_json(p))
    else:
        print(render.plan_table(p))
        lines = [line for s in p.suggestions if s.fits and (line := L.relaunch(launch, s.flags))] if launch else []
        if lines:
            print("\nas launch lines:\n" + "\n".join(f"  {line}" for line in dict.fromkeys(lines)))
    raise typer.Exit(0 if p.fits else 1)


def _given(context: typer.Context, name: str) -> bool:
    source = context.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _vllm_names(values: dict, given: set[str]) -> dict:
    """vLLM's --max-model-len and --quantization, given on their own, as --ctx and --dtype."""
    if "max_model_len" in given:
        if "ctx" in given:
            raise api.BadInput("--ctx and --max-model-len both set the context; give one.")
        values["ctx"] = L.human_int(values["max_model_len"], "--max-model-len")
        given.add("ctx")
    if "quantization" in given:
        if "dtype" in given:
            raise api.BadInput("--dtype and --quantization both choose the weights' format here (vramplan's "
                               "--dtype is the weight format, not vLLM's activation dtype); give one.")
        dtype, _ = L.quantization_dtype(values["quantization"])
        values["dtype"] = dtype or "auto"
        given.add("dtype")
    return values


def _apply_launch(launch: L.Launch, values: dict, given: set[str]) -> dict:
    """The launch line's settings over fit's defaults: a model argument or a flag the line also
    sets is refused (two answers to one question); the server's own defaults (tp, pp, dp 1) hold for what
    the line leaves out, and a --gpu without a count gets as many GPUs as the line uses."""
    if values["model"] is not None:
        raise api.BadInput("--cmd names the model itself; drop the MODEL argument.")
    clash = sorted(given & set(launch.params))
    if clash:
        raise api.BadInput(f"--cmd already sets {', '.join('--' + c.replace('_', '-') for c in clash)}; give "
                           f"each setting once, in the launch line or as a flag.")
    server = "SGLang" if launch.server == "sglang" else "vLLM"
    engine = str(values.get("engine") or "").lower()
    if "engine" in given and engine != launch.server:
        raise api.BadInput(f"--cmd is {'an' if server == 'SGLang' else 'a'} {server} launch line, which --engine "
                           f"{values['engine']} contradicts; drop --engine (the line says whose rules apply).")
    if "mode" in given and values.get("mode") != "serve":
        raise api.BadInput(f"--cmd is a serving launch line ({server}), which --mode {values['mode']} "
                           f"contradicts; drop --mode or --cmd.")
    unknown = sorted(set(launch.params) - set(values))
    if unknown:
        flags = ", ".join(launch.used[k] for k in unknown)
        raise api.BadInput(f"--cmd: {flags} {'is' if len(unknown) == 1 else 'are'} {launch.server}'s, which this "
                           f"vramplan does not plan yet.")
    values = {**values, **launch.params, "model": launch.model}
    if launch.engine is not None and "engine" not in given:
        values["engine"] = launch.engine
    sglang = launch.server == "sglang"
    for name in ("tp", "pp") if sglang else ("tp", "pp", "dp"):   # each server's default: one of each
        if values[name] is None and name not in given:
            values[name] = 1
    if sglang:      # --dp-size replicas need tp x pp each, unless attention DP runs inside the TP group
        replicas = 1 if values.get("enable_dp_attention") else (values.get("dp_size") or 1)
        world = values["tp"] * values["pp"] * replicas
    else:
        world = values["tp"] * values["pp"] * values["dp"]
    gpu = values["gpu"]
    if world > 1 and values["gpu_mem"] is None and (gpu is None or ":" not in str(gpu)) and gpu != "auto":
        values["gpu"] = f"{gpu or api.DEFAULT_GPU}:{world}"
    return values
