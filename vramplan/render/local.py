"""llama.cpp / Ollama plans: the lines llama.cpp itself logs at start-up (per device: model, KV,
compute and output buffers), the layer split and the host side, so a user can compare."""

from __future__ import annotations

from dataclasses import asdict

from vramplan.spec import LocalReport, Plan
from vramplan.units import GiB, MiB, fmt_gib


def _mib(n: int) -> str:
    return f"{n / MiB:8.2f} MiB"


def local_lines(p: Plan) -> list[str]:
    r = p.local
    if r is None:
        return []
    name = "Ollama" if r.engine == "ollama" else "llama.cpp"
    how = "the most that fit" if r.solved else "as given"
    gpu_layers = (f"{r.n_gpu_layers} of {r.n_layers} layers on the GPU ({how}; the output layer counts as one, "
                  f"token_embd stays on the CPU)")
    out = ["", f"{name:<9} -c {r.n_ctx:,} -np {r.n_seq} -b {r.n_batch} -ub {r.n_ubatch} -fa "
                f"{'on' if r.flash_attn else 'off'} -ctk {r.cache_type_k} -ctv {r.cache_type_v} -ngl {r.n_gpu_layers}",
           f"          {gpu_layers}",
           f"          file: {r.model_file} ({r.file_type or 'mixed'}, {r.file_bytes / GiB:.2f} GiB of tensors)",
           "          llama.cpp would log (compute buffers modelled):"]
    for d in r.devices:
        if d.name == "CPU":
            shown = d.mapped or d.model
            if shown:
                out.append(f"            load_tensors: {'CPU_Mapped':>12} model buffer size = {_mib(shown)}")
        elif d.model:
            out.append(f"            load_tensors: {d.name:>12} model buffer size = {_mib(d.model)}")
    for d in r.devices:
        if d.kv:
            out.append(f"            llama_kv_cache: {d.name:>10} KV buffer size = {_mib(d.kv)}")
    host = "CUDA_Host" if len(r.devices) > 1 and r.n_gpu_layers else "CPU"
    for d in r.devices:
        if d.compute:
            label = host if d.name == "CPU" else d.name
            out.append(f"            sched_reserve: {label:>10} compute buffer size = {_mib(d.compute)}")
    cpu = r.devices[-1]
    out.append(f"            llama_context: {host:>10}  output buffer size = {_mib(cpu.output)}")
    gpus = ", ".join(fmt_gib(b) for b in r.gpu_bytes)
    ram = f" of {fmt_gib(r.ram_bytes)} (--ram)" if r.ram_bytes is not None else ""
    out.append(f"          GPU: {gpus} (with the CUDA context); host RAM: {fmt_gib(r.host_ram_bytes)}{ram}")
    if r.decode_tokens_per_s:
        out.append(f"          decode speed, estimated from memory bandwidth: ~{r.decode_tokens_per_s:,.0f} "
                   f"tokens/s per sequence (an estimate, not a measurement)")
    return out


def local_json(r: LocalReport | None) -> dict | None:
    if r is None:
        return None
    out = asdict(r)
    out["devices"] = [{**asdict(d), "total": d.total} for d in r.devices]
    return out
