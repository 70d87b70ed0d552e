"""llama.cpp (llama-server, llama-cli) as an engine: the GGUF file's exact weights per device,
its KV cache and compute buffers (buffers.py), the number of layers that fit on the GPU(s) and
what the rest needs in system RAM, and an estimated decode speed. Ollama is llama.cpp with its
own defaults (ollama.py). Sources: docs/llama-cpp.md.

The components and the verdict describe what runs with the -ngl given, or with every layer on
the GPU when none is given ("does it fit entirely?"); the report adds the largest -ngl that fits
and the host side of that split."""

from __future__ import annotations

from dataclasses import dataclass, replace

from vramplan.engines.base import Attempt, EngineBase
from vramplan.engines.llama_cpp import buffers as B
from vramplan.engines.llama_cpp.options import ALL_LAYERS, DEFAULT_BATCH, DEFAULT_UBATCH, LlamaFlags, LlamaOptions, normalize
from vramplan.engines.llama_cpp.quantize import check_mix, has_gguf_mapping, plan_file
from vramplan.errors import BadInput
from vramplan.memory.overhead import CUDA_CONTEXT_BYTES
from vramplan.memory.setup import Breakdown, Setup
from vramplan.memory.weights import WeightFormat
from vramplan.spec import (Attention, DeviceBuffers, GpuTarget, LocalReport, ModelSpec, Plan, Quantization,
                           Recurrent, Workload)
from vramplan.spec.gguf import GgufFile
from vramplan.units import GiB

# llama.cpp's --fit (on by default) leaves this much free on each GPU: common/common.h
# fit_params_target = 1 GiB per device
FIT_MARGIN = 1 * GiB


@dataclass(frozen=True)
class LlamaState:
    file: GgufFile
    opts: LlamaOptions
    name: str            # "llama.cpp" or "ollama"


