"""KV cache and recurrent state, per layer kind, for two cache semantics.

- contiguous (transformers `generate()`): each layer holds exactly the tokens it keeps; a sliding
  layer keeps at most `window` tokens.
- paged (vLLM): memory comes in blocks of `block_size` tokens per layer; a sequence occupies
  ceil(tokens / block_size) blocks, and a sliding layer only the blocks its window (plus the
  tokens in flight) touches.

Recurrent (Mamba) layers hold a fixed state per sequence in either case.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..spec import Attention, ModelSpec, Recurrent
from ..units import ceil_div


@dataclass(frozen=True)
class KvKind:
    """One row of `vramplan kv`: the layers of one kind and what they cost."""

    kind: str                  # full | sliding | chunked | mla | mamba2
    layers: int
    bytes_per_token: int       # per sequence, all layers of this kind (0 for recurrent)
    window: int | None         # tokens kept per sequence at most (sliding/chunked)
    bytes_per_sequence: int    # fixed state per sequence (recurrent), else 0


def attention_layers(model: ModelSpec):
    return [l.mixer for l in model.layers if isinstance(l.mixer, Attention)]


def recurrent_layers(model: ModelSpec):
    return [l.mixer for l in model.layers if isinstance(l.mixer, Recurrent)]


def kv_bytes_per_token(model: ModelSpec, elem_bytes: int, tp: int = 1) -> int:
    """All attention layers, one sequence, below any window: the figure `kv_bytes_per_token`
    in --json. With tensor parallelism, per GPU: KV heads split across ranks, replicated when
    tp exceeds their number (an MLA latent is replicated on every rank)."""
    return sum(kv_elems_per_rank(a, tp) for a in attention_layers(model)) * elem_bytes


def kv_elems_per_rank(a: Attention, tp: int) -> int:
    if a.kind == "mla" or tp == 1:
        return a.kv_elems_per_token
    heads = ceil_div(a.num_kv_heads, tp)
    return heads * (a.head_dim + a.v_head_dim)


def recurrent_bytes_per_sequence(model: ModelSpec, elem_bytes: int) -> int:
    return sum(r.state_elems for r in recurrent_layers(model)) * elem_bytes


def kept_tokens(a: Attention, ctx: int) -> int:
    if a.kind in ("sliding", "chunked") and a.window:
        return min(ctx, a.window)
    return ctx


def contiguous_cache_bytes(model: ModelSpec, elem_bytes: int, batch: int, ctx: int,
                           state_bytes: int | None = None) -> int:
    """transformers' cache after `ctx` tokens for `batch` sequences."""
    per_seq = sum(a.kv_elems_per_token * kept_tokens(a, ctx) for a in attention_layers(model))
    state = recurrent_bytes_per_sequence(model, state_bytes or elem_bytes)
    return batch * (per_seq * elem_bytes + state)


def paged_tokens(a: Attention, ctx: int, block_size: int, in_flight: int = 0) -> int:
    """Token slots (whole blocks) one request of `ctx` tokens may occupy in one layer.

    vLLM's `max_memory_usage_bytes`: full attention ceil(ctx/B) blocks; a sliding layer the
    blocks covering its window plus the tokens scheduled in one step (`in_flight`, i.e.
    max_num_batched_tokens), plus one block because the window need not start on a block
    boundary; a chunked-local layer its chunk plus the in-flight tokens."""
    if a.kind == "sliding" and a.window:
        return (ceil_div(min(a.window - 1 + in_flight, ctx), block_size) + 1) * block_size
    if a.kind == "chunked" and a.window:
        return ceil_div(min(a.window + in_flight, ctx), block_size) * block_size
    return ceil_div(ctx, block_size) * block_size


def paged_cache_bytes(model: ModelSpec, elem_bytes: int, batch: int, ctx: int,
                      block_size: int, tp: int = 1, state_bytes: int | None = None,
                      in_flight: int = 0) -> int:
    """vLLM's paged cache for `batch` sequences of `ctx` tokens, per GPU."""
    per_seq = sum(kv_elems_per_rank(a, tp) * paged_tokens(a, ctx, block_size, in_flight)
                  for a in attention_layers(model))
    state = recurrent_bytes_per_sequence(model, state_bytes or elem_bytes)
    return batch * (per_seq * elem_bytes + ceil_div(state, tp))


def kv_kinds(model: ModelSpec, elem_bytes: int, state_bytes: int | None = None) -> list[KvKind]:
    """Group layers by kind for display: how much each kind costs per token or per sequence."""
    rows: dict[tuple, list] = {}
    for layer in model.layers:
        m = layer.mixer
        if isinstance(m, Attention):
            key = (m.kind, m.window if m.kind in ("sliding", "chunked") else None)
            rows.setdefault(key, [0, 0, 0])
            rows[key][0] += 1
            rows[key][1] += m.kv_elems_per_token * elem_bytes
        elif isinstance(m, Recurrent):
            key = (m.kind, None)
            rows.setdefault(key, [0, 0, 0])
            rows[key][0] += 1
            rows[key][2] += m.state_elems * (state_bytes or elem_bytes)
    return [KvKind(kind, n, per_tok, window, per_seq)
            for (kind, window), (n, per_tok, per_seq) in rows.items()]
