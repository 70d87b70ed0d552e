"""Recompute the speed validation table of docs/compare.md: every published point, the estimate of
vramplan.compare.speed and its error.

    python benchmarks/speed_validation.py            # markdown table + median / max error
    python benchmarks/speed_validation.py --fit      # refit the constants on the "(fit)" points

The fit is a coordinate search (each constant scaled by 0.6 ... 1.6 in turn, four sweeps) that
minimises the sum of squared log errors of the points marked fit; docs/compare.md rounds its
result.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import fields, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vramplan.compare import speed, validation  # noqa: E402


def _fmt(metric: str, x: float) -> str:
    return f"{x * 1e3:,.0f} ms" if metric == "ttft" else f"{x:,.0f} tok/s"


def fit(start: speed.Constants = speed.DEFAULT, sweeps: int = 4) -> speed.Constants:
    points = [p for p in validation.POINTS if p.fit]

    def loss(c: speed.Constants) -> float:
        return sum(math.log(validation.predict(p, c) / p.measured) ** 2 for p in points)

    best, c = loss(start), start
    for _ in range(sweeps):
        for f in fields(c):
            for scale in (0.6, 0.75, 0.85, 0.93, 1.07, 1.15, 1.3, 1.6):
                value = getattr(c, f.name) * scale
                if f.name.endswith("eff") and value > 1:
                    continue
                trial = replace(c, **{f.name: value})
                if (l := loss(trial)) < best:
                    best, c = l, trial
    print(f"fitted on {len(points)} points, loss {best:.4f}: {c}")
    return c


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", action="store_true", help="refit the constants first (about a minute)")
    a = ap.parse_args()
    results = validation.run(fit() if a.fit else speed.DEFAULT)
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
