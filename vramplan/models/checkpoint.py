"""A safetensors checkpoint laid onto the ModelSpec read from its config: the checkpoint gives
every tensor's bytes and dtype, the config its layers (KV cache, activations) and each known
tensor's role and tensor-parallel split.

A checkpoint tensor is matched to a tensor of the config's spec by name, after the wrappers
checkpoints and transformers versions disagree on are dropped from both ("model.",
"language_model.", "transformer."; transformers 5 names Gemma 3's text stack
"model.language_model.layers", its 4.x checkpoints "language_model.model.layers") and the stored
part's suffix is taken off (".weight"; GPTQ/AWQ ".qweight", ".qzeros", ".scales", ".g_idx"; FP8
".weight_scale_inv", ".weight_scale", ".input_scale"; bitsandbytes ".weight.absmax",
".weight.quant_map", ".weight.nested_*", ".weight.quant_state.*", ".SCB"; gpt-oss MXFP4
"_blocks", "_scales"). A matched tensor keeps its role and split and takes the stored parts.

A checkpoint tensor the spec does not know is placed by the layer index in its name ("layers.N.",
"h.N.", "blocks.N.", "layer.N."), or with the encoder towers when its name says vision, audio or
projector, else outside the layers; its role and split come from the module names vLLM's layers
share (models/_base.py default_split, and the tables below), and a name none of them knows is
replicated under tensor parallelism (the conservative choice) and named in a note.
"""

from __future__ import annotations

import re
from dataclasses import replace

from vramplan.models._base import COLUMN_NAMES, FUSED_QKV_NAMES, KV_NAMES, ROW_NAMES
from vramplan.spec import LayerSpec, ModelSpec, Tensor
from vramplan.spec.checkpoint import PLAIN_FLOATS, Checkpoint, StoredTensor

# Stored-part suffixes, longest first: what is left is the module (the spec's tensor name).
_SUFFIXES = (
    ".weight.quant_state.bitsandbytes__nf4", ".weight.quant_state.bitsandbytes__fp4",
    ".weight.nested_quant_map", ".weight.nested_absmax", ".weight.quant_map", ".weight.absmax",
    ".weight_scale_inv", ".weight_scale", ".weight_zero_point", ".weight_global_scale",
    ".input_global_scale", ".input_scale", ".weight_packed", ".weight_shape",
    ".qweight", ".qzeros", ".scales", ".g_idx", ".SCB", ".weight",
)
# gpt-oss stores its MXFP4 experts as "<name>_blocks" (uint8, two FP4 values a byte) and
# "<name>_scales" (uint8 E8M0, one per 32) (transformers integrations/mxfp4.py).
_MX_SUFFIXES = ("_blocks", "_scales")
# The same, by the last name segment: parts of "<module>.<leaf>", parts of
# "<module>.weight.<leaf>" (bitsandbytes), and the ones that hold no parameters of their own
# (scales, zeros, indices, quantizer state).
_LEAVES = frozenset(s.rsplit(".", 1)[-1] for s in _SUFFIXES if s.count(".") == 1)
_BNB_LEAVES = frozenset({"absmax", "quant_map", "nested_absmax", "nested_quant_map"})
_AUX_LEAVES = frozenset({"qzeros", "scales", "g_idx", "SCB", "weight_scale_inv", "weight_scale", "input_scale",
                         "weight_zero_point", "weight_global_scale", "input_global_scale", "weight_shape"})
# Buffers some checkpoints carry that no loader keeps: vLLM skips "rotary_emb.inv_freq" and the
# cos/sin caches (vllm/model_executor/models/llama.py, LlamaModel.load_weights).
_BUFFERS = re.compile(r"rotary_emb\.(inv_freq|cos_cached|sin_cached)$")
# Leading wrappers dropped before names are compared.
_WRAPPERS = re.compile(r"^(?:(?:model|language_model|transformer)\.)+")
_WRAPPER_STARTS = ("model.", "language_model.", "transformer.")
_LAYER = re.compile(r"^(?:(?:[A-Za-z_]+)\.)?(?:layers|h|blocks|layer)\.(\d+)\.")
_TOWER = re.compile(r"(^|\.)(vision|visual|image|audio|mm_|multi_modal|projector|vision_tower|vision_model|"
                    r"audio_tower|patch_embed)", re.IGNORECASE)

