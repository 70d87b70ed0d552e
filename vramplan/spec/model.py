"""A model as the core sees it: per layer (what mixes tokens: full / sliding / chunked / MLA
attention or a recurrent state; what follows: a dense or MoE MLP) and as a list of parameter
tensors with their real shapes and Hugging Face module paths, so quantization skip lists and LoRA
targets can be applied by name. What the formulas need to know about a tensor or an architecture
beyond its shape is typed here (Tensor.split, Tensor.per_head, Traits), set by the family modules
(vramplan/models/) at parse time, so memory/ and engines/ never match module names themselves.
Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

from vramplan.spec.gguf import GgufFile
from typing import Literal

# Roles a parameter tensor can play. Quantizers only touch "linear" and "expert"; everything
# else (embeddings, norms, biases, routers, convolutions, SSM vectors) stays in 16-bit.
Role = Literal["linear", "expert", "embedding", "lm_head", "norm", "bias", "router", "conv", "other"]

# How vLLM's tensor parallelism lays a tensor over `tp` ranks (memory/parallel.py, tp_divisor):
#   "column"      split along its output (ColumnParallelLinear; MoE experts' gate/up; biases of
#                 column-parallel layers). Also, as vramplan has always counted them, the biases
#                 of norms and routers, which vLLM replicates (a few KB).
#   "row"         split along its input (RowParallelLinear): the projection that takes a block's
#                 inner output (attention output, MLP product, Mamba scan output) back to the
#                 hidden size; o_proj, down_proj, out_proj ... The training planner reads the same
#                 fact: such a projection's input is not the normalized residual stream.
#   "vocab"       VocabParallelEmbedding / ParallelLMHead rows
#   "replicated"  every rank holds all of it (norms, routers, convolutions, small
#                 down-projections such as MLA's q_a_proj, GPT-2's position table)
#   "kv_heads"    a K or V projection: split by KV head, one whole head per rank once tp exceeds
#                 them (QKVParallelLinear, num_kv_head_replicas)
#   "qkv"         a fused QKV projection (one QKVParallelLinear): its Q rows split tp ways, its
#                 K/V rows as "kv_heads"
#   "heads"       split by Mamba (or attention-sink) head (MambaMixer2: conv1d, A, D, dt_bias, the
#                 gated norm). In a Mamba layer, the gated norm is the one norm split this way.
Split = Literal["column", "row", "vocab", "replicated", "kv_heads", "qkv", "heads"]

# How a number was obtained (docs/json-schema.md, "confidence"): "exact" (read from the checkpoint's
# own metadata, or a modelled architecture that transformers on the meta device verifies),
# "modelled" (a formula of vramplan's: activations, engine overheads), "approximate" (the generic
# config reader, which names the assumptions it made). Ordered from most to least trusted.
Confidence = Literal["exact", "modelled", "approximate"]
CONFIDENCE_ORDER = ("exact", "modelled", "approximate")


def least_trusted(*labels: str) -> str:
    """The weakest of the labels: a sum is only as trusted as its least trusted part."""
    return max((l for l in labels if l), key=CONFIDENCE_ORDER.index, default="exact")


# A norm applied to each query ("q") or key ("kv") head rather than to the hidden state (Qwen3 and
# Gemma 3 q_norm / k_norm); "" for every other tensor.
PerHead = Literal["", "q", "kv"]


@dataclass(frozen=True, kw_only=True)
class Tensor:
    """One parameter tensor of the checkpoint (or `count` identical ones, e.g. MoE experts).

    `name` is the full Hugging Face parameter path without the `.weight` suffix for weights
    (e.g. "model.layers.3.self_attn.q_proj"), so `modules_to_not_convert` patterns and LoRA
    target names match it. For linear layers `shape` is torch's (out_features, in_features).
    """

    name: str
    shape: tuple[int, ...]
    role: Role
    split: Split        # how tensor parallelism splits it (see Split)
    count: int = 1
    dtype: str = ""     # the dtype transformers keeps it in whatever the model's (DeepSeek's fp32
                        # router); "" = the model dtype. vLLM's own layers ignore it.
    per_head: PerHead = ""  # a per-head q/k norm (PerHead): the training planner sizes what it
                            # saves by the heads it normalizes
    stored: tuple[tuple[str, int, int], ...] = ()   # read from a safetensors checkpoint: each stored
                            # part (qweight, scales, ...) as (safetensors dtype, elements, bytes);
                            # () = computed from shape and format (memory/weights.py, allocated_bytes)

    @property
    def numel(self) -> int:
        return prod(self.shape) * self.count

    @property
    def leaf(self) -> str:
        """Last path component: "q_proj", the name LoRA target lists use."""
        return self.name.rsplit(".", 1)[-1]


@dataclass(frozen=True, kw_only=True)
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


@dataclass(frozen=True, kw_only=True)
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


@dataclass(frozen=True, kw_only=True)
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


@dataclass(frozen=True, kw_only=True)
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


@dataclass(frozen=True, kw_only=True)
class Traits:
    """What an architecture's implementations (transformers, peft, vLLM) do that its layers and
    tensors do not show. Each family module sets these at parse time from the generic defaults
    (vramplan/models/_base.py, GENERIC_TRAITS), so the formulas in memory/ and engines/ read them
    here and never look a model type up."""

    residual_tensors: int
    """Hidden-size tensors alive through a decoder layer in a forward (memory/activations.py,
    residual_tensors: the inference peak and the training recomputation). 4 in general; GPT-2
    keeps 6 (trace tier, docs/trace.md)."""

    hf_attention: str | None
    """The attention transformers runs when SDPA is asked for, where the family has no SDPA path
    (memory/activations.py, attention_impl): "eager_sinks" for gpt-oss; None runs what is asked."""

    norm_fp32: bool
    """Gemma's RMSNorm computes x * (1 + weight) in fp32 and casts only its result, so a trained
    norm saves an fp32 tensor (engines/hf_trainer/saved_activations.py)."""

    dropout_residual: float
    """Training-mode residual dropout (GPT-2 resid_pdrop): > 0 keeps a 1-byte mask on the attention
    and the MLP outputs of every layer (saved_activations.dropout_masks)."""

    dropout_embedding: float
    """Training-mode embedding dropout (GPT-2 embd_pdrop): > 0 keeps one mask on the embeddings
    (saved_activations.dropout_masks)."""

    hf_linear_subclass: str
    """An nn.Linear subclass transformers builds the model's projections from (Falcon's
    FalconLinear): transformers 5's bitsandbytes conversion skips it (memory/weights.py,
    transformers_bnb); "" when the model uses plain nn.Linear."""

    hf_linear_subclass_modules: tuple[str, ...]
    """The module names built as `hf_linear_subclass`, as skip patterns (memory/weights.py)."""

    mamba_ssm_cache_dtype: str | None
    """The dtype vLLM keeps the Mamba SSM state in, as the config names it (engines/vllm/serving.py);
    None: the model dtype."""

    attention_module: str
    """The attention block's module name inside a layer ("self_attn"; GPT-2 "attn", Falcon
    "self_attention"): its row-parallel output projection reads the attention kernel's output,
    which SDPA already keeps for its own backward (saved_activations._linears). "" where no
    projection is planned that way (Nemotron-H: its attention sits at "mixer")."""

    fused_qkv_saved_whole: bool
    """A fused QKV projection whose q and k are rotated into new tensors while v stays a view of
    its output, so the attention kernel saving v keeps the whole fused output alive (Phi-3
    qkv_proj, Falcon query_key_value; trace tier). GPT-2's c_attn has no rotary: q, k and v are
    all views and nothing more is kept (saved_activations._fused_qkv_extra)."""

    lora_targets: tuple[str, ...] | None
    """peft's default LoRA target_modules for this model type (peft/utils/constants.py
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING), used when none are named
    (engines/hf_trainer/lora.py); None where peft has none and raises "Please specify
    `target_modules`"."""

    lora_moe: tuple[tuple[str, str], ...]
    """peft's renaming of MoE targets for transformers 5, which fuses the experts: v4 module name
    -> the fused parameter it becomes ("router", "gate_up", "down"), as peft 0.21's
    _MOE_TARGET_MODULE_MAPPING keys it through transformers' conversion patterns
    (peft/utils/transformers_weight_conversion.py; engines/hf_trainer/lora.py). () where peft
    converts nothing."""

    towers: tuple[str, ...]
    """Name prefixes of the encoder towers and their projectors (vision, audio): vLLM places them
    on the first pipeline stage (memory/parallel.py, stage_tensors) and a text-only training
    step runs none of them (engines/hf_trainer/step_setup.py)."""

    liger: bool = False
    """Liger-Kernel patches this model type when the Trainer's use_liger_kernel is on (its
    monkey_patch.py MODEL_TYPE_TO_APPLY_LIGER_FN); for any other type _apply_liger_kernel_to_instance
    logs a warning and changes nothing (engines/hf_trainer, docs/training.md §15)."""
    pooling: bool = False
    """An encoder-only (embedding) model that vLLM serves as a pooling model: no KV cache, a dummy
    pooler instead of the sampler in its profile (models/encoder.py, engines/vllm/serving.py);
    other modes refuse it."""


