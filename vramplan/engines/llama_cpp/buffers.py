"""The buffers llama.cpp allocates for one model, context and layer placement, per device, as
it logs them: "model buffer size", "KV buffer size", "compute buffer size", "output buffer size".
llama.cpp commit 0c1e57098; the formulas and their lines are in docs/llama-cpp.md.

Placement (src/llama-model.cpp load_tensors, l.1589-1614): the input layer (token_embd) always
stays on the CPU; -ngl N puts the last N of the n_layer + 1 "layers" (the output layer counts as
one) on the GPUs, split by --tensor-split proportions (default: free memory) with
upper_bound(cumulative split, (il - i_gpu_start) / n_gpu); a tied output duplicates token_embd
on the output layer's device (TENSOR_DUPLICATED). Tensors matching a `REGEX=CPU` override
(--override-tensor, --n-cpu-moe) stay on the CPU.

Sizes: a CUDA buffer pads each quantized tensor's last row to a multiple of 512 elements
(ggml-cuda.cu get_alloc_size, MATRIX_ROW_PADDING) and aligns every tensor to 128 B; CPU buffers
align to 32 B (TENSOR_ALIGNMENT); the CPU model buffer of an mmap-ed file is the file range its
tensors span (llama-model-loader.cpp get_mapping_range).
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass, field

from vramplan.spec import Attention, ModelSpec
from vramplan.spec.gguf import GgufFile, GgufTensor, UNQUANTIZED, row_bytes
from vramplan.units import ceil_div

CUDA_ALIGN = 128                 # ggml_backend_cuda_buffer_type_get_alignment
CPU_ALIGN = 32                   # TENSOR_ALIGNMENT, ggml-impl.h
MATRIX_ROW_PADDING = 512         # ggml-cuda/common.cuh
CTX_PAD = 256                    # llama-context.cpp: n_ctx = GGML_PAD(n_ctx, 256)
OFFLOAD_MIN_BATCH = 32           # ggml-cuda offload_op: ops of >= 32 rows run on the GPU


def pad(n: int, to: int) -> int:
    return -(-n // to) * to


@dataclass
class Device:
    """One device's buffers, in bytes, as llama.cpp logs them."""

    name: str                    # "CUDA0", "CPU"
    model: int = 0
    kv: int = 0
    compute: int = 0
    output: int = 0
    layers: list[int] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.model + self.kv + self.compute + self.output


@dataclass(frozen=True)
class Context:
    """llama_context's sizes for one request (llama-context.cpp l.246-306)."""

    n_ctx: int          # -c padded to 256
    n_seq: int          # --parallel
    n_ctx_seq: int      # cells per stream
    n_stream: int       # 1 with --kv-unified, else one per sequence
    n_batch: int
    n_ubatch: int


