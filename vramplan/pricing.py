"""Which of a GPU's quotes is its price: pure rules over the catalog's Price records.

Kept apart from `catalog` (which reads files) so that `suggestions` ranks its changes by the same
default price `compare` charges, without reaching for the data files. docs/compare.md, "Prices".
"""

from __future__ import annotations

import datetime

from vramplan.spec import GpuSpec, Price

# Kinds of quote one can rent now and keep: RunPod's "secure" and "community" clouds are
# on-demand tiers. Spot can be taken back, reserved needs a term, a "range" is no one's offer.
ON_DEMAND_KINDS = ("on-demand", "secure", "community")


def quote_date(p: Price) -> datetime.date | None:
    """The quote's date; "YYYY-MM" means the first of that month; None when undated."""
    text = p.date.strip()
    for fmt in ("%Y-%m-%d", "%Y-%m"):
        try:
            return datetime.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    return None


def firm_quotes(gpu: GpuSpec, kinds: tuple[str, ...] = ON_DEMAND_KINDS) -> list[Price]:
    """Dated quotes of these kinds, the latest per (provider, kind): a provider's older price was
    replaced by its newer one."""
    latest: dict[tuple[str, str], Price] = {}
    for p in gpu.prices:
        d = quote_date(p)
        if p.kind not in kinds or d is None:
            continue
        k = (p.provider, p.kind)
        if k not in latest or d >= quote_date(latest[k]):
            latest[k] = p
    return list(latest.values())


def default_price(gpu: GpuSpec) -> Price | None:
    """The price `vramplan compare` charges by default: the cheapest dated on-demand quote from a
    named provider (the latest of each provider's), or None when the catalog has none. Ties go to
    the newer quote."""
    quotes = firm_quotes(gpu)
    if not quotes:
        return None
    return min(quotes, key=lambda p: (p.usd_per_hour, -quote_date(p).toordinal(), p.provider))
