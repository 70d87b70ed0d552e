"""Plans and catalogs as terminal tables. Exact bytes stand beside GiB so a reader can check any
figure against torch or nvidia-smi."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tabulate import tabulate

from vramplan.render.bar import glyph, memory_bar
from vramplan.render.json import layer_kinds
from vramplan.render.local import local_lines
from vramplan.render.sglang import capacity_note, sglang_lines
from vramplan.spec import GpuSpec, Plan
from vramplan.units import GiB, fmt_bytes, fmt_gib, fmt_tokens

if TYPE_CHECKING:       # the catalog reports load with the commands that make them
    from vramplan.spec.reports import BundledModel, KvReport

_LABELS = {
    "weights": "weights",
    "kv_cache": "KV cache",
    "activations": "activations (peak transient)",
    "allocator_slack": "allocator slack",
    "cuda_context": "CUDA context",
    "cublas_workspace": "cuBLAS workspace",
    "nccl": "NCCL buffers",
    "non_torch": "non-torch (vLLM)",
    "cuda_graphs": "CUDA graphs",
    "logits_and_loss": "logits + loss",
    "optimizer": "optimizer state",
    "optimizer_paged": "optimizer state (paged)",
    "optimizer_step": "optimizer step temporaries",
    "master_weights": "fp32 master weights",
    "trainable": "trainable (LoRA)",
    "autocast_copies": "autocast weight copies",
    "zero3_gather": "ZeRO-3 gather buffer",
    "ddp_buckets": "DDP gradient buckets",
    "compute_buffer": "compute buffer",
    "optimizer_offloaded": "optimizer state (host RAM)",
    "params_offloaded": "parameters (host RAM)",
    "zero_buckets": "ZeRO gradient buckets",
    "zero_fp32_grads": "ZeRO fp32 gradient partition",
}
def approximate_lines(p: Plan) -> list[str]:
    """The warning an approximate plan opens with, and the assumptions behind it."""
    if p.confidence != "approximate":
        return []
    return model_approximate_lines(p.model)


def model_approximate_lines(m) -> list[str]:
    """The same warning for any report of an approximately read model (a plan, the kv table)."""
    if m.confidence != "approximate":
        return []
    lines = [f"APPROXIMATE: {m.model_type or 'this model'} was read by vramplan's generic config "
             f"reader, not a verified family; its numbers may be off (--strict refuses such a plan). "
             f"It assumed:"]
    lines += [f"  - {a}" for a in m.assumptions] or ["  - a llama-like layout"]
    return lines + [""]


def plan_table(p: Plan) -> str:
    m, t, w = p.model, p.target, p.workload
    lines = approximate_lines(p)
    kinds = layer_kinds(m)
    kind_text = ", ".join(f"{n} {k}" for k, n in kinds.items())
    lines.append(f"model     {m.id}  [{m.source}]  {m.model_type}, {m.params / 1e9:,.2f} B params, "
                 f"{m.num_layers} layers ({kind_text}), vocab {m.vocab_size:,}")
    if m.weights_from == "checkpoint":
        lines.append(f"weights   from the checkpoint: {m.weights_source}, {fmt_bytes(m.checkpoint_bytes)} "
                     f"bytes as stored")
    notes = list(m.weights_notes)
    if notes and m.weights_from != "checkpoint":
        lines.append(f"weights   from the config: {notes.pop(0)}")
    lines += [f"          {note}" for note in notes]
    if m.derived_from:
        lines.append(f"layers    derived from {m.derived_from} (the model built on the meta device, its cache "
                     f"after a prefill on fake tensors)")
    if t.gpu:
        gpu = f"{t.gpu.name} x {t.count}" if t.count > 1 else t.gpu.name
        total = f"{fmt_gib(t.per_gpu_bytes)} CUDA total each" if t.count > 1 else f"{fmt_gib(t.per_gpu_bytes)} CUDA total"
    else:
        gpu, total = "custom", f"{fmt_gib(t.per_gpu_bytes)} given by --gpu-mem"
    serve = p.serve is not None         # a vLLM plan: its budget, parallel layout and start-up figures
    cap_note = (f" x {w.serve.gpu_memory_utilization:g} gpu_memory_utilization" if serve else "")
    if serve and w.serve.kv_cache_memory is not None:
        cap_note = " = weights + profile peak + --kv-cache-memory"
    if p.sglang is not None:
        cap_note = capacity_note(p.sglang)
    lines.append(f"gpu       {gpu}, {total}; capacity {fmt_gib(p.capacity_bytes)}{cap_note}")
    par = f", tp {w.serve.tp}" + (f" pp {w.serve.pp}" if w.serve.pp > 1 else "") if serve and w.serve.tp * w.serve.pp > 1 else ""
    if serve and w.serve.dp > 1:
        par += f"{',' if not par else ''} dp {w.serve.dp}"
    if serve and w.serve.enable_expert_parallel:
        par += " expert-parallel"
    if w.train is not None:
        o = w.train
        extras = [o.optim] + (["grad ckpt"] if o.grad_ckpt else []) + ([f"ZeRO-{o.zero}"] if o.zero else [])
        if w.mode != "full":
            extras.append(f"LoRA r={o.lora_r}")
        lines.append(f"workload  {w.mode}: micro-batch {w.batch} x seq {fmt_tokens(w.ctx)}; weights "
                     f"{p.weight_dtype}; {', '.join(extras)}")
    elif p.local is not None:
        lines.append(f"workload  {p.local.engine}: {p.local.n_seq} slot(s), ctx {fmt_tokens(w.ctx)}; weights "
                     f"{p.weight_dtype}; KV {p.kv_dtype}, {fmt_bytes(p.kv_bytes_per_token)} B/token")
    else:
        lines.append(f"workload  {w.mode}: batch {w.batch} x ctx {fmt_tokens(w.ctx)}{par}; weights {p.weight_dtype}; "
                     f"KV {p.kv_dtype}, {fmt_bytes(p.kv_bytes_per_token)} B/token")
    lines.append("")
    rows = []
    for name, b in p.components.items():
        share = f"{100 * b / p.total_bytes:5.1f}%" if p.total_bytes else ""
        rows.append([_LABELS.get(name, name), fmt_bytes(b), f"{b / GiB:,.2f}", share,
                     p.component_notes.get(name, "")])
    rows.append(["total", fmt_bytes(p.total_bytes), f"{p.total_bytes / GiB:,.2f}", "", "per GPU"])
    rows.append(["capacity", fmt_bytes(p.capacity_bytes), f"{p.capacity_bytes / GiB:,.2f}", "", ""])
    for name, b in p.outside.items():    # reported, not in the total nor the verdict
        rows.append([f"not counted: {_LABELS.get(name, name)}", fmt_bytes(b), f"{b / GiB:,.2f}", "",
                     p.component_notes.get(name, "")])
    lines.append(tabulate(rows, headers=["component", "bytes", "GiB", "share", "note"],
                          tablefmt="simple", colalign=("left", "right", "right", "right", "left"),
                          disable_numparse=True))
    if p.serve is not None and p.serve.outside_budget:
        outside = p.serve.outside_budget
        room = t.per_gpu_bytes - p.capacity_bytes
        items = ", ".join(f"{_LABELS.get(k, k)} {fmt_gib(v)}" for k, v in outside.items())
        verdict = "fits" if p.serve.headroom_ok else "does NOT fit"
        lines.append(f"outside vLLM's budget, in the other {fmt_gib(room)}: {items} "
                     f"(total {fmt_gib(sum(outside.values()))}, {verdict})")
    lines.append("")
    lines.append(memory_bar(p))
    lines.append("")
    if p.serve is not None:
        lines.append(glyph(_serve_verdict(p)))
    elif p.fits:
        lines.append(glyph(f"✓ fits: {fmt_gib(p.total_bytes)} of {fmt_gib(p.capacity_bytes)}, "
                            f"headroom {fmt_gib(p.headroom_bytes)}"))
    elif p.total_bytes <= p.capacity_bytes:
        lines.append(glyph(f"✗ does not fit: the workload needs {fmt_gib(p.total_bytes)} of "
                            f"{fmt_gib(p.capacity_bytes)}, but the engine cannot start"))
    else:
        lines.append(glyph(f"✗ does not fit: needs {fmt_gib(p.total_bytes)}, capacity "
                            f"{fmt_gib(p.capacity_bytes)} (short by {fmt_gib(-p.headroom_bytes)})"))
    lines.append(f"limits    max batch at ctx {w.ctx:,}: {p.max_batch:,}   "
                 f"max ctx at batch {w.batch}: {p.max_ctx:,}")
    if p.phase and not serve and p.local is None:   # vLLM and llama.cpp pre-allocate: no such peak
        lines.append(f"peak      {p.phase}; torch.cuda.max_memory_allocated() would read "
                     f"{fmt_gib(p.peak_allocated_bytes)}")
    if p.serve is not None:
        s = p.serve
        lines.append(f"engine    {s.engine}")
        groups = f" x {s.kv_groups} groups" if s.kv_groups > 1 else ""
        if p.model.traits.pooling:
            lines.append(f"vLLM      pooling model, no KV cache: {s.max_num_batched_tokens:,} tokens per step "
                         f"(max_num_batched_tokens), at most {s.max_num_seqs:,} requests")
        else:
            lines.append(f"vLLM      GPU KV cache size: {s.kv_cache_tokens:,} tokens ({s.num_gpu_blocks:,} blocks "
                         f"of {s.block_size}{groups}); maximum concurrency for {w.ctx:,} tokens per request: "
                         f"{s.max_concurrency:.2f}x")
        if s.ranks:
            lines.append(f"          components are rank {s.rank}'s, the GPU with the fewest KV blocks")
        for note in s.kv_notes:
            lines.append(f"          vLLM logs: {note}")
        if s.refusal:
            lines.append(f"          vLLM would refuse to start: {s.refusal}")
        elif not s.headroom_ok:
            lines.append("          vLLM would run out of memory after sizing its cache: the CUDA context, "
                         "graphs and NCCL buffers do not fit outside its budget")
    if p.suggestions:
        lines.append("")
        lines.append("to make it fit:")
        width = max([40] + [len(sug.change) for sug in p.suggestions])
        for sug in p.suggestions:
            mark = glyph("✓" if sug.fits else "✗")
            cost = f"  ${sug.usd_per_hour:,.2f}/h" if sug.usd_per_hour is not None else ""
            lines.append(f"  {mark} {sug.change:<{width}} total {fmt_gib(sug.total_bytes)}{cost}")
    lines += _trace_lines(p)
    lines += local_lines(p)
    lines += sglang_lines(p)
    for warning in p.warnings:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def _serve_verdict(p: Plan) -> str:
    """vLLM's two questions, answered apart: does it start with max_model_len = ctx, and does its
    budget hold batch x ctx at once. The plan fits (exit 0) only when both hold."""
    w, s = p.workload, p.serve
    load = f"{w.batch} x {w.ctx:,} tokens"
    if not s.starts:
        why = "its refusal below" if s.refusal else "what it keeps outside its budget does not fit, below"
        return f"✗ does not fit: vLLM does not start with max_model_len {w.ctx:,} ({why})"
    starts = f"vLLM starts (max_model_len {w.ctx:,})"
    if p.fits:
        return (f"✓ fits: {starts} and holds {load} at once: {fmt_gib(p.total_bytes)} of "
                f"{fmt_gib(p.capacity_bytes)}, headroom {fmt_gib(p.headroom_bytes)}")
    if s.holds:     # started and holds: only what vLLM keeps outside its budget fails
        return f"✗ does not fit: {starts}, but runs out of memory outside its budget"
    if p.model.traits.pooling:
        return (f"✗ does not fit: {starts}, but takes only {p.max_batch:,} of {load} in one step of "
                f"max_num_batched_tokens {s.max_num_batched_tokens:,} (the rest queue)")
    return (f"✗ does not fit: {starts}, but holds only {p.max_batch:,} of {load} at once "
            f"({s.max_concurrency:.2f}x; the rest queue): needs {fmt_gib(p.total_bytes)}, capacity "
            f"{fmt_gib(p.capacity_bytes)}")


def _trace_lines(p: Plan, top: int = 6) -> list[str]:
    """Where a traced peak happened and the largest tensors alive then (--method trace)."""
    t = getattr(p, "trace", None)
    if t is None:
        return []
    out = ["", f"traced    peak {fmt_gib(t.peak_bytes)} of live tensors in {t.where} "
                f"({t.seconds:.1f} s)", "          largest tensors alive at the peak:"]
    for r in t.top[:top]:
        shape = "x".join(str(d) for d in r.shape)
        out.append(f"          {r.bytes / 2**20:>12,.1f} MiB  {r.category:<14} {r.dtype:<9} [{shape}]  "
                   f"{r.op} in {r.module or r.phase}")
    return out


def kv_table(report: KvReport) -> str:
    m, per_token = report.model, report.kv_bytes_per_token
    table = []
    for r in report.kinds:
        window = f"{r.window:,}" if r.window else "-"
        table.append([r.kind, r.layers, window, fmt_bytes(r.bytes_per_token) if r.bytes_per_token else "-",
                      fmt_bytes(r.bytes_per_sequence) if r.bytes_per_sequence else "-"])
    head = f"{m.id}: KV cache per layer kind at {next(iter(per_token))} (one sequence)"
    body = tabulate(table, headers=["kind", "layers", "window", "bytes/token", "state bytes/seq"],
                    tablefmt="simple", disable_numparse=True)
    totals = "  ".join(f"{k}: {fmt_bytes(v)} B/token" for k, v in per_token.items())
    warning = "".join(line + "\n" for line in model_approximate_lines(m))
    return f"{warning}{head}\n{body}\nall layers, below any window: {totals}"


def gpus_table(gpus: tuple[GpuSpec, ...], defaults: dict | None = None) -> str:
    """`defaults`: GPU id -> the Price compare charges by default (catalog.default_price)."""
    rows = []
    for g in gpus:
        price = (defaults or {}).get(g.id)
        rows.append([g.id, g.name, g.marketing, f"{g.cuda_total_bytes / GiB:,.2f}" + ("" if g.cuda_total_measured else "*"),
                     f"{g.memory_bandwidth_gbs:,.0f}" if g.memory_bandwidth_gbs else "",
                     f"{g.bf16_tflops:,.0f}" if g.bf16_tflops else "",
                     f"${price.usd_per_hour:.2f} ({price.provider}, {price.date})" if price else ""])
    table = tabulate(rows, headers=["id", "name", "marketing", "CUDA GiB", "GB/s", "BF16 TFLOPS", "$/h (cheapest dated on-demand)"],
                     tablefmt="simple", disable_numparse=True)
    return table + "\n* CUDA total not measured on this card: derived from its NVML total or estimated (docs/gpus.md)"


def models_table(rows: tuple[BundledModel, ...]) -> str:
    def figures(r: BundledModel) -> list[str]:
        if r.params is None:
            return ["-", "-"]
        return [f"{r.params / 1e9:,.2f} B", fmt_bytes(r.kv_bytes_per_token_bf16)]
    return tabulate([[r.id, r.model_type, *figures(r), r.note] for r in rows],
                    headers=["id", "model_type", "params", "KV B/token (bf16)", "note"],
                    tablefmt="simple", disable_numparse=True)
