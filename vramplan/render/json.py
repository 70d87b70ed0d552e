"""Plans, models, GPUs and KV reports as JSON-ready dicts. The keys are a contract
(docs/json-schema.md): add keys, never rename them."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

from vramplan import __version__
from vramplan.render.local import local_json
from vramplan.render.sglang import sglang_json
from vramplan.spec import GpuSpec, ModelSpec, Plan

if TYPE_CHECKING:       # the catalog reports load with the commands that make them
    from vramplan.spec.reports import BundledModel, KvReport


def layer_kinds(m: ModelSpec) -> dict[str, int]:
    """How many layers of each kind (full, sliding, mla, mamba2, ...), in layer order."""
    kinds: dict[str, int] = {}
    no_mixer = "encoder" if m.traits.pooling else "mlp-only"     # an encoder's attention keeps no cache
    for layer in m.layers:
        k = getattr(layer.mixer, "kind", no_mixer)
        kinds[k] = kinds.get(k, 0) + 1
    return kinds


def model_json(m: ModelSpec) -> dict:
    q = m.quantization
    return {
        "id": m.id, "source": m.source, "location": m.location,
        "model_type": m.model_type, "family": m.family, "params": m.params,
        "num_layers": m.num_layers, "layer_kinds": layer_kinds(m), "hidden_size": m.hidden_size,
        "vocab_size": m.vocab_size, "torch_dtype": m.torch_dtype,
        "max_position_embeddings": m.max_position_embeddings,
        "quantization": None if q is None else {"method": q.method, "bits": q.bits,
                                                "group_size": q.group_size, "skip": list(q.skip)},
        "weights_from": m.weights_from, "weights_source": m.weights_source,
        "checkpoint_bytes": m.checkpoint_bytes,
        "weights_notes": list(m.weights_notes),
        "confidence": m.confidence, "assumptions": list(m.assumptions),
        "layers_from": "transformers" if m.derived_from else "analytic",
        "derived_from": m.derived_from or None,
    }


def gpu_json(g: GpuSpec) -> dict:
    return {
        "id": g.id, "name": g.name, "nvml_name": g.nvml_name, "marketing": g.marketing,
        "memory_total_bytes": g.cuda_total_bytes, "memory_total_measured": g.cuda_total_measured,
        "nvml_total_bytes": g.nvml_total_bytes, "memory_bandwidth_gbs": g.memory_bandwidth_gbs,
        "bf16_tflops": g.bf16_tflops, "fp8_tflops": g.fp8_tflops, "tdp_w": g.tdp_w,
        "interconnect": g.interconnect, "nvlink": g.nvlink, "mig": g.mig,
        "architecture": g.architecture,
        "prices": [p.__dict__ for p in g.prices],
    }


def gpus_json(gpus: tuple[GpuSpec, ...], defaults: dict | None = None) -> list[dict]:
    """The catalog listing: gpu_json plus the columns compare reads (FP4 / INT8 peaks, the GPU link,
    vendor, notes) and the default price (`defaults`: id -> Price, catalog.default_price)."""
    out = []
    for g in gpus:
        d = gpu_json(g)
        p = (defaults or {}).get(g.id)
        d.update({"fp4_tflops": g.fp4_tflops, "int8_tops": g.int8_tops, "link_gbs": g.link_gbs,
                  "vendor": g.vendor, "notes": list(g.notes),
                  "default_price": None if p is None else p.__dict__})
        out.append(d)
    return out


# vLLM settings written only when set (issue 13: data/expert parallel, CPU offload, multimodal
# limits, swap space); the multi-node layout note is among the plan's warnings.
SERVE_SET_ONLY = {"dp": 1, "enable_expert_parallel": False, "cpu_offload_bytes": 0, "limit_mm_per_prompt": (),
             "swap_space_gib": None, "layout_note": ""}


def plan_json(p: Plan) -> dict:
    t, w = p.target, p.workload
    gpu = gpu_json(t.gpu) if t.gpu else {"id": "custom", "name": "custom memory size"}
    gpu.update({"count": t.count, "memory_total_bytes": t.per_gpu_bytes})
    workload = {"mode": w.mode, "batch": w.batch, "ctx": w.ctx, "dtype": p.weight_dtype,
                "dtype_requested": w.dtype, "kv_dtype": p.kv_dtype,
                "kv_dtype_requested": w.kv_dtype, "method": "analytic"}
    if p.serve is not None:             # vLLM's engine settings; other engines plan the transformers layout
        workload.update({k: v for k, v in w.serve.__dict__.items()
                         if k not in SERVE_SET_ONLY or v != SERVE_SET_ONLY[k]})
    else:
        workload["transformers"] = w.transformers
    if w.new_tokens:                    # infer --new-tokens (added key)
        workload["new_tokens"] = w.new_tokens
    if w.engine == "unsloth":           # --engine unsloth (added key)
        workload["engine"] = "unsloth"
    out = {
        "vramplan_version": __version__,
        "model": model_json(p.model), "gpu": gpu, "workload": workload,
        "kv_bytes_per_token": p.kv_bytes_per_token,
        "components": dict(p.components), "component_notes": dict(p.component_notes),
        "peak_allocated_bytes": p.peak_allocated_bytes, "total_bytes": p.total_bytes,
        "capacity_bytes": p.capacity_bytes, "fits": p.fits, "headroom_bytes": p.headroom_bytes,
        "max_batch": p.max_batch, "max_ctx": p.max_ctx, "peak_phase": p.phase,
        "serve": None,
        "trace": None,
        "suggestions": [{"change": s.change, "flags": s.flags, "total_bytes": s.total_bytes,
                         "fits": s.fits, "usd_per_hour": s.usd_per_hour} for s in p.suggestions],
        "warnings": list(p.warnings),
        "confidence": p.confidence, "component_confidence": p.component_confidence,
        "assumptions": list(p.model.assumptions),
    }
    if p.serve is not None:
        out["serve"] = dict(p.serve.__dict__)
    if p.local is not None:             # llama.cpp / Ollama: added keys only
        out["engine"] = p.local.engine
        out["n_gpu_layers"] = p.local.n_gpu_layers
        out["host_ram_bytes"] = p.local.host_ram_bytes
        out["local"] = local_json(p.local)
        out["workload"].pop("transformers", None)
        out["workload"]["engine"] = p.local.engine
    if p.sglang is not None:            # SGLang: added keys only (docs/json-schema.md)
        out["engine"] = "sglang"
        out["sglang"] = sglang_json(p.sglang)
        out["workload"].pop("transformers", None)
        out["workload"]["engine"] = "sglang"
        out["workload"].update({k: v for k, v in p.workload.sglang.__dict__.items()})
        out["workload"].update({"tp": p.workload.serve.tp, "pp": p.workload.serve.pp})
    if p.outside:                       # training: paged / offloaded state, reported, not counted
        out["outside_bytes"] = dict(p.outside)
    if getattr(p, "trace", None) is not None:
        out["workload"]["method"] = "trace"
        out["trace"] = p.trace.to_json()
    return out


def kv_json(r: KvReport) -> dict:
    return {"model": model_json(r.model), "kv_bytes_per_token": dict(r.kv_bytes_per_token),
            "recurrent_state_bytes_per_sequence": r.recurrent_state_bytes_per_sequence,
            "kinds": [k.__dict__ for k in r.kinds]}


def models_json(rows: tuple[BundledModel, ...]) -> list[dict]:
    return [asdict(r) for r in rows]
