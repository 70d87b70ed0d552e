"""Recompute the speed validation table of docs/compare.md: every published point, the estimate of
vramplan.compare.speed and its error.

    python benchmarks/speed_validation.py            # markdown table + median / max error
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vramplan.compare import speed, validation  # noqa: E402


def _fmt(metric: str, x: float) -> str:
    return f"{x * 1e3:,.0f} ms" if metric == "ttft" else f"{x:,.0f} tok/s"


def main() -> int:
    results = validation.run()
    print("| point | GPU x TP | model, weights/KV | batch | in/out | metric | measured | estimate | error | engine | source |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        p = r.point
        print(f"| {p.id}{' (fit)' if p.fit else ''} | {p.gpu} x{p.tp} | {p.model.split('/')[-1]}, {p.dtype}/{p.kv_dtype} "
              f"| {p.batch} | {p.input_len}/{p.output_len} | {p.metric} | {_fmt(p.metric, p.measured)} "
              f"| {_fmt(p.metric, r.estimate)} | {r.error:+.1%} | {p.engine} | {p.source} |")
    errors = [abs(r.error) for r in results]
    inside = sum(e <= speed.ERROR_BAND for e in errors)
    print(f"\n{len(results)} points; median |error| {statistics.median(errors):.1%}; max {max(errors):.1%}; "
          f"{inside} within the ±{speed.ERROR_BAND:.0%} band")
    return 0


if __name__ == "__main__":
    sys.exit(main())
