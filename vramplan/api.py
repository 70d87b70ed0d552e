"""The Python API: every question vramplan answers, as a function that returns data.

The adapter between the user's words ("meta-llama/Llama-3.1-8B", "l40s:2", "32k") and the
core's dataclasses. The CLI is a thin shell around it: it builds a `PlanRequest` from its flags,
calls a function here, and renders what comes back (vramplan.render).

Every function checks its arguments first: a wrong type or value raises BadInput (a ValueError)
naming the keyword, never a TypeError or AttributeError from deep inside.

`kv_report`, `bundled_models`, `compare`, `sweep`, `probe`, `verify` and `calibrate` load their
modules on first use (PEP 562), so that `import vramplan.api`, and with it `vramplan fit`, pays
only for the analytic planner.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping

from vramplan import catalog, loading
from vramplan.catalog import MAX_GPU_COUNT
from vramplan.errors import BadInput, DoesNotFit
from vramplan.methods import plan as _plan_request
from vramplan.request import (ENGINE_OF_MODE, METHODS, MODES, TRAINING_MODES, TRANSFORMERS_MAJORS, LlamaFlags,
                              PlanRequest, ServeFlags, SglangFlags, TrainFlags, build_workload, check_model,
                              make_workload, transformers_major)
from vramplan.spec import GpuSpec, GpuTarget, ModelSpec, Plan
from vramplan.targets import DEFAULT_GPU, auto_target, resolve_target
from vramplan.units import parse_bytes, printable, real, shown

# The questions beyond the analytic plan, loaded on first use.
_TOOLS = {
    "kv_report": "vramplan.reports", "bundled_models": "vramplan.reports",
    "compare": "vramplan.compare.table", "compare_request": "vramplan.compare.table",
    "sweep": "vramplan.compare.grid", "sweep_request": "vramplan.compare.grid",
    "probe": "vramplan.probe.read", "verify": "vramplan.verify.session",
    "calibrate": "vramplan.verify.calibrate",
}
__all__ = [
    "plan", "plan_request", "preflight", "load_model", "gpus",
    "PlanRequest", "ServeFlags", "TrainFlags", "LlamaFlags", "SglangFlags", "make_workload", "resolve_target", "auto_target",
    "transformers_major", "BadInput", "ENGINE_OF_MODE", "METHODS", "MODES", "TRAINING_MODES",
    "TRANSFORMERS_MAJORS", *_TOOLS,
]
# SGLang's names for vramplan's own keywords (docs/sglang.md): plan(..., context_length=..., tp_size=...)
KEYWORD_ALIASES = {"context_length": "ctx", "tp_size": "tp"}
MAX_VERIFY_SECONDS = 24 * 3600      # verify --timeout: a day; a longer run is no memory check


def _tool(name: str):
    return getattr(importlib.import_module(_TOOLS[name]), name)


def _request(request) -> PlanRequest:
    if not isinstance(request, PlanRequest):
        raise BadInput(f"{{request}} must be a PlanRequest, got {shown(request)}.")
    check_model(request.model)
    return request


def _text(value, name: str, what: str, optional: bool = False):
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise BadInput(f"{{{name}}} must be {what}, got {shown(value)}.")
    return value


def _ids(value, name: str, example: str):
    """None, "a,b" or a list/tuple of strings."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return value
    raise BadInput(f"{{{name}}} must be a comma-separated string or a list of strings such as {example}, "
                   f"got {shown(value)}.")


def _check_words(model, gpu=None, **keywords) -> None:
    """What can be checked before the model is read and the GPU looked up: `preflight` with
    gpu="auto" probes NVML and `verify` imports torch, and a mistyped keyword must not wait for
    either (or be hidden behind their environment problem)."""
    check_model(model)
    if gpu is not None and (isinstance(gpu, bool) or not isinstance(gpu, (str, int, GpuTarget))):
        raise BadInput(f"{{gpu}} must be 'auto', a catalog id such as 'l40s' or 'h100:8', a GpuTarget "
                       f"or a size in bytes, got {shown(gpu)}.")
    build_workload(PlanRequest.from_keywords(model, **keywords), MAX_GPU_COUNT)   # any card count


def load_model(model: str | ModelSpec | dict, weights_from: str = "auto", layers_from: str = "auto") -> ModelSpec:
    """A Hub id, a bundled id, a local directory or config.json path, or a config dict -> ModelSpec.
    `weights_from` as in `plan` (the safetensors checkpoint when one is at hand); `layers_from`:
    auto, analytic or transformers (loading.LAYERS_FROM)."""
    check_model(model)
    return loading.load_model(model, weights_from, layers_from)


