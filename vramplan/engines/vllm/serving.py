"""A vLLM V1 serving engine, release by release (0.9 to 0.31; ERAS): its memory budget, the
profiling peak, the KV cache layout, and what it logs or refuses at start-up, on one GPU or split
over several.

Each worker (one GPU: a tensor-parallel rank of a pipeline stage) takes a snapshot after its
CUDA context and NCCL exist, requests `total x gpu_memory_utilization`, loads its share of the
weights, profiles a dummy forward of `max_num_batched_tokens` tokens (the last stage also a
dummy sampler pass) and gives the rest to the KV cache:

    available  = total * util - weights - torch_peak_increase - non_torch_increase
                 (- the CUDA graph estimate, from 0.21)
    num_blocks = min over workers of available // (page_size * layers per group there)
    "GPU KV cache size" = num_blocks // kv groups * block_size tokens
    "Maximum concurrency for L tokens" = num_blocks / blocks one request of L tokens needs

The CUDA context, NCCL buffers and CUDA graphs live outside the budget, in the remaining
`total x (1 - util)`. The engine refuses to start when max_model_len exceeds the config's derived
length (unless VLLM_ALLOW_LONG_MAX_MODEL_LEN), when free memory is below `total x util`, when
nothing is left for the cache, or when one request of max_model_len does not fit; an explicit
--kv-cache-memory the card cannot hold runs out of memory allocating it. `starts` is that
decision, and the engine's verdict (engine.py, `fits`) needs it (docs/validation.md).
The plan's components are those of the worker with the fewest KV blocks.
Sources: docs/sources/vllm-accounting.md (A.2-A.8), docs/methodology.md section 4,
docs/serving.md (a walk-through).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from vramplan.errors import BadInput
from vramplan.spec import GpuSpec, GpuTarget, ModelSpec, ServeOptions, ServeReport, Workload
from vramplan.spec.model import ContextLimit
from vramplan.units import GiB, ceil_div, shown
from vramplan.memory import activations as act
from vramplan.memory import kv_cache as kv
from vramplan.memory.dtypes import FLOAT_BYTES, config_dtype
from vramplan.memory.solve import largest_fitting
from vramplan.memory.overhead import CUDA_CONTEXT_BYTES, NCCL_BYTES_PER_RANK
from vramplan.memory.parallel import MoeSplit, check_parallel, moe_split, pp_stages, stage_tensors, tp_divisor
from vramplan.memory.setup import Breakdown, Setup, resolve_kv_dtype
from vramplan.memory.weights import WeightFormat, allocated_bytes, quantizes, resolve_format, weight_bytes

# Whose accounting is modelled (--vllm-version X.Y[.Z] picks one; vllm-accounting.md A.2, A.4, A.8,
# A.9). Each era starts at the release where a change that moves the start-up numbers landed:
#   0.9-0.10   NCCL is set up after the start-up snapshot, so on NVLink machines its buffers count as
#              non-torch growth inside the budget (2.04 GiB logged at TP4 on H200, vllm PR #21429;
#              none visible on PCIe L4s, vllm PR #20665)
#   0.11-0.16  NCCL before the snapshot (PR #25359); CUDA graphs outside the budget; the dummy
#              sampler pass sorts the vocabulary (PyTorch top-k/top-p)
#   0.17-0.20  Triton top-k/top-p kernels (PR #33538, v0.17.0): the profile's sampler pass no longer
#              sorts; CUDA graph estimation exists but is opt-in (PR #30515, v0.18.0)
#   0.21+      CUDA graph memory estimated while profiling and subtracted (on by default since
#              v0.21.0, its own log line says so); FlashInfer top-k/top-p sampler on by default
#              (PR #40376, v0.21.0)
ERAS = (((0, 9, 0), "0.9-0.10"), ((0, 11, 0), "0.11-0.16"), ((0, 17, 0), "0.17-0.20"), ((0, 21, 0), "0.21+"))
ENGINES = {
    "0.9-0.10": "era-2 profiling, NCCL inside the budget on NVLink, CUDA graphs outside, sampler sorts the vocabulary",
    "0.11-0.16": "NCCL and CUDA graphs outside the budget, hybrid KV cache groups, sampler sorts the vocabulary",
    "0.17-0.20": "NCCL and CUDA graphs outside the budget, Triton top-k/top-p sampler (no sort)",
    "0.21+": "CUDA graph memory estimated inside the budget, FlashInfer/Triton sampler (no sort)",
}
# The newest vLLM release this accounting was checked against: v0.31.0 (pip pins of vllm==0.31.0 in
# public repositories from 2026-09 on; no later release is found: vllm-accounting.md A.9). The
# default, and what an unknown later version is planned as.
NEWEST_RELEASE = (0, 31, 0)
_VERSION = re.compile(r"v?(\d+)\.(\d+)(?:\.(\d+))?((?:rc|\.?dev|\.?post|\+)[\w.+]*)?")


@dataclass(frozen=True)
class VllmVersion:
    """A vLLM release as --vllm-version names it, the accounting era it falls in, and a note when
    it is newer than any release this accounting was checked against."""

    release: tuple[int, int, int]
    era: str
    note: str = ""

    @property
    def shown(self) -> str:
        return ".".join(map(str, self.release))

    @property
    def engine(self) -> str:
        """What the plan says it models (ServeReport.engine)."""
        default = " (default: the newest release known)" if self.release == NEWEST_RELEASE and not self.note else ""
        return f"vLLM {self.shown}{default}; {self.era} accounting: {ENGINES[self.era]}"


def resolve_version(version: str) -> VllmVersion:
    """--vllm-version as a release and its era; "" is the newest release known. Releases before 0.9
    are refused; one newer than NEWEST_RELEASE is planned with the newest era, with a note."""
    text = version.strip()
    if not text:
        return VllmVersion(NEWEST_RELEASE, ERAS[-1][1])
    match = _VERSION.fullmatch(text) if len(text) <= 64 else None
    if not match or any(len(part) > 4 for part in match.groups()[:3] if part):
        raise BadInput(f"{{vllm_version}} {shown(version)} is not a version like 0.10, 0.21 or 0.31.0 "
                       f"(a vLLM release).")
    release = (int(match[1]), int(match[2]), int(match[3] or 0))
    if release < ERAS[0][0]:
        raise BadInput(f"{{vllm_version}} {version}: vLLM before 0.9 (V0 and early V1) sized its cache "
                       f"differently and is not modelled; use 0.9 or later.")
    era = [name for start, name in ERAS if release >= start][-1]
    note = ""
    if release > NEWEST_RELEASE:
        note = (f"vLLM {text} is newer than the newest release this accounting was checked against "
                f"({'.'.join(map(str, NEWEST_RELEASE))}); it is planned as {ERAS[-1][1]}, whose changes "
                f"it may not all share.")
    return VllmVersion(release, era, note)


ENGINE = VllmVersion(NEWEST_RELEASE, ERAS[-1][1]).engine

# vllm/engine/arg_utils.py _set_default_args, usage context OPENAI_API_SERVER (`vllm serve`):
# cards with >= 70 GiB whose name does not contain "a100" get 8192 tokens / 1024 sequences,
# every other card 2048 / 256 (vllm-accounting.md A.7).
LARGE_GPU_BYTES = 70 * GiB
DEFAULT_BATCHED_TOKENS = {True: 8192, False: 2048}
DEFAULT_MAX_SEQS = {True: 1024, False: 256}

# The dummy sampler pass (gpu_model_runner._dummy_sampler_run) over [rows, vocab] logits, rows =
# min(max_num_seqs, max_num_batched_tokens), with temperature 0.5, top_p 0.9, top_k = vocab - 1 and no
# logprobs, so both the greedy argmax and the top-k/top-p path run. Bytes per logit alive at its peak:
#   sort (<= 0.16): bf16 logits 2 + fp32 copy 4 + torch.sort's values 4 and int64 indices 8 + its
#       radix-sort buffers (alternate keys 4 and values 8, the int64 iota 8) = 38 from the code;
#       38.5 calibrated on vLLM's logged activation peaks on H100 with defaults (1024 sequences):
#       Llama-3.1-8B 4.76 GiB -> 38.9, Qwen3-0.6B 5.56 GiB -> 38.4, gpt-oss-20b 7.38 GiB -> 38.5
#       (reference/gpus.md); checked on Qwen3-235B-FP8 TP4 (5.62 GiB logged, 5.58 predicted; B.5).
#   Triton (0.17+, ops/topk_topp_triton.py apply_top_k_top_p_triton, PR #33538): masks the fp32
#       logits in place; then softmax probs 4 and the exponential noise q 4 (random_sample): 2 + 4 +
#       4 + 4 = 14, plus the kernel's per-program buffer [min(SMs, next_pow2(rows)), vocab] fp32,
#       cached for the process (_TRITON_BUFFER_CACHE).
#   FlashInfer (0.21+ default on CUDA, PR #40376; topk_topp_sampler.flashinfer_sample):
#       top_k_top_p_sampling_from_logits masks a copy 4 and softmaxes it 4: 2 + 4 + 4 + 4 = 14; the
#       newest runner also warms the native (Triton) path, so its buffer is allocated too.
#   Checked on the 2026 log of kvcached PR #448 (A100-40GB, Qwen2.5-0.5B, 256 x 151,936 logits):
#   torch peak increase 0.59 GiB logged, 0.57 GiB from 14 B/logit + the buffer + hidden states.
SAMPLER_BYTES_PER_LOGIT = {"sort": 38.5, "triton": 14, "flashinfer": 14}
SAMPLER_PATH = {"0.9-0.10": "sort", "0.11-0.16": "sort", "0.17-0.20": "triton", "0.21+": "flashinfer"}

# Streaming multiprocessors per card (vendor specifications): the Triton sampler's buffer has one
# vocabulary row per SM. Unknown cards count as an H100's 132.
SMS = {"NVIDIA L40S": 142, "NVIDIA H100 80GB HBM3": 132, "NVIDIA H100 PCIe": 114, "NVIDIA H200": 132,
       "NVIDIA B200": 148, "NVIDIA B300 SXM6 AC": 160, "NVIDIA A100-SXM4-40GB": 108,
       "NVIDIA A100-SXM4-80GB": 108, "NVIDIA L4": 58, "NVIDIA A10": 72, "NVIDIA A10G": 80, "Tesla T4": 40,
       "NVIDIA GeForce RTX 4090": 128, "NVIDIA GeForce RTX 3090": 82,
       "NVIDIA RTX PRO 6000 Blackwell Server Edition": 188, "Tesla V100-SXM2-32GB": 80,
       "NVIDIA GeForce RTX 4060": 24, "NVIDIA L40": 142, "NVIDIA A40": 84,
       "NVIDIA RTX 6000 Ada Generation": 142, "NVIDIA RTX A6000": 84}
DEFAULT_SMS = 132


def sampler_peak(era: str, rows: int, vocab: int, gpu: GpuSpec | None, hidden_bytes: int) -> tuple[int, str]:
    """Bytes of the profile's dummy sampler pass and how they arise (SAMPLER_BYTES_PER_LOGIT). From
    0.17 on it also holds the Triton buffer and the forward's [tokens, hidden] output, which the
    profile keeps alive (negligible beside the sort's 38.5 B/logit, inside its calibration)."""
    path = SAMPLER_PATH[era]
    logits = int(SAMPLER_BYTES_PER_LOGIT[path] * rows * vocab)
    where = f"profile sampler, {rows:,} requests x {vocab:,} vocab"
    if path == "sort":
        return logits, where + " (sorted)"
    sms = SMS.get(gpu.nvml_name, DEFAULT_SMS) if gpu else DEFAULT_SMS
    buffer = min(sms, 1 << max(min(sms, rows) - 1, 0).bit_length()) * vocab * 4
    return logits + buffer + hidden_bytes, where + f" ({path}, no sort)"


# Non-torch memory that grows after vLLM's start-up snapshot (lazily loaded kernels, allocator
# metadata): 0.35 GiB, the top of the 0.03-0.35 GiB range logged on single GPUs
# (reference/gpus.md). Since vLLM 0.11 (PR #25359) NCCL is created before the snapshot, so it is
# not part of this growth at any world size.
NON_TORCH_INCREASE = int(0.35 * GiB)

# Outside the budget. CUDA graphs: "Graph capturing finished ... took 0.72 GiB" (granite-4.0-
# micro on L40S, v0.11.0) and 0.65 GiB (gemma-3-4b, PR #21489): we take 0.72 GiB.
CUDA_GRAPHS_BYTES = int(0.72 * GiB)

# NCCL buffers per rank when world size > 1. NVLink machines: overhead.NCCL_BYTES_PER_RANK
# (1.79 GiB at TP2 on H100, vllm PR #10511; 2.04 GiB of non-torch growth, NCCL included, at TP4
# on H200, PR #21429). PCIe cards keep NCCL's staging buffers mostly in host memory: 4x L4 at
# TP2 x PP2 under vLLM 0.9.2, when NCCL still counted inside the budget, grew non-torch memory by
# less than 0.25 GiB (12.13 GiB available logged vs 12.01 predicted with 0.35 GiB; PR #20665).
NCCL_PCIE_BYTES = int(0.25 * GiB)

# MLA backends force their block size: FlashMLA on Hopper (sm90) 64 tokens ("Forcing kv cache
# block size to 64 for FlashMLA backend"), CUTLASS MLA on data-center Blackwell (sm100) 128;
# Triton MLA elsewhere (Ampere, Ada, sm120 RTX PRO 6000) keeps 16.
MLA_BLOCK = {"sm90": 64, "sm100": 128}

# vLLM's Mxfp4MoEMethod picks a kernel backend per GPU and release (quantization/mxfp4.py,
# get_mxfp4_backend) and lays each expert out for it (create_weights, process_weights_after_loading):
#   marlin      Ampere, Ada, sm120, and Hopper up to v0.11.0: the per-rank intermediate size rounded
#               up to 128 and the hidden size to 256 in both stacks, bf16 biases [E, 2I] and [E, H].
#               gpt-oss-120b on an H100: 65.90 GiB against "Model loading took 65.9651 GiB" (v0.10.1,
#               vllm issue #23278).
#   triton      Hopper from v0.11.1, when the triton_kernels dependency made OAI's Triton MoE the sm90
#               default (vllm PR #27523 says so; it proposed Marlin back and was closed): created with
#               I rounded to 64 only; the Hopper swizzle of triton_kernels pads each stack's
#               contraction dimension (H for w13, I for w2) and the biases become fp32. Modelled as the
#               contraction dimension rounded to 256: 64.63 GiB against "Model loading took 64.38 GiB"
#               (v0.14.1, H100, "[mxfp4.py:165] Using Triton backend", vllm issue #33155; +0.4 %).
#   flashinfer  data-center Blackwell (sm100): both sizes rounded to 256.
# backend -> (I alignment, H alignment, pad the contraction dimension only, bias bytes)
MXFP4_LAYOUTS = {"marlin": (128, 256, False, 2), "triton": (256, 256, True, 4), "flashinfer": (256, 256, False, 2)}
MXFP4_TRITON_HOPPER = (0, 11, 1)


def mxfp4_backend(gpu: GpuSpec | None, release: tuple[int, int, int]) -> str:
    """The MXFP4 MoE backend vLLM `release` picks on `gpu` by default (MXFP4_LAYOUTS)."""
    sm = _sm(gpu)
    if sm == "sm100":
        return "flashinfer"
    if sm == "sm90" and release >= MXFP4_TRITON_HOPPER:
        return "triton"
    return "marlin"


# RotaryEmbedding keeps cos_sin_cache, [max_position, rotary_dim] in the model dtype, as a buffer
# (vllm/model_executor/layers/rotary_embedding/base.py, _compute_cos_sin_cache; get_rope caches one
# instance per distinct configuration), on every rank, so it is part of "Model loading took":
# Llama-3.1, 131,072 positions x 128 x 2 B = 32 MiB; a 1,010,000-position Qwen2.5-1M 247 MiB. YaRN
# (gpt-oss, DeepSeek) builds original_max_position x factor rows, which their configs' lengths
# equal. Families with one plain, Llama-3 or YaRN RoPE over the whole head (or MLA's rope part);
# others (Gemma 3's two, linear-scaled; Phi-3's LongRoPE; no RoPE) are not counted.
ROPE_FAMILIES = frozenset({"llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "falcon",
                           "gpt_oss", "deepseek_v2", "deepseek_v3", "gemma2"})


def rope_cache_bytes(model: ModelSpec, elem: int) -> int:
    """Bytes of vLLM's rotary cos_sin_cache buffers on one rank (ROPE_FAMILIES)."""
    if model.family not in ROPE_FAMILIES or not model.max_position_embeddings:
        return 0
    dims = {a.rope_dim if a.kind == "mla" else a.head_dim for a in (layer.mixer for layer in model.attention_layers)}
    return sum(model.max_position_embeddings * d * elem for d in dims)


# vLLM's kv_cache_dtype has no plain int8 (vllm/config/cache.py CacheDType): its 8-bit integer
# cache, int8_per_token_head (PR #38378, 2026), keeps a scale per token and head beside each page and
# runs on the Triton attention backend only; it is not modelled.
INT8_KV = ("{kv_dtype} int8: vLLM has no plain int8 KV cache (its int8_per_token_head mode adds "
           "per-token scales and is not modelled); use {kv_dtype} fp8, which halves the cache the same way.")

CONSERVING_MEMORY = "See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details."


def engine_limits(opts: ServeOptions, gpu: GpuSpec | None, per_gpu_bytes: int) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) as vLLM would choose them for this card."""
    name = (gpu.nvml_name if gpu else "").lower()
    large = per_gpu_bytes >= LARGE_GPU_BYTES and "a100" not in name
    tokens = opts.max_num_batched_tokens or DEFAULT_BATCHED_TOKENS[large]
    seqs = min(opts.max_num_seqs or DEFAULT_MAX_SEQS[large], tokens)
    return tokens, seqs


def engine_era(version: str) -> str:
    """The accounting era of a vLLM version string ("0.10.1", "0.21"); "" is the newest release."""
    return resolve_version(version).era


def nccl_bytes(gpu: GpuSpec | None) -> int:
    return NCCL_PCIE_BYTES if gpu is not None and not gpu.nvlink else NCCL_BYTES_PER_RANK


def outside_budget(world_size: int, graphs: bool, nccl: int, context_bytes: int) -> dict[str, int]:
    parts = {"cuda_context": context_bytes}
    if graphs:
        parts["cuda_graphs"] = CUDA_GRAPHS_BYTES
    if world_size > 1 and nccl:
        parts["nccl"] = nccl
    return parts


@dataclass(frozen=True, kw_only=True)
class Stage:
    """One pipeline stage, as each of its tensor-parallel ranks sees it."""

    index: int
    layers: range
    weights: int
    activation: act.Transient     # torch peak increase of the profiling run
    block_bytes: int              # what one KV block id costs on this GPU (0: holds no cache)
    available: int                # "Available KV cache memory"

    @property
    def num_blocks(self) -> int | None:
        if not self.block_bytes:
            return None
        return max(self.available, 0) // self.block_bytes


@dataclass(frozen=True, kw_only=True)
class VllmState:
    """What `prepare` decides once and the profile, the cache and the start-up report read:
    the engine's limits and budget, and the layout of every worker."""

    batched_tokens: int           # max_num_batched_tokens: the profiled forward, tokens in flight
    max_seqs: int                 # max_num_seqs: the profiled sampler's requests
    requested: int                # total x gpu_memory_utilization, per GPU
    era: str                      # accounting era of --vllm-version (a key of ENGINES)
    version: VllmVersion          # the release planned (--vllm-version, or the newest known)
    mxfp4_backend: str            # the MXFP4 MoE kernels' layout ("" for other formats)
    rope_bytes: int               # rotary cos_sin_cache buffers counted in the weights
    outside: dict[str, int]       # memory outside the budget: context, CUDA graphs, NCCL
    layout: kv.KvLayout
    stages: tuple[Stage, ...]
    worst: Stage                  # the worker with the fewest KV blocks: the plan's components
    notes: tuple[str, ...]        # what vLLM logs about the cache layout
    context: ContextLimit | None  # the longest max_model_len vLLM accepts (None: any)
    free_refusal: str             # init_device: free memory below total x util ("" when enough)
    oom_refusal: str              # --kv-cache-memory larger than what the card has left ("" when it fits)
    kv_room: int                  # what the card has left for --kv-cache-memory (kv_memory_room)
    headroom_ok: bool             # what vLLM keeps outside its budget fits the rest of the card


