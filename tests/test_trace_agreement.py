"""The analytic tier held to the trace at real sizes (design: "Tier agreement").

Targets: weights and KV cache exact, total within 3 % (serve, infer) and 8 % (training).
A representative subset runs by default (about a minute on 2 cores); every bundled family in
every mode runs with VRAMPLAN_TRACE_ALL=1. Cases where the analytic tier is known to miss are
xfail with the reason (docs/trace.md, "Agreement with the analytic tier").
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from vramplan import api  # noqa: E402
from vramplan.memory.weights import resolve_format, weight_bytes  # noqa: E402
from vramplan.errors import VramplanError  # noqa: E402
from vramplan.trace import agreement  # noqa: E402

pytestmark = pytest.mark.trace

ALL = os.environ.get("VRAMPLAN_TRACE_ALL") == "1"
CASES = agreement.all_cases() if ALL else agreement.DEFAULT

# (model, mode) -> why the analytic total is outside tolerance there. None at present: every
# gap the trace showed was closed in the analytic model (docs/trace.md). Keep the mechanism for
# the next transformers release that moves memory around.
KNOWN_GAPS: dict[tuple[str, str], str] = {}


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("trace-cache")))
    yield
    mp.undo()


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
    if case.mode == "serve":
        # the analytic serve plan lays weights out as vLLM does; the trace builds transformers'
        # model, which keeps a few tensors wider (DeepSeek's fp32 router): compare like with like
        fmt = resolve_format(spec, dict(case.options).get("dtype", "auto"))
        a_w = weight_bytes(spec, fmt, layout="transformers").total
    # every tensor in its 512-B allocator blocks, bitsandbytes' state included: to the byte
    assert a_w == t_w, (a_w, t_w)
    assert row.kv_cache[0] == row.kv_cache[1], row.kv_cache
    assert row.within, (f"{case.label}: analytic {row.analytic_total / 2**30:.2f} GiB vs trace "
                        f"{row.trace_total / 2**30:.2f} GiB ({row.diff:+.1%}); components "
                        + ", ".join(f"{k} {a / 2**30:.2f}/{t / 2**30:.2f}" for k, (a, t) in row.components.items() if a != t))
