"""`vramplan compare` and `vramplan sweep`: hand-checked fits, GPU counts, the calibrated decode
roofline against the seeds' measured figures, prices, output formats and exit codes."""

import csv
import io
import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from vramplan import api, catalog
from vramplan.cli import app
from vramplan.compare import compare, sweep
from vramplan.compare import prices, speed
from vramplan.render import compare as render
from vramplan.compare.grid import parse_range
from vramplan import planner as core_plan
from vramplan.errors import BadInput, MissingExtra, UnknownGpu
from vramplan.spec import GpuTarget

runner = CliRunner()
GiB = 2**30
L8, L70 = "meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-70B"


def run(args):
    r = runner.invoke(app, args)
    return r.exit_code, r.stdout, r.stderr


def by_id(c):
    return {r.gpu.id: r for r in c.rows}


# ------------------------------------------------------------------ how many GPUs

def test_llama_70b_bf16_needs_at_least_2_h100_or_4_l40s():
    # Weights: 70,553,706,496 params x 2 B = 141.1 GB = 131.4 GiB (TP splits them evenly).
    # vLLM's budget per card is CUDA total x 0.9: H100 79.18 GiB -> 71.26 GiB, L40S 44.52 -> 40.07.
    # H100: 1 card < 131.4, so at least 2. L40S: 2 x 40.07 = 80.1 < 131.4, and TP3 cannot split
    # 64 heads / 8 KV heads, so at least 4; at TP4 each rank holds 32.9 GiB + 0.31 GiB KV +
    # 1.18 GiB profile peak + 0.35 GiB non-torch = 34.7 GiB <= 40.07: fits.
    rows = by_id(compare(L70, "h100,l40s,a100-80gb"))
    assert not rows["h100"].fits and not rows["l40s"].fits
    assert rows["l40s"].gpus_needed == 4 and rows["l40s"].parallelism == "tp"
    assert rows["h100"].gpus_needed >= 2
    # With vLLM's defaults an H100 (>= 70 GiB, not an A100) profiles 1024 sequences. Up to v0.16
    # the sorting sampler peaks at 4.71 GiB, so TP2 needs 65.7 + 0.63 + 4.71 + 0.35 = 71.39 GiB >
    # 71.26: 4 cards; with --max-num-seqs 256 the peak is 1.18 GiB and 2 H100 fit (67.9 GiB). From
    # v0.17 the sampler takes 14 B per logit (1.84 GiB with buffers), and 2 H100 fit by default
    # even with v0.21's 0.72 GiB CUDA-graph estimate inside the budget.
    assert rows["h100"].gpus_needed == 2
    assert by_id(compare(L70, "h100", vllm_version="0.16"))["h100"].gpus_needed == 4
    assert by_id(compare(L70, "h100", vllm_version="0.16", max_num_seqs=256))["h100"].gpus_needed == 2
    # The A100-80GB keeps vLLM's small defaults (its name contains "a100"): TP2 fits.
    assert rows["a100-80gb"].gpus_needed == 2
    for r in rows.values():
        assert r.plan.fits and r.plan.target.count == r.gpus_needed
    # TP moves 2 all-reduces x 80 layers x 8,192 x 2 B x 1.5 = 3.9 MB per step at batch 1: 0.12 ms
    # over PCIe Gen4 (32 GB/s), against a 47 ms step: no NVLink needed, 15% off for PCIe latency.
    l40s = rows["l40s"]
    # (plus 160 all-reduces x 20 us of latency, speed.LINK_LATENCY_S)
    assert not l40s.needs_nvlink
    assert l40s.speed.comm_s == pytest.approx(2 * 80 * 8192 * 2 * 1.5 / 32e9 + 160 * 20e-6)
    # At batch 384 on 8 L40S the all-reduces move 384 x 2 x 80 x 8,192 x 2 B x 7/4 = 1.76 GB per
    # step, 55 ms over PCIe (+ 3.2 ms latency), added to the step: about as long as the step's
    # own compute-bound work (384 x 141 GFLOP / 8 at 30% of 362 TFLOPS = 62 ms), not longer.
    big = by_id(compare(L70, "l40s", batch=384, ctx="1k"))["l40s"]
    comm = 384 * 2 * 80 * 8192 * 2 * 7 / 4 / 32e9 + 160 * 20e-6
    assert big.gpus_needed == 8 and big.speed.bound == "compute"
    assert big.speed.comm_s == pytest.approx(comm)
    assert big.needs_nvlink == (comm > big.speed.step_s - comm)
    assert 0.8 < comm / (big.speed.step_s - comm) < 1.0