def _sm(gpu: GpuSpec | None) -> str:
    """The kernel family that decides vLLM's backends: sm90 (Hopper), sm100 (data-center
    Blackwell: B200, B300), or "" for the rest (the RTX PRO 6000 is Blackwell but sm120)."""
    arch = (gpu.architecture if gpu else "").lower()
    return "sm90" if arch == "hopper" else "sm100" if arch == "blackwell" and gpu.nvlink else ""


def _serving_format(model: ModelSpec, dtype: str) -> WeightFormat:
    fmt = resolve_format(model, dtype)
    if fmt.base == "fp32":
        # vLLM's dtype=auto serves fp32 checkpoints in 16 bits (ModelConfig._get_and_verify_dtype).
        plain = fmt.quant.method == "none"
        fmt = replace(fmt, base="bf16", label="bf16" if plain else fmt.label,
                      quant=replace(fmt.quant, bits=16) if plain else fmt.quant)
    return fmt


def mxfp4_padding(model: ModelSpec, fmt: WeightFormat, divisor, tp: int, backend: str,
                  moe: MoeSplit | None = None) -> int:
    """Bytes vLLM's MXFP4 MoE layout for `backend` adds to the experts of `model`'s layers on one
    rank, over what the checkpoint holds (MXFP4_LAYOUTS); under expert parallelism each rank
    pads only its own experts at their unsliced width (`moe`)."""
    q = fmt.quant
    if q.method != "mxfp4":
        return 0
    moe = moe or MoeSplit(tp=tp)
    align_i, align_h, contraction_only, bias_bytes = MXFP4_LAYOUTS[backend]
    hidden = model.hidden_size
    h = ceil_div(hidden, align_h) * align_h
    extra = 0
    for layer in model.layers:
        m = layer.mlp
        stacks = tuple(t.name for t in layer.tensors if t.role == "expert")    # and their biases:
        experts = [t for t in layer.tensors if t.role == "expert" or (t.role == "bias" and t.name.startswith(stacks))]
        if m is None or m.kind != "moe" or not m.gated or not any(quantizes(t, q) for t in experts):
            continue
        held = 0
        for t in experts:
            b = allocated_bytes(t, q, FLOAT_BYTES[fmt.base], layout="vllm", stored=fmt.as_stored)
            held += ceil_div(b, divisor(t)) if divisor else b
        per_rank = m.intermediate // moe.tp
        i = ceil_div(per_rank, align_i) * align_i
        if contraction_only:          # w13 [2I, H] contracts over H, w2 [H, I] over I
            n_i, n_h = ceil_div(per_rank, 64) * 64, hidden
            w13, w2 = 2 * n_i * h, n_h * i
            biases = bias_bytes * (2 * n_i + n_h)
        else:
            w13, w2 = 2 * i * h, h * i                # [E, 2I, H] and [E, H, I] values
            biases = bias_bytes * (2 * i + h)
        values = (w13 + w2) // 2 + (w13 + w2) // 32   # FP4 pairs + one E8M0 scale per 32
        extra += moe.local_experts(m.num_experts) * (values + biases) - held
    return extra


