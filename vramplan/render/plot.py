"""Charts for `compare --plot` and `sweep --plot`. matplotlib is the optional `plot` extra and is
imported inside the functions that draw: `vramplan compare` without --plot never loads it.
Figures are drawn on a bare `Figure` (no pyplot), so no GUI backend or global state is touched."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from vramplan.errors import BadInput, MissingExtra
from vramplan.units import GiB
from vramplan.compare.result import Comparison, Sweep

SUFFIXES = (".png", ".svg", ".pdf")
FIT, NO_FIT, BEST, OTHER, MUTED = "#4c9a5f", "#c0504d", "#2e75b6", "#9dc3e6", "#7f7f7f"


def check_target(path: str) -> None:
    """Fail before any work: a file type matplotlib writes, a directory that exists, the extra."""
    p = Path(path)
    if p.suffix.lower() not in SUFFIXES:
        raise BadInput(f"{{plot}} {path!r}: give a file ending in {', '.join(SUFFIXES)}.")
    if not p.parent.is_dir():
        raise BadInput(f"{{plot}} {path!r}: the directory {str(p.parent)!r} does not exist.")
    if importlib.util.find_spec("matplotlib") is None:
        raise MissingExtra("plot", "matplotlib")


def _figure(width: float, height: float):
    check_target("x.png")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _short(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else f"{n:,}"


def comparison_chart(c: Comparison, path: str) -> None:
    """Left: memory one card needs against its capacity. Right: cost per million tokens of the
    cheapest configuration that fits on each GPU (or $/hour where no speed is estimated)."""
    rows = list(c.rows)
    w, top = c.workload, rows[0].one_card
    fig = _figure(11, 1.6 + 0.36 * len(rows))
    mem, cost = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [1, 1.25]})
    y = range(len(rows))
    labels = [r.gpu.id for r in rows]

    cap = 2.0
    ratios = [r.one_card.total_bytes / r.one_card.capacity_bytes for r in rows]
    mem.barh(y, [min(x, cap) for x in ratios], color=[FIT if r.fits else NO_FIT for r in rows])
    mem.axvline(1.0, color="black", lw=1)
    for i, (r, x) in enumerate(zip(rows, ratios)):
        p = r.one_card
        text = f"{p.total_bytes / GiB:.1f} / {p.capacity_bytes / GiB:.1f} GiB" + (f"  ({x:.1f}×)" if x > cap else "")
        inside = x >= 0.5          # room for the label inside the bar
        mem.text(0.03 if inside else x + 0.03, i, text, va="center", fontsize=8,
                 color="white" if inside else "black")
    mem.set_xlim(0, cap + 0.05)
    mem.set_xticks([0, 0.5, 1, 1.5, 2], ["0", "50%", "100%", "150%", "≥200%"])
    mem.set_xlabel("capacity = 100% (serve: CUDA total × gpu_memory_utilization)", fontsize=8)
    mem.set_yticks(list(y), labels)
    mem.invert_yaxis()
    mem.set_title("memory on one card: needed / capacity", fontsize=10)

    per_m = w.mode != "infer"
    values = [r.usd_per_million_tokens if per_m else r.cost_per_hour for r in rows]
    known = [v for v in values if v is not None]
    cost.barh(y, [v or 0 for v in values], color=[BEST if r.cheapest else OTHER for r in rows])
    span = max(known) if known else 1.0
    for i, (r, v) in enumerate(zip(rows, values)):
        if r.gpus_needed is None:
            text, colour = "does not fit", NO_FIT
        elif v is None:
            text, colour = f"{r.gpus_needed}× · no {'price' if r.price is None else 'speed estimate'}", MUTED
        else:
            layout = "1 GPU" if r.gpus_needed == 1 else (
                f"{r.gpus_needed}× {'TP' if r.parallelism == 'tp' else r.parallelism.upper()}"
                + ("" if r.gpu.nvlink else " over PCIe"))
            speed = f" · {r.tokens_per_s:,.0f} tok/s" if r.tokens_per_s else ""
            text, colour = rf"\${v:,.2f}  ({layout}{speed} · \${r.cost_per_hour:,.2f}/h)", "black"
        cost.text((v or 0) + span * 0.01, i, text, va="center", fontsize=8, color=colour,
                  fontweight="bold" if r.cheapest else "normal")
    cost.set_xlim(0, span * 1.9)
    unit = "output" if top.serve is not None else "training"
    cost.set_title(rf"\$ per million {unit} tokens (estimated speed)" if per_m else r"\$ per hour", fontsize=10)
    cost.tick_params(axis="y", length=0)

    what = (f"{w.mode}, micro-batch {w.batch} × seq {_short(w.ctx)}" if w.train is not None
            else f"{w.mode}, batch {w.batch} × ctx {_short(w.ctx)}")
    fig.suptitle(f"{c.model.id}: {what}, weights {top.weight_dtype}"
                 + ("" if w.train is not None else f", KV {top.kv_dtype}"), fontsize=11)
    cost.set_xlabel(f"prices: {c.price_source} of the catalog's dated quotes; tok/s is a roofline estimate "
                    "(docs/compare.md)", fontsize=8)
    fig.savefig(path)


def sweep_heatmap(s: Sweep, path: str) -> None:
    """Memory needed over capacity for every (ctx, batch): green fits, red does not, ✓ marks the
    cells that fit and the black line their edge; the largest batch per context is on the right."""
    from matplotlib.colors import LinearSegmentedColormap, TwoSlopeNorm

    n_ctx, n_batch = len(s.ctxs), len(s.batches)
    ratio = [[min(x.total_bytes / s.capacity_bytes, 2.0) for x in row] for row in s.cells]
    fig = _figure(max(8.0, 2.6 + 0.85 * n_batch), max(3.5, 1.5 + 0.5 * n_ctx))
    ax = fig.subplots()
    cmap = LinearSegmentedColormap.from_list("fit", ["#1a7f37", "#d8f0c8", "#fbe3d6", "#b42318"])
    im = ax.imshow(ratio, origin="lower", aspect="auto", cmap=cmap, norm=TwoSlopeNorm(1.0, 0.0, 2.0))
    for i, row in enumerate(s.cells):
        for j, x in enumerate(row):
            dark = ratio[i][j] < 0.35 or ratio[i][j] > 1.7
            ax.text(j, i, f"{'✓ ' if x.fits else ''}{x.total_bytes / GiB:.0f}", ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")
    for i in range(n_ctx):           # the fit / no-fit boundary
        for j in range(n_batch):
            here = s.cells[i][j].fits
            if j + 1 < n_batch and here != s.cells[i][j + 1].fits:
                ax.plot([j + 0.5, j + 0.5], [i - 0.5, i + 0.5], color="black", lw=2)
            if i + 1 < n_ctx and here != s.cells[i + 1][j].fits:
                ax.plot([j - 0.5, j + 0.5], [i + 0.5, i + 0.5], color="black", lw=2)
    ax.set_xticks(range(n_batch), [str(b) for b in s.batches])
    ax.set_yticks(range(n_ctx), [_short(c) for c in s.ctxs])
    w = s.workload
    ax.set_xlabel("micro-batch" if w.train is not None else "batch (concurrent sequences)")
    ax.set_ylabel("sequence length" if w.train is not None else "context (tokens per sequence)")
    right = ax.secondary_yaxis("right")
    right.set_yticks(range(n_ctx), [f"max {mb:,}" for mb in s.max_batch])
    right.set_ylabel("largest batch that fits")
    bar = fig.colorbar(im, ax=ax, shrink=0.8, pad=0.12, ticks=[0, 0.5, 1, 1.5, 2])
    bar.ax.set_yticklabels(["0", "50%", "capacity", "150%", "≥200%"])
    bar.set_label("needed / capacity")
    t = s.target
    gpu = (t.gpu.name if t.gpu else "custom card") + (f" × {t.count}" if t.count > 1 else "")
    kv = "" if w.train is not None else f", KV {s.kv_dtype}"
    ax.set_title(f"Where {s.model.id} fits on {gpu}\n{w.mode}, weights {s.weight_dtype}{kv}; "
                 f"capacity {s.capacity_bytes / GiB:.1f} GiB per GPU; cells: GiB needed, ✓ fits", fontsize=10)
    fig.savefig(path)
