"""Each layer's cache, read from transformers' own cache after a tiny prefill on fake tensors.

Heavy (torch, transformers at load). The model built on the meta device gets FakeTensor weights
on device `cpu` (trace/build.materialize: shapes and dtypes, no memory, so no layer needs to be
shrunk), runs a prefill of `SHORT` and then `LONG` tokens with `use_cache=True`, and every cache
layer's tensors are read back: what grows with the prompt is the KV cache (elements per token =
the growth / (LONG - SHORT)), what does not is a per-sequence recurrent state (Mamba, linear
attention). The layer's class (DynamicLayer, DynamicSlidingWindowLayer, LinearAttentionLayer,
LinearAttention*AttentionLayer, DummyLayer for shared-KV or attention-free layers) and the
layer types transformers derives from the config (cache_utils.get_layer_types_and_kwargs) name
its kind and window. The prompt is shorter than any window, so a sliding layer holds all of it.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass

import torch

from vramplan.trace import build as trace_build
from vramplan.trace import patches

TOKENS = 4


@dataclass(frozen=True)
class CacheLayer:
    """One decoder layer's cache for one sequence."""

    index: int
    cls: str                     # transformers' cache layer class
    layer_type: str              # "full_attention", "sliding_attention", "chunked_attention",
                                 # "linear_attention", "dummy" ... as transformers names it
    window: int | None           # sliding window or attention chunk, tokens
    k_heads: int = 0             # K tensor (batch, heads, tokens, dim) per token
    k_dim: int = 0
    v_heads: int = 0
    v_dim: int = 0
    kv_dtype: str = ""
    conv_shape: tuple[int, ...] = ()      # per sequence (batch dimension dropped), all states
    recurrent_shape: tuple[int, ...] = ()
    conv_elems: int = 0
    recurrent_elems: int = 0
    recurrent_dtype: str = ""

    @property
    def kv_elems_per_token(self) -> int:
        return self.k_heads * self.k_dim + self.v_heads * self.v_dim


def layer_types(config) -> list[tuple[str, int | None]]:
    """(layer type, window) per decoder layer, as transformers' DynamicCache derives them."""
    from transformers.cache_utils import get_layer_types_and_kwargs

    text = config.get_text_config(decoder=True)
    types, kwargs = get_layer_types_and_kwargs(text)
    return [(t, kw.get("sliding_window")) for t, kw in zip(types, kwargs)]


def derive_cache(model, config) -> list[CacheLayer]:
    """The per-layer cache of this meta model (its parameters become fake tensors here; the
    model is left materialized on fake `cpu` tensors, unusable afterwards)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    try:
        types = layer_types(config)
    except Exception:       # noqa: BLE001 - a config transformers' cache cannot read: classes only
        types = []
    with warnings.catch_warnings(), _quiet(), patches.unpacked_batches(), \
            FakeTensorMode(allow_non_fake_inputs=True):
        warnings.simplefilter("ignore")
        trace_build.materialize(model, True)
        cache = _prefill(model, TOKENS)
    if cache is None:
        return []       # an encoder (or a config built as one): transformers keeps no cache
    return [_layer(i, layer, types[i] if i < len(types) else ("", None)) for i, layer in enumerate(cache.layers)]


@contextlib.contextmanager
def _quiet():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    fake_log = logging.getLogger("torch._subclasses.fake_tensor")
    fake_level = fake_log.level
    fake_log.setLevel(logging.CRITICAL)       # it logs a traceback before raising what we catch
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        fake_log.setLevel(fake_level)


def _prefill(model, tokens: int):
    """The cache after a prompt of `tokens` zeros. A model whose forward demands more than text
    (BLIP's pixel_values) is asked through its text decoder (`get_decoder()`), which holds the
    same cache layers."""
    ids = torch.zeros((1, tokens), dtype=torch.long)
    with torch.no_grad():
        try:
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        except TypeError:
            decoder = _decoder(model)
            if decoder is None:
                raise
            out = decoder(input_ids=ids, use_cache=True)
    cache = getattr(out, "past_key_values", None)
    if cache is None:
        return None
    cache = getattr(cache, "self_attention_cache", cache)   # an EncoderDecoderCache: the decoder's own
    if not hasattr(cache, "layers"):
        raise ValueError(f"{type(model).__name__} returned a {type(cache).__name__}, not a transformers Cache")
    return cache


def _decoder(model):
    try:
        decoder = model.get_decoder()
    except Exception:       # noqa: BLE001 - a class without one
        return None
    return decoder if decoder is not None and decoder is not model else None


def _dtype(t) -> str:
    from vramplan.derive.meta import DTYPE_NAMES

    return DTYPE_NAMES.get(t.dtype, str(t.dtype).removeprefix("torch."))


def _states(layer, attr: str) -> list:
    d = getattr(layer, attr, None)
    if isinstance(d, dict):
        return [t for t in d.values() if isinstance(t, torch.Tensor)]
    return [d] if isinstance(d, torch.Tensor) else []


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _layer(i: int, layer, kind: tuple[str, int | None]) -> CacheLayer:
    layer_type, window = kind
    fields = dict(index=i, cls=type(layer).__name__, layer_type=layer_type, window=window)
    k, v = getattr(layer, "keys", None), getattr(layer, "values", None)
    if isinstance(k, torch.Tensor) and k.dim() == 4 and isinstance(v, torch.Tensor):
        if not (0 < k.shape[-2] and k.shape[-2] == v.shape[-2]):
            raise ValueError(f"cache layer {i} holds {k.shape[-2]} keys and {v.shape[-2]} values")
        fields.update(k_heads=int(k.shape[1]), k_dim=int(k.shape[-1]), v_heads=int(v.shape[1]),
                      v_dim=int(v.shape[-1]), kv_dtype=_dtype(k))
    conv = _states(layer, "conv_states")
    rec = _states(layer, "recurrent_states")
    if conv or rec:
        fields.update(conv_shape=tuple(int(d) for d in conv[0].shape[1:]) if conv else (),
                      recurrent_shape=tuple(int(d) for d in rec[0].shape[1:]) if rec else (),
                      conv_elems=sum(_numel(t.shape[1:]) for t in conv),
                      recurrent_elems=sum(_numel(t.shape[1:]) for t in rec),
                      recurrent_dtype=_dtype(rec[0]) if rec else (_dtype(conv[0]) if conv else ""))
    return CacheLayer(**fields)
