"""A GGUF header (sources/gguf.py) -> ModelSpec, as llama.cpp reads the same file.

The hyper-parameters come from the metadata keys llama.cpp's loader reads (src/llama-model.cpp
load_hparams, src/models/<arch>.cpp load_arch_hparams, llama.cpp commit 0c1e57098):
`{arch}.block_count`, `.embedding_length`, `.feed_forward_length`, `.context_length`,
`.attention.head_count`, `.attention.head_count_kv` (scalars or per-layer arrays),
`.attention.key_length` / `.value_length` (default n_embd / n_head), `.attention.sliding_window`
and `.attention.sliding_window_pattern`, `.expert_count`, `.expert_used_count`. The tensors are
the file's own: every name, ggml type and shape, so the bytes are exact. The layer kinds that
llama.cpp hard-codes per architecture (which layers slide) are in SWA_PATTERNS below.
"""

from __future__ import annotations

from vramplan.errors import BadConfig
from vramplan.models._base import GENERIC_TRAITS
from vramplan.spec import Attention, LayerSpec, Mlp, ModelSpec, Quantization, Tensor
from vramplan.spec.gguf import FILE_TYPES, GGML_TYPES, GgufFile, GgufTensor, UNQUANTIZED, tensor_bytes

# Which layers use the sliding window when the file names no pattern: llama.cpp's
# load_swa_pattern(ml, n, dense_first) per architecture (src/models/<arch>.cpp); a layer il slides
# when il % n < n - 1 (dense_first: when il % n != 0), llama-hparams.cpp set_swa_pattern.
# phi3 is absent on purpose: llama.cpp disables its SWA (src/models/phi3.cpp, PR #13676).
SWA_PATTERNS: dict[str, tuple[int, bool, str]] = {
    "gemma2": (2, False, "sliding"),          # gemma2.cpp: n_swa defaults to 4096
    "gemma3": (6, False, "sliding"),
    "gemma3n": (5, False, "sliding"),
    "gemma-embedding": (6, False, "sliding"),
    "gpt-oss": (2, False, "sliding"),          # openai-moe.cpp
    "cohere2": (4, False, "sliding"),
    "cohere2moe": (4, True, "sliding"),
    "exaone4": (4, False, "sliding"),
    "exaone-moe": (4, False, "sliding"),
    "olmo2": (4, False, "sliding"),
    "afmoe": (4, False, "sliding"),
    "smallthinker": (4, True, "sliding"),
    "llama4": (4, False, "chunked"),           # llama4.cpp: chunked attention, 8192 tokens
}
DEFAULT_WINDOW = {"gemma2": 4096, "llama4": 8192}


def _get(meta: dict, arch: str, key: str, default=None):
    return meta.get(f"{arch}.{key}", default)


def _per_layer(value, n: int, what: str, where: str) -> list[int]:
    """A scalar or a per-layer array (llama.cpp get_key_or_arr) as one value per layer."""
    if isinstance(value, list):
        if len(value) != n:
            raise BadConfig(f"{where}: {what} has {len(value)} entries for {n} layers.")
        return [int(v) for v in value]
    return [int(value)] * n


def _sliding(meta: dict, arch: str, n_layer: int) -> tuple[list[bool], int, str]:
    """(which layers slide, the window, "sliding" or "chunked"), as llama.cpp decides."""
    window = int(_get(meta, arch, "attention.sliding_window", 0) or 0) or DEFAULT_WINDOW.get(arch, 0)
    if arch not in SWA_PATTERNS or not window:
        return [False] * n_layer, 0, "full"
    n, dense_first, kind = SWA_PATTERNS[arch]
    pattern = _get(meta, arch, "attention.sliding_window_pattern")
    if isinstance(pattern, list) and len(pattern) >= n_layer:
        return [bool(p) for p in pattern[:n_layer]], window, kind
    if isinstance(pattern, int):
        n = pattern
    if dense_first:
        slides = [n == 0 or il % n != 0 for il in range(n_layer)]
    else:
        slides = [n == 0 or il % n < n - 1 for il in range(n_layer)]
    return slides, window, kind


def role(name: str, shape: tuple[int, ...]) -> str:
    """The part a GGUF tensor plays, from llama.cpp's tensor names (gguf-py constants TENSOR_NAMES)."""
    base = name.removesuffix(".weight")
    if name.endswith(".bias"):
        return "bias"
    if base in ("token_embd", "per_layer_token_embd") or base.endswith("token_embd"):
        return "embedding"
    if base == "output":
        return "lm_head"
    if "norm" in base.rsplit(".", 1)[-1]:
        return "norm"
    if base.endswith("ffn_gate_inp"):
        return "router"
    if "_exps" in base:
        return "expert"
    if len(shape) >= 2:
        return "linear"
    return "other"


def _tensor(t: GgufTensor) -> Tensor:
    shape = tuple(reversed(t.shape))      # torch order: (out, in)
    return Tensor(name=t.name, shape=shape, role=role(t.name, t.shape), split="replicated")


