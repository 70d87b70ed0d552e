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

Data and expert parallel (`dp` engines, `--enable-expert-parallel`), as vLLM's
FusedMoEParallelConfig.make (vllm/model_executor/layers/fused_moe/config.py) lays MoE layers out:
every DP rank is a whole engine (its own attention weights, TP-split within it, its own KV cache
and its share of the requests). The MoE experts are not replicated per DP rank: without EP they
are tensor-sliced over all tp x dp ranks ("flatten_tp_across_dp"); with EP each of the
ep = tp x dp ranks holds whole experts (tp_size 1 inside the MoE), and determine_expert_map
(fused_moe/layer.py) gives rank r `E // ep` of them plus one while r < E % ep (linear placement),
so the fullest rank, rank 0, holds ceil(E / ep).

Several nodes (`serve_layout`): a count above one node's GPUs (NODE_GPUS) is planned as whole
nodes, tensor parallel inside a node and pipeline stages across nodes, the layout vLLM's
distributed-serving guide recommends; a tensor-parallel group larger than a node is taken only
when asked for (an explicit --tp) and said.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

from vramplan.errors import BadInput
from vramplan.spec import Attention, ModelSpec, Recurrent, Tensor
from vramplan.units import ceil_div

# GPUs per node: the 8-GPU HGX/DGX boards of the catalog's data-center cards (H100, H200, B200,
# A100 SXM); vLLM's distributed-serving guide: "if you have 16 GPUs in 2 nodes (8 GPUs per node),
# you can set the tensor parallel size to 8 and the pipeline parallel size to 2"
# (https://docs.vllm.ai/en/v0.8.3/serving/distributed_serving.html).
NODE_GPUS = 8


def kv_heads_per_rank(num_kv_heads: int, tp: int) -> int:
    """vLLM `ModelConfig.get_num_kv_heads`: max(1, kv_heads // tp) (replicated beyond)."""
    return max(1, num_kv_heads // tp)


def _attention(model: ModelSpec) -> Attention | None:
    return next((l.mixer for l in model.layers if isinstance(l.mixer, Attention)), None)


def check_parallel(model: ModelSpec, tp: int, pp: int, moe: "MoeSplit | None" = None) -> None:
    """The splits vLLM refuses, as BadInput naming the fix (ModelConfig.verify_with_parallel_config,
    QKVParallelLinear, MambaMixer2; FusedMoE's intermediate split when experts are sliced over
    tp x dp ranks)."""
    a = _attention(model)
    m = next((l.mlp for l in model.layers if l.mlp is not None and l.mlp.kind == "moe"), None)
    if m is not None and moe is not None and moe.tp > 1 and m.intermediate % moe.tp:
        raise BadInput(f"The experts of {model.id} ({m.intermediate} wide) do not split {moe.tp} ways "
                       f"({{tp}} x {{dp}}), which vLLM's FusedMoE requires; add {{enable_expert_parallel}} "
                       f"to shard whole experts instead, or use fewer ranks.")
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


def serve_layout(gpu_count: int, tp: int | None, pp: int | None, dp: int | None) -> tuple[int, int, int, str]:
    """(tp, pp, dp, note): the layout of `gpu_count` GPUs for what was given (None: not given).
    One node (up to NODE_GPUS): tp takes what pp x dp leave. More: whole nodes, tp = NODE_GPUS
    inside each and pipeline stages across them unless pp or dp says otherwise; the note says
    which layout was assumed ("" when nothing was)."""
    pp_given, dp_given = pp is not None, dp is not None
    pp, dp = pp or 1, dp or 1
    note = ""
    if tp is None:
        if gpu_count > NODE_GPUS and not pp_given and not dp_given and gpu_count % NODE_GPUS == 0:
            tp, pp = NODE_GPUS, gpu_count // NODE_GPUS
            note = (f"{gpu_count} GPUs planned as {pp} nodes x {NODE_GPUS}: tensor parallel {tp} inside "
                    f"each node, pipeline parallel {pp} across nodes (vLLM's multi-node layout); "
                    f"--tp, --pp and --dp choose another.")
        else:
            tp = max(1, gpu_count // (pp * dp))
    if tp > NODE_GPUS and gpu_count > NODE_GPUS:
        note = (f"--tp {tp} spans {ceil_div(tp, NODE_GPUS)} nodes of {NODE_GPUS} GPUs: every layer's "
                f"all-reduce then crosses the network between nodes; the usual layout keeps tensor "
                f"parallel inside a node and uses --pp or --dp across nodes.")
    return tp, pp, dp, note


@dataclass(frozen=True)
class MoeSplit:
    """How a rank holds the MoE experts: `tp` ways sliced (each expert's intermediate), `ep`
    ranks sharing whole experts (1: no expert parallel)."""

    tp: int = 1
    ep: int = 1

    def local_experts(self, num_experts: int) -> int:
        """Experts on the fullest rank (rank 0): determine_expert_map's linear placement."""
        return num_experts // self.ep + (1 if num_experts % self.ep else 0)


def moe_split(tp: int, dp: int, expert_parallel: bool) -> MoeSplit:
    """FusedMoEParallelConfig.make: EP over tp x dp ranks when enabled (and tp x dp > 1), else the
    experts' tensor parallel size is tp x dp."""
    if expert_parallel and tp * dp > 1:
        return MoeSplit(tp=1, ep=tp * dp)
    return MoeSplit(tp=tp * dp, ep=1)


def expert_counts(model: ModelSpec) -> dict[str, int]:
    """Tensor name -> its layer's expert count, for every expert stack and its biases."""
    out: dict[str, int] = {}
    for layer in model.layers:
        if layer.mlp is None or layer.mlp.kind != "moe":
            continue
        stacks = tuple(t.name for t in layer.tensors if t.role == "expert")
        for t in layer.tensors:
            if t.role == "expert" or (t.role == "bias" and stacks and t.name.startswith(stacks)):
                out[t.name] = layer.mlp.num_experts
    return out


def tp_divisor(model: ModelSpec, tp: int, moe: MoeSplit | None = None) -> Callable[[Tensor], int]:
    """How many ways each tensor is split: bytes per rank = ceil(bytes / divisor(t)). `moe` lays
    the experts out (default: sliced tp ways like every other linear); under expert parallel an
    expert stack of E experts keeps local_experts(E) of them, a divisor of E / local."""
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
    moe = moe or MoeSplit(tp=tp)
    experts = expert_counts(model) if moe != MoeSplit(tp=tp) else {}

    def divisor(t: Tensor) -> int:
        e = experts.get(t.name)
        if e is not None:
            if moe.ep > 1:
                local = moe.local_experts(e)
                return e // local if e % local == 0 else Fraction(e, local)
            return 1 if t.split == "replicated" else moe.tp
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
