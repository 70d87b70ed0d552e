"""How tensor parallelism splits each parameter tensor across ranks (vLLM's layout).

Column- and row-parallel linears, vocabulary-parallel embeddings and the lm_head are split
`tp` ways; norms, routers and the small MLA down-projections are replicated; K and V
projections split by KV head, so when tp exceeds the KV heads each rank keeps one whole head
(vLLM replicates KV heads: `QKVParallelLinear`, num_kv_head_replicas).
"""

from __future__ import annotations

from typing import Callable

from ..spec import ModelSpec, Tensor

_REPLICATED_ROLES = ("norm", "router", "other", "conv")
_REPLICATED_LEAVES = ("kv_a_proj_with_mqa", "q_a_proj")   # vLLM ReplicatedLinear in MLA
_KV_LEAVES = (".k_proj", ".v_proj")


def tp_divisor(model: ModelSpec, tp: int) -> Callable[[Tensor], int]:
    kv_heads = min((l.mixer.num_kv_heads for l in model.attention_layers
                    if l.mixer.kind != "mla"), default=tp)
    kv_split = min(tp, kv_heads)

    def divisor(t: Tensor) -> int:
        if t.role in _REPLICATED_ROLES or any(f".{leaf}" in t.name for leaf in _REPLICATED_LEAVES):
            return 1
        if any(k in t.name for k in _KV_LEAVES):
            return kv_split
        return tp

    return divisor