def test_llama_8b_32k_x8_on_one_l40s_needs_fp8_kv():
    # KV: 32 layers x 2 x 8 heads x 128 x 2 B = 131,072 B/token; 8 x 32,768 tokens = 32 GiB.
    # 14.96 GiB weights + 32 GiB > 40.07 GiB; at fp8 the KV halves to 16 GiB: 35.5 GiB fits.
    bf16 = by_id(compare(L8, "l40s", ctx="32k", batch=8))["l40s"]
    fp8 = by_id(compare(L8, "l40s", ctx="32k", batch=8, kv_dtype="fp8"))["l40s"]
    assert not bf16.fits and bf16.gpus_needed == 2
    assert fp8.fits and fp8.gpus_needed == 1 and fp8.parallelism == "none" and not fp8.needs_nvlink
    assert bf16.one_card.components["kv_cache"] == 32 * GiB
    assert fp8.one_card.components["kv_cache"] == 16 * GiB
    # the row is the same plan `vramplan fit` makes
    fit = api.plan(L8, "l40s", ctx="32k", batch=8, kv_dtype="fp8")
    assert (fp8.plan.total_bytes, fp8.plan.max_batch, fp8.plan.max_ctx) == (fit.total_bytes, fit.max_batch, fit.max_ctx)


def test_training_uses_zero3_and_infer_one_card():
    rows = by_id(compare(L8, "l40s,h100", mode="full"))
    for r in rows.values():
        assert not r.fits and r.gpus_needed > 1 and r.parallelism == "zero3"
        assert r.plan.workload.train.zero == 3 and r.plan.workload.train.world == r.gpus_needed
    # 8 L40S: each step gathers the 16.06 GB of weights twice and reduce-scatters 16.06 GB of
    # gradients, 7/8 of it over PCIe Gen4 at 32 GB/s: 1.32 s, hidden by the 1.46 s of compute
    # (4,096 tokens x 51.47 GFLOP / (362 TFLOPS x 0.40)).
    l40s = rows["l40s"]
    assert l40s.gpus_needed == 8 and not l40s.needs_nvlink
    assert l40s.speed.comm_s == pytest.approx(3 * 16_060_522_496 * 7 / 8 / 32e9)
    # LoRA of the 70B on 1k-token micro-batches: far less compute per step, the same gathers of
    # 141 GB of weights: over PCIe the link takes longer than the work, so NVLink is needed.
    lora = by_id(compare(L70, "l40s,h100", mode="lora", ctx="1k"))
    assert lora["l40s"].needs_nvlink and lora["l40s"].speed.bound == "pcie"
    assert lora["h100"].needs_nvlink and lora["h100"].speed.bound == "compute"    # it has NVLink
    infer = by_id(compare(L8, "l40s,h100", mode="infer", ctx="32k", batch=8))
    assert infer["l40s"].gpus_needed is None and infer["h100"].gpus_needed == 1
    assert infer["h100"].tokens_per_s is None and infer["h100"].cheapest


def test_layout_flags_are_refused():
    with pytest.raises(BadInput):
        compare(L8, "l40s", tp=2)
    with pytest.raises(BadInput):
        compare(L8, "l40s:2")
    with pytest.raises(UnknownGpu):
        compare(L8, "l40s,nope")


# ------------------------------------------------------------------ speed and cost

def _decode(gpu_id, batch, context=576, **kw):
    """Aggregate decode tok/s of Llama-3.1-8B FP16 on one card (the seeds' benchmark: 512-token
    prompts, half of 128 outputs generated on average)."""
    g = catalog.find_gpu(gpu_id)
    s = core_plan.setup(api.load_model(L8), GpuTarget(g), api.make_workload("serve", batch, 4096, "fp16"))
    return batch / speed.decode_step(s, g, batch, context, speed.Constants(**kw)).seconds


@pytest.mark.parametrize("gpu_id,batch,measured", [
    ("l40s", 1, 46), ("l40s", 8, 336),                     # seeds/000 benchmark table
    ("a100-80gb", 1, 46 * 1.9), ("a100-80gb", 8, 648),     # "~1.9x" and "around 648 tok/s"
])
def test_roofline_reproduces_the_seeds_within_15_percent(gpu_id, batch, measured):
    assert abs(_decode(gpu_id, batch) / measured - 1) < 0.15


def test_roofline_a100_about_1_9x_l40s():
    for batch in (1, 8):
        ratio = _decode("a100-80gb", batch) / _decode("l40s", batch)
        assert abs(ratio / 1.9 - 1) < 0.15


