"""Which $/GPU-hour to charge for a card: one of the catalog's dated quotes, or the user's.

The catalog keeps several quotes per GPU (provider, kind, date, source: configs/gpus.toml). The
default is the one a buyer can act on: the cheapest dated on-demand quote from a named provider
(`catalog.default_price`), shown with its provider and date. Undated quotes and market ranges
are never a default; a quote older than a year is flagged. When one provider and kind was
quoted on several dates, only the latest counts.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass

from vramplan import catalog
from vramplan.catalog import find_gpu
from vramplan.errors import BadInput
from vramplan.spec import GpuSpec, Price

SOURCES = ("cheapest", "median", "min", "max", "latest", "spot", "hyperscaler")
DEFAULT_SOURCE = "cheapest"
# Hyperscalers: the clouds whose list prices are the high anchor (provider names as the catalog
# writes them, matched on their first word).
HYPERSCALERS = ("AWS", "Azure", "Google", "GCP", "Oracle")


@dataclass(frozen=True)
class PriceChoice:
    usd_per_hour: float
    basis: str                       # "Spheron on-demand 2026-05-26", "median of 10 quotes", "--price"
    quotes: tuple[Price, ...] = ()   # the catalog quotes it came from (none for --price)
    stale: bool = False              # the quote is more than a year old (catalog.STALE_DAYS)

    @property
    def label(self) -> str:
        """The basis as printed: with "over a year old" when stale."""
        return self.basis + (" (over a year old)" if self.stale else "")


def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def quotes(gpu: GpuSpec) -> list[Price]:
    """Dated on-demand quotes, the latest per (provider, kind)."""
    return catalog.firm_quotes(gpu)


def _by_provider(gpu: GpuSpec, provider: str) -> Price | None:
    """The provider's latest quote (cheapest on that date), spot only if it has nothing else."""
    mine = [p for p in gpu.prices if _key(provider) in _key(p.provider) and p.kind != "range"]
    firm = [p for p in mine if p.kind != "spot"] or mine
    if not firm:
        return None
    newest = max(p.date for p in firm)
    return min((p for p in firm if p.date == newest), key=lambda p: p.usd_per_hour)


def _describe(p: Price) -> str:
    return f"{p.provider} {p.kind}" + (f" {p.date}" if p.date else " (undated)")


def _one(p: Price | None, prefix: str = "") -> PriceChoice | None:
    if p is None:
        return None
    return PriceChoice(p.usd_per_hour, prefix + _describe(p), (p,), catalog.is_stale(p))


def _cheapest(qs: list[Price]) -> Price | None:
    return min(qs, key=lambda p: (p.usd_per_hour, p.provider)) if qs else None


def choose(gpu: GpuSpec, source: str = DEFAULT_SOURCE, overrides: dict[str, float] | None = None) -> PriceChoice | None:
    """The price of one GPU-hour under `source` (cheapest | median | min | max | latest | spot |
    hyperscaler | a provider name), or None when the catalog has no such quote."""
    if overrides and gpu.id in overrides:
        return PriceChoice(overrides[gpu.id], "--price")
    if source == "cheapest":
        return _one(catalog.default_price(gpu))
    if source == "spot":
        return _one(_cheapest(catalog.firm_quotes(gpu, ("spot",))), "spot: ")
    if source == "hyperscaler":
        big = [p for p in quotes(gpu) if p.provider.split(" ")[0] in HYPERSCALERS]
        return _one(_cheapest(big), "hyperscaler: ")
    if source not in SOURCES:
        return _one(_by_provider(gpu, source))
    qs = quotes(gpu)
    if not qs:
        return None
    if source == "latest":
        newest = max(catalog.quote_date(p) for p in qs)
        qs = [p for p in qs if catalog.quote_date(p) == newest]
        if len(qs) == 1:
            return _one(qs[0])
        source = "median"
    if source in ("min", "max"):
        p = (min if source == "min" else max)(qs, key=lambda q: q.usd_per_hour)
        return _one(p, f"{source}: ")
    value = statistics.median(p.usd_per_hour for p in qs)
    n = len(qs)
    if n == 1:
        return _one(qs[0])
    return PriceChoice(round(value, 4), f"median of {n} quotes", tuple(qs), all(catalog.is_stale(p) for p in qs))


def check_source(source: str, gpus: tuple[GpuSpec, ...]) -> str:
    """Normalise --price-source; a provider no catalog quote names is an error listing them."""
    s = source.strip()
    if s.lower() in SOURCES:
        return s.lower()
    if not _key(s):
        raise BadInput(f"{{price_source}} {source!r} is empty; use {', '.join(SOURCES)} or a provider name.")
    providers = sorted({p.provider for g in gpus for p in g.prices})
    matches = [p for p in providers if _key(s) in _key(p)]
    if not matches:
        raise BadInput(f"{{price_source}} {source!r} matches no provider in the catalog. Use "
                       f"{', '.join(SOURCES)} or one of: {', '.join(providers)}.")
    if len(matches) == 1:
        return matches[0]
    bases = {m.split(" (")[0] for m in matches}          # "AWS (g6e)", "AWS (p5.48xlarge)" -> "AWS"
    return bases.pop() if len(bases) == 1 else s


def parse_overrides(items) -> dict[str, float]:
    """--price l40s=0.79 (repeatable, or comma-separated) -> {catalog id: USD per GPU-hour}."""
    if not items:
        return {}
    if isinstance(items, dict):
        items = [f"{k}={v}" for k, v in items.items()]
    elif isinstance(items, str):
        items = [items]
    out: dict[str, float] = {}
    for item in items:
        for part in str(item).split(","):
            if not part.strip():
                continue
            name, eq, value = part.partition("=")
            try:
                usd = float(value)
            except ValueError:
                usd = -1.0
            if not eq or not name.strip() or not 0 < usd < float("inf"):
                raise BadInput(f"{{prices}} {part.strip()!r} is not ID=USD_PER_HOUR, e.g. {{prices}} l40s=0.79.")
            out[find_gpu(name).id] = usd
    return out