class LlamaCppEngine(EngineBase):
    name = "llama_cpp"
    label = "llama.cpp"

    def options(self, workload: Workload) -> LlamaOptions:
        return workload.llama if isinstance(workload.llama, LlamaOptions) else normalize(LlamaFlags())

    def prepare(self, model: ModelSpec, target: GpuTarget, workload: Workload) -> Setup:
        opts = self.options(workload)
        if self.context(opts, workload.batch, workload.ctx).n_ctx_seq == 0:
            raise BadInput(f"{opts.parallel or workload.batch} slots ({{parallel}}) cannot share {workload.ctx} "
                           f"cells of context ({{ctx}}): llama.cpp refuses n_ctx_seq == 0.")
        file, warnings = gguf_file(model, workload.dtype)
        warnings = warnings + unmodelled(model, file, self.context(opts, workload.batch, workload.ctx).n_ctx_seq)
        capacity = target.per_gpu_bytes
        if target.free_bytes is not None:
            capacity = min(capacity, target.free_bytes)
        fmt = WeightFormat(Quantization(method="gguf", pre_quantized=True), "fp16",
                           f"GGUF {file.file_type or 'mixed'}" + (" (planned)" if file.planned else ""))
        return Setup(model=model, target=target, workload=workload, fmt=fmt,
                     kv_dtype=opts.cache_type_k if opts.cache_type_k == opts.cache_type_v
                     else f"K {opts.cache_type_k}, V {opts.cache_type_v}",
                     kv_elem=2, act_elem=4, weights=0, overhead={"cuda_context": CUDA_CONTEXT_BYTES},
                     capacity=capacity, state=LlamaState(file, opts, self.label), warnings=tuple(warnings))

    # -------------------------------------------------------------- one split

    def context(self, o: LlamaOptions, batch: int, ctx: int) -> B.Context:
        """llama.cpp: -c is the whole cache the --parallel slots share; -b 2048, -ub 512."""
        return B.context(ctx, o.parallel or batch, o.batch or DEFAULT_BATCH, o.ubatch or DEFAULT_UBATCH,
                         o.kv_unified)

    def split(self, s: Setup, batch: int, ctx: int, ngl: int) -> tuple[list[B.Device], B.Placement, B.Context]:
        o, m = s.state.opts, s.model
        c = self.context(o, batch, ctx)
        p = B.place(m.num_layers, ngl, s.target.count, o.tensor_split)
        devs = B.buffers(m, s.state.file, p, c, gpus=s.target.count, type_k=o.cache_type_k,
                         type_v=o.cache_type_v, flash=o.flash_attn, unified=o.kv_unified,
                         cpu_patterns=o.cpu_patterns)
        return devs, p, c

    def gpu_totals(self, s: Setup, devs: list[B.Device]) -> list[int]:
        return [d.total + s.overhead["cuda_context"] for d in devs[:-1]]

    def components(self, s: Setup, batch: int, ctx: int) -> Breakdown:
        ngl = s.state.opts.n_gpu_layers if s.state.opts.n_gpu_layers is not None else ALL_LAYERS
        if self.context(s.state.opts, batch, ctx).n_ctx_seq == 0:
            # llama.cpp refuses more slots than context cells: no such workload starts
            return Breakdown({"refused": 2**62}, {"refused": "more --parallel slots than -c cells"}, "", 2**62)
        devs, p, c = self.split(s, batch, ctx, ngl)
        gpus = devs[:-1]
        worst = max(range(len(gpus)), key=lambda i: gpus[i].total)
        d = gpus[worst]
        where = f" ({d.name}, the fullest GPU)" if len(gpus) > 1 else ""
        parts = {"weights": d.model, "kv_cache": d.kv, "compute_buffer": d.compute,
                 "cuda_context": s.overhead["cuda_context"]}
        notes = {"weights": f"{d.name} model buffer: {len(d.layers)} of {s.model.num_layers} layers"
                            + (" + output" if p.output_dev == worst else "") + where,
                 "kv_cache": f"{d.name} KV buffer: {c.n_ctx:,} cells, K {s.state.opts.cache_type_k}, "
                             f"V {s.state.opts.cache_type_v}",
                 "compute_buffer": f"{d.name} compute buffer, {c.n_ubatch}-token batch "
                                   f"(modelled from llama.cpp's graph)",
                 "cuda_context": "estimate: a CUDA 12 context measured in a torch process"}
        return Breakdown(parts, notes, f"prompt batch of {c.n_ubatch} tokens", sum(parts.values()))

    # -------------------------------------------------------------- the report

    def largest_ngl(self, s: Setup, batch: int, ctx: int, margin: int = 0) -> int:
        """The largest -ngl whose GPU buffers fit every GPU (0 when not even the output layer fits)."""
        lo, hi = 0, s.model.num_layers + 1
        if not s.target.count:
            return 0

        def fits(n: int) -> bool:
            devs, _, _ = self.split(s, batch, ctx, n)
            return all(t <= s.capacity - margin for t in self.gpu_totals(s, devs))

        if fits(hi):
            return hi
        while lo < hi:                       # more layers never need less GPU memory
            mid = (lo + hi + 1) // 2
            if fits(mid):
                lo = mid
            else:
                hi = mid - 1
        return lo

    def report(self, s: Setup, breakdown: Breakdown, ctx: int) -> LocalReport:
        o, m, batch = s.state.opts, s.model, s.workload.batch
        solved = o.n_gpu_layers is None
        ngl = self.largest_ngl(s, batch, ctx) if solved else min(o.n_gpu_layers, m.num_layers + 1)
        devs, p, c = self.split(s, batch, ctx, ngl)
        host = devs[-1]
        cpu_tensors = [t for t, d in B.tensor_devices(s.state.file, p, o.cpu_patterns) if d < 0]
        mapped = B.file_range(cpu_tensors) if not s.state.file.planned else host.model
        host_model = sum(t.nbytes for t in cpu_tensors)
        host_ram = host_model + host.kv + host.compute + host.output
        notes = []
        fit_margin = self.largest_ngl(s, batch, ctx, FIT_MARGIN) if solved else -1
        kv_per_token = sum(sum(B.kv_row_bytes(l.mixer, o.cache_type_k, o.cache_type_v))
                           for l in m.layers if isinstance(l.mixer, Attention))
        return LocalReport(
            engine=s.state.name, n_gpu_layers=p.n_gpu_layers, n_layers=m.num_layers + 1, solved=solved,
            devices=tuple(DeviceBuffers(name=d.name, model=host_model if d is host else d.model, kv=d.kv,
                                        compute=d.compute, output=d.output, layers=tuple(d.layers),
                                        mapped=mapped if d is host else 0) for d in devs),
            host_ram_bytes=host_ram, gpu_bytes=tuple(self.gpu_totals(s, devs)), ram_bytes=o.ram,
            ram_ok=o.ram is None or host_ram <= o.ram, n_ctx=c.n_ctx, n_ctx_seq=c.n_ctx_seq, n_seq=c.n_seq,
            n_batch=c.n_batch, n_ubatch=c.n_ubatch, flash_attn=o.flash_attn, cache_type_k=o.cache_type_k,
            cache_type_v=o.cache_type_v, kv_bytes_per_token=kv_per_token, model_file=s.state.file.path,
            file_type=s.state.file.file_type, file_bytes=s.state.file.tensor_bytes,
            decode_tokens_per_s=decode_speed(s, devs, p, o), fit_margin_layers=fit_margin, notes=tuple(notes))

    def fits(self, s: Setup, breakdown: Breakdown, ctx: int) -> bool:
        """The GPU holds its share, and, when --ram is given, the host holds the rest (the
        report, with its -ngl search, is only needed then)."""
        if breakdown.total > s.capacity:
            return False
        return s.state.opts.ram is None or self.report(s, breakdown, ctx).ram_ok

    def warnings(self, s: Setup, report) -> list[str]:
        if report is None:
            return []
        out = []
        if report.solved and report.n_gpu_layers < report.n_layers:
            out.append(f"Not every layer fits: {report.n_gpu_layers} of {report.n_layers} layers fit on the GPU "
                       f"at this context (-ngl {report.n_gpu_layers}); the rest runs from system RAM "
                       f"({report.host_ram_bytes / GiB:.2f} GiB on the host), much slower.")
        if 0 <= report.fit_margin_layers < report.n_gpu_layers:
            out.append(f"llama.cpp's own --fit keeps 1 GiB free per GPU, so left to itself it offloads "
                       f"{report.fit_margin_layers} layers, not {report.n_gpu_layers}.")
        if not report.ram_ok:
            out.append(f"The host side needs {report.host_ram_bytes / GiB:.2f} GiB but --ram gives "
                       f"{report.ram_bytes / GiB:.2f} GiB.")
        return out

    def levers(self, plan: Plan, attempt: Attempt) -> None:
        r = plan.local
        if r is None:
            return
        if r.cache_type_k == "f16":
            attempt("--cache-type-k q8_0 --cache-type-v q8_0", {"cache_type_k": "q8_0", "cache_type_v": "q8_0"},
                    llama=replace(plan.workload.llama or self.options(plan.workload),
                                  cache_type_k="q8_0", cache_type_v="q8_0", flash_attn=True))
        if r.solved and r.n_gpu_layers < r.n_layers:
            opts = plan.workload.llama or self.options(plan.workload)
            attempt(f"--n-gpu-layers {r.n_gpu_layers} (the rest in RAM)", {"n_gpu_layers": r.n_gpu_layers},
                    llama=replace(opts, n_gpu_layers=r.n_gpu_layers))


