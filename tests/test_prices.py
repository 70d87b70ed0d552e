"""Which price compare charges by default: the cheapest dated on-demand quote of a named provider."""

from __future__ import annotations

import datetime

import pytest

from vramplan import catalog
from vramplan.compare import prices
from vramplan.spec import Price


def test_default_is_cheapest_dated_on_demand():
    h100 = catalog.find_gpu("h100")
    p = catalog.default_price(h100)
    # RunPod secure cloud $2.69 (2026-05-22) beats Lambda 2.99, RunPod 3.49, Spheron 3.84 ...;
    # the undated "market range (low)" $1.50 and Spheron's spot $1.69 are never a default
    assert (p.usd_per_hour, p.provider, p.kind, p.date) == (2.69, "RunPod", "secure", "2026-05-22")
    c = prices.choose(h100)
    assert c.basis == "RunPod secure 2026-05-22" and not c.stale
    # a provider's older quote is replaced by its newer one: Spheron's 1.33 (March) by 3.84 (May)
    assert all(q.usd_per_hour != 1.33 for q in catalog.firm_quotes(h100))


def test_undated_and_range_quotes_never_default():
    gpu = catalog.find_gpu("rtx-3090")
    assert catalog.default_price(gpu) is None
    fake = Price(usd_per_hour=0.01, provider="market range (low)", kind="range", date="")
    assert catalog.firm_quotes(type(gpu)(**{**gpu.__dict__, "prices": (fake,)})) == []


def test_stale_flag(monkeypatch):
    old = Price(usd_per_hour=1.0, provider="X", date="2025-12-01")
    monkeypatch.setenv(catalog.TODAY_ENV, "2026-12-07")
    assert catalog.today() == datetime.date(2026, 12, 7)
    assert catalog.is_stale(old)                                        # 371 days
    assert not catalog.is_stale(Price(usd_per_hour=1.0, provider="X", date="2026-06"))
    assert prices.PriceChoice(1.0, "X on-demand 2025-12-01", (old,), True).label.endswith("(over a year old)")


def test_bad_today(monkeypatch):
    monkeypatch.setenv(catalog.TODAY_ENV, "yesterday")
    with pytest.raises(Exception, match="YYYY-MM-DD"):
        catalog.today()


def test_other_columns():
    mi300x = catalog.find_gpu("mi300x")
    assert prices.choose(mi300x).usd_per_hour == 1.50                    # TensorWave
    assert prices.choose(mi300x, "spot").usd_per_hour == 1.71             # Crusoe spot
    assert prices.choose(mi300x, "hyperscaler").usd_per_hour == 6.00      # Azure / Oracle
    assert prices.choose(mi300x, "vultr").usd_per_hour == 1.85
    assert prices.check_source("cheapest", catalog.load_gpus()) == "cheapest"