def offloaded_bytes(model: ModelSpec, fmt: WeightFormat, divisor, limit: int) -> int:
    """Bytes --cpu-offload-gb moves off one GPU. vLLM's offloader (maybe_offload_to_cpu in
    vllm/model_executor/models/utils.py; since the offloader package, UVAOffloader.
    _maybe_offload_to_cpu in vllm/model_executor/offloader/uva.py), applied to each decoder
    layer as make_layers builds it, moves whole parameters to pinned CPU memory while the running
    total is below the limit: layers from the first, parameters in order, the last one may
    overshoot. Embeddings and lm_head stay."""
    if limit <= 0:
        return 0
    moved = 0
    for layer in model.layers:
        for t in layer.tensors:
            if moved >= limit:
                return moved
            b = allocated_bytes(t, fmt.quant, FLOAT_BYTES[fmt.base], layout="vllm")
            moved += ceil_div(b, divisor(t)) if divisor else b
    return moved


def _ssm_elem(model: ModelSpec, act_elem: int) -> int:
    """SSM state dtype: the config's mamba_ssm_cache_dtype (NemotronH: float32 when absent, vLLM
    NemotronHForCausalLMConfig since PR #39032), else the model dtype."""
    name = config_dtype(model.traits.mamba_ssm_cache_dtype)
    return FLOAT_BYTES[name] if name else act_elem