def unmodelled(model: ModelSpec, file: GgufFile, n_ctx_seq: int) -> list[str]:
    """What this plan does not model, said up front: the recurrent state of SSM layers (llama.cpp
    keeps it in its own buffer, src/llama-memory-recurrent.cpp), a model llama.cpp's converter has
    no mapping for here (tensor names and per-tensor quant rules then follow the HF checkpoint),
    and a context past the training length (llama.cpp warns "n_ctx_seq > n_ctx_train")."""
    out = []
    if any(isinstance(layer.mixer, Recurrent) for layer in model.layers):
        out.append(f"{model.id} has recurrent (SSM) layers: their state buffer is not counted in this "
                   f"llama.cpp plan, so the KV cache line is a lower bound.")
    if file.planned and not has_gguf_mapping(model):
        out.append(f"llama.cpp's converter mapping for model_type '{model.model_type}' is not modelled: the "
                   f"planned file uses the HF tensor names and the generic quantization rules (approximate).")
    if file.context_length and n_ctx_seq > file.context_length:
        out.append(f"The context per slot ({n_ctx_seq:,}) is past the model's training length "
                   f"({file.context_length:,}); llama.cpp warns of a training context overflow.")
    return out


def gguf_file(model: ModelSpec, dtype: str) -> tuple[GgufFile, list[str]]:
    """The file planned: the GGUF read, or the one llama.cpp's converter and quantizer would make."""
    if model.gguf is not None:
        if dtype not in ("auto",):
            raise BadInput(f"{model.id} is already a GGUF file ({model.gguf.file_type or 'mixed types'}); "
                           f"{{dtype}} plans a quantization of an HF checkpoint. Drop {{dtype}}, or pass the "
                           f"HF model with {{dtype}} {dtype}.")
        return model.gguf, []
    warnings = []
    if dtype == "auto":
        mix = "BF16" if model.torch_dtype == "bf16" else "F16"
    elif dtype in ("fp16", "bf16", "fp32"):
        mix = {"fp16": "F16", "bf16": "BF16", "fp32": "F32"}[dtype]
    else:
        mix = check_mix(dtype)
    if model.quantization is not None and model.quantization.pre_quantized and dtype == "auto":
        warnings.append(f"{model.id} is a {model.quantization.method} checkpoint; planned as llama.cpp's "
                        f"converter writes it at 16 bits. Name the GGUF mix with --dtype (e.g. q4_k_m).")
    return plan_file(model, mix), warnings