def test_efficiency_scales_the_bandwidth_bound_part_only():
    # 15,009,849,344 B of streamed weights + 576 x 131,072 B of KV at 864 GB/s
    nbytes = 15_009_849_344 + 576 * 131_072
    assert 1 / _decode("l40s", 1, mem_eff=1.0, step_overhead_s=0.0) == pytest.approx(nbytes / 864e9)
    assert 1 / _decode("l40s", 1, mem_eff=0.5) == pytest.approx(speed.STEP_OVERHEAD_S + 2 * nbytes / 864e9)


def test_dollars_per_million_tokens_is_the_seeds_formula():
    # seeds/000: "$0.72/hr and 336 tok/s ... approximately 1.68 million tokens per dollar"
    c = compare(L8, "l40s", batch=8, ctx=1152, prices="l40s=0.72")   # decode context 576
    r = c.rows[0]
    assert r.price.basis == "--price" and r.cost_per_hour == 0.72
    assert r.usd_per_million_tokens == pytest.approx(0.72 / r.tokens_per_s * 1e6 / 3600)
    assert 1e6 / r.usd_per_million_tokens / 1e6 == pytest.approx(1.68, rel=0.15)
    # several cards: hourly x cards
    two = by_id(compare(L8, "l40s", batch=8, ctx="32k", prices={"l40s": 1.0}))["l40s"]
    assert two.gpus_needed == 2 and two.cost_per_hour == 2.0


def test_training_throughput_by_hand():
    # PaLM model FLOPs: N = 7,504,658,432 matmul params (no input embedding);
    # 6N + 12 x 32 layers x 32 heads x 128 x 4,096 = 45,027,950,592 + 6,442,450,944.
    r = by_id(compare(L8, "h100", mode="full"))["h100"]
    assert r.speed.flops_per_token == 51_470_401_536
    assert r.tokens_per_s == pytest.approx(r.gpus_needed * 989e12 * 0.40 / 51_470_401_536)
    lora = by_id(compare(L8, "h100", mode="lora"))["h100"]
    assert lora.speed.flops_per_token == 4 * 7_504_658_432 + 6_442_450_944


def test_rows_are_ranked_cheapest_first():
    c = compare(L8, ctx="32k", batch=8)
    assert len(c.rows) == len(catalog.load_gpus())
    costs = [r.usd_per_million_tokens for r in c.rows]
    known = [x for x in costs if x is not None]
    assert known == sorted(known) and costs[:len(known)] == known
    assert [r.cheapest for r in c.rows].count(True) == 1 and c.rows[0].cheapest
    assert c.cheapest is c.rows[0] and c.cheapest.gpus_needed is not None


# ------------------------------------------------------------------ prices

def test_price_sources():
    h100, l40s = catalog.find_gpu("h100"), catalog.find_gpu("l40s")
    # Spheron quoted the H100 at 1.33 (2026-03-15) and 3.84 (2026-05-26): the latest counts
    assert prices.choose(h100, "spheron").usd_per_hour == 3.84
    # dated on-demand quotes (latest per provider and kind): RunPod secure 2.69 is the cheapest;
    # the undated "market range" 1.50-7.00 and Spheron's spot 1.69 are left out
    assert prices.choose(h100, "min").usd_per_hour == 2.69
    assert prices.choose(h100, "max").usd_per_hour == 12.36
    # median of 3.84, 9.80, 12.36, 2.99, 3.49, 2.69, 3.9492, 5.49: (3.84 + 3.9492) / 2
    assert prices.choose(h100, "median").usd_per_hour == pytest.approx(3.8946)
    # Vast.ai has only a spot quote for the L40S: asked for by name, it is used
    assert prices.choose(l40s, "vast").usd_per_hour == 0.31
    assert all(p.kind != "spot" for p in prices.quotes(l40s))
    assert prices.choose(catalog.find_gpu("b300"), "median") is None
    assert prices.choose(l40s, "median", {"l40s": 0.5}).usd_per_hour == 0.5


def test_price_errors():
    assert prices.parse_overrides(["l40s=0.79,H100 SXM=2.5"]) == {"l40s": 0.79, "h100": 2.5}
    for bad in ("l40s", "l40s=-1", "l40s=x", "=1"):
        with pytest.raises(BadInput):
            prices.parse_overrides(bad)
    with pytest.raises(UnknownGpu):
        prices.parse_overrides("nope=1")
    with pytest.raises(BadInput, match="Spheron"):
        prices.check_source("nobody", catalog.load_gpus())


# ------------------------------------------------------------------ sweep