@dataclass(frozen=True, kw_only=True)
class VisionTower:
    """A summary of a multimodal checkpoint's vision encoder (its tensors are in ModelSpec.tensors).
    Serving reads it for vLLM's start-up encoder profile (engines/vllm/encoder_profile.py); other
    workloads are text-only and run no tower."""

    hidden_size: int
    num_layers: int
    patches_per_image: int
    tokens_per_image: int        # image tokens the projector hands the language model
    params: int                  # tower and projector
    # What vLLM's encoder profile reads (engines/vllm/encoder_profile.py); 0 where a reader does not
    # size it, and then the profile is not modelled.
    intermediate_size: int = 0   # the tower's MLP width
    gated_mlp: bool = False      # gate and up projections (Qwen2.5-VL), else fc1 -> act -> fc2
    patch_input: int = 0         # pixel_values elements per patch: channels x patch^2 (x temporal patch)


@dataclass(frozen=True, kw_only=True)
class ContextLimit:
    """The longest max_model_len vLLM starts with for this config.json unless
    VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 (vllm/config/model.py, _get_and_verify_max_len, v0.11.0
    lines 1763-1912): the smallest of the config's length keys, times the RoPE scaling factor,
    or a larger model_max_length. Derived by loading.py; read by engines/vllm."""

    tokens: int | None           # the largest --ctx that starts; None: the config has no length key,
                                 # and vLLM starts with any
    key: str                     # the config key it came from, as vLLM's refusal names it
    shown: str                   # the derived value as vLLM prints it ("32768", or "131072.0" once scaled)
    model_max_length: int | None = None


