"""`--method trace` as a product: the extra, the disk cache, the Plan it returns, the messages
for what it cannot trace, and every bundled family building in transformers without remote code.
The first tests need no torch at all."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vramplan import api, trace
from vramplan.errors import BadInput, MissingExtra
from vramplan.spec import Plan

ROOT = Path(__file__).resolve().parents[1]
TINY = json.loads((Path(__file__).parent / "data" / "tiny_llama.json").read_text())


def _workload(mode="infer", batch=2, ctx=64, **kw):
    return api.make_workload(mode, batch, ctx, **kw)


# --- no torch needed ---------------------------------------------------------------------------

def test_importing_the_trace_package_imports_no_torch():
    code = "import sys, vramplan.trace; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_missing_extra_names_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    with pytest.raises(MissingExtra) as e:
        trace.plan(TINY, api.resolve_target(gpu_mem="24GiB"), _workload(), progress=False)
    assert e.value.extra == "trace" and e.value.module == "torch"
    assert "pip install 'vramplan[trace]'" in str(e.value)
    assert e.value.exit_code == 3


@pytest.mark.parametrize("kwargs, words", [
    (dict(dtype="fp8"), "analytic"),
    (dict(kv_dtype="fp8"), "kv-dtype"),
])
def test_untraceable_workloads_say_why(kwargs, words, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(BadInput) as e:
        trace.plan(TINY, api.resolve_target(gpu_mem="24GiB"), _workload(**kwargs), progress=False)
    assert words in e.value.for_cli()


def test_several_gpus_are_analytic_only():
    target = api.resolve_target("h100:2")
    with pytest.raises(BadInput, match="one GPU"):
        trace.plan(TINY, target, _workload(gpu_count=2), progress=False)


# --- with torch --------------------------------------------------------------------------------

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None
                                 or importlib.util.find_spec("transformers") is None,
                                 reason="needs the trace extra")


@needs_torch
@pytest.mark.trace
def test_plan_is_a_plan_and_the_cache_answers_the_second_time(tmp_path, monkeypatch):
    from vramplan.trace import run

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []
    original = run.execute
    monkeypatch.setattr(run, "execute", lambda *a, **k: calls.append(1) or original(*a, **k))
    target = api.resolve_target(gpu_mem="24GiB")
    first = trace.plan(TINY, target, _workload(), progress=False)
    second = trace.plan(TINY, target, _workload(), progress=False)
    third = trace.plan(TINY, target, _workload(), no_cache=True, progress=False)
    assert len(calls) == 2                       # the second answer came from disk
    assert isinstance(first, Plan) and first.trace is not None
    assert first.components == second.components == third.components
    assert first.total_bytes == sum(first.components.values())
    assert first.trace.phase in ("prefill", "decode") and first.trace.op
    assert first.components["weights"] == first.trace.weights_bytes
    assert list(tmp_path.glob("vramplan/trace/*.json"))


@needs_torch
@pytest.mark.trace
def test_a_cached_answer_imports_no_torch(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    trace.plan(str(path), api.resolve_target(gpu_mem="24GiB"), _workload(), progress=False)
    code = ("import sys; from vramplan import api, trace; "
            f"p = trace.plan({str(path)!r}, api.resolve_target(gpu_mem='24GiB'), "
            "api.make_workload('infer', 2, 64), progress=False); "
            "assert p.trace is not None and 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                   env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)})


@needs_torch
@pytest.mark.trace
def test_overhead_is_the_analytic_tiers(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    from vramplan import models as families

    target = api.resolve_target("l40s")
    a = api.plan(families.parse(TINY), target, mode="infer", batch=2, ctx=64)
    t = trace.plan(TINY, target, a.workload, progress=False)
    for name in ("cuda_context", "cublas_workspace"):
        assert t.components[name] == a.components[name]
    assert t.components["kv_cache"] == a.components["kv_cache"]
    assert t.capacity_bytes == a.capacity_bytes


@needs_torch
@pytest.mark.trace
def test_progress_goes_to_stderr(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    trace.plan(TINY, api.resolve_target(gpu_mem="24GiB"), _workload(), progress=True)
    err = capsys.readouterr().err
    assert "importing torch" in err and "peak" in err


@needs_torch
@pytest.mark.trace
def test_every_bundled_family_builds_without_remote_code():
    """config.json -> transformers model on meta, parameter for parameter as the analytic tier
    counts them (RefinedWeb falcon mapped to transformers' Falcon)."""
    from vramplan import catalog
    from vramplan import models as families
    from vramplan.trace import build

    seen = set()
    # the configs bundled by issue #12 wait for their families (tests/test_bundled_configs.py)
    added = set(json.loads((ROOT / "tests" / "data" / "expected_new.json").read_text())["models"])
    for path in sorted(p for p in (ROOT / "configs" / "models").glob("*.json") if p.stem not in added):
        raw = json.loads(path.read_text())
        spec = families.parse(raw)
        if spec.model_type in seen:
            continue
        seen.add(spec.model_type)
        model = build.meta_model(build.hf_config(raw, path.stem), "bf16")
        assert sum(p.numel() for p in model.parameters()) == spec.params, path.name
    assert {"llama", "RefinedWeb", "nemotron_h", "gemma3", "deepseek_v3", "gpt_oss"} <= seen
    del catalog


@needs_torch
def test_unknown_model_type_is_a_clear_message():
    from vramplan.trace import build

    with pytest.raises(BadInput, match="remote code"):
        build.hf_config({**TINY, "model_type": "my_custom_arch"}, "org/custom")