def decode_speed(s: Setup, devs: list[B.Device], p: B.Placement, o: LlamaOptions) -> float:
    """Tokens/s of one sequence decoding, an estimate: every weight a token touches (the routed
    experts' share of an MoE layer) and the KV cache read once from the memory that holds them,
    at the GPU's and the host RAM's bandwidth. Compute, transfers and kernel efficiency ignored."""
    gpu = s.target.gpu
    gbs = (gpu.memory_bandwidth_gbs if gpu and gpu.memory_bandwidth_gbs else None)
    experts = [l.mlp for l in s.model.layers if l.mlp is not None and l.mlp.kind == "moe"]
    share = (experts[0].top_k / experts[0].num_experts) if experts and experts[0].num_experts else 1.0
    gpu_read = cpu_read = 0.0
    for t, d in B.tensor_devices(s.state.file, p, o.cpu_patterns):
        if t.name.startswith("token_embd"):
            continue                                 # one row per token
        b = t.nbytes * (share if "_exps" in t.name else 1.0)
        if d >= 0:
            gpu_read += b
        else:
            cpu_read += b
    gpu_read += sum(d.kv for d in devs[:-1])
    cpu_read += devs[-1].kv
    seconds = cpu_read / (o.ram_gbs * 1e9)
    if gpu_read:
        if gbs is None:
            return 0.0
        seconds += gpu_read / (gbs * 1e9)      # layer split: the GPUs run one after another
    return round(1 / seconds, 1) if seconds else 0.0


ENGINE = LlamaCppEngine()