def prepare(model: ModelSpec, target: GpuTarget, workload: Workload) -> Setup:
    o = workload.serve
    moe = moe_split(o.tp, o.dp, o.enable_expert_parallel)
    check_parallel(model, o.tp, o.pp, moe)
    fmt = _serving_format(model, workload.dtype)
    if workload.kv_dtype == "int8":
        raise BadInput(INT8_KV)
    kv_dtype = resolve_kv_dtype(workload.kv_dtype, fmt)
    act_elem, kv_elem = FLOAT_BYTES[fmt.base], FLOAT_BYTES[kv_dtype]
    per_gpu = target.per_gpu_bytes
    tokens, seqs = engine_limits(o, target.gpu, per_gpu)
    specs, notes = kv.page_specs(model, kv_elem, o.tp, o.block_size, MLA_BLOCK.get(_sm(target.gpu)),
                                 act_elem, _ssm_elem(model, act_elem))
    layout = kv.kv_layout(specs)
    requested = int(per_gpu * o.gpu_memory_utilization)
    divisor = tp_divisor(model, o.tp, moe) if o.tp > 1 or moe != MoeSplit() else None
    widest = act.widest_layer(model, layout="vllm")
    version = resolve_version(o.vllm_version)
    era, world = version.era, o.tp * o.pp * o.dp
    backend = mxfp4_backend(target.gpu, version.release) if fmt.quant.method == "mxfp4" else ""
    nccl_inside = era == "0.9-0.10" and world > 1 and bool(target.gpu and target.gpu.nvlink)
    graphs_inside = era == "0.21+" and not o.enforce_eager
    overhead = {"non_torch": NON_TORCH_INCREASE + (nccl_bytes(target.gpu) if nccl_inside else 0)}
    if graphs_inside:
        overhead["cuda_graphs"] = CUDA_GRAPHS_BYTES
    fixed = sum(overhead.values())

    forward = act.forward_peak(model, tokens, act_elem, widest)
    fwd = (ceil_div(forward.bytes, o.tp), f"profile forward, {tokens:,} tokens ({forward.where})")
    sampler = sampler_peak(era, seqs, model.vocab_size, target.gpu, tokens * model.hidden_size * act_elem)
    rope = rope_cache_bytes(model, act_elem)
    stages = []
    for k, layers in enumerate(pp_stages(model.num_layers, o.pp)):
        first, last = k == 0, k == o.pp - 1
        part = model if o.pp == 1 else replace(model, layers=model.layers[layers.start:layers.stop],
                                               tensors=stage_tensors(model, k, o.pp))
        weights = (weight_bytes(part, fmt, divisor, layout="vllm").total + rope
                   + (mxfp4_padding(part, fmt, divisor, o.tp, backend, moe) if backend else 0))
        weights -= offloaded_bytes(part, fmt, divisor, o.cpu_offload_bytes)
        peak, where = max(fwd, sampler) if last else fwd
        if not first:   # hidden states + residual received from the previous stage
            peak += 2 * tokens * model.hidden_size * act_elem
            where += " + PP intermediate tensors"
        available = (o.kv_cache_memory if o.kv_cache_memory is not None
                     else requested - weights - peak - fixed)
        block_bytes = layout.block_bytes(None if o.pp == 1 else set(layers))
        stages.append(Stage(index=k, layers=layers, weights=weights, activation=act.Transient(peak, where),
                            block_bytes=block_bytes, available=available))
    worst = min(stages, key=lambda s: (s.num_blocks is None, s.num_blocks or 0, s.available))
    outside = outside_budget(world, not (o.enforce_eager or graphs_inside),
                             0 if nccl_inside else nccl_bytes(target.gpu), CUDA_CONTEXT_BYTES)
    capacity, oom, headroom_ok = requested, "", sum(outside.values()) <= per_gpu - requested
    if o.kv_cache_memory is not None:   # the engine's footprint is then fixed by the flag, never above the card
        capacity = min(worst.weights + worst.activation.bytes + fixed + o.kv_cache_memory, per_gpu)
        oom = _kv_memory_refusal(per_gpu, outside, kv_memory_room(per_gpu, outside, fixed, stages),
                                 o.kv_cache_memory)
        headroom_ok = not oom           # the rest of the card, beside the fixed footprint, is what is outside
    free = _free_memory_refusal(target, outside, era, o.gpu_memory_utilization, requested)
    state = VllmState(batched_tokens=tokens, max_seqs=seqs, requested=requested, era=era, version=version,
                      mxfp4_backend=backend, rope_bytes=rope,
                      outside=outside, layout=layout, stages=tuple(stages), worst=worst,
                      notes=tuple(notes) + layout.notes,
                      context=None if o.allow_long_max_model_len else context_limit(model),
                      free_refusal=free, oom_refusal=oom, headroom_ok=headroom_ok and not free,
                      kv_room=kv_memory_room(per_gpu, outside, fixed, stages))
    return Setup(model=model, target=target, workload=workload, fmt=fmt, kv_dtype=kv_dtype,
                 kv_elem=kv_elem, act_elem=act_elem, weights=worst.weights, overhead=overhead,
                 capacity=capacity, tp=o.tp, widest=widest, state=state)