def plan_request(request: PlanRequest) -> Plan:
    """Answer one PlanRequest (what the CLI builds from its flags) with its method; with
    `strict`, a plan whose model was read only approximately is BadInput."""
    request = _request(request)
    if not isinstance(request.strict, bool):
        raise BadInput(f"{{strict}} must be true or false, got {shown(request.strict)}.")
    p = _plan_request(request)
    if request.strict and p.confidence == "approximate":
        n = len(p.model.assumptions)
        raise BadInput(f"{{strict}} refuses this plan: {_clip_id(p.model)} was read by vramplan's generic config "
                       f"reader, so its sizes are approximate ({n} assumption{'s' if n != 1 else ''}, listed "
                       f"at the top of the plan without {{strict}}).")
    return p


def _clip_id(m: ModelSpec) -> str:
    return printable(m.id) if m.id else f"model_type '{printable(m.model_type)}'"


def plan(model: str | ModelSpec, gpu: str | GpuTarget | None = None, *, gpu_mem: str | int | None = None,
         gpu_free: str | int | None = None,
         mode: str = "serve", batch: int | str = 1, ctx: int | str = 4096, dtype: str = "auto",
         kv_dtype: str = "auto", method: str = "analytic", no_cache: bool = False,
         weights_from: str = "auto", **options) -> Plan:
    """Plan one workload. Returns a `Plan` (see vramplan.spec); raises VramplanError subclasses.

    `options` are vLLM's engine flags (`ServeFlags`: tp, pp, gpu_memory_utilization, ...), the
    training settings (`TrainFlags`: optim, grad_ckpt, lora_r, ...), `transformers` and
    `layers_from` ("auto", "analytic" or "transformers": which reader turns the config into
    layers, loading.LAYERS_FROM); an unknown keyword raises BadInput naming it. With engine="sglang", SGLang's own (`SglangFlags`:
    mem_fraction_static, page_size, chunked_prefill_size, max_running_requests, cuda_graph_max_bs,
    dp_size, ep_size, ...); context_length and tp_size are SGLang's names for ctx and tp.
    `weights_from`: "checkpoint" reads the bytes of every tensor from the safetensors headers,
    "config" derives them, "auto" takes the checkpoint when one is at hand (docs/model-sources.md).

    >>> p = plan("meta-llama/Llama-3.1-8B", "l40s", ctx="32k", batch=8)
    >>> p.fits, p.components["weights"]
    (False, 16094076928)
    """
    for alias, name in KEYWORD_ALIASES.items():
        if alias in options:
            if name == "ctx" and ctx != 4096 or name in options:
                raise BadInput(f"{alias} is SGLang's name for {name}; give one of them.")
            value = options.pop(alias)
            ctx = value if name == "ctx" else ctx
            if name != "ctx":
                options[name] = value
    return plan_request(PlanRequest.from_keywords(
        model, gpu, gpu_mem=gpu_mem, gpu_free=gpu_free, mode=mode, batch=batch, ctx=ctx, dtype=dtype,
        kv_dtype=kv_dtype, method=method, no_cache=no_cache, weights_from=weights_from, **options))


class _Unset:
    """preflight()'s defaults: what the live objects say, else mode "lora", batch 4, ctx 2048."""

    def __repr__(self) -> str:
        return "<read from the live objects, else the default>"


_UNSET = _Unset()


