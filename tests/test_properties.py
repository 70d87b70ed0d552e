"""Properties every plan must have, whatever the model, engine, GPU and formats (hypothesis).

- monotonicity: the total never decreases as batch or context grows (the limits are solved by
  bisection, which is exact only then);
- exact limits under the ONE rule (planner.verdict, the engine's `fits`): max_batch fits and
  max_batch + 1 does not, the same for max_ctx;
- the verdict agrees with the limits: fits <=> batch <= max_batch and ctx <= max_ctx, and
  Plan.fits (read back from the plan's data) is the engine's verdict;
- the JSON (--json) parses, has the same keys in every plan of an engine, and counts bytes in
  integers; the same command prints the same bytes twice.

Drawn from bundled models, every mode, catalog GPUs (one card and several), weight and KV
formats; settings chosen so that the whole file runs in well under 20 s on 2 cores.
"""

from __future__ import annotations

import functools
import json

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from vramplan import catalog, planner
from vramplan.cli import app
from vramplan.errors import BadInput
from vramplan.loading import load_model
from vramplan.request import make_workload
from vramplan.targets import resolve_target
from vramplan.units import MAX_BATCH, MAX_TOKENS

MODELS = ("openai-community/gpt2", "Qwen/Qwen3-0.6B", "meta-llama/Llama-3.2-1B-Instruct",
          "google/gemma-3-4b-it", "microsoft/Phi-3-mini-4k-instruct", "mistralai/Mixtral-8x7B-v0.1",
          "openai/gpt-oss-20b", "nvidia/Nemotron-H-56B-Base-8K", "deepseek-ai/DeepSeek-V3",
          "meta-llama/Llama-3.1-8B")
MODES = ("serve", "infer", "full", "lora", "qlora")
GPUS = ("l40s", "h100", "rtx-4090", "rtx-4060", "a100-40gb", "t4", "h200", "h100:2", "l40s:4")
DTYPES = ("auto", "auto", "fp8", "int4", "nf4", "gptq")
KV_DTYPES = ("auto", "auto", "fp8")
# A few planning questions cost tens of ms each (training on MoE models): keep the examples few,
# the deadline off (a loaded 2-core machine is slow, not wrong).
FAST = settings(max_examples=90, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                derandomize=True, database=None)


@functools.lru_cache(maxsize=None)
def _model(name: str):
    return load_model(name)


@functools.lru_cache(maxsize=1)
def _catalog():
    return catalog.load_gpus()


def _question(model, gpu, mode, dtype, kv_dtype, batch, ctx):
    """(spec, target, workload) or None when the combination is refused as bad input (a format
    the engine does not serve, heads that do not split over the cards, ...)."""
    target = resolve_target(gpu)
    try:
        w = make_workload(mode, batch, ctx, dtype, kv_dtype if mode in ("serve", "infer") else "auto",
                          gpu_count=target.count,
                          **({"transformers": 5} if mode != "serve" else {}),
                          **({"zero": 3} if mode in ("full", "lora", "qlora") and target.count > 1 else {}))
        spec = _model(model)
        s = planner.setup(spec, target, w)
        planner.total_bytes(s, w.batch, w.ctx)          # some refusals come with the first components
    except BadInput:
        return None
    return spec, target, w, s


questions = st.tuples(st.sampled_from(MODELS), st.sampled_from(GPUS), st.sampled_from(MODES),
                      st.sampled_from(DTYPES), st.sampled_from(KV_DTYPES),
                      st.integers(1, 64), st.sampled_from((1, 7, 512, 2048, 4096, 8192, 32768, 131072)))


@FAST
@given(q=questions, more_batch=st.integers(1, 64), more_ctx=st.integers(1, 70000))
def test_total_never_decreases_with_batch_or_context(q, more_batch, more_ctx):
    found = _question(*q)
    assume(found is not None)
    _, _, w, s = found
    b, c = w.batch, w.ctx
    base = planner.total_bytes(s, b, c)
    assert planner.total_bytes(s, b + more_batch, c) >= base, (q, more_batch)
    assert planner.total_bytes(s, b, c + more_ctx) >= base, (q, more_ctx)
    assert planner.total_bytes(s, b + more_batch, c + more_ctx) >= base


@FAST
@given(q=questions)
def test_limits_are_exact_under_the_one_rule(q):
    found = _question(*q)
    assume(found is not None)
    spec, target, w, s = found
    p = planner.build(spec, target, w, suggest=False)
    eng = planner.engine_of(w)
    fits = lambda b, c: planner.verdict(eng, s, b, c)     # noqa: E731 - the rule, read once
    if p.max_batch:
        assert fits(p.max_batch, w.ctx)
    if p.max_batch < MAX_BATCH:
        assert not fits(p.max_batch + 1, w.ctx), (q, p.max_batch)
    if p.max_ctx:
        assert fits(w.batch, p.max_ctx)
    if p.max_ctx < MAX_TOKENS:
        assert not fits(w.batch, p.max_ctx + 1), (q, p.max_ctx)