def parse_header(metadata: dict, tensors: list, *, path: str, files: int = 1, size_bytes: int = 0,
                 model_id: str = "") -> ModelSpec:
    """Metadata and tensor infos (sources/gguf.py TensorInfo) -> ModelSpec with `gguf` set."""
    where = model_id or path
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise BadConfig(f"{where}: the GGUF metadata has no general.architecture.")
    n_layer = _get(metadata, arch, "block_count")
    n_embd = _get(metadata, arch, "embedding_length")
    if not isinstance(n_layer, int) or not isinstance(n_embd, int):
        raise BadConfig(f"{where}: {arch}.block_count or {arch}.embedding_length is missing; "
                        f"this GGUF is not a language model vramplan can read.")
    gts = []
    for info in tensors:
        if info.type_id not in GGML_TYPES:
            raise BadConfig(f"{where}: tensor {info.name} has ggml type {info.type_id}, which vramplan "
                            f"does not know (a newer llama.cpp type?).")
        type_ = GGML_TYPES[info.type_id][0]
        gts.append(GgufTensor(info.name, type_, tuple(info.shape), tensor_bytes(type_, tuple(info.shape)),
                              info.offset, info.file))
    by_layer: dict[int, list[GgufTensor]] = {}
    for t in gts:
        by_layer.setdefault(t.layer, []).append(t)

    heads = _per_layer(_get(metadata, arch, "attention.head_count", 0), n_layer, "head_count", where)
    kv_heads = _per_layer(_get(metadata, arch, "attention.head_count_kv", heads), n_layer, "head_count_kv", where)
    ff = _per_layer(_get(metadata, arch, "feed_forward_length", 0), n_layer, "feed_forward_length", where)
    head0 = max(heads) or 1
    k_len = int(_get(metadata, arch, "attention.key_length", n_embd // head0))
    v_len = int(_get(metadata, arch, "attention.value_length", k_len))
    k_swa = int(_get(metadata, arch, "attention.key_length_swa", k_len))
    v_swa = int(_get(metadata, arch, "attention.value_length_swa", v_len))
    mla = _get(metadata, arch, "attention.key_length_mla") is not None
    rope = int(_get(metadata, arch, "rope.dimension_count", 0) or 0)
    n_expert = int(_get(metadata, arch, "expert_count", 0) or 0)
    n_used = int(_get(metadata, arch, "expert_used_count", 0) or 0)
    ff_exp = int(_get(metadata, arch, "expert_feed_forward_length", 0) or 0)
    slides, window, swa_kind = _sliding(metadata, arch, n_layer)

    layers, warnings = [], []
    for il in range(n_layer):
        own = by_layer.get(il, [])
        names = {t.name.split(".", 2)[2] for t in own}
        has_attn = any(n.startswith(("attn_q.", "attn_qkv.", "attn_k.", "attn_kv_a_mqa.", "attn_q_a."))
                       for n in names)
        mixer = None
        if has_attn and kv_heads[il] > 0:
            if mla:
                mixer = Attention(kind="mla", num_heads=heads[il], num_kv_heads=1, head_dim=k_len,
                                  v_head_dim=0, kv_lora_rank=k_len - rope, rope_dim=rope)
            else:
                sw = slides[il]
                mixer = Attention(kind=swa_kind if sw else "full", num_heads=heads[il],
                                  num_kv_heads=kv_heads[il], head_dim=k_swa if sw else k_len,
                                  v_head_dim=v_swa if sw else v_len, window=window if sw else None)
        elif any(n.startswith("ssm_") for n in names):
            warnings.append(f"layer {il} is a recurrent (SSM) layer: its state is not planned for "
                            f"llama.cpp yet; the KV cache counts the attention layers only.")
        moe = any("_exps" in n for n in names)
        mlp = None
        if moe:
            mlp = Mlp(kind="moe", intermediate=ff_exp or ff[il], num_experts=n_expert, top_k=n_used)
        elif any(n.startswith("ffn_") for n in names):
            mlp = Mlp(kind="dense", intermediate=ff[il])
        layers.append(LayerSpec(il, mixer, mlp, tuple(_tensor(t) for t in own)))
    if len({w for w in warnings}) > 1:
        warnings = [f"{sum('recurrent' in w for w in warnings)} layers are recurrent (SSM): their state "
                    f"is not planned for llama.cpp yet; the KV cache counts the attention layers only."]

    outside = [_tensor(t) for t in by_layer.get(-1, [])]
    vocab = _get(metadata, arch, "vocab_size")
    if vocab is None:
        tokens = metadata.get("tokenizer.ggml.tokens")
        vocab = getattr(tokens, "length", None) or (len(tokens) if isinstance(tokens, list) else 0)
    if not vocab:
        embd = next((t for t in gts if t.name == "token_embd.weight"), None)
        vocab = embd.shape[1] if embd is not None and len(embd.shape) > 1 else 0
    ftype_id = metadata.get("general.file_type")
    ftype = FILE_TYPES.get(ftype_id, "") if isinstance(ftype_id, int) else ""
    file = GgufFile(path=path, architecture=arch, file_type=ftype, tensors=tuple(gts),
                    context_length=int(_get(metadata, arch, "context_length", 0) or 0), files=files,
                    size_bytes=size_bytes)
    params = sum(_numel(t.shape) for t in gts)
    quantized = sum(t.nbytes for t in gts if t.type not in UNQUANTIZED)
    bpw = round(8 * file.tensor_bytes / params, 2) if params else 0
    quant = Quantization(method="gguf", bits=max(1, round(bpw)), pre_quantized=True) if quantized else None
    tied = not any(t.name == "output.weight" for t in gts)
    return ModelSpec(
        id=model_id or path, model_type=arch, family=f"gguf:{arch}", hidden_size=n_embd, vocab_size=int(vocab),
        layers=tuple(layers), tensors=tuple(outside), tie_word_embeddings=tied, torch_dtype="fp16",
        quantization=quant, max_position_embeddings=file.context_length or None, traits=GENERIC_TRAITS,
        warnings=tuple(warnings), source="gguf", location=path, gguf=file,
    )


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
