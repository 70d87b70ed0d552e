"""What SGLang would log and decide at start-up, predicted: its memory settings, its token pool
and its refusals. Plain data (engines/sglang/ fills it, render/sglang.py prints it)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, kw_only=True)
class SglangReport:
    version: str                       # the SGLang release whose rules are modelled
    mem_fraction_static: float         # as given, or SGLang's default for this card
    fraction_rule: str                 # how the default was chosen ("" when given)
    chunked_prefill_size: int
    cuda_graph_max_bs: int             # decode CUDA graphs' largest batch (0: graphs disabled)
    page_size: int
    max_running_requests: int          # per DP rank
    context_len: int
    max_total_num_tokens: int          # "max_total_num_tokens=N" (tokens in the pool, per DP rank)
    cell_bytes: int                    # KV bytes per token on the limiting rank, all its layers
    kv_size_bytes: int                 # "KV Cache is allocated ... K size + V size" (pool bytes)
    pre_load_free_bytes: int           # "Load weight begin. avail mem=" (free at SGLang's baseline)
    after_load_free_bytes: int         # "Load weight end. ... avail mem="
    weight_bytes: int                  # "Load weight end. ... mem usage="
    rest_bytes: int                    # what the pool is sized from (may be <= 0: refused)
    available_gpu_mem_bytes: int       # "available_gpu_mem=" after the pool, graphs and buffers
    outside_static: dict = field(default_factory=dict)   # what lives in the (1 - fraction) slack
    headroom_ok: bool = True           # that slack holds it
    starts: bool = True
    refusal: str = ""                  # SGLang's own words ("" when it starts)
    dp_size: int = 1                   # data-parallel replicas (or attention DP ranks)
    dp_attention: bool = False
    ep_size: int = 1
    notes: tuple[str, ...] = ()
