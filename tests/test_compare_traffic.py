"""compare's serving answer (issue 18): per card the fit, the cards needed, tokens/s with its
error band, $/M input and output tokens at the default dated price, and latency targets."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from vramplan import api
from vramplan.cli import app
from vramplan.compare import compare, speed
from tests.bad_input.contract import assert_api_refuses, assert_cli_refuses

L8 = "meta-llama/Llama-3.1-8B"
ENV = {"HF_HUB_OFFLINE": "1", "COLUMNS": "200", "VRAMPLAN_TODAY": "2026-12-07"}


def by_id(c):
    return {r.gpu.id: r for r in c.rows}


def test_done_command_shows_fit_cards_speed_band_and_split_prices():
    r = CliRunner().invoke(app, ["compare", L8, "--ctx", "8k", "--batch", "32", "--gpus", "h100,l40s,mi300x"],
                           env=ENV)
    assert r.exit_code == 0, r.stderr
    out = r.stdout
    for text in ("tok/s total (estimate)", "(±30 %)", "$/M in", "$/M out", "TTFT",
                 "RunPod secure 2026-05-22", "Spheron on-demand 2026-05-26", "TensorWave on-demand 2026-05-18",
                 "TP2 over PCIe", "FlashInfer"):
        assert text in out, text


def test_cost_split_by_hand(monkeypatch):
    monkeypatch.setenv("VRAMPLAN_TODAY", "2026-12-07")
    row = by_id(compare(L8, "h100", ctx="8k", batch=32))["h100"]
    e = row.serve
    assert (e.concurrency, e.input_len, e.output_len) == (32, 4096, 512)     # defaults: ctx/2 in, 512 out
    assert row.price.usd_per_hour == 2.69                                  # RunPod secure, dated
    per_s = 2.69 / 3600
    assert row.usd_per_million_input == pytest.approx(per_s * e.batch_prefill.seconds / (32 * 4096) * 1e6)
    assert row.usd_per_million_output == pytest.approx(per_s * 512 * e.decode.seconds / (32 * 512) * 1e6)
    # all-in: the seeds' formula on output tokens over whole cycles; the split adds up to it
    total = row.usd_per_million_tokens
    assert total == pytest.approx(2.69 / e.output_tokens_per_s * 1e6 / 3600)
    assert total * 512 == pytest.approx(row.usd_per_million_input * 4096 + row.usd_per_million_output * 512)


def test_traffic_flags_and_json():
    r = CliRunner().invoke(app, ["compare", L8, "--gpus", "l40s", "--ctx", "4k", "--input-len", "1000",
                                 "--output-len", "200", "--concurrency", "8", "--json"], env=ENV)
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    m = d["throughput_model"]
    assert (m["input_len"], m["output_len"], m["concurrency"], m["error_band"]) == (1000, 200, 8, speed.ERROR_BAND)
    row = d["rows"][0]
    assert d["workload"]["batch"] == 8
    s = row["serve_estimate"]
    assert s["estimate"] is True and s["ttft_s"] > 0 and s["tokens_per_s_per_sequence"] > 0
    assert row["usd_per_million_input_tokens"] > 0 and row["usd_per_million_output_tokens"] > 0
    assert row["price"]["basis"] == "Spheron on-demand 2026-05-26" and row["price"]["stale"] is False


def test_latency_targets_add_cards_or_mark_the_miss():
    # 60 tok/s per sequence at batch 32: one L40S cannot hold it (TP2 over PCIe reaches ~40),
    # four can; the H100 alone reaches ~75
    rows = by_id(compare(L8, "l40s,h100", ctx="8k", batch=32, min_tokens_per_s=60))
    assert rows["h100"].gpus_needed == 1 and rows["h100"].meets_target
    assert rows["l40s"].gpus_needed == 4 and rows["l40s"].serve.per_sequence_tokens_per_s >= 60
    # 50 ms to first token for a 4,096-token prompt: TP4 on H100 does it; no L40S count that fits does
    rows = by_id(compare(L8, "l40s,h100", ctx="8k", batch=32, max_ttft="50ms"))
    assert rows["h100"].gpus_needed == 4 and rows["h100"].serve.ttft_s <= 0.05 and rows["h100"].cheapest
    assert not rows["l40s"].meets_target and not rows["l40s"].cheapest


def test_refusals():
    assert_cli_refuses(["compare", L8, "--ctx", "8k", "--input-len", "9000"], 2, "--input-len")
    assert_cli_refuses(["compare", L8, "--max-ttft", "fast"], 2, "--max-ttft")
    assert_cli_refuses(["compare", L8, "--min-tokens-per-s", "-3"], 2, "--min-tokens-per-s")
    assert_cli_refuses(["compare", L8, "--batch", "8", "--concurrency", "16"], 2, "--concurrency")
    assert_cli_refuses(["compare", L8, "--mode", "lora", "--input-len", "100"], 2, "serving")
    assert_api_refuses(api.compare, L8, "l40s", output_len="0", needle="output_len")