def components(s: Setup[VllmState], batch: int, ctx: int) -> Breakdown:
    o, worst, layout = s.workload.serve, s.state.worst, s.state.layout
    share = ceil_div(batch, o.dp)       # each data-parallel engine serves its share of the requests
    cache = share * worst.block_bytes * layout.blocks_per_request(ctx, s.state.batched_tokens)
    parts = {"weights": s.weights, "kv_cache": cache, "activations": worst.activation.bytes, **s.overhead}
    where = ""
    if o.tp * o.pp * o.dp > 1:
        where = f"; per GPU, rank {worst.index * o.tp} of {o.tp * o.pp * o.dp} (fewest KV blocks)"
    if o.cpu_offload_bytes:
        where += f"; {o.cpu_offload_bytes / GiB:g} GiB offloaded to CPU (--cpu-offload-gb)"
    engines = f" on each of {o.dp} DP engines" if o.dp > 1 else ""
    notes = {"weights": s.fmt.label + where,
             "kv_cache": f"{share}{engines} x {ctx:,} tokens, paged in blocks of {layout.min_block_size(ctx) or o.block_size}, "
                         f"{s.kv_dtype}",
             "activations": worst.activation.where,
             "non_torch": "non-torch growth after vLLM's start-up snapshot"
                          + (" (NCCL included)" if s.overhead["non_torch"] > NON_TORCH_INCREASE else "")}
    if "cuda_graphs" in parts:
        notes["cuda_graphs"] = "vLLM's CUDA graph estimate, inside the budget since 0.21"
    return Breakdown(parts, notes, "profile run", s.weights + cache + worst.activation.bytes)


