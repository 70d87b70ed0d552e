"""Wrong arguments to the Python API (issue #15): every public function of vramplan and
vramplan.api checks its arguments and raises BadInput (a ValueError) naming the keyword in the
API's own words (`ctx`, never `--ctx`), before any model is read, GPU probed or torch imported;
never a bare TypeError, KeyError or AttributeError."""

from __future__ import annotations

import math

import pytest

import vramplan
from tests.bad_input.contract import assert_api_refuses
from vramplan import api
from vramplan.errors import BadInput

M = "openai-community/gpt2"
HUGE = 10**400


def refuses(fn, *args, needle: str, **kwargs):
    e = assert_api_refuses(fn, *args, exc=BadInput, needle=needle, **kwargs)
    assert isinstance(e, ValueError)
    assert "--" not in str(e), f"a CLI flag in an API message: {e}"
    return e


# --- vramplan.plan -------------------------------------------------------------------------

@pytest.mark.parametrize("model", [123, None, [M], "", "   ", 4.5, b"gpt2", {M}], ids=repr)
def test_plan_model_types(model):
    refuses(vramplan.plan, model, needle="model")


@pytest.mark.parametrize("kwargs, needle", [
    (dict(gpu=["l40s"]), "gpu must be a catalog id"), (dict(gpu=5), "gpu"), (dict(gpu=True), "gpu"),
    (dict(gpu="l40s", gpu_mem="48GB"), "either gpu or gpu_mem"), (dict(gpu=None, gpu_mem={}), "gpu_mem"),
    (dict(gpu_mem=[1]), "gpu_mem"), (dict(gpu_mem=HUGE), "gpu_mem"), (dict(gpu_free=[1]), "gpu_free"),
    (dict(gpu_free="100GB"), "more than the card's CUDA total"),
    (dict(batch=None), "batch None is not a token count"), (dict(batch=[1]), "batch"), (dict(batch=1.5), "batch"),
    (dict(batch=-1), "batch must be at least 1"), (dict(batch=0), "batch"), (dict(batch=True), "batch"),
    (dict(batch=HUGE), "batch"), (dict(ctx=[1]), "ctx"), (dict(ctx={}), "ctx"), (dict(ctx=math.nan), "ctx"),
    (dict(ctx=math.inf), "ctx"), (dict(ctx=HUGE), "ctx (a 401-digit number) is beyond any real workload"),
    (dict(ctx="1e309"), "ctx"),
    (dict(mode=3), "mode 3 is not one of"), (dict(mode=None), "mode"), (dict(mode="train"), "mode"),
    (dict(method=3), "method"), (dict(method="fast"), "method"), (dict(dtype=3), "dtype"),
    (dict(kv_dtype=None), "kv_dtype"), (dict(dtype="int3"), "dtype"), (dict(no_cache="yes"), "no_cache"),
    (dict(tp="two"), "tp must be a whole number"), (dict(tp=2.5), "tp"), (dict(tp=HUGE), "tp"), (dict(tp=0), "tp"),
    (dict(pp=0), "pp"), (dict(gpu_memory_utilization="high"), "gpu_memory_utilization"),
    (dict(gpu_memory_utilization=math.nan), "gpu_memory_utilization must be in (0, 1], got nan"),
    (dict(gpu_memory_utilization=2), "gpu_memory_utilization"), (dict(gpu_memory_utilization=True), "gpu_memory"),
    (dict(enforce_eager="yes"), "enforce_eager"), (dict(vllm_version=11), "vllm_version"),
    (dict(vllm_version="eleven"), "vllm_version"), (dict(kv_cache_memory=[1]), "kv_cache_memory"),
    (dict(max_num_seqs=0), "max_num_seqs"), (dict(max_num_batched_tokens="lots"), "max_num_batched_tokens"),
    (dict(block_size=3), "block_size"), (dict(block_size="16k"), "block_size"),
    (dict(allow_long_max_model_len="yes"), "allow_long_max_model_len"),
    (dict(transformers=5), "transformers only applies"),
    (dict(mode="infer", transformers="five"), "transformers"), (dict(mode="infer", transformers=[4]), "transformers"),
    (dict(mode="infer", tp=1), "tp only applies to mode serve"),
    (dict(mode="lora", gpu_memory_utilization=0.8), "gpu_memory_utilization only applies to mode serve"),
    (dict(optim="sgd"), "optim only applies to the training modes"),
    (dict(mode="lora", optim=3), "optim"), (dict(mode="lora", lora_r="big"), "lora_r"),
    (dict(mode="lora", lora_r=HUGE), "lora_r"), (dict(mode="lora", lora_alpha=math.inf), "lora_alpha"),
    (dict(mode="lora", lora_dropout=math.nan), "lora_dropout"), (dict(mode="lora", lora_targets=5), "lora_targets"),
    (dict(mode="lora", grad_ckpt="maybe"), "grad_ckpt"), (dict(mode="full", zero=HUGE), "zero"),
    (dict(mode="full", precision=[1]), "precision"), (dict(mode="lora", lora_dtype=8), "lora_dtype"),
    (dict(lora_rank=8), "'lora_rank' is not a keyword"),
], ids=lambda v: str(v)[:40])
def test_plan_keywords(kwargs, needle):
    refuses(vramplan.plan, M, **kwargs, needle=needle)


# --- preflight, load_model and the catalog questions --------------------------------------------

