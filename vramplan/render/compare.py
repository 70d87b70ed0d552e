"""Comparisons and sweeps as a terminal table (with a memory bar per GPU), CSV, Markdown and
JSON. The JSON keys are a contract (docs/compare.md)."""

from __future__ import annotations

import csv
import io
import sys
from dataclasses import asdict

from tabulate import tabulate

from vramplan import __version__
from vramplan.compare.result import Comparison, Row, Sweep
from vramplan.compare.speed import ERROR_BAND
from vramplan.render.json import SERVE_SET_ONLY, gpu_json, model_json
from vramplan.spec import Plan
from vramplan.units import GiB, fmt_tokens

FORMATS = ("table", "csv", "markdown", "json")
_ASCII = {"✓": "yes", "✗": "no", "█": "#", "▒": "+", "·": ".", "│": "|", "◀": "<-", "»": ">", "×": "x"}
BAR_WIDTH = 30          # cells for one card's capacity
BAR_OVERFLOW = 15       # cells drawn beyond it before "»"


def _text(s: str) -> str:
    if "utf" in (getattr(sys.stdout, "encoding", "") or "").lower():
        return s
    return "".join(_ASCII.get(c, c) for c in s)


# ---------------------------------------------------------------- shared pieces

def _workload_json(p: Plan) -> dict:
    w = p.workload
    out = {"mode": w.mode, "batch": w.batch, "ctx": w.ctx, "dtype": p.weight_dtype,
           "dtype_requested": w.dtype, "kv_dtype": p.kv_dtype, "kv_dtype_requested": w.kv_dtype}
    if p.serve is not None:
        out.update({k: v for k, v in asdict(w.serve).items() if k not in ("tp", "pp")
                    and (k not in SERVE_SET_ONLY or v != SERVE_SET_ONLY[k])})
    if w.train is not None:
        out.update({k: v for k, v in asdict(w.train).items() if k != "world"})
    return out


def _workload_line(p: Plan) -> str:
    w = p.workload
    if w.train is not None:
        return (f"{w.mode}: micro-batch {w.batch} x seq {fmt_tokens(w.ctx)}; weights {p.weight_dtype}; "
                f"{w.train.optim}" + ("; grad ckpt" if w.train.grad_ckpt else ""))
    return f"{w.mode}: batch {w.batch} x ctx {fmt_tokens(w.ctx)}; weights {p.weight_dtype}; KV {p.kv_dtype}"


def _money(x: float | None) -> str:
    if x is None:
        return "-"
    return f"${x:,.2f}" if x >= 0.1 else f"${x:.4f}"