@dataclass(frozen=True, kw_only=True)
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
    torch_dtype_assumed: bool = False   # the config names no dtype, so fp32 (transformers' default) is
                                        # assumed; planner.py warns when a plan really uses it
    quantization: Quantization | None = None
    max_position_embeddings: int | None = None
    context_limit: ContextLimit | None = None    # vLLM's derived max_model_len (None: not derived,
                                                 # max_position_embeddings stands for it)
    traits: Traits
    mtp_layers: int = 0                 # DeepSeek's multi-token-prediction layers: in the checkpoint,
                                        # not built by transformers, not counted
    vision: VisionTower | None = None
    gguf: GgufFile | None = None        # read from a GGUF file (or planned as one): every tensor's
                                        # ggml type and bytes (spec/gguf.py)
    warnings: tuple[str, ...] = ()
    confidence: Confidence = "exact"    # how the layers and tensors were read (Confidence): a family
                                        # module verified against transformers is exact; the generic
                                        # reader is approximate unless its layout is verified
    assumptions: tuple[str, ...] = ()   # what an approximate reading assumed, one sentence each
    weights_confidence: str = ""        # the weights' own label when it differs from `confidence`
                                        # ("exact" once read from the checkpoint's safetensors headers)
    # Where the config was read from (loading.py); its path and hash take no part in comparisons.
    derived_from: str = ""              # "transformers 5.25.0" when the layers were derived from the
                                        # transformers model itself (vramplan/derive/); "" for the
                                        # analytic reader (models/)
    source: str = ""                    # how it was found: "bundled", "path", "hub", "dict" ...
    location: str = field(default="", compare=False)        # its path or URL
    config_sha256: str = field(default="", compare=False)   # of its bytes: the trace cache key
    # Where the weights' bytes come from (models/checkpoint.py): "config" (the tensors derived from
    # config.json) or "checkpoint" (every tensor's dtype and shape read from the safetensors
    # headers: exact, whatever the architecture or quantization). A trust label reads it.
    weights_from: str = "config"
    weights_source: str = ""            # "3 safetensors files, headers read"; "" from the config
    checkpoint_bytes: int = 0           # the checkpoint's tensors, summed exactly as stored
    weights_notes: tuple[str, ...] = () # how the checkpoint's tensors were placed (unknown names, skips)

    @property
    def weights_exact(self) -> bool:
        """True when the weights are the checkpoint's own bytes (the trust label `exact`)."""
        return self.weights_from == "checkpoint"

    @property
    def kv_confidence(self) -> str:
        """The KV cache's label: the layers' reading (a checkpoint holds no cache)."""
        return self.confidence

    @property
    def weights_label(self) -> str:
        """The weights' label: `exact` when read from the checkpoint's headers, whatever the layers'
        reading; else an explicit weights_confidence, else the layers' own."""
        return "exact" if self.weights_exact else (self.weights_confidence or self.confidence)

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