def preflight(model, mode=_UNSET, batch=_UNSET, ctx=_UNSET, gpu: str | int | GpuTarget = "auto", *, args=None,
              **options) -> Plan:
    """One-line check for a training script: the plan when it fits, else `DoesNotFit`.

    `model` is a Hub id, a bundled id, a config dict or a ModelSpec, or the loaded model itself
    (a transformers / peft model): then its adapters, quantization, checkpointing, attention and
    dtypes are read from it (vramplan/engines/hf_trainer/live.py). `args` are the Trainer's
    TrainingArguments (or TRL's SFTConfig): micro-batch, optimizer, checkpointing, precision,
    DeepSpeed/FSDP, world size, local rank, max_length. What the caller passes wins over what is
    read; without live objects the defaults are mode "lora", batch 4, ctx 2048.

    `gpu` is "auto" (this process's own CUDA device: the Trainer's device, where the model is,
    else the local rank; its capacity minus what other processes hold, through NVML: what this
    process already holds there is room, not a cost), a catalog id such as "l40s" or "h100:8", a
    GpuTarget, or a memory size in bytes. The message of `DoesNotFit` names the largest batch and
    context that fit and the cheapest change that would. Bad arguments raise `BadInput`, a
    ValueError.
    """
    own_device = isinstance(gpu, str) and gpu.strip().lower() == "auto"
    live_model = not isinstance(model, (str, dict, ModelSpec)) and callable(getattr(model, "named_parameters", None))
    if args is None and not live_model:     # by name: the old defaults, checked before any NVML probe
        mode = "lora" if mode is _UNSET else mode
        batch = 4 if batch is _UNSET else batch
        ctx = 2048 if ctx is _UNSET else ctx
        _check_words(model, gpu, mode=mode, batch=batch, ctx=ctx, **options)
    live = None
    if args is not None or live_model or own_device:
        def given(v):
            return None if v is _UNSET else v
        # vramplan.live reads live objects and probes the device: loaded on first use only
        live = importlib.import_module("vramplan.live").live_request(model, args=args, mode=given(mode), batch=given(batch), ctx=given(ctx),
                                     gpu=gpu, options=options)
        model, kw = live.model, dict(live.keywords)
        mode, batch, ctx = kw.pop("mode"), kw.pop("batch"), kw.pop("ctx")
        options = kw
    _check_words(model, gpu, mode=mode, batch=batch, ctx=ctx, **options)
    if isinstance(model, dict):
        model = loading.load(model).spec
    if live is not None:
        target = live.target
    else:
        target = resolve_target(gpu_mem=parse_bytes(gpu, "{gpu}")) if isinstance(gpu, int) else resolve_target(gpu)
    p = plan(model, target, mode=mode, batch=batch, ctx=ctx, **options)
    if p.fits:
        return p
    w = p.workload
    need, cap = p.total_bytes / 2**30, p.capacity_bytes / 2**30
    fixes = [f"{s.change} ({', '.join(f'{k}={v!r}' for k, v in s.flags.items())})"
             for s in p.suggestions if s.fits]
    limits = (f"The largest micro-batch that fits at {w.ctx:,} tokens is {p.max_batch}; the longest "
              f"sequence at batch {w.batch} is {p.max_ctx:,} tokens.")
    change = f" Cheapest change that fits: {fixes[0]}." if fixes else ""
    raise DoesNotFit(f"{w.mode} of {p.model.id} at batch {w.batch} x {w.ctx:,} tokens needs "
                     f"{need:.2f} GiB per GPU but {cap:.2f} GiB is available. {limits}{change}", p)


def gpus() -> tuple[GpuSpec, ...]:
    """The GPU catalog: memory, bandwidth, compute and dated prices."""
    return catalog.load_gpus()


def default_prices(gpus: tuple[GpuSpec, ...] | None = None) -> dict:
    """GPU id -> the price compare charges by default (catalog.default_price: the cheapest dated
    on-demand quote of a named provider); cards without one are left out."""
    out = {}
    for g in gpus if gpus is not None else catalog.load_gpus():
        p = catalog.default_price(g)
        if p is not None:
            out[g.id] = p
    return out


def kv_report(model: str | ModelSpec | dict):
    """KV cache bytes per token of MODEL, per layer kind and cache dtype (`vramplan kv`)."""
    check_model(model)
    return _tool("kv_report")(model)


def bundled_models(query: str | None = None):
    """The model configs shipped with vramplan, those whose id contains `query`."""
    return _tool("bundled_models")(_text(query, "query", "a substring of a model id such as 'llama'", True))


def _compare_options(gpus, prices, price_source, efficiency, step_overhead_s) -> dict:
    if prices is not None and not isinstance(prices, (str, dict, list, tuple)):
        raise BadInput(f"{{prices}} must be 'ID=USD,...', a dict or a list of 'ID=USD', got {shown(prices)}.")
    return dict(prices=prices, price_source=_text(price_source, "price_source", "a string such as 'median'"),
                efficiency=None if efficiency is None else real(
                    efficiency, "{efficiency}", lambda x: 0 < x <= 1, "in (0, 1] (a share of the hardware peak)"),
                step_overhead_s=real(step_overhead_s, "{step_overhead_s}", lambda x: 0 <= x <= 1,
                                     "a number of seconds in [0, 1]"))