def _gib(b: int) -> float:
    return round(b / GiB, 2)     # vLLM's format_gib


def _free_memory_refusal(target: GpuTarget, outside: dict[str, int], era: str, util: float,
                         requested: int) -> str:
    """vLLM's init_device check: free memory at its snapshot (taken after the CUDA context and,
    since 0.11, NCCL exist) must cover total x util."""
    free = target.free_bytes
    if free is None:
        return ""
    nccl = outside.get("nccl", 0) if era != "0.9-0.10" else 0
    at_snapshot = free - outside["cuda_context"] - nccl
    if at_snapshot >= requested:
        return ""
    return (f"Free memory on device cuda:0 ({_gib(at_snapshot)}/{_gib(target.per_gpu_bytes)} GiB) on "
            f"startup is less than desired GPU memory utilization ({util}, "
            f"{_gib(requested)} GiB). Decrease GPU memory utilization or reduce GPU memory used by "
            f"other processes.")


def kv_memory_room(per_gpu: int, outside: dict[str, int], fixed: int, stages) -> int:
    """Bytes the card has left for --kv-cache-memory: its total less what every worker holds
    beside the cache (weights, profile peak, non-torch growth) and what vLLM keeps outside its
    budget (CUDA context, graphs, NCCL)."""
    held = max(st.weights + st.activation.bytes for st in stages) + fixed
    return per_gpu - sum(outside.values()) - held


