"""KV cache and recurrent state, per layer kind, for two cache semantics.

- contiguous (transformers `generate()`): each layer holds exactly the tokens it keeps; a sliding
  layer keeps at most `window` tokens.
- paged (vLLM V1): memory comes in pages of `block_size` tokens per layer (`PageSpec`, one per
  layer as vLLM's KVCacheSpec), and layers are bound into groups that share one block table
  (`KvLayout`, vLLM's get_kv_cache_groups). A sequence occupies ceil(tokens / block_size)
  blocks in a full layer, only the blocks its window (plus the tokens in flight) touches in a
  sliding layer, and one block of state in a Mamba layer.

Recurrent (Mamba) layers hold a fixed state per sequence in either case.
Sources: docs/sources/vllm-accounting.md A.5-A.6, docs/methodology.md section 4.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from vramplan.errors import BadInput
from vramplan.spec import Attention, ModelSpec, Recurrent
from vramplan.units import ceil_div
from vramplan.memory.overhead import ALLOC_BLOCK


@dataclass(frozen=True, kw_only=True)
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
    """Cache elements per token on one tensor-parallel rank: vLLM keeps max(1, kv_heads // tp)
    heads per rank (ModelConfig.get_num_kv_heads); an MLA latent is whole on every rank."""
    if a.kind == "mla" or tp == 1:
        return a.kv_elems_per_token
    return max(1, a.num_kv_heads // tp) * (a.head_dim + a.v_head_dim)


def recurrent_bytes_per_sequence(model: ModelSpec, elem_bytes: int) -> int:
    return sum(r.state_elems for r in recurrent_layers(model)) * elem_bytes


# transformers keeps a Mamba layer's SSM state in fp32 (the scan's final state, zeros_like'd into
# LinearAttentionLayer.recurrent_states) whatever the model dtype: measured by the trace tier,
# docs/trace.md gap 4.
HF_SSM_STATE_BYTES = 4


def transformers_state_bytes(model: ModelSpec, act_bytes: int) -> int:
    """One sequence's recurrent state in transformers' cache (cache_utils.LinearAttentionLayer):
    the conv state keeps all `conv_kernel` columns (update_conv_state is told the kernel size),
    not vLLM's kernel - 1, in the model dtype; the SSM state is fp32."""
    total = 0
    for r in recurrent_layers(model):
        conv = r.conv_channels * r.conv_kernel if r.conv_channels else r.conv_state_elems
        total += conv * act_bytes + r.ssm_state_elems * HF_SSM_STATE_BYTES
    return total


def kept_tokens(a: Attention, ctx: int) -> int:
    if a.kind in ("sliding", "chunked") and a.window:
        return min(ctx, a.window)
    return ctx


def contiguous_cache_bytes(model: ModelSpec, elem_bytes: int, batch: int, ctx: int,
                           act_bytes: int | None = None, windowed: bool = True) -> int:
    """transformers' cache after `ctx` tokens for `batch` sequences (recurrent states in its
    layout: transformers_state_bytes, with the model's activation dtype `act_bytes`).

    windowed=False is the cache right after a prefill: a sliding layer keeps a view of the last
    `window` tokens of the whole prompt's K/V, so the whole prompt stays allocated until the
    first decode step replaces it (DynamicSlidingWindowLayer.update; docs/trace.md gap 2)."""
    per_seq = sum(a.kv_elems_per_token * (kept_tokens(a, ctx) if windowed else ctx)
                  for a in attention_layers(model))
    state = transformers_state_bytes(model, act_bytes or elem_bytes)
    # each sliding layer also moves its window size, an int64 scalar, to the device
    # (DynamicSlidingWindowLayer._sliding_window_tensor), and each Mamba layer its token count
    # (LinearAttentionLayer.cumulative_length_linear): one 512-B allocator block each
    counters = ALLOC_BLOCK * (len(recurrent_layers(model)) + sum(
        1 for a in attention_layers(model) if a.kind in ("sliding", "chunked") and a.window))
    return batch * (per_seq * elem_bytes + state) + counters


def paged_tokens(a: Attention, ctx: int, block_size: int, in_flight: int = 0) -> int:
    """Token slots (whole blocks) one request of `ctx` tokens may occupy in one layer, without
    vLLM's grouping: PageSpec.blocks x block_size."""
    window = (a.window or 0) if a.kind in ("sliding", "chunked") else 0
    kind = a.kind if window else "full"
    return PageSpec(kind, block_size, 0, window).blocks(ctx, in_flight) * block_size


def paged_cache_bytes(model: ModelSpec, elem_bytes: int, batch: int, ctx: int,
                      block_size: int, tp: int = 1, state_bytes: int | None = None,
                      in_flight: int = 0) -> int:
    """Paged cache for `batch` sequences of `ctx` tokens, per GPU, layer by layer (no groups or
    padding: serve mode uses KvLayout, which is what vLLM allocates)."""
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
    return [KvKind(kind=kind, layers=n, bytes_per_token=per_tok, window=window, bytes_per_sequence=per_seq)
            for (kind, window), (n, per_tok, per_seq) in rows.items()]


# ---------------------------------------------------------------- vLLM's paged layout

# FlashAttention takes block sizes in multiples of 16, so vLLM rounds an attention block it
# enlarges for Mamba to a multiple of 16 (HybridAttentionMambaModelConfig).
ATTENTION_BLOCK_ALIGN = 16


@dataclass(frozen=True)
class PageSpec:
    """One layer's cache as vLLM describes it (v1/kv_cache_interface.py KVCacheSpec): tokens per
    block and the bytes one block of this layer takes on one GPU (`page_size_bytes`). A Mamba
    layer's block is one sequence's whole state; its `block_size` 0 stands for max_model_len."""

    kind: str           # full | sliding | chunked | mla | mamba
    block_size: int
    page_bytes: int
    window: int = 0     # sliding window or attention chunk, tokens

    def blocks(self, ctx: int, in_flight: int) -> int:
        """Blocks one request of `ctx` tokens may hold: `max_memory_usage_bytes // page_size`.
        Full/MLA: ceil(ctx / B). Sliding: the window, the tokens scheduled in one step
        (`in_flight` = max_num_batched_tokens) and one block because the window need not start
        on a block boundary. Chunked local: the chunk plus the tokens in flight. Mamba: one."""
        if self.kind == "mamba":
            return 1
        if self.kind == "sliding":
            return ceil_div(min(self.window - 1 + in_flight, ctx), self.block_size) + 1
        if self.kind == "chunked":
            return ceil_div(min(self.window + in_flight, ctx), self.block_size)
        return ceil_div(ctx, self.block_size)


def mamba_state_bytes(r: Recurrent, tp: int, conv_elem: int, ssm_elem: int) -> int:
    """One sequence's Mamba2 state on one rank (MambaStateShapeCalculator.mamba2_state_shape):
    conv (conv_kernel - 1) x conv_dim / tp in the model dtype, plus SSM heads / tp x head_dim x
    state_size in the SSM cache dtype. Groups that do not divide tp are padded up to tp."""
    if not r.conv_channels:
        return ceil_div(r.conv_state_elems * conv_elem + r.ssm_state_elems * ssm_elem, tp)
    groups = r.n_groups
    if groups % tp:
        groups += tp - groups
    conv = (r.conv_kernel - 1) * ((r.d_inner + 2 * groups * r.state_size) // tp)
    ssm = (r.num_heads // tp) * r.head_dim * r.state_size
    return conv * conv_elem + ssm * ssm_elem


def page_specs(model: ModelSpec, kv_elem: int, tp: int, block_size: int, mla_block: int | None,
               conv_elem: int, ssm_elem: int) -> tuple[dict[int, PageSpec], list[str]]:
    """Every cache-holding layer's PageSpec on one tensor-parallel rank, after vLLM's block-size
    changes, with the lines vLLM logs about them. `mla_block`: the block size an MLA backend
    forces (FlashMLA 64 on Hopper, CUTLASS MLA 128 on Blackwell), None to keep `block_size`."""
    specs: dict[int, PageSpec] = {}
    for layer in model.layers:
        m = layer.mixer
        if isinstance(m, Attention):
            b = (mla_block or block_size) if m.kind == "mla" else block_size
            window = (m.window or 0) if m.kind in ("sliding", "chunked") else 0
            specs[layer.index] = PageSpec(m.kind, b, b * kv_elems_per_rank(m, tp) * kv_elem, window)
        elif isinstance(m, Recurrent):
            specs[layer.index] = PageSpec("mamba", 0, mamba_state_bytes(m, tp, conv_elem, ssm_elem))
    return _fit_attention_to_mamba(specs, block_size, mla_block)


def _fit_attention_to_mamba(specs: dict[int, PageSpec], block_size: int,
                            mla_block: int | None) -> tuple[dict[int, PageSpec], list[str]]:
    """vLLM's HybridAttentionMambaModelConfig: enlarge the attention block until one attention
    page holds at least one Mamba state (a multiple of 16 tokens, or of the MLA block), then pad
    the Mamba page to exactly the attention page."""
    mamba = [s.page_bytes for s in specs.values() if s.kind == "mamba"]
    attn = [s for s in specs.values() if s.kind != "mamba"]
    if not mamba or not attn:
        return specs, []
    per_token = attn[0].page_bytes // attn[0].block_size
    align = mla_block or ATTENTION_BLOCK_ALIGN
    block = max(block_size, align * ceil_div(max(mamba), align * per_token))
    page = block * per_token
    notes = []
    if block != block_size:
        notes.append(f"Setting attention block size to {block} tokens to ensure that attention "
                     f"page size is >= mamba page size.")
    if page > max(mamba):
        notes.append(f"Padding mamba page size by {100 * (page - max(mamba)) / max(mamba):.2f}% to "
                     f"ensure that mamba page size and attention page size are exactly equal.")
    out = {}
    for i, s in specs.items():
        if s.kind == "mamba":
            out[i] = replace(s, page_bytes=page)
        else:
            out[i] = replace(s, block_size=block, page_bytes=block * (s.page_bytes // s.block_size))
    return out, notes


@dataclass(frozen=True)
class KvLayout:
    """vLLM's KV cache groups (v1/core/kv_cache_utils.py get_kv_cache_groups). Layers that share
    a block table form a group; all groups hold the same number of layer slots (padding
    included) and every page has the same size, so one block id costs one page in each slot of
    a group, and all groups draw from one pool of blocks."""

    groups: tuple[tuple[PageSpec, tuple[int, ...]], ...]   # (spec, layer indices)
    pages: dict                                            # layer index -> page bytes
    notes: tuple[str, ...] = ()

    def block_bytes(self, layers=None) -> int:
        """Bytes one block id costs on a GPU that holds `layers` (None: all of them): the page
        times the layers per group there (get_num_blocks), or, for one group whose layers
        differ in size, the sum of their pages (UniformTypeKVCacheSpecs)."""
        if not self.groups:
            return 0
        keep = (lambda i: True) if layers is None else layers.__contains__
        if len(self.groups) == 1:
            return sum(self.pages[i] for i in self.groups[0][1] if keep(i))
        slots = max(sum(1 for i in members if keep(i)) for _, members in self.groups)
        return slots * self.groups[0][0].page_bytes

    def blocks_per_request(self, ctx: int, in_flight: int) -> int:
        """Block ids one request of `ctx` tokens takes, summed over the groups."""
        return sum(spec.blocks(ctx, in_flight) for spec, _ in self.groups)

    def min_block_size(self, ctx: int) -> int:
        return min((s.block_size or ctx for s, _ in self.groups), default=0)


def kv_layout(specs: dict[int, PageSpec]) -> KvLayout:
    """Group layers as vLLM does. One kind of layer (same kind, window and block): one group.
    Otherwise unify the page sizes by enlarging the smaller pages' blocks, bucket the layers by
    spec, take the smallest bucket as the group size (the largest when it is below 1.5x the
    smallest), split each bucket into ceil(n / size) groups of every k-th layer, and pad."""
    if not specs:
        return KvLayout((), {})
    if len({(s.kind, s.window, s.block_size) for s in specs.values()}) == 1:
        pages = {i: s.page_bytes for i, s in specs.items()}
        return KvLayout(((next(iter(specs.values())), tuple(specs)),), pages)
    specs = _unify_pages(specs)
    buckets: dict[PageSpec, list[int]] = {}
    for i, s in specs.items():
        buckets.setdefault(s, []).append(i)
    counts = [len(v) for v in buckets.values()]
    size = max(counts) if max(counts) < 1.5 * min(counts) else min(counts)
    groups, notes = [], []
    for spec, layers in buckets.items():
        n = ceil_div(len(layers), size)
        pad = n * size - len(layers)
        if pad:
            notes.append(f"Add {pad} padding layers, may waste at most "
                         f"{100 * pad / len(layers):.2f}% KV cache memory")
        groups += [(spec, tuple(layers[k::n])) for k in range(n)]
    return KvLayout(tuple(groups), {i: s.page_bytes for i, s in specs.items()}, tuple(notes))


def _unify_pages(specs: dict[int, PageSpec]) -> dict[int, PageSpec]:
    """vLLM's unify_kv_cache_spec_page_size: grow smaller pages by whole multiples of their block."""
    top = max(s.page_bytes for s in specs.values())
    out = {}
    for i, s in specs.items():
        if s.page_bytes != top:
            if top % s.page_bytes or s.kind == "mamba":
                raise BadInput("vLLM cannot serve this model's mix of layers: their KV page sizes "
                               f"({s.page_bytes:,} and {top:,} B) are not multiples of each other "
                               "(kv_cache_utils.unify_kv_cache_spec_page_size raises NotImplementedError).")
            ratio = top // s.page_bytes
            s = replace(s, block_size=s.block_size * ratio, page_bytes=top)
        out[i] = s
    return out
