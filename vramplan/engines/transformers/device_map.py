"""`from_pretrained(..., device_map="auto")` on several GPUs: which card holds which layer.

Why a simulation and not weights / N: transformers (integrations/accelerate.py, 5.25) first
caps every card but the last at an even share plus a buffer (get_balanced_memory), then fills
the cards in model order, keeping room on the first card for the largest layer still to place
(infer_auto_device_map). The first card therefore holds fewer layers, the last one whatever is
left, and the card holding lm_head also holds the logits. The rules, with their lines, are in
docs/methodology.md §3 "Several GPUs: device_map='auto'"; tests/test_infer_multi_gpu.py holds
this module to the real functions on a meta-device model.
"""

from __future__ import annotations

from dataclasses import dataclass

from vramplan.memory.weights import WeightFormat, allocated_bytes, shared_state_bytes
from vramplan.memory.dtypes import FLOAT_BYTES
from vramplan.spec import ModelSpec

# get_balanced_memory (integrations/accelerate.py:322): the share per card grows by 1.25 x the
# larger of the largest no-split module (a decoder layer) and the largest leaf module.
BUFFER_FACTOR = 1.25
# The bitsandbytes quantizers' adjust_max_memory (quantizers/quantizer_bnb_4bit.py:89-92,
# quantizer_bnb_8bit.py:83-86): 90 % of each cap, "for buffers created during quantization".
BNB_MAX_MEMORY = 0.90
BNB_METHODS = ("nf4", "fp4", "int8")


@dataclass(frozen=True)
class Unit:
    """One module the placement cannot split: the embedding (with a tied lm_head), a decoder
    layer (the model's _no_split_modules), the final norm, lm_head."""

    name: str
    size: int
    layer: int | None = None        # decoder layer index


@dataclass(frozen=True)
class Placement:
    """device -> what it holds; `offloaded` units found no room on any card (accelerate would put
    them on the CPU)."""

    weights: tuple[int, ...]                # bytes per card
    layers: tuple[tuple[int, ...], ...]     # decoder layer indices per card
    head: int                               # the card that computes the logits
    offloaded: tuple[str, ...] = ()


def units(model: ModelSpec, fmt: WeightFormat) -> list[Unit]:
    """The model's modules in placement order, with their bytes as loaded."""
    base = FLOAT_BYTES[fmt.base]

    def size(tensors) -> int:
        return sum(allocated_bytes(t, fmt.quant, base, layout="transformers") for t in tensors)

    outside = list(model.tensors)
    embed = [t for t in outside if t.role == "embedding"]
    head = [t for t in outside if t.role == "lm_head"]
    rest = [t for t in outside if t not in embed and t not in head]
    out = [Unit("embed_tokens", size(embed) + shared_state_bytes(model, fmt.quant))]
    out += [Unit(f"layers.{l.index}", size(l.tensors), l.index) for l in model.layers]
    if rest:
        out.append(Unit("norm", size(rest)))
    if head:                                      # tied: lm_head goes with the embedding
        out.append(Unit("lm_head", size(head)))
    return out


def balanced_caps(us: list[Unit], free: tuple[int, ...], fmt: WeightFormat) -> list[int]:
    """get_balanced_memory (integrations/accelerate.py:242-337) for `free` bytes per card (what
    get_max_memory reads with mem_get_info), then the quantizer's adjust_max_memory."""
    n = len(free)
    total = sum(u.size for u in us)
    layer = max((u.size for u in us if u.layer is not None), default=0)
    leaf = max((u.size for u in us if u.layer is None), default=0)
    per_gpu = total // n + int(BUFFER_FACTOR * max(layer, leaf))     # :300, :322-323
    caps = [min(per_gpu, f) for f in free[:-1]] + [free[-1]]        # :330-331: the last keeps its all
    if fmt.quant.method in BNB_METHODS:
        caps = [int(c * BNB_MAX_MEMORY) for c in caps]
    return caps


def auto_device_map(model: ModelSpec, fmt: WeightFormat, free: tuple[int, ...]) -> Placement:
    """infer_auto_device_map (integrations/accelerate.py:644-860) on `len(free)` cards: modules
    in order onto the current card while they fit; the first card (main_devices, :606-608) keeps
    room for the largest module not yet placed (:754-755); a module that does not fit moves
    everything after it to the next card."""
    us = units(model, fmt)
    caps = balanced_caps(us, free, fmt)
    n = len(free)
    used = [0] * n
    layers: list[list[int]] = [[] for _ in range(n)]
    head = 0
    offloaded: list[str] = []
    card = 0
    for i, u in enumerate(us):
        while card < n:
            room = caps[card]
            if card == 0:
                room -= max((v.size for v in us[i + 1:]), default=0)   # the largest module still to place
            if used[card] + u.size <= room:
                break
            card += 1
        if card == n:
            offloaded.append(u.name)
            continue
        used[card] += u.size
        if u.layer is not None:
            layers[card].append(u.layer)
        if u.name == "lm_head" or (u.name == "embed_tokens" and model.tie_word_embeddings):
            head = card
    return Placement(tuple(used), tuple(tuple(l) for l in layers), head, tuple(offloaded))
