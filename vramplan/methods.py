"""The two methods that answer a PlanRequest (`method=`): "analytic", the closed-form planner
(no GPU, no torch), and "trace", the real transformers model run on fake tensors. Both take the
same request and return the same Plan."""

from __future__ import annotations

from dataclasses import replace

from vramplan import catalog, planner
from vramplan.errors import BadInput
from vramplan.loading import WEIGHTS_FROM, is_gguf, load_model
from vramplan.request import LOCAL_ENGINES, METHODS, PlanRequest, build_workload
from vramplan.sources import ollama
from vramplan.spec import Plan
from vramplan.targets import resolve_target


def plan(request: PlanRequest) -> Plan:
    """Resolve the request's GPU, check its workload, and answer it with its method."""
    if request.method not in METHODS:
        raise BadInput(f"{{method}} {request.method!r} is not one of: {', '.join(METHODS)}.")
    target = resolve_target(request.gpu, request.gpu_mem, request.gpu_free)
    request = local_request(request)
    workload = build_workload(request, target.count)
    if request.method == "trace" and check_weights_from(request.weights_from) == "checkpoint":
        raise BadInput("{weights_from} checkpoint applies to {method} analytic; {method} trace builds the "
                       "transformers model from the config.")
    if request.method == "trace":
        if isinstance(request.model, str) and is_gguf(request.model):
            raise BadInput("{method} trace runs the transformers model of a config.json; a GGUF file is "
                           "planned with {method} analytic.")
        if workload.engine == "sglang":
            raise BadInput("{method} trace replays transformers and vLLM programs; {engine} sglang is "
                           "planned with {method} analytic.")
        o = workload.train
        if o is not None and (o.liger or o.loss != "default" or o.offload_activations or o.grad_accum > 1):
            raise BadInput("{method} trace does not replay {liger}, {loss}, {offload_activations} or "
                           "{grad_accum}; plan them with {method} analytic.")
        if workload.new_tokens:
            raise BadInput("{method} trace replays a prefill and one decode step, not {new_tokens}; plan "
                           "{new_tokens} with {method} analytic.")
        from vramplan import trace      # the trace tier loads only when asked for

        return trace.plan(request.model, target, workload, no_cache=request.no_cache,
                          layers_from=request.layers_from)
    model = load_model(request.model, check_weights_from(request.weights_from), request.layers_from)
    if model.gguf is not None and workload.engine not in LOCAL_ENGINES:
        raise BadInput(f"{model.id} is a GGUF file: plan it with {{engine}} llama.cpp or ollama.")
    return planner.build(model, target, workload, catalog=catalog.load_gpus())


def check_weights_from(value) -> str:
    """--weights-from: one of WEIGHTS_FROM, else BadInput."""
    if value not in WEIGHTS_FROM:
        raise BadInput(f"{{weights_from}} {value!r} is not one of: {', '.join(WEIGHTS_FROM)}.")
    return value


def local_request(request: PlanRequest) -> PlanRequest:
    """An Ollama model name ("qwen3:32b-q4_K_M") is its bundled HF config at the tag's GGUF mix,
    planned by Ollama unless another engine is named."""
    if not isinstance(request.model, str):
        return request
    if not ollama.is_ollama_name(request.model):
        return request
    found = ollama.resolve(request.model)
    return replace(request, model=found.hf, engine=request.engine or "ollama",
                   dtype=found.mix.lower() if request.dtype == "auto" else request.dtype)