@FAST
@given(q=questions)
def test_the_verdict_agrees_with_the_limits(q):
    found = _question(*q)
    assume(found is not None)
    spec, target, w, s = found
    p = planner.build(spec, target, w, suggest=False)
    eng = planner.engine_of(w)
    assert p.fits == planner.verdict(eng, s, w.batch, w.ctx)           # Plan.fits is the engine's rule
    assert p.fits == (w.batch <= p.max_batch and w.ctx <= p.max_ctx), (q, p.fits, p.max_batch, p.max_ctx)
    if p.serve is not None:             # vLLM: a refusal in the start-up report is a "does not fit"
        assert not p.serve.refusal or not p.serve.starts, p.serve.refusal
        assert p.serve.starts or not p.fits
        assert (p.serve.max_model_len_that_starts >= w.ctx) == p.serve.starts or not p.serve.headroom_ok


@FAST
@given(q=questions)
def test_suggestions_that_fit_pass_the_same_rule(q):
    found = _question(*q)
    assume(found is not None)
    spec, target, w, _ = found
    p = planner.build(spec, target, w, catalog=_catalog())
    for sug in p.suggestions:
        if "batch" in sug.flags and len(sug.flags) == 1:
            assert sug.fits == (sug.flags["batch"] <= p.max_batch)
        if "ctx" in sug.flags and len(sug.flags) == 1:
            assert sug.fits == (sug.flags["ctx"] <= p.max_ctx)
    assert all(s.fits for s in p.suggestions[:sum(s.fits for s in p.suggestions)])   # fitting first


# --- the command line: JSON and determinism ---------------------------------------------------

runner = CliRunner()
SERVE_KEYS = None


def _argv(model, gpu, mode, dtype, kv_dtype, batch, ctx):
    argv = ["fit", model, "--gpu", gpu, "--mode", mode, "--dtype", dtype, "--batch", str(batch),
            "--ctx", str(ctx), "--json"]
    if mode in ("serve", "infer"):
        argv += ["--kv-dtype", kv_dtype]
    if mode != "serve":
        argv += ["--transformers", "5"]
    if mode in ("full", "lora", "qlora") and ":" in gpu:
        argv += ["--zero", "3"]
    return argv


def _byte_fields(obj, path=""):
    """(path, value) of every field that counts bytes."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            here = f"{path}.{k}"
            if isinstance(v, (dict, list)):
                yield from _byte_fields(v, here)
            elif (k.endswith("bytes") or path == ".components"
                  or path.startswith(".serve.ranks") and k in ("weights", "activations", "available")):
                yield here, v
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _byte_fields(v, f"{path}[{i}]")


def _keys(obj, path=""):
    """The key paths of a plan's JSON, without the names of its components and notes."""
    out = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            if path in (".components", ".component_notes", ".component_confidence", ".model.layer_kinds",
                        ".model.quantization"):
                continue
            out.add(f"{path}.{k}")
            if k not in ("suggestions", "warnings", "ranks", "kv_notes", "prices", "outside_budget"):
                out |= _keys(v, f"{path}.{k}")
    return out


_seen_keys: dict[str, set] = {}


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True,
          database=None)
@given(q=questions)
def test_json_parses_has_stable_keys_integer_bytes_and_is_deterministic(q):
    model, gpu, mode, dtype, kv_dtype, batch, ctx = q
    argv = _argv(model, gpu, mode, dtype, kv_dtype, batch, ctx)
    first = runner.invoke(app, argv, env={"HF_HUB_OFFLINE": "1"})
    assume(first.exit_code in (0, 1))               # 2: a refused combination (checked elsewhere)
    second = runner.invoke(app, argv, env={"HF_HUB_OFFLINE": "1"})
    assert second.exit_code == first.exit_code and second.stdout == first.stdout      # byte-identical
    p = json.loads(first.stdout)
    assert p["fits"] is (first.exit_code == 0)
    for where, value in _byte_fields(p):
        if value is None and where.startswith(".gpu."):     # catalog facts a card may lack (NVML total)
            continue
        assert isinstance(value, int) and not isinstance(value, bool), (where, value)
    engine = "serve" if mode == "serve" else "infer" if mode == "infer" else "train"
    keys = _keys(p)
    if engine in _seen_keys:
        assert keys == _seen_keys[engine], keys ^ _seen_keys[engine]
    _seen_keys[engine] = keys


@pytest.mark.parametrize("argv", [
    ["fit", "meta-llama/Llama-3.1-8B", "--gpu", "l40s", "--ctx", "32k", "--batch", "8", "--json"],
    ["fit", "openai-community/gpt2", "--ctx", "8k", "--json"],
    ["fit", "Qwen/Qwen3-0.6B", "--mode", "lora", "--transformers", "5", "--json"],
])
def test_the_same_command_prints_the_same_bytes(argv):
    outs = {runner.invoke(app, argv, env={"HF_HUB_OFFLINE": "1"}).stdout for _ in range(3)}
    assert len(outs) == 1