def _kv_memory_refusal(per_gpu: int, outside: dict[str, int], room: int, kv_bytes: int) -> str:
    """--kv-cache-memory skips vLLM's profile: the cache is allocated as asked, so a size the card
    cannot hold beside everything else runs out of memory at start-up. Says how much would fit."""
    if kv_bytes <= room:
        return ""
    others = sum(outside.values())
    left = (f"at most {room * 100 // GiB / 100:.2f} GiB is left for the KV cache" if room > 0 else
            f"nothing is left for a KV cache (short by {-room / GiB:.2f} GiB before any)")
    return (f"CUDA out of memory allocating the KV cache: kv_cache_memory asks {kv_bytes / GiB:.2f} GiB, but "
            f"of this GPU's {per_gpu / GiB:.2f} GiB the weights, the profile peak and vLLM's own growth "
            f"take {(per_gpu - others - room) / GiB:.2f} GiB and the CUDA context, graphs and NCCL "
            f"{others / GiB:.2f} GiB, so {left}.")


def _context_refusal(limit: ContextLimit | None, ctx: int) -> str:
    """vLLM's config check of max_model_len against the config's derived length (vllm/config/
    model.py, _get_and_verify_max_len, v0.11.0 lines 1876-1911), before any GPU work."""
    if limit is None or ctx <= limit.tokens:
        return ""
    return (f"User-specified max_model_len ({ctx}) is greater than the derived max_model_len "
            f"({limit.key}={limit.shown} or model_max_length={limit.model_max_length} in model's "
            f"config.json). To allow overriding this maximum, set the env var "
            f"VLLM_ALLOW_LONG_MAX_MODEL_LEN=1. VLLM_ALLOW_LONG_MAX_MODEL_LEN must be used with extreme "
            f"caution. If the model uses relative position encoding (RoPE), positions exceeding "
            f"derived_max_model_len lead to nan. If the model uses absolute position encoding, "
            f"positions exceeding derived_max_model_len will cause a CUDA array out-of-bounds error.")


def context_limit(model: ModelSpec) -> ContextLimit | None:
    """The model's derived max_model_len (loading.py), None when vLLM accepts any; a hand-built
    ModelSpec has none derived, and its max_position_embeddings stands for it."""
    limit = model.context_limit
    if limit is None and model.max_position_embeddings:
        mpe = model.max_position_embeddings
        limit = ContextLimit(tokens=mpe, key="max_position_embeddings", shown=str(mpe))
    return limit if limit is not None and limit.tokens is not None else None


def _kv_refusal(stages, layout: kv.KvLayout, ctx: int, in_flight: int) -> str:
    """vLLM's _check_enough_kv_cache_memory, worker by worker; the first failure is raised."""
    for st in stages:
        needed = st.block_bytes * layout.blocks_per_request(ctx, in_flight)
        if st.available <= 0:
            return ("No available memory for the cache blocks. Try increasing "
                    f"`gpu_memory_utilization` when initializing the engine. {CONSERVING_MEMORY}")
        if needed > st.available:
            longest = largest_fitting(lambda n: _fits(st, layout, n, in_flight), ctx)
            estimate = (f"Based on the available memory, the estimated maximum model length is "
                        f"{longest}. " if longest > 0 else "")
            return (f"To serve at least one request with the models's max seq len ({ctx}), "
                    f"({_gib(needed)} GiB KV cache is needed, which is larger than the available KV "
                    f"cache memory ({_gib(st.available)} GiB). {estimate}Try increasing "
                    f"`gpu_memory_utilization` or decreasing `max_model_len` when initializing the "
                    f"engine. {CONSERVING_MEMORY}")
    return ""


