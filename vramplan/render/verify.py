"""A VerifyResult as a table for people (JSON is VerifyResult.to_json, documented in
docs/verify.md). Exact bytes beside each figure, so any cell can be checked against
torch.cuda.memory_stats() or nvidia-smi."""

from __future__ import annotations

from tabulate import tabulate

from vramplan.verify.result import VerifyResult, rel_error

GiB, MiB = 2**30, 2**20


def _b(n: int | None) -> str:
    return "" if n is None else f"{n:,}"


def _pct(e: float | None) -> str:
    return "" if e is None else f"{100 * e:+.1f}%"


def result_text(r: VerifyResult) -> str:
    p, w = r.plan, r.plan.workload
    lines = [f"verify    {p.model.id}: {w.mode} batch {w.batch} x ctx {w.ctx:,}, weights "
             f"{p.weight_dtype}, KV {p.kv_dtype}; --level {r.level} on {r.device}"]
    if r.gpu:
        g = r.gpu
        cuda_total = g.get("cuda_total_bytes")
        lines.append(f"gpu       {g['name']} ({g['uuid']}), driver {g['driver_version']}, CUDA "
                     f"{g['cuda_driver_version']}; NVML total {g['nvml_total_bytes'] / MiB:,.0f} MiB "
                     f"({g['memory_api']})" + (f", CUDA total {cuda_total:,} B" if cuda_total else ""))
    if r.context:
        c = r.context
        got = "unknown" if c["measured_bytes"] is None else f"{c['measured_bytes'] / MiB:,.0f} MiB"
        planned = "" if c["planned_bytes"] is None else f", planned {c['planned_bytes'] / MiB:,.0f} MiB"
        end = c.get("end_non_torch_bytes")
        grew = c.get("non_torch_growth_bytes")
        after = "" if end is None else (f"; outside torch at the end {end / MiB:,.0f} MiB"
                                        + ("" if grew is None else f" ({grew / MiB:+,.0f} MiB: "
                                           "modules loaded at the first kernels)"))
        lines.append(f"context   CUDA context {got} ({c['source']}){planned}{after}")
    lines.append("")
    trace = any(row.trace is not None for row in r.rows)
    run = r.level == "run"
    headers = ["component", "planned"] + (["trace"] if trace else []) + (
        ["measured"] if run else ["allocated", "reserved", "NVML"]) + ["error", "note"]
    table = []
    for row in r.rows:
        cells = [row.name, _b(row.planned)] + ([_b(row.trace)] if trace else [])
        cells += [_b(row.measured)] if run else [_b(row.measured), _b(row.reserved), _b(row.nvml)]
        table.append(cells + [_pct(row.error), row.note])
    lines.append(tabulate(table, headers=headers, tablefmt="simple", disable_numparse=True))
    lines.append("")
    pr, m = r.predicted, r.measured
    got = m.get("max_allocated_bytes")
    lines.append(f"peak allocated  predicted {_b(pr.get('peak_allocated_bytes'))}  measured "
                 + (f"{_b(got)}  ({_pct(rel_error(got, pr.get('peak_allocated_bytes')))})"
                    if got is not None else "(not reached)"))
    if pr.get("trace_peak_bytes") is not None and got is not None:
        same = m.get("max_allocated_bytes") == pr["trace_peak_bytes"]
        lines.append(f"trace peak      {_b(pr['trace_peak_bytes'])}"
                     + ("  = measured, to the byte" if same else
                        f"  ({_pct(rel_error(m.get('max_allocated_bytes'), pr['trace_peak_bytes']))} measured vs trace)"))
    if m.get("max_reserved_bytes") is not None:
        lines.append(f"peak reserved   {_b(m['max_reserved_bytes'])}")
    if m.get("nvml_peak_bytes") is not None:
        lines.append(f"NVML peak       {_b(m['nvml_peak_bytes'])} vs planned total {_b(pr.get('total_bytes'))} "
                     f"({_pct(rel_error(m['nvml_peak_bytes'], pr.get('total_bytes')))})")
    if r.oom:
        lines.append(f"OOM             {r.oom}; everything allocated was freed")
    for e in r.emulated:
        lines.append(f"emulated: {e}, not the library itself: not a measurement of it")
    for n in r.notes:
        lines.append(f"note: {n}")
    return "\n".join(lines)


# ------------------------------------------------------------------ vramplan calibrate

def _value(v: float | None, unit: str) -> str:
    if v is None:
        return ""
    if unit == "bytes":
        return f"{v / MiB:,.1f} MiB"
    if unit == "MiB":
        return f"{v:,.0f} MiB"
    return f"{v:.3f}"


def calibration_text(c) -> str:
    """vramplan.verify.calibrate.Calibration as three tables: cases, components, constants."""
    skipped = "".join(f"; {n} {why}" for why, n in c.skipped.items())
    lines = [f"calibrate {c.path}: {c.records} record{'s' if c.records != 1 else ''}{skipped}", ""]
    lines.append(tabulate([[x.gpu, x.case, x.status, _b(x.predicted), _b(x.measured), _pct(x.error)]
                           for x in c.cases],
                          headers=["gpu", "case", "status", "predicted peak", "measured peak", "error"],
                          tablefmt="simple", disable_numparse=True))
    lines.append("")
    if c.components:
        lines.append(tabulate([[x.gpu, x.name, str(x.records), _b(x.planned), _b(x.measured),
                                _pct(x.error), _pct(x.worst)] for x in c.components],
                              headers=["gpu", "component", "records", "planned (sum)",
                                       "measured (sum)", "error (median)", "worst"],
                              tablefmt="simple", disable_numparse=True))
        lines.append("")
    lines.append(tabulate([[x.name, x.scope, _value(x.current, x.unit), _value(x.measured, x.unit),
                            str(x.records), x.verdict, x.where] for x in c.constants],
                          headers=["constant", "for", "today", "records say", "records", "verdict", "in"],
                          tablefmt="simple", disable_numparse=True))
    moving = [x for x in c.constants if x.verdict == "would move"]
    lines.append("")
    lines.append(f"{len(moving)} constant{'s' if len(moving) != 1 else ''} the records would move"
                 + (": " + ", ".join(f"{x.name} ({x.scope})" for x in moving) if moving else "")
                 + ". A new value cites its records (GPU, driver, torch, count) in docs/methodology.md.")
    return "\n".join(lines)
