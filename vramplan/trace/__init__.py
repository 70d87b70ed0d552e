"""Tier 2, `--method trace`: run the real transformers model on fake tensors and count bytes.

    from vramplan import trace
    p = trace.plan("meta-llama/Llama-3.1-8B", target, workload)   # a Plan (trace.TracedPlan)
    p.trace.where, p.trace.top                                      # peak location, top tensors

The model is built from config.json on the meta device, its parameters become FakeTensors on
device `cpu`, and the exact eager program runs (prefill + decode, vLLM's profiling forward, or
two training steps) under a TorchDispatchMode that counts live storage bytes as the CUDA caching
allocator would (docs/trace.md). No weights, no GPU, a few hundred MiB of RAM, seconds.

Importing this package imports neither torch nor transformers: `plan` answers from the disk
cache when it can, and imports them (with progress on stderr) only to run a trace. Without the
`trace` extra it raises MissingExtra, which the CLI turns into exit 3 with the pip command.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from dataclasses import asdict, is_dataclass, replace

from vramplan import catalog, loading
from vramplan import planner as core_plan
from vramplan.engines.hf_trainer.options import ADAPTER_METHODS, TrainOptions
from vramplan.engines.hf_trainer.step import ALLOCATOR_SLACK_TRAIN
from vramplan.errors import BadConfig, BadInput, MissingExtra
from vramplan.memory.activations import PRE_SM80
from vramplan.request import transformers_major
from vramplan.spec import GpuTarget, ModelSpec, Plan, Workload
from vramplan.trace import assemble, cache, recipe

__all__ = ["plan", "require", "scenario_for"]

# The engines whose program the trace replays (trace/scenarios.py): vLLM's profile forward,
# transformers' generate(), one HF Trainer step. Others are planned by the analytic tier only.
TRACED_ENGINES = ("vllm", "transformers", "hf_trainer")
TRACEABLE_WEIGHTS = ("none", "nf4", "fp4")


def require(workload: Workload | None = None) -> None:
    """MissingExtra("trace", module) unless the trace's libraries are importable (peft too when
    the workload trains adapters)."""
    adapters = workload is not None and workload.train is not None and workload.mode in ADAPTER_METHODS
    needed = ("torch", "transformers") + (("peft",) if adapters else ())
    for module in needed:
        if importlib.util.find_spec(module) is None:
            raise MissingExtra("trace", module)


class Progress:
    """One line on stderr per stage, with the time since the start."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.start = time.perf_counter()

    def __call__(self, text: str) -> None:
        if self.enabled:
            print(f"vramplan trace [{time.perf_counter() - self.start:5.1f}s] {text}",
                  file=sys.stderr, flush=True)


def plan(model: str | dict | ModelSpec, target: GpuTarget, workload: Workload,
         train_options=None, *, no_cache: bool = False, progress: bool = True,
         layers_from: str = "auto") -> Plan:
    """Plan `workload` on `target` with the trace's measured tensors (a `TracedPlan`).

    `model` is what `vramplan fit` takes (Hub id, bundled id, path) or a config.json dict.
    `train_options` (a TrainOptions) overrides `workload.train`. Raises BadInput for
    a workload the trace cannot run (naming why), MissingExtra without torch/transformers.

    The layers the engine's setup and the limits read come from `load` below: the trace runs
    whatever transformers builds, so it never refuses a model only because the analytic reader
    does."""
    loaded = load(model, layers_from)
    raw, sha, spec = loaded.config, loaded.sha256, loaded.spec
    if workload.engine == "hf_trainer":
        opts = train_options or workload.train or TrainOptions()
        workload = replace(workload, train=opts)
    analytic = core_plan.build(spec, target, workload, catalog=catalog.load_gpus(), suggest=False)
    setup = core_plan.setup(spec, target, workload)
    scenario_fields = _scenario(spec, target, workload, setup)

    key = cache.key(sha, _jsonable(scenario_fields))
    result = None if no_cache else cache.load(key)
    if result is None:
        require(workload)
        say = Progress(progress)
        say("importing torch and transformers")
        from vramplan.trace import run

        result = run.execute(raw, run.Scenario(**scenario_fields), model_id=spec.id, progress=say)
        say(f"done: peak {result.peak_bytes / 2**30:.2f} GiB in {result.where}")
        cache.store(key, result)

    if workload.engine == "transformers":
        return assemble.inference(setup, result, analytic)
    if workload.engine == "vllm":
        return assemble.serve(setup, result, analytic)
    return assemble.training(setup, result, analytic, ALLOCATOR_SLACK_TRAIN)


