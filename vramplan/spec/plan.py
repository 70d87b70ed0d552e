"""The question (a workload and its engine options) and the answer (a Plan) of one planning run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vramplan.spec.hardware import GpuTarget
from vramplan.spec.local import LocalReport
from vramplan.spec.model import ModelSpec, least_trusted
from vramplan.spec.sglang import SglangReport


Mode = Literal["serve", "infer", "full", "lora", "qlora"]


@dataclass(frozen=True)
class ServeOptions:
    """vLLM engine settings (names as vLLM's own flags)."""

    gpu_memory_utilization: float = 0.9
    max_num_batched_tokens: int | None = None   # None: the engine default for this version
    max_num_seqs: int | None = None
    block_size: int = 16
    tp: int = 1
    pp: int = 1
    enforce_eager: bool = False
    kv_cache_memory: int | None = None          # explicit KV bytes, bypassing the profile
    vllm_version: str = ""                      # the vLLM release planned ("0.14.1", "0.20"); "" = the
                                                # newest known (engines/vllm/serving.py, resolve_version)
    allow_long_max_model_len: bool = False      # as vLLM with VLLM_ALLOW_LONG_MAX_MODEL_LEN=1: a max
                                                # model length above the config's is allowed (warned)
    dp: int = 1                                 # --data-parallel-size: engines, each with its own KV cache
    enable_expert_parallel: bool = False        # MoE experts sharded whole over tp x dp ranks
    cpu_offload_bytes: int = 0                  # --cpu-offload-gb per GPU, in bytes
    limit_mm_per_prompt: tuple = ()             # ((modality, count), ...) as given; not modelled
    swap_space_gib: float | None = None         # --swap-space (CPU memory; no GPU effect)
    layout_note: str = ""                       # the multi-node layout assumed (memory/parallel.serve_layout)


@dataclass(frozen=True)
class Workload:
    mode: Mode                   # what the user asked for, as printed (serve, infer, full, lora, qlora)
    batch: int                   # serve/infer: sequences; training: per-device micro-batch
    ctx: int                     # serve/infer: max model length; training: sequence length
    dtype: str = "auto"          # weight precision as asked ("auto" = the checkpoint's)
    kv_dtype: str = "auto"
    serve: ServeOptions = field(default_factory=ServeOptions)
    train: object = None         # training modes: engines.hf_trainer.options.TrainOptions
    transformers: int = 5        # infer/training: the transformers major version whose module
                                 # layout is planned (what bitsandbytes converts differs, 4 vs 5)
    engine: str = ""             # the engine that answers (vramplan.engines.registry), chosen at
                                 # the edge from the mode (vramplan.request.ENGINE_OF_MODE)
    llama: object = None         # --engine llama.cpp / ollama: engines.llama_cpp.options.LlamaOptions
    sglang: object = None        # --engine sglang: engines.sglang.options.SglangOptions


@dataclass(frozen=True)
class Suggestion:
    change: str                # human text, e.g. "--kv-dtype fp8"
    flags: dict                # what to change, machine-readable
    total_bytes: int
    fits: bool
    usd_per_hour: float | None = None   # the cards it runs on, catalog median per GPU-hour x count


@dataclass(frozen=True)
class ServeReport:
    """The figures vLLM logs at start-up, predicted."""

    kv_cache_bytes: int           # memory the engine gives the KV cache
    num_gpu_blocks: int
    kv_cache_tokens: int          # "GPU KV cache size: N tokens"
    max_concurrency: float        # "Maximum concurrency for ctx tokens per request: X"
    block_size: int
    max_num_batched_tokens: int
    max_num_seqs: int
    engine: str                   # the vLLM version whose accounting is modelled
    starts: bool                  # False: vLLM refuses to start or runs out of memory starting
    max_model_len_that_starts: int
    outside_budget: dict = field(default_factory=dict)   # context, graphs, NCCL: in total x (1 - util)
    headroom_ok: bool = True      # the outside-budget memory fits in total x (1 - util)
    refusal: str = ""             # the error vLLM would raise at start-up ("" when it starts)
    available_bytes: int = 0      # "Available KV cache memory" on the limiting rank (< 0: none)
    rank: int = 0                 # the limiting rank (fewest KV blocks): the plan's components are its
    kv_groups: int = 1            # vLLM's KV cache groups (hybrid models: several, padded to one size)
    kv_notes: tuple = ()          # what vLLM logs about block sizes and padding layers
    ranks: tuple = ()             # per pipeline stage: {rank, layers, weights, activations, available, num_blocks}
    holds: bool = False           # the budget holds batch x ctx at once (each request's KV cache resident);
                                  # the plan fits when vLLM starts and holds it (docs/serving.md)
    mxfp4_backend: str = ""       # the MXFP4 MoE kernels whose layout the weights follow ("" for other formats)


# Components that do not depend on the model's sizes (CUDA context, cuBLAS workspace, NCCL,
# vLLM's non-torch memory and CUDA graphs): always vramplan's model of the engine.
_MODEL_FREE = frozenset({"cuda_context", "cublas_workspace", "nccl", "non_torch", "cuda_graphs"})


def component_labels(names, *, weights: str, layers: str) -> dict[str, str]:
    """Each component's trust label from two inputs: how the weights were obtained (`weights`:
    "exact" from a checkpoint's headers or a verified family, "approximate" from the generic
    reader) and how the layers were read (`layers`). The weights carry their own label, the KV
    cache the layers'; every other component is a formula of vramplan's ("modelled"), or
    "approximate" when the model sizes it is computed from are."""
    model = least_trusted(weights, layers)
    out = {}
    for name in names:
        if name == "weights":
            out[name] = weights
        elif name == "kv_cache":
            out[name] = layers
        elif name not in _MODEL_FREE and model == "approximate":
            out[name] = "approximate"
        else:
            out[name] = "modelled"
    return out


@dataclass(frozen=True)
class Plan:
    """The answer: every component in bytes per GPU, the verdict and the limits."""

    model: ModelSpec
    target: GpuTarget
    workload: Workload
    weight_dtype: str                  # resolved: "bf16", "nf4", "mxfp4+bf16", ...
    kv_dtype: str                      # resolved
    components: dict[str, int]         # name -> bytes per GPU, in display order
    component_notes: dict[str, str]
    peak_allocated_bytes: int          # comparable to torch.cuda.max_memory_allocated()
    total_bytes: int                   # comparable to nvidia-smi for the process
    capacity_bytes: int                # what the workload may use on one GPU
    kv_bytes_per_token: int            # all layers, one sequence, chosen kv dtype, below any window
    max_batch: int                     # at this ctx; 0 when not even batch 1 fits
    max_ctx: int                       # at this batch; 0 when not even 1 token fits
    serve: ServeReport | None = None
    suggestions: tuple[Suggestion, ...] = ()
    warnings: tuple[str, ...] = ()
    phase: str = ""                    # where the peak falls (training: forward/backward/step)
    local: LocalReport | None = None   # llama.cpp / Ollama: layers on the GPU, buffers per device
    sglang: SglangReport | None = None  # SGLang: its memory settings, token pool and refusals
    outside: dict[str, int] = field(default_factory=dict)   # name -> bytes reported but not in
                                       # total_bytes nor the verdict: paged optimizer state (CUDA
                                       # managed memory the driver evicts to host RAM), host RAM of
                                       # offloaded state; notes in component_notes

    @property
    def fits(self) -> bool:
        """The engine's verdict (engines/base.py, Engine.fits) read back from the plan: the total
        within the capacity, and the program starts (vLLM: its report's `starts`)."""
        inside = self.total_bytes <= self.capacity_bytes
        return (inside and (self.serve is None or self.serve.starts)
                and (self.local is None or self.local.ram_ok)
                and (self.sglang is None or self.sglang.starts))

    @property
    def component_confidence(self) -> dict[str, str]:
        """Each component's trust label (component_labels)."""
        return component_labels(self.components, weights=self.model.weights_label,
                                layers=self.model.kv_confidence)

    @property
    def confidence(self) -> str:
        """How the model's sizes behind this plan were obtained: the weaker of the weights' and the
        layers' labels (the engine's own allocations are always modelled: component_confidence)."""
        return least_trusted(self.model.weights_label, self.model.kv_confidence)

    @property
    def headroom_bytes(self) -> int:
        return self.capacity_bytes - self.total_bytes