def context(ctx: int, n_seq: int, batch: int, ubatch: int, unified: bool) -> Context:
    n_ctx = pad(ctx, CTX_PAD)
    if unified:
        n_ctx_seq, n_stream = n_ctx, 1
    else:
        # more slots than cells: n_ctx_seq == 0, which llama.cpp refuses ("n_ctx_seq == 0")
        n_ctx_seq = pad(n_ctx // n_seq, CTX_PAD)
        n_ctx, n_stream = n_ctx_seq * n_seq, n_seq
    n_batch = min(n_ctx, batch)                # causal attention: n_batch <= n_ctx
    return Context(n_ctx, n_seq, n_ctx_seq, n_stream, n_batch, min(n_batch, ubatch))


def cuda_alloc(t: GgufTensor) -> int:
    """Bytes one weight takes in a CUDA buffer: its last row padded to 512 elements when
    quantized, then aligned to 128 B."""
    size = t.nbytes
    ne0 = t.shape[0] if t.shape else 1
    if t.type not in UNQUANTIZED and ne0 % MATRIX_ROW_PADDING:
        size += row_bytes(t.type, MATRIX_ROW_PADDING - ne0 % MATRIX_ROW_PADDING)
    return pad(size, CUDA_ALIGN)


@dataclass(frozen=True)
class Placement:
    """Which device holds each layer: -1 the CPU, else the GPU index."""

    layer_dev: tuple[int, ...]     # per repeating layer
    output_dev: int
    n_gpu_layers: int              # as llama.cpp counts them (output layer included)


def place(n_layer: int, ngl: int, gpus: int, split: tuple[float, ...] | None) -> Placement:
    ngl = max(0, min(ngl, n_layer + 1)) if gpus else 0
    start = max(n_layer + 1 - ngl, 0)
    shares = list(split) if split else [1.0] * gpus
    shares = (shares + [0.0] * gpus)[:gpus]
    total, cum = sum(shares) or 1.0, []
    acc = 0.0
    for s in shares:
        acc += s
        cum.append(acc / total)

    def dev(il: int) -> int:
        if il < start or not ngl:
            return -1
        return min(bisect_right(cum, (il - start) / ngl), gpus - 1)

    return Placement(tuple(dev(il) for il in range(n_layer)), dev(n_layer), ngl)


def tensor_devices(f: GgufFile, p: Placement, cpu_patterns: tuple[str, ...]) -> list[tuple[GgufTensor, int]]:
    """Every tensor with the device llama.cpp loads it on (plus the duplicated output when tied)."""
    regexes = [re.compile(x) for x in cpu_patterns]
    out = []
    for t in f.tensors:
        il = t.layer
        if t.name.startswith(("token_embd.", "per_layer_token_embd.")):
            dev = -1                                     # input layer: always the CPU
        elif il >= 0:
            dev = p.layer_dev[il] if il < len(p.layer_dev) else p.output_dev
        else:
            dev = p.output_dev
        if dev >= 0 and any(r.search(t.name) for r in regexes):
            dev = -1
        out.append((t, dev))
    if not any(t.name == "output.weight" for t in f.tensors):
        embd = next((t for t in f.tensors if t.name == "token_embd.weight"), None)
        if embd is not None and p.output_dev >= 0:
            out.append((GgufTensor("output.weight (tied: token_embd duplicated)", embd.type, embd.shape,
                                   embd.nbytes), p.output_dev))
    return out


def kv_row_bytes(a: Attention, type_k: str, type_v: str) -> tuple[int, int]:
    """Bytes of one cell's K and V in one layer (llama-kv-cache.cpp: K row n_embd_k_gqa, V row
    n_embd_v_gqa; an MLA cache keeps K only)."""
    if a.kind == "mla":
        return row_bytes(type_k, a.kv_lora_rank + a.rope_dim), 0
    return row_bytes(type_k, a.num_kv_heads * a.head_dim), row_bytes(type_v, a.num_kv_heads * a.v_head_dim)


def swa_cells(c: Context, window: int, unified: bool) -> int:
    """llama-kv-cache-iswa.cpp l.73: min(kv_size, n_swa * (unified ? n_seq : 1) + n_ubatch), padded to 256."""
    return pad(min(c.n_ctx_seq, window * (c.n_seq if unified else 1) + c.n_ubatch), CTX_PAD)


def kv_layers(m: ModelSpec, c: Context, type_k: str, type_v: str, unified: bool) -> dict[int, tuple[int, int]]:
    """Per attention layer: (cells per stream, bytes of K + V for all streams)."""
    out = {}
    for layer in m.layers:
        a = layer.mixer
        if not isinstance(a, Attention):
            continue
        cells = swa_cells(c, a.window, unified) if a.kind in ("sliding", "chunked") and a.window else c.n_ctx_seq
        k, v = kv_row_bytes(a, type_k, type_v)
        out[layer.index] = (cells, (k + v) * cells * c.n_stream)
    return out


def compute_bytes(m: ModelSpec, c: Context, flash: bool, *, layers: bool, output: bool,
                  unified: bool = False) -> int:
    """The compute buffer of one device's part of the graph at the worst-case reserve
    (llama-context.cpp sched_reserve: n_tokens = min(n_ctx, n_ubatch), n_outputs = n_tokens).

    Modelled from the graph's largest live set, checked against llama.cpp's CPU log
    (docs/llama-cpp.md "Compute buffer"): in a layer the KQ mask (n_kv x T, f16 with flash
    attention, f32 without) plus the larger of the attention (without flash attention the f32
    scores n_kv x T x n_head, softmax in place) and the FFN (gate, up and their product, f32);
    at the output the f32 logits n_vocab x T. Hidden-state tensors of n_embd x T f32 add 2 to 6."""
    T = c.n_ubatch
    x = m.hidden_size * T * 4
    inputs = 5 * T * 4          # token ids, positions, output ids: fitted to the CPU log (docs)
    peak = 0
    if layers:
        attn = [l.mixer for l in m.layers if isinstance(l.mixer, Attention)]
        n_kv = c.n_ctx_seq
        mask = n_kv * T * (2 if flash else 4)
        windows = [a.window for a in attn if a.kind in ("sliding", "chunked") and a.window]
        if windows:        # a second mask over the sliding layers' cells (llm_graph_input_attn_kv_iswa)
            mask += swa_cells(c, max(windows), unified) * T * (2 if flash else 4)
        attention = 0
        for a in attn:
            qkv = (a.num_heads * a.head_dim + a.num_kv_heads * (a.head_dim + a.v_head_dim)) * T * 4
            scores = 0 if flash else n_kv * T * a.num_heads * 4      # f32 KQ, softmax in place
            attention = max(attention, scores + qkv + 4 * x)
        ffn = 0
        for layer in m.layers:
            mlp = layer.mlp
            if mlp is None:
                continue
            width = mlp.intermediate * (mlp.top_k if mlp.kind == "moe" else 1)
            router = 3 * mlp.num_experts * T * 4 if mlp.kind == "moe" else 0
            shared = mlp.shared_intermediate * T * 4 * 3
            ffn = max(ffn, 3 * width * T * 4 + router + shared + 4 * x)
        peak = mask * (1 if attn else 0) + max(attention, ffn)
    if output:
        peak = max(peak, m.vocab_size * T * 4 + 2 * x)
    return peak + inputs


def output_bytes(m: ModelSpec, n_seq: int) -> int:
    """llama_context::output_reserve: f32 logits for one output per sequence (host memory)."""
    return m.vocab_size * n_seq * 4


def file_range(tensors: list[GgufTensor]) -> int:
    """CPU_Mapped model buffer: per split file, the span from the first to the last byte of its
    tensors (get_mapping_range)."""
    spans: dict[int, tuple[int, int]] = {}
    for t in tensors:
        lo, hi = spans.get(t.file, (t.offset, t.offset + t.nbytes))
        spans[t.file] = (min(lo, t.offset), max(hi, t.offset + t.nbytes))
    return sum(hi - lo for lo, hi in spans.values())


def buffers(m: ModelSpec, f: GgufFile, p: Placement, c: Context, *, gpus: int, type_k: str, type_v: str,
            flash: bool, unified: bool, cpu_patterns: tuple[str, ...], mmap: bool = True) -> list[Device]:
    """Every device's buffers; GPUs first ("CUDA0", ...), the host last ("CPU")."""
    devs = [Device(f"CUDA{i}") for i in range(gpus)] + [Device("CPU")]
    host = devs[-1]
    cpu_tensors = []
    for t, d in tensor_devices(f, p, cpu_patterns):
        if d >= 0:
            devs[d].model += cuda_alloc(t)
        else:
            cpu_tensors.append(t)
    host.model = (file_range(cpu_tensors) if mmap and not f.planned else
                  sum(pad(t.nbytes, CPU_ALIGN) for t in cpu_tensors))
    for il, (_, nbytes) in kv_layers(m, c, type_k, type_v, unified).items():
        d = p.layer_dev[il] if il < len(p.layer_dev) else -1
        devs[d].kv += nbytes                  # offload_kqv (default): a layer's KV lives with it
    for i, dev in enumerate(devs[:-1]):
        dev.layers = [il for il, d in enumerate(p.layer_dev) if d == i]
        holds_layers, holds_out = bool(dev.layers), p.output_dev == i
        if holds_layers or holds_out:
            dev.compute = compute_bytes(m, c, flash, layers=holds_layers, output=holds_out, unified=unified)
    host.layers = [il for il, d in enumerate(p.layer_dev) if d < 0]
    if gpus and p.n_gpu_layers:
        # the CPU backend computes the input embeddings (get_rows of token_embd) and its own layers;
        # llama.cpp then sizes it in the GPU's pinned host memory ("CUDA_Host compute buffer")
        host.compute = max(m.hidden_size * c.n_ubatch * 4,
                           compute_bytes(m, c, flash, layers=bool(host.layers), output=p.output_dev < 0,
                                         unified=unified))
        if host.layers and c.n_ubatch >= OFFLOAD_MIN_BATCH:
            # op offload: a prompt batch runs the CPU layers' matmuls on the GPU, copying each
            # layer's weights into the GPU's compute buffer (ggml-backend.cpp scheduler)
            largest = max(sum(t.nbytes for t, d in tensor_devices(f, p, cpu_patterns)
                              if d < 0 and t.layer == il) for il in host.layers)
            devs[0].compute += largest
    else:
        host.compute = compute_bytes(m, c, flash, layers=True, output=True, unified=unified)
    host.output = output_bytes(m, c.n_seq)
    return devs