def load(model: str | dict | ModelSpec, layers_from: str = "auto") -> loading.Loaded:
    """The model as the trace sees it: with `auto`, the family module where one reads this
    model_type exactly (verified against transformers: docs/coverage.md), else the layers
    derived from transformers; a family module's refusal is not the trace's, so the trace then
    derives the layers from transformers too. When transformers refuses the config as well, the
    family module's refusal stands (it names the key at fault)."""
    if layers_from != "auto":
        return loading.load(model, layers_from=layers_from)
    try:
        return loading.load(model, layers_from="auto")
    except BadConfig as refused:
        try:
            return loading.load(model, layers_from="transformers")
        except (BadConfig, BadInput):
            raise refused from None


def scenario_for(spec: ModelSpec, target: GpuTarget, workload: Workload):
    """The `run.Scenario` `--method trace` runs for this workload (imports torch): what
    `vramplan verify --level run` executes on real tensors, so both run one program."""
    from vramplan.trace import run

    if workload.engine == "hf_trainer" and workload.train is None:
        workload = replace(workload, train=TrainOptions())
    setup = core_plan.setup(spec, target, workload)
    return run.Scenario(**_scenario(spec, target, workload, setup))


def _scenario(spec: ModelSpec, target: GpuTarget, w: Workload, s) -> dict:
    """The traced program for this workload, or BadInput saying why the trace cannot run it."""
    if w.engine not in TRACED_ENGINES:
        raise BadInput(f"The trace replays vLLM, transformers generate() and the HF Trainer; the "
                       f"{w.engine} engine is planned by {{method}} analytic only.")
    if target.count > 1:
        raise BadInput("The trace measures one GPU; for several use {method} analytic "
                       "(or trace one card with {gpu} ID).")
    q = s.fmt.quant
    if q.method not in TRACEABLE_WEIGHTS:
        raise BadInput(f"The trace lays out 16-bit and bitsandbytes 4-bit (nf4, fp4) weights; "
                       f"{s.fmt.label} is planned by the analytic tier only. Use {{method}} analytic, "
                       f"or {{dtype}} bf16 to trace the 16-bit model.")
    if w.engine != "vllm":
        installed = transformers_major()
        if w.transformers != installed:
            raise BadInput(f"{{transformers}} {w.transformers}: the trace runs the installed transformers "
                           f"(major version {installed}); plan another version with {{method}} analytic.")
    fields = dict(mode=w.mode, batch=w.batch, ctx=w.ctx, dtype=s.fmt.base, quant=q.method,
                  double_quant=q.double_quant, skip=tuple(q.skip))
    if target.gpu is not None and target.gpu.architecture.strip().lower() in PRE_SM80:
        fields["pre_sm80"] = True        # SDPA's math fallback there (memory/activations.py)
    if w.engine == "vllm":
        if w.serve.tp > 1 or w.serve.pp > 1:
            raise BadInput("The trace runs one process: {tp}/{pp} > 1 is analytic only.")
        fields.update(batch=0, ctx=0, serve_tokens=s.state.batched_tokens)
    elif w.engine == "transformers":
        if s.kv_dtype != s.fmt.base:
            raise BadInput(f"transformers' cache holds the compute dtype ({s.fmt.base}); the trace "
                           f"cannot run {{kv_dtype}} {s.kv_dtype}. Use {{method}} analytic.")
    else:
        recipe.check(w.train)
        # The attention implementation asked for (--attn): transformers builds the model with it,
        # as the Trainer would; eager materializes the seq x seq scores that SDPA never does.
        fields.update(train=w.train, dtype=recipe.build_dtype(w.mode, w.train, w.dtype), attn=w.train.attn)
    return fields


def _jsonable(fields: dict) -> dict:
    return {k: (asdict(v) if is_dataclass(v) else v) for k, v in fields.items()}