def test_parse_range():
    assert parse_range("4k..128k", "--ctx") == (4096, 8192, 16384, 32768, 65536, 131072)
    assert parse_range("1..100", "--batch") == (1, 2, 4, 8, 16, 32, 64, 100)
    assert parse_range("32,1,8", "--batch") == (1, 8, 32)
    for bad in ("64..1", "1..16m", "x..4", ","):      # 1..16m: 25 points, more than MAX_POINTS
        with pytest.raises(BadInput):
            parse_range(bad, "--ctx")


def test_sweep_agrees_with_max_batch():
    s = sweep(L8, "l40s")
    assert s.ctxs[0] == 4096 and s.batches[-1] == 64
    for ctx, row, mb in zip(s.ctxs, s.cells, s.max_batch):
        for b, cell in zip(s.batches, row):
            assert cell.fits == (b <= mb), (ctx, b, mb)
    assert dict(zip(s.ctxs, s.max_batch))[32768] == api.plan(L8, "l40s", ctx="32k", batch=8).max_batch


# ------------------------------------------------------------------ command line

def test_cli_compare_json_contract():
    code, out, _ = run(["compare", L8, "--gpus", "l40s,h100,a100-80gb", "--ctx", "32k", "--batch", "8", "--json"])
    assert code == 0
    d = json.loads(out)
    assert d["workload"]["ctx"] == 32768 and d["workload"]["batch"] == 8
    assert d["throughput_model"]["estimate"] is True
    for row in d["rows"]:
        for key in ("gpu", "fits", "gpus_needed", "parallelism", "max_batch", "max_ctx", "price_per_hour",
                    "tokens_per_s", "usd_per_million_tokens"):
            assert key in row
        assert row["gpu"]["id"] in ("l40s", "h100", "a100-80gb")
    l40s = next(r for r in d["rows"] if r["gpu"]["id"] == "l40s")
    assert l40s["fits"] is False and l40s["gpus_needed"] == 2 and l40s["parallelism"] == "tp"


def test_cli_formats_and_exit_codes():
    code, out, _ = run(["compare", L8, "--gpus", "l40s,h100", "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [r["gpu"] for r in rows] and rows[0]["cheapest"] == "True"
    code, out, _ = run(["compare", L8, "--gpus", "l40s,h100", "--format", "markdown"])
    assert code == 0 and "| gpu" in out
    code, out, _ = run(["compare", L8, "--gpus", "l40s", "--price", "l40s=0.79"])
    assert code == 0 and "$0.79" in out and "cheapest" in out and "estimate" in out
    # nothing fits: 405B in bf16 on eight 24 GB cards
    code, out, _ = run(["compare", "meta-llama/Llama-3.1-405B", "--gpus", "l4"])
    assert code == 1 and ">8" in out
    assert run(["compare", L8, "--format", "xml"])[0] == 2
    assert run(["compare", L8, "--efficiency", "1.5"])[0] == 2
    assert run(["compare", L8, "--price-source", "nobody"])[0] == 2
    code, out, _ = run(["sweep", L8, "--gpu", "l40s", "--ctx", "4k,32k", "--batch", "1..8", "--json"])
    d = json.loads(out)
    assert code == 0 and len(d["cells"]) == 2 * 4 and d["max_batch"][1] == {"ctx": 32768, "max_batch": 5}
    assert run(["sweep", L8, "--gpu", "l4", "--ctx", "128k", "--batch", "64"])[0] == 1


def test_plot_without_matplotlib_exits_3(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    code, _, err = run(["compare", L8, "--gpus", "l40s", "--plot", str(tmp_path / "c.png")])
    assert code == 3 and "pip install 'vramplan[plot]'" in err
    assert run(["sweep", L8, "--plot", str(tmp_path / "s.png")])[0] == 3
    from vramplan.render.plot import check_target

    with pytest.raises(MissingExtra):
        check_target(str(tmp_path / "c.svg"))


def test_plots_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    png, svg = tmp_path / "c.png", tmp_path / "s.svg"
    assert run(["compare", L70, "--gpus", "l40s,h100,a100-80gb,l4", "--plot", str(png)])[0] == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run(["sweep", L8, "--gpu", "h100", "--mode", "lora", "--ctx", "1k..16k", "--batch", "1..16",
                "--plot", str(svg)])[0] == 0
    assert b"<svg" in svg.read_bytes()[:500]
    assert run(["compare", L8, "--plot", str(tmp_path / "c.gif")])[0] == 2


def test_compare_does_not_import_heavy_modules():
    code = ("import sys; from typer.testing import CliRunner; from vramplan.cli import app; "
            "r = CliRunner().invoke(app, ['compare', 'meta-llama/Llama-3.1-8B', '--json']); "
            "assert r.exit_code == 0, r.output; "
            "print([m for m in ('torch', 'transformers', 'numpy', 'matplotlib') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
