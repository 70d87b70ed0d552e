"""The analytic tier held to the trace at real sizes (design: "Tier agreement").

Targets: weights and KV cache exact, total within 3 % (serve, infer) and 8 % (training).
A representative subset runs by default (about a minute on 2 cores); every bundled family in
every mode runs with VRAMPLAN_TRACE_ALL=1. Cases where the analytic tier is known to miss are
xfail with the reason; docs/trace.md ("Where the analytic tier misses") gives each fix.
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from vramplan import api  # noqa: E402
from vramplan.errors import VramplanError  # noqa: E402
from vramplan.trace import agreement  # noqa: E402

pytestmark = pytest.mark.trace

ALL = os.environ.get("VRAMPLAN_TRACE_ALL") == "1"
CASES = agreement.all_cases() if ALL else agreement.DEFAULT

# (model, mode) -> why the analytic total is outside tolerance there (docs/trace.md, "Where the
# analytic tier misses"); the proposed fixes are the lead's to apply.
_MOE_QLORA = "bitsandbytes leaves fused 3-D experts in 16 bits (analytic quantizes them)"
KNOWN_GAPS = {
    ("openai/gpt-oss-20b", "infer"): "no SDPA in transformers for gpt-oss: eager scores",
    ("openai/gpt-oss-20b", "lora"): "no SDPA in transformers for gpt-oss: eager attention saves scores",
    ("openai/gpt-oss-20b", "qlora"): _MOE_QLORA + "; eager attention",
    ("mistralai/Mixtral-8x7B-v0.1", "qlora"): _MOE_QLORA,
    ("deepseek-ai/DeepSeek-V3", "qlora"): _MOE_QLORA,
    ("tiiuae/falcon-40b", "infer"): "transformers' Falcon caches K/V for every query head",
    ("tiiuae/falcon-40b", "qlora"): "transformers 5 bnb converts only exact nn.Linear, not FalconLinear",
    ("openai-community/gpt2-large", "infer"): "gelu_new in Python keeps 4 intermediate-size tensors",
    ("openai-community/gpt2-large", "full"): "gelu_new intermediates and dropout masks saved",
    ("openai-community/gpt2-large", "lora"): "gelu_new intermediates and dropout masks saved",
    ("openai-community/gpt2-large", "qlora"): "gelu_new intermediates and dropout masks saved",
    ("nvidia/Nemotron-H-56B-Base-8K", "serve"): "trace limitation: Mamba ran the reference PyTorch scan",
    ("nvidia/Nemotron-H-56B-Base-8K", "infer"): "trace limitation: Mamba ran the reference PyTorch scan",
    ("nvidia/Nemotron-H-56B-Base-8K", "full"): "trace limitation: Mamba ran the reference PyTorch scan",
}


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("trace-cache")))
    yield
    mp.undo()


def _quantized(case) -> bool:
    return case.mode == "qlora" or dict(case.options).get("dtype") in ("nf4", "fp4")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.label)
def test_analytic_agrees_with_trace(case):
    try:
        row = agreement.compare(case)
    except VramplanError as e:   # a refusal (either tier) is reported by the benchmark
        pytest.skip(str(e))
    a_w, t_w = row.weights
    if (case.model, case.mode) in KNOWN_GAPS and not row.within:
        pytest.xfail(f"{KNOWN_GAPS[case.model, case.mode]}: analytic {row.analytic_total / 2**30:.2f} GiB, "
                     f"trace {row.trace_total / 2**30:.2f} GiB")
    spec = api.load_model(case.model)
    blocks = 512 * sum(1 for _ in spec.all_tensors())
    if _quantized(case):
        # bitsandbytes keeps a 16-entry code, a 256-entry nested code and an offset per tensor
        # (about 2 KiB in 512-B blocks) that the analytic layout leaves out.
        assert 0 <= t_w - a_w <= 4 * blocks, (a_w, t_w)
    else:
        # every tensor is its own allocation, rounded to 512 B (e.g. Qwen3's 256-B q/k norms)
        assert 0 <= t_w - a_w <= blocks, (a_w, t_w)
    if case.mode == "infer":
        # the sliding-window layers' scalar position counters are on the cache too (512 B each)
        assert abs(row.kv_cache[0] - row.kv_cache[1]) <= 512 * spec.num_layers, row.kv_cache
    assert row.within, (f"{case.label}: analytic {row.analytic_total / 2**30:.2f} GiB vs trace "
                        f"{row.trace_total / 2**30:.2f} GiB ({row.diff:+.1%}); components "
                        + ", ".join(f"{k} {a / 2**30:.2f}/{t / 2**30:.2f}" for k, (a, t) in row.components.items() if a != t))