@pytest.mark.parametrize("args, kwargs, needle", [
    ((123,), {}, "model"), ((M,), dict(mode=3), "mode"), ((M,), dict(gpu=[1]), "gpu"),
    ((M,), dict(gpu=0), "gpu must be a positive size"), ((M,), dict(gpu=True), "gpu"),
    ((M,), dict(batch=None), "batch"), ((M,), dict(ctx=[2048]), "ctx"), ((M,), dict(lora_r=0), "lora_r"),
    ((M,), dict(gpu="l40s", mode="serve", optim="sgd"), "optim"),
], ids=lambda v: str(v)[:30])
def test_preflight_checks_before_probing(args, kwargs, needle):
    """The default gpu="auto" probes NVML; a bad keyword is said first (no driver here)."""
    refuses(vramplan.preflight, *args, **kwargs, needle=needle)


@pytest.mark.parametrize("fn", [vramplan.load_model, api.kv_report])
@pytest.mark.parametrize("model", [123, None, ["x"], ""], ids=repr)
def test_model_readers(fn, model):
    refuses(fn, model, needle="model")


def test_bundled_models_query():
    refuses(api.bundled_models, 5, needle="query")


@pytest.mark.parametrize("fn, args, kwargs, needle", [
    (api.plan_request, (M,), {}, "request must be a PlanRequest"),
    (api.plan_request, (api.PlanRequest(model=123),), {}, "model"),
    (api.plan_request, (api.PlanRequest(model=M, serve=5),), {}, "ServeFlags"),
    (api.compare_request, (5,), {}, "request"), (api.sweep_request, (None,), {}, "request"),
    (api.make_workload, (), dict(gpu_count="x"), "gpu_count"), (api.make_workload, (), dict(gpu_count=0), "gpu_count"),
    (api.make_workload, (), dict(mode=3), "mode"), (api.make_workload, (), dict(batch=None), "batch"),
    (api.resolve_target, (5,), {}, "gpu"), (api.resolve_target, (["l40s"],), {}, "gpu"),
    (api.resolve_target, (), dict(gpu_mem=[1]), "gpu_mem"), (api.resolve_target, (), dict(gpu_free="lots"), "gpu_free"),
    (api.resolve_target, ("l40s:" + "9" * 5000,), {}, "gpu"),
    (api.transformers_major, ("five",), {}, "transformers"), (api.transformers_major, (3.5,), {}, "transformers"),
    (api.transformers_major, ("9" * 5000,), {}, "transformers"), (api.transformers_major, (True,), {}, "transformers"),
    (api.probe, (), dict(environ=5), "environ"),
], ids=lambda v: getattr(v, "__name__", str(v)[:30]))
def test_the_other_functions(fn, args, kwargs, needle):
    refuses(fn, *args, **kwargs, needle=needle)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(gpus=5), "gpus must be a comma-separated string"), (dict(gpus=[1, 2]), "gpus"),
    (dict(efficiency="x"), "efficiency"), (dict(efficiency=math.nan), "efficiency"), (dict(efficiency=0), "efficiency"),
    (dict(prices=5), "prices"), (dict(price_source=3), "price_source"), (dict(step_overhead_s="x"), "step_overhead_s"),
    (dict(tp=2), "compare chooses the cards"), (dict(batch=[8]), "batch"),
], ids=lambda v: str(v)[:30])
def test_compare(kwargs, needle):
    refuses(api.compare, M, **kwargs, needle=needle)


@pytest.mark.parametrize("args, kwargs, needle", [
    ((123,), {}, "model"), ((M, 5), {}, "gpu"), ((M,), dict(ctx=[1]), "ctx"), ((M,), dict(batch=None), "batch"),
    ((M,), dict(ctx="1..1e309"), "ctx"), ((M,), dict(mode=2), "mode"),
], ids=lambda v: str(v)[:30])
def test_sweep(args, kwargs, needle):
    refuses(api.sweep, *args, **kwargs, needle=needle)


@pytest.mark.parametrize("args, kwargs, needle", [
    ((123,), {}, "model"), ((M,), dict(timeout=math.nan), "timeout"), ((M,), dict(timeout=-1), "timeout"),
    ((M,), dict(timeout=10**6), "up to 86,400"), ((M,), dict(level=3), "level"), ((M,), dict(force="yes"), "force"),
    ((M,), dict(record=5), "record"), ((M,), dict(device=3), "device"), ((M,), dict(gpu=5), "gpu"),
    ((M,), dict(gpu_mem=48), "gpu_mem"), ((M,), dict(batch=[1]), "batch"), ((M,), dict(mode="train"), "mode"),
], ids=lambda v: str(v)[:30])
def test_verify_checks_before_importing_torch(args, kwargs, needle):
    refuses(api.verify, *args, **kwargs, needle=needle)


def test_calibrate_refuses_what_is_not_a_path():
    for bad in (None, 3, "", ["r.jsonl"]):
        assert_api_refuses(api.calibrate, bad, exc=BadInput, needle="records")


def test_every_public_function_is_covered():
    """A new public function gets its bad-input cases here too."""
    covered = {"plan", "preflight", "load_model", "plan_request", "compare", "compare_request", "sweep",
               "sweep_request", "kv_report", "bundled_models", "make_workload", "resolve_target",
               "transformers_major", "probe", "verify", "gpus", "auto_target", "calibrate"}
    public = {n for n in api.__all__ if callable(getattr(api, n)) and getattr(api, n).__module__.startswith("vramplan")
              and not isinstance(getattr(api, n), type) and n[0].islower()}
    assert public <= covered, public - covered
    assert set(vramplan.__all__) & {n for n in vramplan.__all__ if n[0].islower() and n != "__version__"} <= covered