def _fits(stage: Stage, layout: kv.KvLayout, length: int, in_flight: int) -> bool:
    """One request of `length` tokens fits this worker's KV memory (padding layers included)."""
    return stage.block_bytes * layout.blocks_per_request(length, in_flight) <= stage.available


def starts(s: Setup[VllmState], ctx: int) -> bool:
    """Whether vLLM starts with max_model_len = `ctx`: no start-up refusal and the memory outside
    its budget fits. Cheap (no search): the engine's verdict asks it for every batch and context
    the limits try."""
    d = s.state
    if d.free_refusal or d.oom_refusal or not d.headroom_ok or (d.context is not None and ctx > d.context.tokens):
        return False
    return all(_fits(st, d.layout, ctx, d.batched_tokens) for st in d.stages if st.block_bytes)


def startup(s: Setup[VllmState], b: Breakdown, ctx: int) -> ServeReport:
    """What vLLM would log and decide at start-up with max_model_len = `ctx`; the first refusal in
    vLLM's order: the config check, free memory at init, the KV cache check, its allocation."""
    o, d = s.workload.serve, s.state
    layout, stages, worst = d.layout, d.stages, d.worst
    in_flight = d.batched_tokens
    per_request = layout.blocks_per_request(ctx, in_flight)
    holding = [st for st in stages if st.block_bytes]
    refusal = (_context_refusal(d.context, ctx) or d.free_refusal
               or _kv_refusal(holding, layout, ctx, in_flight) or d.oom_refusal)

    blocks = worst.num_blocks if holding else 0
    groups = len(layout.groups)
    if d.free_refusal or d.oom_refusal or not d.headroom_ok:
        longest = 0                     # nothing starts, whatever the length
    else:
        limit = d.context.tokens if d.context is not None else max(ctx, s.model.max_position_embeddings or ctx)
        longest = (largest_fitting(lambda n: all(_fits(st, layout, n, in_flight) for st in holding), limit)
                   if holding else limit)
    ranks = tuple({"rank": st.index * o.tp, "layers": [st.layers.start, st.layers.stop],
                   "weights": st.weights, "activations": st.activation.bytes,
                   "available": st.available, "num_blocks": st.num_blocks} for st in stages)
    return ServeReport(
        kv_cache_bytes=max(worst.available, 0), num_gpu_blocks=blocks,
        kv_cache_tokens=_logged_tokens(d.era, blocks, groups, layout.min_block_size(ctx), per_request, ctx),
        max_concurrency=round(blocks / per_request, 2) if per_request else 0.0,
        block_size=min((sp.block_size for sp, _ in layout.groups if sp.block_size), default=o.block_size),
        max_num_batched_tokens=in_flight,
        max_num_seqs=d.max_seqs, engine=d.version.engine, starts=starts(s, ctx),
        max_model_len_that_starts=longest, outside_budget=dict(d.outside), headroom_ok=d.headroom_ok,
        refusal=refusal, available_bytes=worst.available, rank=worst.index * o.tp, kv_groups=groups,
        kv_notes=d.notes, ranks=ranks if o.pp > 1 else (),
        holds=b.total <= s.capacity, mxfp4_backend=d.mxfp4_backend,
    )


def _logged_tokens(era: str, blocks: int, groups: int, block_size: int, per_request: int, ctx: int) -> int:
    """"GPU KV cache size: N tokens" (kv_cache_utils._report_kv_cache_config). Up to 0.20:
    num_blocks // groups x the smallest block size, which for hybrid models is not concurrency x
    max_model_len (vllm issue #40691, v0.19.0). Later releases log int(max_concurrency x
    max_model_len) (vllm PR #40694 proposed it; a v0.24.0 log, 567,978 tokens at 4.33x of 131,072,
    can only come from it): modelled from 0.21 on. The same for one-group models."""
    if not groups or not per_request:
        return 0
    if era == "0.21+":
        return int(blocks / per_request * ctx)
    return blocks // groups * block_size


def utilization_that_starts(target: GpuTarget, report: ServeReport | None, o: ServeOptions) -> float | None:
    """The largest --gpu-memory-utilization (in hundredths) that leaves room for what vLLM keeps
    outside its budget and that free memory covers, when the one given does not; None when the
    given one does, or when no share would (the lever a vLLM user pulls: RTX cards at 0.9)."""
    if report is None or report.headroom_ok or o.kv_cache_memory is not None:
        return None
    per_gpu, outside = target.per_gpu_bytes, sum(report.outside_budget.values())
    room = per_gpu - outside
    if target.free_bytes is not None:
        nccl = report.outside_budget.get("nccl", 0) if engine_era(o.vllm_version) != "0.9-0.10" else 0
        room = min(room, target.free_bytes - report.outside_budget["cuda_context"] - nccl)
    hundredths = room * 100 // per_gpu
    while hundredths > 0 and int(per_gpu * (hundredths / 100)) > room:
        hundredths -= 1
    util = hundredths / 100
    return util if 0 < util < o.gpu_memory_utilization else None
