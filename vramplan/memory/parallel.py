"""How vLLM spreads a model over GPUs: tensor parallelism splits tensors, pipeline parallelism
splits layers. Everything here mirrors vLLM's own layers so per-GPU bytes match what each
worker loads.

Tensor parallel (`tp` ranks), per tensor, as its family module set `Tensor.split` (spec/model.py):
- column/row-parallel linears, MoE experts (each expert's intermediate split), the vocabulary-
  parallel embedding and lm_head, Mamba2's per-head tensors: split `tp` ways;
- norms, routers (`ReplicatedLinear`), convolutions and small down-projections (MLA's
  `q_a_proj`), GPT-2's position table: replicated;
- K and V projections split by KV head; when tp exceeds the KV heads every rank keeps one whole
  head (`QKVParallelLinear`, num_kv_head_replicas). A fused QKV (Phi-3 `qkv_proj`, Falcon
  `query_key_value`, GPT-2 `c_attn`) is one `QKVParallelLinear`: its Q rows split `tp` ways and
  its K/V rows as above, so its divisor is a fraction.

Pipeline parallel (`pp` stages): vLLM's `get_pp_indices` (vllm/distributed/utils.py) gives each
stage `layers // pp` layers and hands the remainder, one each, to the stages just before the
last. The token embedding lives on the first stage, the final norm and lm_head on the last (a
tied lm_head keeps its own copy of the embedding there).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Callable

from vramplan.errors import BadInput
from vramplan.spec import Attention, ModelSpec, Recurrent, Tensor


def kv_heads_per_rank(num_kv_heads: int, tp: int) -> int:
    """vLLM `ModelConfig.get_num_kv_heads`: max(1, kv_heads // tp) (replicated beyond)."""
    return max(1, num_kv_heads // tp)


def _attention(model: ModelSpec) -> Attention | None:
    return next((l.mixer for l in model.layers if isinstance(l.mixer, Attention)), None)


def check_parallel(model: ModelSpec, tp: int, pp: int) -> None:
    """The splits vLLM refuses, as BadInput naming the fix (ModelConfig.verify_with_parallel_config,
    QKVParallelLinear, MambaMixer2)."""
    a = _attention(model)
    if a is not None and a.num_heads % tp:
        raise BadInput(f"{{tp}} {tp} does not divide the {a.num_heads} attention heads of {model.id}; vLLM "
                       f"requires it (\"Total number of attention heads ({a.num_heads}) must be divisible "
                       f"by tensor parallel size ({tp}).\"). Use {{tp}} {_divisors(a.num_heads, tp)}.")
    if a is not None and a.kind != "mla":
        kv = a.num_kv_heads
        if (kv >= tp and kv % tp) or (kv < tp and tp % kv):
            raise BadInput(f"{{tp}} {tp} cannot split the {kv} KV heads of {model.id}: vLLM needs tp to "
                           f"divide them or be a multiple of them. Use {{tp}} {_divisors(kv, tp)}.")
    r = next((l.mixer for l in model.layers if isinstance(l.mixer, Recurrent)), None)
    if r is not None and r.num_heads % tp:
        raise BadInput(f"{{tp}} {tp} does not divide the {r.num_heads} Mamba heads of {model.id}, which "
                       f"vLLM's MambaMixer2 requires. Use {{tp}} {_divisors(r.num_heads, tp)}.")
    if pp > model.num_layers:
        raise BadInput(f"{{pp}} {pp} exceeds the {model.num_layers} layers of {model.id}.")


def _divisors(n: int, tp: int) -> str:
    ok = [d for d in (1, 2, 4, 8, 16) if n % d == 0 and d != tp]
    return " or ".join(map(str, ok[-3:])) or "1"


def tp_divisor(model: ModelSpec, tp: int) -> Callable[[Tensor], int]:
    """How many ways each tensor is split: bytes per rank = ceil(bytes / divisor(t))."""
    a = _attention(model)
    kv = a.num_kv_heads if a is not None and a.kind != "mla" else tp
    kv_split = min(tp, kv)
    heads = a.num_heads if a is not None else tp
    # fused QKV rows: (heads + 2 kv) per head_dim in all, heads/tp + 2 kv-heads-per-rank on a rank
    rows, rank_rows = heads + 2 * kv, heads // tp + 2 * kv_heads_per_rank(kv, tp)
    fused = rows // rank_rows
    if rows % rank_rows:            # KV heads replicated: not a whole number
        fused = Fraction(rows, rank_rows)

    special = {"replicated": 1, "qkv": fused, "kv_heads": kv_split}

    def divisor(t: Tensor) -> int:
        return special.get(t.split, tp)        # column, row, vocab, heads: tp ways

    return divisor


def pp_stages(num_layers: int, pp: int) -> list[range]:
    """Layer index ranges of each pipeline stage, as vLLM's get_pp_indices splits them."""
    parts = [num_layers // pp] * pp
    for i in range(2, num_layers % pp + 2):
        parts[-i] += 1
    out, start = [], 0
    for n in parts:
        out.append(range(start, start + n))
        start += n
    return out


def stage_tensors(model: ModelSpec, stage: int, pp: int) -> tuple[Tensor, ...]:
    """The tensors outside the decoder layers that stage `stage` of `pp` holds: embeddings and
    encoder towers (ModelSpec.traits.towers) on the first, final norm and lm_head on the last (a
    tied lm_head there is a second copy of the embedding)."""
    if pp == 1:
        return model.tensors
    first, last = stage == 0, stage == pp - 1
    out = []
    token_embedding = next((t for t in model.tensors if t.role == "embedding"), None)
    for t in model.tensors:
        front = t.role == "embedding" or t.name.startswith(model.traits.towers)
        if (front and first) or (not front and last):
            out.append(t)
    if last and model.tie_word_embeddings and token_embedding is not None:
        out.append(Tensor(name="lm_head", shape=token_embedding.shape, role="lm_head", split="vocab"))
    return tuple(out)