def compare(model: str | ModelSpec, gpus=None, *, prices=None, price_source: str = "cheapest",
            efficiency: float | None = None, step_overhead_s: float | None = None, **options):
    """The same workload on every catalog GPU (or `gpus`), ranked; see vramplan.compare.table.
    Other keywords are those of `plan`, except the layout (tp, pp), which compare chooses."""
    check_model(model)
    extra = _compare_options(_ids(gpus, "gpus", "'l40s,h100'"), prices, price_source, efficiency,
                             0.0 if step_overhead_s is None else step_overhead_s)
    if step_overhead_s is None:
        extra.pop("step_overhead_s")
    return _tool("compare")(model, gpus, **extra, **options)


def compare_request(request: PlanRequest, gpus=None, *, prices=None, price_source: str = "cheapest",
                    efficiency: float | None = None, step_overhead_s: float | None = None, **traffic):
    """`compare` of a PlanRequest that names no GPU and no parallel layout; `traffic`: input_len,
    output_len, concurrency, max_ttft, min_tokens_per_s (vramplan.compare.table.compare_request)."""
    extra = _compare_options(_ids(gpus, "gpus", "'l40s,h100'"), prices, price_source, efficiency,
                             0.0 if step_overhead_s is None else step_overhead_s)
    if step_overhead_s is None:
        extra.pop("step_overhead_s")
    return _tool("compare_request")(_request(request), gpus, **extra, **traffic)


def sweep(model: str | ModelSpec, gpu: str | GpuTarget | None = None, **options):
    """Every (ctx, batch) of a grid on one card or set of cards (`vramplan sweep`); `ctx` and
    `batch` are ranges ("4k..128k") or lists ("1,8,32"); other keywords are those of `plan`."""
    check_model(model)
    return _tool("sweep")(model, gpu, **options)


def sweep_request(request: PlanRequest):
    """`sweep` of a PlanRequest whose ctx and batch are ranges or lists."""
    return _tool("sweep_request")(_request(request))


def probe(backend=None, environ: Mapping[str, str] | None = None):
    """The attached GPUs through NVML (`vramplan probe`); `backend` replaces NVML in tests."""
    if environ is not None and not isinstance(environ, Mapping):
        raise BadInput(f"{{environ}} must be a mapping of environment variables, got {shown(environ)}.")
    return _tool("probe")(backend, environ)


def calibrate(records: str | os.PathLike):
    """The plan-vs-measured table of a verify records file, per component and GPU, and the
    constants the records would move (`vramplan calibrate`)."""
    if not isinstance(records, (str, os.PathLike)) or not str(records).strip():
        raise BadInput(f"{{records}} must be the path of a records file (JSON lines from verify --record), "
                       f"got {shown(records)}.")
    return _tool("calibrate")(records)


def verify(model, *, level: str = "alloc", device: str = "cuda:0", force: bool = False,
           timeout: float | None = None, record: str | os.PathLike | None = None,
           emulate: bool = False, hard_timeout: bool = False, **options):
    """Plan MODEL, then allocate or run it on `device` and measure (`vramplan verify`).
    `emulate`: run bitsandbytes' 4-bit layers and 8-bit optimizers as vramplan's emulation when
    the library is missing (the records say so); `hard_timeout`: end the process when the device
    does not give control back within the grace period after `timeout`."""
    _check_words(model, **options)
    for name, value in (("emulate", emulate), ("hard_timeout", hard_timeout)):
        if not isinstance(value, bool):
            raise BadInput(f"{{{name}}} must be True or False, got {shown(value)}.")
    for name in ("gpu", "gpu_mem"):
        if options.get(name) is not None and not isinstance(options[name], str):
            raise BadInput(f"{{{name}}} must be a string such as {'l40s' if name == 'gpu' else '48GB'!r}, "
                           f"got {shown(options[name])}.")
    _text(level, "level", "'alloc' or 'run'")
    _text(device, "device", "'cpu' or 'cuda:N'")
    if not isinstance(force, bool):
        raise BadInput(f"{{force}} must be True or False, got {shown(force)}.")
    if timeout is not None:
        timeout = real(timeout, "{timeout}", lambda x: 0 < x <= MAX_VERIFY_SECONDS,
                       f"a positive number of seconds up to {MAX_VERIFY_SECONDS:,}")
    if record is not None and not isinstance(record, (str, os.PathLike)):
        raise BadInput(f"{{record}} must be a file path, got {shown(record)}.")
    return _tool("verify")(model, level=level, device=device, force=force, timeout=timeout,
                           record=record, emulate=emulate, hard_timeout=hard_timeout, **options)