def _rate(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if x >= 10 else f"{x:.1f}"


# ---------------------------------------------------------------- compare

def layout(r: Row) -> str:
    """"1 GPU", "TP4", "TP4 over PCIe", "ZeRO-3 x8"; "-" when nothing tried fits."""
    if r.gpus_needed is None:
        return "-"
    n = r.gpus_needed
    if r.parallelism == "none":
        return "1 GPU"
    name = {"tp": f"TP{n}", "ddp": f"DDP x{n}"}.get(r.parallelism, f"ZeRO-{r.parallelism[-1]} x{n}")
    if r.gpu.nvlink:
        return name
    return name + (" over PCIe, link-bound" if r.needs_nvlink else " over PCIe")


def row_json(r: Row) -> dict:
    g = r.gpu
    speed = r.speed
    return {
        "gpu": {"id": g.id, "name": g.name, "memory_total_bytes": g.cuda_total_bytes,
                "memory_bandwidth_gbs": g.memory_bandwidth_gbs, "bf16_tflops": g.bf16_tflops,
                "fp8_tflops": g.fp8_tflops, "nvlink": g.nvlink, "interconnect": g.interconnect},
        "fits": r.fits,
        "one_card": {"total_bytes": r.one_card.total_bytes, "capacity_bytes": r.one_card.capacity_bytes},
        "gpus_needed": r.gpus_needed,
        "parallelism": r.parallelism if r.gpus_needed is not None else None,
        "needs_nvlink": r.needs_nvlink,
        "max_batch": r.plan.max_batch, "max_ctx": r.plan.max_ctx, "limits_gpus": r.plan.target.count,
        "price_per_hour": r.price_per_hour,
        "price": None if r.price is None else {
            "usd_per_hour": r.price.usd_per_hour, "basis": r.price.basis, "stale": r.price.stale,
            "quotes": [asdict(q) for q in r.price.quotes]},
        "cost_per_hour": r.cost_per_hour,
        "tokens_per_s": speed.tokens_per_s if speed else None,
        "throughput": None if speed is None else {
            "estimate": True, "bound": speed.bound, "step_s": speed.step_s,
            "bytes_per_step": speed.bytes_per_step, "flops_per_token": speed.flops_per_token,
            "pcie_comm_s": speed.comm_s},
        "usd_per_million_tokens": r.usd_per_million_tokens,
        "usd_per_million_input_tokens": r.usd_per_million_input,
        "usd_per_million_output_tokens": r.usd_per_million_output,
        "serve_estimate": None if r.serve is None else {
            "estimate": True, "error_band": ERROR_BAND,
            "tokens_per_s_per_sequence": r.serve.per_sequence_tokens_per_s,
            "output_tokens_per_s": r.serve.output_tokens_per_s,
            "input_tokens_per_s": r.serve.input_tokens_per_s, "ttft_s": r.serve.ttft_s,
            "decode_step_s": r.serve.decode.seconds, "decode_bound": r.serve.decode.bound,
            "prefill_s": r.serve.batch_prefill.seconds, "prefill_bound": r.serve.batch_prefill.bound,
            "tp_comm_s_per_step": r.serve.decode.comm_s},
        "meets_target": r.meets_target,
        "notes": list(g.notes),
        "cheapest": r.cheapest,
    }


def comparison_json(c: Comparison) -> dict:
    w = c.workload
    model = None                                    # infer: no speed model
    if c.rows[0].one_card.serve is not None:
        model = {"kind": "serving roofline (prefill + decode)", "estimate": True, "error_band": ERROR_BAND,
                 "efficiency": c.efficiency, "step_overhead_s": c.step_overhead_s,
                 "decode_context": c.decode_context, "input_len": c.input_len, "output_len": c.output_len,
                 "concurrency": c.concurrency, "max_ttft_s": c.max_ttft_s,
                 "min_tokens_per_s": c.min_tokens_per_s}
    elif w.train is not None:
        model = {"kind": "training compute", "estimate": True, "efficiency": c.efficiency}
    return {
        "vramplan_version": __version__, "model": model_json(c.model),
        "workload": _workload_json(c.rows[0].one_card),
        "throughput_model": model,
        "prices": {"source": c.price_source, "overrides": dict(c.price_overrides)},
        "rows": [row_json(r) for r in c.rows],
    }


_HEADERS = ["gpu", "1 card", "GPUs", "layout", "max batch", "max ctx", "$/GPU-h", "est. tok/s", "$/M tok", ""]
_SERVE_HEADERS = ["gpu", "1 card", "GPUs", "layout", "max batch", "$/GPU-h", "price: provider, date",
                  "tok/s/seq", "tok/s total (estimate)", "TTFT", "$/M in", "$/M out", ""]


def _band(x: float | None) -> str:
    if x is None:
        return "-"
    return f"~{_rate(x)} (±{ERROR_BAND:.0%})".replace("%", " %")


def _who(r: Row) -> str:
    """Where the price comes from: "RunPod secure 2026-05-22", "--price"; "!" marks a stale quote."""
    if r.price is None:
        return "-"
    return r.price.basis + (" (over a year old!)" if r.price.stale else "")


def _mark(r: Row) -> str:
    if r.cheapest:
        return "◀ cheapest"
    return "misses target" if not r.meets_target and r.gpus_needed is not None else ""


def _cells(r: Row, max_count: int) -> list[str]:
    needed = str(r.gpus_needed) if r.gpus_needed is not None else f">{max_count}"
    n = r.plan.target.count
    limits_note = f" (on {n})" if r.gpus_needed is None and n > 1 else ""
    if r.one_card.serve is not None:
        e = r.serve
        return [r.gpu.id, "✓" if r.fits else "✗", needed, layout(r), f"{r.plan.max_batch:,}{limits_note}",
                _money(r.price_per_hour), _who(r),
                _rate(e.per_sequence_tokens_per_s) if e else "-", _band(e.output_tokens_per_s if e else None),
                f"{e.ttft_s * 1e3:,.0f} ms" if e else "-",
                _money(r.usd_per_million_input), _money(r.usd_per_million_output), _mark(r)]
    return [r.gpu.id, "✓" if r.fits else "✗", needed, layout(r),
            f"{r.plan.max_batch:,}{limits_note}", f"{r.plan.max_ctx:,}",
            _money(r.price_per_hour), _rate(r.tokens_per_s), _money(r.usd_per_million_tokens),
            "◀ cheapest" if r.cheapest else ""]


def _headers(c: Comparison) -> list[str]:
    return _SERVE_HEADERS if c.rows[0].one_card.serve is not None else _HEADERS


def bar(p: Plan, width: int = BAR_WIDTH) -> str:
    """Memory needed on one card against its capacity ('│'); past it, '▒' up to 1.5x, then '»'."""
    ratio = p.total_bytes / p.capacity_bytes if p.capacity_bytes else float("inf")
    cells = min(round(ratio * width), width + BAR_OVERFLOW)
    if ratio > 1:
        cells = max(cells, width + 1)      # any overflow shows
    inside = "█" * min(cells, width) + "·" * max(width - cells, 0)
    beyond = "▒" * max(cells - width, 0) + ("»" if ratio * width > width + BAR_OVERFLOW else "")
    return f"[{inside}│{beyond}]"


def notes(c: Comparison) -> list[str]:
    w = c.workload
    out = []
    if c.rows[0].one_card.serve is not None:
        band = f"±{ERROR_BAND:.0%}".replace("%", " %")
        out.append(f"traffic: {c.concurrency} requests in flight, each {c.input_len:,} tokens in and {c.output_len:,} out "
                   "(--concurrency, --input-len, --output-len).")
        out.append(f"speed is an ESTIMATE ({band}: every published point but one in docs/compare.md lies within it): "
                   "a roofline per phase (memory- or compute-bound per dtype, TP all-reduces over NVLink or PCIe). "
                   "tok/s/seq: one sequence's decode rate; tok/s total: output tokens per second over whole "
                   "request cycles (prefill included); TTFT: one prompt's prefill + one decode step.")
        out.append("$/M in, $/M out: $/GPU-h x GPUs x the cycle's prefill (decode) seconds / its input (output) tokens.")
        if c.max_ttft_s is not None or c.min_tokens_per_s is not None:
            want = []
            if c.max_ttft_s is not None:
                want.append(f"TTFT <= {c.max_ttft_s * 1e3:,.0f} ms")
            if c.min_tokens_per_s is not None:
                want.append(f">= {c.min_tokens_per_s:g} tok/s per sequence")
            out.append(f"target: {' and '.join(want)}; more cards are tried where the fewest miss it; "
                       "'misses target' rows are ranked last.")
    elif w.train is not None:
        out.append(f"est. tok/s: training tokens per second, an estimate: dense BF16 peak x {c.efficiency:.0%} MFU / "
                   f"model FLOPs per token, or the PCIe transfer time where that is longer (docs/compare.md).")
    else:
        out.append("infer mode (transformers generate) has no speed estimate; rows are ranked by $/hour.")
    src = {"cheapest": "the cheapest dated on-demand quote from a named provider",
           "median": "median of each GPU's dated on-demand quotes", "min": "cheapest dated on-demand quote",
           "max": "dearest dated on-demand quote", "latest": "latest-dated on-demand quotes",
           "spot": "cheapest dated spot quote (can be taken back)",
           "hyperscaler": "cheapest dated AWS / Azure / Google / Oracle on-demand quote"}
    basis = src.get(c.price_source, f"{c.price_source}'s latest catalog quote")
    over = f"; --price {', '.join(f'{k}={v:g}' for k, v in c.price_overrides.items())}" if c.price_overrides else ""
    per = "$/M tok = $/GPU-h x GPUs / tok/s x 1e6 / 3600. " if c.rows[0].one_card.serve is None else ""
    out.append(f"{per}Prices: {basis}{over} (configs/gpus.toml, dated and sourced; `vramplan gpus --json`; "
               f"--price-source median|spot|hyperscaler|PROVIDER).")
    amd = sorted({n for r in c.rows if r.gpus_needed is not None for n in r.gpu.notes})
    out += [f"note: {n}" for n in amd]
    if any(r.needs_nvlink for r in c.rows):
        out.append("link-bound: the cards' traffic per step takes longer over PCIe than the step's work; "
                   "this layout needs NVLink to be sensible.")
    return out


def comparison_table(c: Comparison) -> str:
    top = c.rows[0].one_card
    m = c.model
    lines = [f"model     {m.id}  {m.params / 1e9:,.2f} B params",
             f"workload  {_workload_line(top)}", ""]
    rows = [_cells(r, c.max_gpus) for r in c.rows]
    heads = _headers(c)
    align = (("left", "center", "right", "left", "right", "right", "left", "right", "right", "right", "right", "right", "left")
             if heads is _SERVE_HEADERS else
             ("left", "center", "right", "left", "right", "right", "right", "right", "right", "left"))
    lines.append(tabulate(rows, headers=heads, tablefmt="simple", disable_numparse=True, colalign=align))
    lines += ["", "memory on one card: needed vs capacity (│)"]
    width = max(len(r.gpu.id) for r in c.rows)
    for r in c.rows:
        p = r.one_card
        lines.append(f"  {r.gpu.id:<{width}} {bar(p)} {p.total_bytes / GiB:7.1f} / "
                     f"{p.capacity_bytes / GiB:.1f} GiB")
    lines.append("")
    lines += notes(c)
    return _text("\n".join(lines))


def comparison_markdown(c: Comparison) -> str:
    rows = [_cells(r, c.max_gpus) for r in c.rows]
    head = f"**{c.model.id}**, {_workload_line(c.rows[0].one_card)}\n\n"
    table = tabulate(rows, headers=_headers(c), tablefmt="github", disable_numparse=True)
    return head + table + "\n\n" + "\n\n".join(notes(c))


_CSV = ["gpu", "fits", "gpus_needed", "parallelism", "needs_nvlink", "nvlink", "max_batch", "max_ctx",
        "price_per_hour", "price_basis", "cost_per_hour", "tokens_per_s", "usd_per_million_tokens",
        "cheapest", "one_card_total_bytes", "capacity_bytes", "price_stale", "tokens_per_s_per_sequence",
        "ttft_s", "usd_per_million_input_tokens", "usd_per_million_output_tokens", "meets_target"]


def comparison_csv(c: Comparison) -> str:
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(_CSV)
    for r in c.rows:
        out.writerow([r.gpu.id, r.fits, r.gpus_needed if r.gpus_needed is not None else "",
                      r.parallelism if r.gpus_needed is not None else "", r.needs_nvlink, r.gpu.nvlink,
                      r.plan.max_batch, r.plan.max_ctx, _num(r.price_per_hour),
                      r.price.basis if r.price else "", _num(r.cost_per_hour), _num(r.tokens_per_s),
                      _num(r.usd_per_million_tokens), r.cheapest, r.one_card.total_bytes,
                      r.one_card.capacity_bytes, r.price.stale if r.price else "",
                      _num(r.serve.per_sequence_tokens_per_s if r.serve else None),
                      _num(r.serve.ttft_s if r.serve else None), _num(r.usd_per_million_input),
                      _num(r.usd_per_million_output), r.meets_target])
    return buf.getvalue()


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.6g}"