# vLLM's parallel layers by module name (models/_base.py, shared with derived layers)
_QKV, _ROW, _KV, _COLUMN = FUSED_QKV_NAMES, ROW_NAMES, KV_NAMES, COLUMN_NAMES
_EMBED = frozenset({"embed_tokens", "wte", "word_embeddings", "embed_in", "tok_embeddings"})
_HEAD = frozenset({"lm_head", "embed_out"})
_ROUTER = frozenset({"gate", "router"})


def canonical(name: str) -> str:
    """`name` without the wrappers checkpoints and transformers versions disagree on."""
    return _WRAPPERS.sub("", name, count=1) if name.startswith(_WRAPPER_STARTS) else name


def module_of(name: str) -> str:
    """The module (spec tensor name) a stored part belongs to: its suffix taken off; a bias keeps
    ".bias", as the spec names biases."""
    head, _, leaf = name.rpartition(".")
    if leaf in _LEAVES:
        return head
    if leaf in _BNB_LEAVES and head.endswith(".weight"):
        return head[:-7]
    if leaf.startswith("bitsandbytes__") and head.endswith(".weight.quant_state"):
        return head[: -len(".weight.quant_state")]
    if leaf.endswith(_MX_SUFFIXES):
        return name[:-7]
    return name


def is_aux(name: str) -> bool:
    """A stored part that holds no parameters: scales, zeros, indices, quantizer state."""
    head, _, leaf = name.rpartition(".")
    return (leaf in _AUX_LEAVES or leaf.endswith("_scales") or (leaf in _BNB_LEAVES and head.endswith(".weight"))
            or head.endswith(".weight.quant_state"))


