"""Analytic vs trace for every bundled family at real sizes: the report behind docs/trace.md.

    python benchmarks/trace_agreement.py              # every case (~15-25 min on 2 cores)
    python benchmarks/trace_agreement.py llama qwen3  # some families (keys of agreement.FAMILIES)
    python benchmarks/trace_agreement.py --json out.json
    python benchmarks/trace_agreement.py --markdown      # + the family x mode table of docs/trace.md

Per case: both totals, (analytic - trace) / trace, weights and KV cache (exact targets), the
component that differs most, where each tier puts the peak. Traces are cached on disk, so a
second run is quick; pass --no-cache to re-trace.
"""

from __future__ import annotations

import argparse
import json
import sys

from vramplan.trace import agreement
from vramplan.errors import VramplanError

GiB = 2**30


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("families", nargs="*", help="keys of agreement.FAMILIES (default: all)")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--no-cache", action="store_true")
    ap.add_argument("--markdown", action="store_true", help="also print the docs/trace.md table")
    args = ap.parse_args()
    models = [agreement.FAMILIES[f] for f in args.families] or list(agreement.FAMILIES.values())
    rows, out = [], []
    print(f"{'case':62s} {'analytic':>9s} {'trace':>9s} {'diff':>7s}  weights  kv   largest gap")
    for model in models:
        for case in agreement.cases(model):
            try:
                r = agreement.compare(case, no_cache=args.no_cache)
            except VramplanError as e:
                print(f"{case.label:62s} {'-':>9s} {'-':>9s} {'-':>7s}  refused: {e}")
                out.append({"case": case.label, "refused": str(e)})
                continue
            rows.append(r)
            gaps = sorted(((a - t, k) for k, (a, t) in r.components.items()), key=lambda x: -abs(x[0]))
            gap = f"{gaps[0][1]} {gaps[0][0] / GiB:+.2f} GiB" if gaps and gaps[0][0] else ""
            w = "exact" if r.weights[0] == r.weights[1] else f"{(r.weights[0] - r.weights[1]) / 2**20:+.2f}M"
            kv = "exact" if r.kv_cache[0] == r.kv_cache[1] else f"{(r.kv_cache[0] - r.kv_cache[1]) / GiB:+.3f}G"
            flag = "" if r.within else "  OUT"
            print(f"{case.label:62s} {r.analytic_total / GiB:9.2f} {r.trace_total / GiB:9.2f} "
                  f"{r.diff * 100:+6.1f}%  {w:7s} {kv:6s} {gap}{flag}  [{r.seconds:.0f}s]", flush=True)
            out.append({"case": case.label, "analytic": r.analytic_total, "trace": r.trace_total,
                        "diff": round(r.diff, 4), "within": r.within, "weights": r.weights,
                        "kv_cache": r.kv_cache, "components": r.components,
                        "analytic_phase": r.analytic_phase, "trace_where": r.trace_where,
                        "seconds": r.seconds, "notes": r.notes})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    if args.markdown:
        print(markdown(out))
    bad = [r for r in rows if not r.within]
    print(f"\n{len(rows) - len(bad)} within tolerance, {len(bad)} outside "
          f"(serve/infer 3 %, training 8 %).")
    return 0


COLUMNS = ("serve", "infer", "full", "full+ck", "lora", "lora+ck", "qlora", "qlora+ck", "lora all-linear")


def _column(label: str) -> str:
    mode = label.split()[1]
    if "all-linear" in label:
        return "lora all-linear"
    return mode + ("+ck" if "grad_ckpt=True" in label else "")


def markdown(out: list[dict]) -> str:
    """(analytic - trace) / trace in % per family and mode; bold outside tolerance."""
    table: dict[str, dict[str, str]] = {}
    for row in out:
        model = row["case"].split()[0]
        if "refused" in row:
            cell = "refused"
        else:
            cell = f"{row['diff'] * 100:+.1f}"
            cell = cell if row["within"] else f"**{cell}**"
        table.setdefault(model, {})[_column(row["case"])] = cell
    lines = ["| model | " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
    for model, cells in table.items():
        lines.append(f"| {model} | " + " | ".join(cells.get(c, "") for c in COLUMNS) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