# ---------------------------------------------------------------- sweep

def _sweep_head(s: Sweep) -> list[str]:
    t = s.target
    gpu = t.gpu.name if t.gpu else "custom"
    if t.count > 1:
        gpu += f" x {t.count}"
    w = s.workload
    kind = "micro-batch x seq" if w.train is not None else "batch x ctx"
    return [f"model     {s.model.id}  {s.model.params / 1e9:,.2f} B params",
            f"gpu       {gpu}; capacity {s.capacity_bytes / GiB:,.2f} GiB per GPU",
            f"workload  {w.mode} ({kind} below); weights {s.weight_dtype}, KV {s.kv_dtype}"]


def _sweep_rows(s: Sweep) -> list[list[str]]:
    rows = []
    for c, cells, mb in zip(s.ctxs, s.cells, s.max_batch):
        rows.append([fmt_tokens(c)] + [f"{'✓' if x.fits else '✗'} {x.total_bytes / GiB:.1f}" for x in cells]
                    + [f"{mb:,}"])
    return rows


def sweep_table(s: Sweep, markdown: bool = False) -> str:
    headers = ["ctx \\ batch"] + [str(b) for b in s.batches] + ["max batch"]
    table = tabulate(_sweep_rows(s), headers=headers, tablefmt="github" if markdown else "simple",
                     disable_numparse=True, colalign=("left",) + ("right",) * (len(headers) - 1))
    legend = (f"cells: GiB needed per GPU, ✓ fits / ✗ does not (capacity {s.capacity_bytes / GiB:.2f} GiB); "
              f"max batch: largest that fits at that ctx")
    if markdown:
        return "\n\n".join(["  \n".join(_sweep_head(s)), table, legend])
    return _text("\n".join(_sweep_head(s) + ["", table, "", legend]))


