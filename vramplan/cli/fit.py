"""`vramplan fit`: will MODEL fit on the GPU with this workload? Exit 0 fits, 1 does not."""

from __future__ import annotations

from typing import Optional

import typer

from vramplan import api, render
from vramplan.cli import options as O
from vramplan.cli.output import emit_json


def fit(
    model: str = O.MODEL, gpu: Optional[str] = O.GPU, gpu_mem: Optional[str] = O.GPU_MEM,
    ctx: str = O.CTX, batch: str = O.BATCH, mode: str = O.MODE, dtype: str = O.DTYPE,
    kv_dtype: str = O.KV, method: str = O.METHOD, no_cache: bool = O.NO_CACHE,
    as_json: bool = O.JSON, gpu_free: Optional[str] = O.GPU_FREE,
    gpu_memory_utilization: Optional[float] = O.UTIL, max_num_batched_tokens: Optional[str] = O.MNBT,
    max_num_seqs: Optional[str] = O.MNS, tp: Optional[int] = O.TP, pp: Optional[int] = O.PP,
    block_size: Optional[int] = O.BLOCK, enforce_eager: bool = O.EAGER, vllm_version: Optional[str] = O.VLLM,
    kv_cache_memory: Optional[str] = O.KVMEM,
    allow_long_max_model_len: bool = O.LONG,
    optim: Optional[str] = O.OPTIM, grad_ckpt: bool = O.CKPT, lora_r: Optional[int] = O.LORA_R,
    lora_alpha: Optional[int] = O.LORA_ALPHA, lora_targets: Optional[str] = O.LORA_TARGETS,
    lora_dropout: Optional[float] = O.LORA_DROPOUT, precision: Optional[str] = O.PRECISION,
    zero: Optional[int] = O.ZERO, attn: Optional[str] = O.ATTN,
    lora_dtype: Optional[str] = O.LORA_DTYPE, kbit_prepare: Optional[str] = O.KBIT,
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
    layers_from: str = O.LAYERS_FROM,
) -> None:
    """Will MODEL fit on the GPU with this workload? Exit 0 fits, 1 does not."""
    request = api.PlanRequest(
        model=model, gpu=gpu, gpu_mem=gpu_mem, gpu_free=gpu_free, mode=mode, batch=batch, ctx=ctx,
        dtype=dtype, kv_dtype=kv_dtype, method=method, no_cache=no_cache, transformers=transformers,
        serve=api.ServeFlags(
            gpu_memory_utilization=gpu_memory_utilization, max_num_batched_tokens=max_num_batched_tokens,
            max_num_seqs=max_num_seqs, block_size=block_size, tp=tp, pp=pp, enforce_eager=enforce_eager or None,
            vllm_version=vllm_version, kv_cache_memory=kv_cache_memory,
            allow_long_max_model_len=allow_long_max_model_len or None),
        train=api.TrainFlags(
            optim=optim, grad_ckpt=grad_ckpt or None, lora_r=lora_r, lora_alpha=lora_alpha,
            lora_targets=lora_targets, lora_dropout=lora_dropout, precision=precision, zero=zero,
            attn=attn, lora_dtype=lora_dtype, kbit_prepare=kbit_prepare),
        engine=engine, llama=api.LlamaFlags(
            parallel=parallel, n_gpu_layers=n_gpu_layers, tensor_split=tensor_split, n_cpu_moe=n_cpu_moe,
            cpu_moe=cpu_moe or None, override_tensor=override_tensor, cache_type_k=cache_type_k,
            cache_type_v=cache_type_v, flash_attn=flash_attn, ubatch_size=ubatch_size, batch_size=batch_size,
            kv_unified=kv_unified, ram=ram, ram_bandwidth=ram_bandwidth),
        sglang=api.SglangFlags(
            mem_fraction_static=mem_fraction_static, page_size=page_size,
            chunked_prefill_size=chunked_prefill_size, max_running_requests=max_running_requests,
            cuda_graph_max_bs=cuda_graph_max_bs, disable_cuda_graph=disable_cuda_graph or None,
            max_total_tokens=max_total_tokens, dp_size=dp_size, ep_size=ep_size,
            enable_dp_attention=enable_dp_attention or None),
        layers_from=layers_from,
    )
    p = api.plan_request(request)
    if as_json:
        emit_json(render.plan_json(p))
    else:
        print(render.plan_table(p))
    raise typer.Exit(0 if p.fits else 1)
