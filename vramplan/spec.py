"""Frozen dataclasses that flow between the edges and the pure core.

A model is described per layer (what mixes tokens: full / sliding / chunked / MLA attention or a
recurrent state; what follows: a dense or MoE MLP) and as a list of parameter tensors with their
real shapes and Hugging Face module paths, so quantization skip lists, LoRA targets and tensor
parallel splits can all be applied by name. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import Literal

# Roles a parameter tensor can play. Quantizers only touch "linear" and "expert"; everything
# else (embeddings, norms, biases, routers, convolutions, SSM vectors) stays in 16-bit.
Role = Literal["linear", "expert", "embedding", "lm_head", "norm", "bias", "router", "conv", "other"]


@dataclass(frozen=True)
class Tensor:
    """One parameter tensor of the checkpoint (or `count` identical ones, e.g. MoE experts).

    `name` is the full Hugging Face parameter path without the `.weight` suffix for weights
    (e.g. "model.layers.3.self_attn.q_proj"), so `modules_to_not_convert` patterns and LoRA
    target names match it. For linear layers `shape` is torch's (out_features, in_features).
    """

    name: str
    shape: tuple[int, ...]
    role: Role
    count: int = 1
    dtype: str = ""     # the dtype transformers keeps it in whatever the model's (DeepSeek's fp32
                        # router); "" = the model dtype. vLLM's own layers ignore it.

    @property
    def numel(self) -> int:
        return prod(self.shape) * self.count

    @property
    def leaf(self) -> str:
        """Last path component: "q_proj", the name LoRA target lists use."""
        return self.name.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class Attention:
    """Token mixing by attention. `kind` decides what the KV cache holds per token."""

    kind: Literal["full", "sliding", "chunked", "mla"]
    num_heads: int
    num_kv_heads: int
    head_dim: int          # K head dim (for MLA: qk_nope + qk_rope)
    v_head_dim: int        # V head dim (equal to head_dim except in MLA)
    window: int | None = None      # sliding window or attention chunk, tokens
    kv_lora_rank: int = 0          # MLA latent width
    rope_dim: int = 0              # MLA decoupled rope key width

    @property
    def kv_elems_per_token(self) -> int:
        """Cache elements per token in this layer (one sequence).

        Full/sliding/chunked: K and V for every KV head. MLA: the compressed latent plus the
        shared rope key, stored once (no x2): DeepSeek-V2 paper, section 2.1.
        """
        if self.kind == "mla":
            return self.kv_lora_rank + self.rope_dim
        return self.num_kv_heads * (self.head_dim + self.v_head_dim)


@dataclass(frozen=True)
class Recurrent:
    """A Mamba-style layer: a fixed state per sequence, whatever the context length."""

    kind: Literal["mamba2"]
    conv_state_elems: int   # (conv channels) x (conv_kernel - 1)
    ssm_state_elems: int    # heads x head_dim x state_size
    num_heads: int = 0
    head_dim: int = 0
    state_size: int = 0
    conv_channels: int = 0
    conv_kernel: int = 0
    chunk_size: int = 0     # the SSD scan's chunk (mamba_ssm keeps one fp32 state per chunk)

    @property
    def d_inner(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def n_groups(self) -> int:
        return (self.conv_channels - self.d_inner) // (2 * self.state_size) if self.state_size else 0

    @property
    def in_proj(self) -> int:
        """in_proj width: z, x, B, C and dt."""
        return self.d_inner + self.conv_channels + self.num_heads

    @property
    def chunk_state_elems(self) -> int:
        """Elements per token of one fp32 chunk-state tensor (heads x head_dim x state per chunk)."""
        return self.num_heads * self.head_dim * self.state_size // self.chunk_size if self.chunk_size else 0

    @property
    def state_elems(self) -> int:
        return self.conv_state_elems + self.ssm_state_elems


@dataclass(frozen=True)
class Mlp:
    """The feed-forward part of a layer. For MoE, `intermediate` is one expert's width."""

    kind: Literal["dense", "moe"]
    intermediate: int
    gated: bool = True               # SwiGLU/GeGLU: gate and up projections
    num_experts: int = 0
    top_k: int = 0
    shared_intermediate: int = 0     # total width of always-on shared experts (0: none)
    fused_gate_up: bool = False      # transformers computes gate and up as one projection (Phi-3)
    act: str = ""                    # the activation, where its memory differs from a fused
                                     # kernel's: "gelu_new" (transformers' Python tanh GELU)


@dataclass(frozen=True)
class LayerSpec:
    index: int
    mixer: Attention | Recurrent | None
    mlp: Mlp | None
    tensors: tuple[Tensor, ...]

    @property
    def params(self) -> int:
        return sum(t.numel for t in self.tensors)


@dataclass(frozen=True)
class Quantization:
    """How a checkpoint's (or a requested) weights are stored.

    method: "none" (plain `dtype`), "fp8", "int8" (bitsandbytes LLM.int8), "gptq", "awq",
    "nf4"/"fp4" (bitsandbytes 4-bit), "mxfp4". `skip` holds module-name patterns that stay in
    16-bit (`modules_to_not_convert`, `llm_int8_skip_modules`, `ignore`).
    """

    method: str
    bits: int = 16
    group_size: int | None = None              # GPTQ / AWQ
    block_size: tuple[int, int] | None = None  # FP8 block scales, e.g. (128, 128)
    double_quant: bool = False                 # bitsandbytes nested absmax quantization
    skip: tuple[str, ...] = ()
    keep_roles: tuple[str, ...] = ()           # tensor roles the quantizer cannot reach (e.g. the
                                               # fused 3-D experts under transformers 5 + bitsandbytes)
    pre_quantized: bool = False                # read from the checkpoint's quantization_config
    desc_act: bool = False                     # GPTQ act-order (adds g_idx, always stored)