def logical_params(t: StoredTensor, bits: int) -> int:
    """Parameters a stored part holds: packed int32 (GPTQ/AWQ qweight) holds 32/bits values,
    uint8 MXFP4 blocks and bitsandbytes 4-bit data two each; scales and zeros hold none."""
    if is_aux(t.name) or _BUFFERS.search(t.name):
        return 0
    if t.name.endswith(".qweight") or (t.dtype == "I32" and t.name.endswith(".weight_packed")):
        return t.numel * (32 // bits if bits in (2, 4, 8) else 8)
    if t.name.endswith("_blocks") or (t.dtype == "U8" and bits == 4):
        return t.numel * 2
    return t.numel


def _role_split(module: str, parts: list[StoredTensor]) -> tuple[str, str, bool]:
    """(role, split, known) of a module the spec does not list, from its name."""
    leaf = module.rsplit(".", 1)[-1]
    is_bias = leaf == "bias" or leaf.endswith("_bias")
    owner = module.rsplit(".", 2)[-2] if leaf == "bias" and module.count(".") >= 1 else leaf
    if "norm" in owner.lower() or owner.startswith("ln") or owner.endswith("_ln"):
        return ("bias" if is_bias else "norm"), "replicated", True
    if owner in _EMBED:
        return "embedding", "vocab", True
    if owner in _HEAD:
        return "lm_head", "vocab", True
    expert = ".experts." in f".{module}."
    if owner in _QKV:
        split = "qkv"
    elif owner in _KV:
        split = "kv_heads"
    elif owner in _ROW:
        split = "row"
    elif owner in _COLUMN or expert:
        split = "column"
    elif owner in _ROUTER:
        return ("bias" if is_bias else "router"), "replicated", True
    else:
        return "other", "replicated", False
    if is_bias:
        return "bias", split, True
    return ("expert" if expert else "linear"), split, True


def _shape(parts: list[StoredTensor], spec_tensor: Tensor | None, quant: tuple[str, int] = ("", 16)) -> tuple[int, ...]:
    """The module's shape: its plain float weight's (the checkpoint's truth), else the spec's, else
    the logical shape of its packed data (`logical_shape`), else the largest part's."""
    plain = [p for p in parts if p.dtype in PLAIN_FLOATS and not is_aux(p.name)]
    if len(plain) == 1 and (spec_tensor is None or spec_tensor.count == 1):
        return plain[0].shape
    if spec_tensor is not None:
        return spec_tensor.shape
    for p in parts:
        shape = logical_shape(p, *quant)
        if shape is not None:
            return shape
    return max(parts, key=lambda p: p.numel).shape


def logical_shape(p: StoredTensor, method: str, bits: int) -> tuple[int, ...] | None:
    """The (out, in) shape a packed part stands for, or None when `p` is not packed data. GPTQ's
    qweight is int32 [in x bits / 32, out] and AWQ's [in, out x bits / 32] (vLLM gptq.py and awq.py
    create_weights); MXFP4 blocks are uint8 [..., rows, cols / 32, 16] (transformers
    integrations/mxfp4.py); a bitsandbytes 4-bit weight is uint8 [numel / 2, 1], flat."""
    leaf = p.name.rsplit(".", 1)[-1]
    per = 32 // bits if bits in (2, 4, 8) else 0
    if leaf == "qweight" and len(p.shape) == 2 and per:
        return (p.shape[1] * per, p.shape[0]) if method == "awq" else (p.shape[1], p.shape[0] * per)
    if leaf.endswith("_blocks") and len(p.shape) >= 3:
        return (*p.shape[:-2], p.shape[-2] * p.shape[-1] * 2)
    if leaf == "weight" and p.dtype == "U8" and method in ("nf4", "fp4") and len(p.shape) == 2 and p.shape[1] == 1:
        return (2 * p.numel,)
    return None


def _stored(parts: list[StoredTensor]) -> tuple[tuple[str, int, int], ...]:
    return tuple((p.dtype, p.numel, p.nbytes) for p in parts)


def apply(spec: ModelSpec, ckpt: Checkpoint) -> ModelSpec:
    """`spec` with its tensors taken from `ckpt` (weights_from="checkpoint"), and what disagrees
    with the config's reading in its warnings and notes."""
    bits = spec.quantization.bits if spec.quantization is not None else 16
    by_name: dict[str, tuple[int, Tensor]] = {}       # canonical name -> (layer or -1, spec tensor)
    for t in spec.tensors:
        by_name.setdefault(canonical(t.name), (-1, t))
    for layer in spec.layers:
        for t in layer.tensors:
            by_name.setdefault(canonical(t.name), (layer.index, t))

    matched: dict[str, list[StoredTensor]] = {}        # canonical spec name -> parts
    unknown: dict[str, list[StoredTensor]] = {}        # module -> parts
    skipped: list[StoredTensor] = []
    tied_head: list[StoredTensor] = []
    mtp: list[StoredTensor] = []
    n = spec.num_layers
    for st in ckpt.tensors:
        if "rotary_emb" in st.name and _BUFFERS.search(st.name):
            skipped.append(st)
            continue
        whole = canonical(st.name)
        if whole in by_name:
            matched.setdefault(whole, []).append(st)
            continue
        module = module_of(st.name)
        name = canonical(module)
        if name in by_name:
            matched.setdefault(name, []).append(st)
            continue
        if spec.tie_word_embeddings and name in _HEAD:
            tied_head.append(st)          # a tied head stored anyway: the embedding counts once
            continue
        m = _LAYER.match(name) if spec.mtp_layers else None
        if m and n <= int(m[1]) < n + spec.mtp_layers and not _TOWER.search(name):
            mtp.append(st)                # DeepSeek's multi-token-prediction layers: vLLM's main
            continue                      # model skips them (deepseek_v2.py, get_spec_layer_idx_from_weight_name)
        unknown.setdefault(module, []).append(st)

    def placed(t: Tensor) -> Tensor | None:
        parts = matched.get(canonical(t.name))
        if not parts:
            return None
        return replace(t, stored=_stored(parts), shape=_shape(parts, t))

    new_top = [x for x in (placed(t) for t in spec.tensors) if x is not None]
    new_layers: list[list[Tensor]] = [[x for x in (placed(t) for t in l.tensors) if x is not None]
                                      for l in spec.layers]
    missing = [t.name for t in spec.all_tensors() if canonical(t.name) not in matched]

    guessed, replicated, towers = [], [], set(spec.traits.towers)
    q = spec.quantization
    for module, t in _unknown_tensors(unknown, (q.method, q.bits) if q is not None else ("", 16)):
        (guessed if t.split != "replicated" or t.role != "other" else replicated).append(module)
        name = canonical(module)
        m = _LAYER.match(name)
        tower = _TOWER.search(name)
        if tower:
            towers.add(module[: module.find(tower[2]) + len(tower[2])].rstrip("."))
            new_top.append(t)
        elif m and int(m[1]) < n:
            new_layers[int(m[1])].append(t)
        else:
            new_top.append(t)

    layers = tuple(LayerSpec(l.index, l.mixer, l.mlp, tuple(ts)) for l, ts in zip(spec.layers, new_layers))
    notes = _notes(spec, guessed, replicated, missing, skipped, tied_head, mtp)
    out = replace(spec, tensors=tuple(new_top), layers=layers,
                  traits=replace(spec.traits, towers=tuple(sorted(towers))),
                  weights_from="checkpoint", weights_source=ckpt.description,
                  checkpoint_bytes=ckpt.total_bytes, weights_notes=tuple(notes))
    warning = cross_check(spec, ckpt, bits, excluded=skipped + tied_head + mtp)
    return replace(out, warnings=out.warnings + ((warning,) if warning else ()))


_EXPERT = re.compile(r"^(?P<stack>.*\.experts)\.(?P<e>\d+)\.(?P<leaf>.+)$")


def _unknown_tensors(unknown: dict[str, list[StoredTensor]], quant: tuple[str, int]):
    """(module, Tensor) for the checkpoint modules the spec does not name. Per-expert modules
    ("<...>.experts.<e>.<leaf>", Mixtral's and DeepSeek's checkpoints) of the same shape become one
    tensor of `count` experts, as the spec counts experts and vLLM's FusedMoE stacks them in one
    parameter; their stored parts are summed by suffix (all experts' fp8 weights one part, their
    scales another)."""
    stacks: dict[str, dict[int, tuple[str, list[StoredTensor]]]] = {}
    for module, parts in unknown.items():
        m = _EXPERT.match(module)
        if m:
            stacks.setdefault(f"{m['stack']}.{m['leaf']}", {})[int(m["e"])] = (module, parts)
            continue
        yield module, _unknown(module, parts, quant)
    for stack, experts in stacks.items():
        shapes = {_shape(parts, None, quant) for _, parts in experts.values()}
        if len(experts) < 2 or len(shapes) != 1:
            for module, parts in experts.values():
                yield module, _unknown(module, parts, quant)
            continue
        first_module, first_parts = experts[min(experts)]
        role, split, _ = _role_split(first_module, first_parts)
        merged: dict[tuple[str, str], list[int]] = {}
        for _, parts in experts.values():
            for p in parts:
                key = (p.name[len(module_of(p.name)):], p.dtype)
                total = merged.setdefault(key, [0, 0])
                total[0] += p.numel
                total[1] += p.nbytes
        yield stack, Tensor(name=stack, shape=shapes.pop(), role=role, split=split, count=len(experts),
                            stored=tuple((dtype, numel, nbytes) for (_, dtype), (numel, nbytes) in merged.items()))


def _unknown(module: str, parts: list[StoredTensor], quant: tuple[str, int]) -> Tensor:
    role, split, _ = _role_split(module, parts)
    return Tensor(name=module, shape=_shape(parts, None, quant), role=role, split=split, stored=_stored(parts))


def cross_check(spec: ModelSpec, ckpt: Checkpoint, bits: int,
                excluded: list[StoredTensor] | None = None) -> str:
    """A warning when the checkpoint's parameters and the config's reading disagree by more than
    rounding (0.01 %), else ""."""
    left_out = {id(t) for t in (excluded or [])}
    held = sum(logical_params(t, bits) for t in ckpt.tensors if id(t) not in left_out)
    derived = spec.params
    if derived and abs(held - derived) <= derived * 1e-4:
        return ""
    return (f"the checkpoint holds {_count(held)} parameters; the config reading gave "
            f"{_count(derived)}: the checkpoint's figures are used.")


def _count(n: int) -> str:
    """15.66 B, 350.1 M, or the exact count below a million."""
    return f"{n / 1e9:,.2f} B" if n >= 1e9 else f"{n / 1e6:,.1f} M" if n >= 1e6 else f"{n:,}"


def _notes(spec, guessed, replicated, missing, skipped, tied_head, mtp) -> list[str]:
    """Notes on how the checkpoint was placed (model.weights_notes)."""
    notes = []
    if guessed:
        notes.append(f"{len(guessed)} checkpoint tensors the config reading does not name were placed by "
                     f"their names (first: {guessed[0]})")
    if replicated:
        notes.append(f"{len(replicated)} checkpoint tensors of unknown kind are counted whole on every "
                     f"tensor-parallel rank (first: {replicated[0]})")
    if missing:
        notes.append(f"{len(missing)} tensors of the config reading are not in the checkpoint under their "
                     f"names (first: {missing[0]})")
    if skipped:
        notes.append(f"{len(skipped)} stored buffers (rotary_emb.inv_freq and kin) are not loaded")
    if tied_head:
        notes.append("the checkpoint stores lm_head although the embeddings are tied: counted once")
    if mtp:
        notes.append(f"{len(mtp)} tensors of layers past the config's {spec.num_layers} (multi-token "
                     f"prediction) are not loaded")
    return notes
