"""The memory bar under `vramplan fit`: each component's share of one GPU, and where its
capacity ends. Unicode blocks when the terminal takes them, else letters."""

from __future__ import annotations

import sys

from vramplan.spec import Plan

_STATE = ("kv_cache", "trainable", "gradients", "optimizer", "optimizer_paged", "master_weights")
_TRANSIENT = ("activations", "logits_and_loss", "autocast_copies", "optimizer_step", "zero3_gather",
              "ddp_buckets")
_BAR_GLYPHS = {"weights": "█", **{k: "▓" for k in _STATE}, **{k: "▒" for k in _TRANSIENT}}
_BAR_OTHER, _BAR_FREE = "░", "·"
_ASCII = {"█": "W", "▓": "K", "▒": "A", "░": "o", "·": ".", "│": "|", "✓": "OK", "✗": "NO"}


def _unicode_ok() -> bool:
    enc = (getattr(sys.stdout, "encoding", "") or "").lower()
    return "utf" in enc


def glyph(s: str) -> str:
    """`s` as the terminal can print it: its block and check-mark characters spelled in ASCII
    where stdout is not UTF-8."""
    if _unicode_ok():
        return s
    return "".join(_ASCII.get(c, c) for c in s)


def memory_bar(p: Plan, width: int = 60) -> str:
    """One line: each component's share of the larger of need and capacity; '│' = capacity."""
    scale = max(p.total_bytes, p.capacity_bytes) / width
    cells = []
    for name, b in p.components.items():
        cells += [_BAR_GLYPHS.get(name, _BAR_OTHER)] * round(b / scale)
    cells = cells[:width]
    cells += [_BAR_FREE] * (width - len(cells))
    cap = min(round(p.capacity_bytes / scale), width)
    line = "".join(cells[:cap]) + "│" + "".join(cells[cap:])
    state = "training state" if p.workload.train is not None else "KV cache"
    legend = f"█ weights ▓ {state} ▒ activations ░ overhead · free │ capacity"
    return glyph(f"[{line}]\n {legend}")