@dataclass(frozen=True)
class ModelSpec:
    """Everything the core needs to know about a model, parsed from config.json."""

    id: str
    model_type: str
    family: str
    hidden_size: int
    vocab_size: int
    layers: tuple[LayerSpec, ...]
    tensors: tuple[Tensor, ...]         # outside the decoder layers: embeddings, final norm, lm_head, towers
    tie_word_embeddings: bool
    torch_dtype: str                    # the checkpoint's floating dtype: "bf16", "fp16", "fp32"
    quantization: Quantization | None = None
    max_position_embeddings: int | None = None
    source: str = ""                    # where the config came from (path or "bundled" ...)
    warnings: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def all_tensors(self):
        yield from self.tensors
        for layer in self.layers:
            yield from layer.tensors

    @property
    def params(self) -> int:
        """Unique parameters, as `sum(p.numel() for p in model.parameters())` counts them
        (a tied lm_head is not listed as a tensor, so it is not counted twice)."""
        return sum(t.numel for t in self.all_tensors())

    @property
    def attention_layers(self) -> tuple[LayerSpec, ...]:
        return tuple(l for l in self.layers if isinstance(l.mixer, Attention))


@dataclass(frozen=True)
class Price:
    usd_per_hour: float
    provider: str
    kind: str = "on-demand"     # on-demand | spot | community | secure | reserved
    date: str = ""              # YYYY-MM-DD the price was quoted
    source: str = ""


@dataclass(frozen=True)
class GpuSpec:
    """One catalog GPU. Capacity comes from `cuda_total_bytes`, never the marketing size."""

    id: str
    name: str
    nvml_name: str
    marketing: str                     # "48 GB GDDR6 ECC", as the vendor labels it
    cuda_total_bytes: int              # what torch.cuda.get_device_properties().total_memory says
    cuda_total_measured: bool          # False: derived from the NVML total (see docs)
    nvml_total_bytes: int | None = None
    memory_bandwidth_gbs: float | None = None   # GB/s, decimal as vendors quote it
    bf16_tflops: float | None = None            # dense
    fp8_tflops: float | None = None             # dense
    tdp_w: int | None = None
    interconnect: str = ""
    nvlink: bool = False
    mig: int = 0                               # max MIG instances, 0 = no MIG
    architecture: str = ""
    fp8: bool = False                          # native FP8 tensor cores
    aliases: tuple[str, ...] = ()
    prices: tuple[Price, ...] = ()
    sources: tuple[str, ...] = ()


@dataclass(frozen=True)
class GpuTarget:
    """What the workload runs on: `count` cards of one kind, or a bare memory size."""

    gpu: GpuSpec | None
    count: int = 1
    memory_bytes: int | None = None   # --gpu-mem: overrides the catalog's CUDA total
    free_bytes: int | None = None     # probed free memory (other processes hold the rest)

    @property
    def id(self) -> str:
        return self.gpu.id if self.gpu else "custom"

    @property
    def per_gpu_bytes(self) -> int:
        if self.memory_bytes is not None:
            return self.memory_bytes
        assert self.gpu is not None
        return self.gpu.cuda_total_bytes


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
    vllm_version: str = ""                      # whose accounting: "" = 0.11-0.20; "0.10" (NCCL inside
                                                # the budget) or "0.21" (CUDA graphs inside it)


@dataclass(frozen=True)
class Workload:
    mode: Mode
    batch: int                   # serve/infer: sequences; training: per-device micro-batch
    ctx: int                     # serve/infer: max model length; training: sequence length
    dtype: str = "auto"          # weight precision as asked ("auto" = the checkpoint's)
    kv_dtype: str = "auto"
    serve: ServeOptions = field(default_factory=ServeOptions)
    train: object = None         # training modes: core.training.TrainOptions
    transformers: int = 5        # infer/training: the transformers major version whose module
                                 # layout is planned (what bitsandbytes converts differs, 4 vs 5)


@dataclass(frozen=True)
class Suggestion:
    change: str                # human text, e.g. "--kv-dtype fp8"
    flags: dict                # what to change, machine-readable
    total_bytes: int
    fits: bool


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
    starts: bool                  # False: vLLM refuses to start (one request cannot fit)
    max_model_len_that_starts: int
    outside_budget: dict = field(default_factory=dict)   # context, graphs, NCCL: in total x (1 - util)
    headroom_ok: bool = True      # the outside-budget memory fits in total x (1 - util)
    refusal: str = ""             # the error vLLM would raise at start-up ("" when it starts)
    available_bytes: int = 0      # "Available KV cache memory" on the limiting rank (< 0: none)
    rank: int = 0                 # the limiting rank (fewest KV blocks): the plan's components are its
    kv_groups: int = 1            # vLLM's KV cache groups (hybrid models: several, padded to one size)
    kv_notes: tuple = ()          # what vLLM logs about block sizes and padding layers
    ranks: tuple = ()             # per pipeline stage: {rank, layers, weights, activations, available, num_blocks}


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

    @property
    def fits(self) -> bool:
        inside = self.total_bytes <= self.capacity_bytes
        return inside and (self.serve is None or self.serve.headroom_ok)

    @property
    def headroom_bytes(self) -> int:
        return self.capacity_bytes - self.total_bytes