def sweep_csv(s: Sweep) -> str:
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(["ctx", "batch", "total_bytes", "capacity_bytes", "fits", "max_batch_at_ctx"])
    for c, cells, mb in zip(s.ctxs, s.cells, s.max_batch):
        for b, x in zip(s.batches, cells):
            out.writerow([c, b, x.total_bytes, s.capacity_bytes, x.fits, mb])
    return buf.getvalue()


def sweep_json(s: Sweep) -> dict:
    t = s.target
    gpu = gpu_json(t.gpu) if t.gpu else {"id": "custom", "name": "custom memory size"}
    gpu.update({"count": t.count, "memory_total_bytes": t.per_gpu_bytes})
    gpu.pop("prices", None)
    w = s.workload
    return {
        "vramplan_version": __version__, "model": model_json(s.model), "gpu": gpu,
        "workload": {"mode": w.mode, "dtype": s.weight_dtype, "dtype_requested": w.dtype,
                     "kv_dtype": s.kv_dtype, "kv_dtype_requested": w.kv_dtype},
        "capacity_bytes": s.capacity_bytes, "ctx": list(s.ctxs), "batch": list(s.batches),
        "cells": [{"ctx": c, "batch": b, "total_bytes": x.total_bytes, "fits": x.fits}
                  for c, cells in zip(s.ctxs, s.cells) for b, x in zip(s.batches, cells)],
        "max_batch": [{"ctx": c, "max_batch": mb} for c, mb in zip(s.ctxs, s.max_batch)],
    }
