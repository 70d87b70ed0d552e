"""SGLang as an engine: its static memory fraction, its token pool, what it leaves outside, its
start-up refusals in its own words, and the knobs an SGLang user reaches for (budget.py holds
the rules; docs/sglang.md cites SGLang's code for each).

The plan's components are one GPU's (the pipeline stage with the fewest pool tokens):
weights + the KV cells batch x ctx tokens take + what lives in SGLang's unclaimed slack
(chunked-prefill activations, CUDA graphs, the request-to-token table) + CUDA context and NCCL.
The capacity is the same with the whole pool in place of the workload's cells, so the plan fits
exactly when batch x ctx (page-rounded) <= max_total_num_tokens, and SGLang starts."""

from __future__ import annotations

from dataclasses import dataclass, replace

from vramplan.engines.base import Attempt, EngineBase, ScaleOut
from vramplan.engines.sglang import budget as b
from vramplan.engines.sglang.options import SglangOptions
from vramplan.errors import BadInput
from vramplan.memory.dtypes import FLOAT_BYTES
from vramplan.memory.kv_cache import recurrent_layers
from vramplan.memory.overhead import CUDA_CONTEXT_BYTES
from vramplan.memory.parallel import check_parallel
from vramplan.memory.setup import Breakdown, Setup, resolve_kv_dtype
from vramplan.memory.weights import WeightFormat, resolve_format
from vramplan.spec import GpuSpec, GpuTarget, ModelSpec, Plan, Workload
from vramplan.spec.sglang import SglangReport
from vramplan.units import GiB, ceil_div

# SGLang's --kv-cache-dtype choices (arg_groups/fields/model.py): auto, fp8_e4m3, fp8_e5m2, bf16,
# fp4_e2m1 ...; vramplan's words that name one
KV_DTYPES = {"bf16": 2, "fp16": 2, "fp8": 1}
# The highest --mem-fraction-static a suggestion offers: above it the slack rarely holds the graphs
MAX_SUGGESTED_FRACTION = 0.95


@dataclass(frozen=True, kw_only=True)
class SglangState:
    """What `prepare` decides once; the components, report and verdict read it."""

    settings: b.Settings
    attn_dp: int                  # attention DP ranks (1 without --enable-dp-attention)
    pre: int                      # free bytes at SGLang's baseline ("Load weight begin. avail mem")
    stages: tuple[b.Stage, ...]
    worst: b.Stage                # the stage with the fewest pool tokens: the plan's components
    tokens: int                   # max_total_num_tokens
    pool_bytes: int               # tokens x cell: what the static fraction gives the pool
    outside: dict[str, int]       # in SGLang's unclaimed slack, and before its baseline
    context_len: int
    context_limit: int | None     # the derived context length SGLang accepts (None: any)
    refusal: str                  # a start-up refusal that does not depend on batch or ctx
    headroom_ok: bool


def _sm(gpu: GpuSpec | None) -> str:
    arch = (gpu.architecture if gpu else "").lower()
    return "sm90" if arch == "hopper" else "sm100" if arch == "blackwell" and gpu.nvlink else ""


def _format(model: ModelSpec, dtype: str) -> WeightFormat:
    fmt = resolve_format(model, dtype)
    if fmt.base == "fp32" and fmt.quant.method == "none":
        # SGLang's ModelConfig serves fp32 checkpoints in 16 bits with dtype auto, as vLLM does
        fmt = replace(fmt, base="bf16", label="bf16", quant=replace(fmt.quant, bits=16))
    return fmt


def _limit(model: ModelSpec) -> int | None:
    """The context length SGLang derives (hf_transformers/common.py get_context_length: the
    config's length keys, with the RoPE factor); vramplan's derived length stands for it."""
    if model.context_limit is not None and model.context_limit.tokens is not None:
        return model.context_limit.tokens
    return model.max_position_embeddings or None


def context_refusal(ctx: int, limit: int | None) -> str:
    """configs/model_config.py _derive_context_length (0.5.23 lines 1295-1316)."""
    if limit is None or ctx <= limit:
        return ""
    return (f"Warning: User-specified context_length ({ctx}) is greater than the derived context_length "
            f"({limit}). This may lead to incorrect model outputs or CUDA errors. Note that the derived "
            f"context_length may differ from max_position_embeddings in the model's config. To allow "
            f"overriding this maximum, set the env var SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN=1")


def memory_refusal(pre: int, weights: int, rest: int, tokens: int, fraction: float) -> str:
    """SGLang's refusals after loading, in its order and words."""
    if weights > pre:
        return (f"torch.OutOfMemoryError: CUDA out of memory while loading the weights "
                f"({weights / GiB:.2f} GiB per GPU, {pre / GiB:.2f} GiB free) [vramplan's summary; "
                f"SGLang does not check this itself]")
    if rest <= 0:
        # mem_cache/kv_cache_configurator.py _profile_available_bytes (0.5.23 lines 3041-3058)
        after = (pre - weights) / GiB
        minimum = 1 - after / (pre / GiB)
        suggested = -(-int(minimum * 1000 * 1000) // 1000) / 1000     # math.ceil(x * 1000) / 1000
        return (f"Loaded weights leave no GPU memory for the KV cache under --mem-fraction-static={fraction}. "
                f"Raise --mem-fraction-static above {suggested:.3f} (minimum viable = 1 - available/pre = "
                f"{minimum:.4f}). If using speculative decoding, draft weights are now counted.")
    if tokens <= 0:
        # model_executor/pool_configurator.py MemoryPoolConfig.__post_init__ (0.5.23 lines 94-99)
        return ("Not enough memory. Please try to increase --mem-fraction-static. "
                f"Current value: mem_fraction_static={fraction}")
    return ""


def settings(model: ModelSpec, target: GpuTarget, w: Workload, o: SglangOptions, attn_dp: int) -> b.Settings:
    tp, pp = w.serve.tp, w.serve.pp
    gpu_mem = b.gpu_mem_mib(target)
    chunk, max_bs = b.capacity_defaults(gpu_mem, tp)
    if o.chunked_prefill_size is not None:
        chunk = o.chunked_prefill_size
    if o.cuda_graph_max_bs is not None:
        max_bs = o.cuda_graph_max_bs
    elif o.max_running_requests is not None:        # memory_hook.py:182-188
        max_bs = min(max_bs, o.max_running_requests)
    graphs = not o.disable_cuda_graph
    page = o.page_size or b.default_page_size(model, _sm(target.gpu))
    if o.mem_fraction_static is not None:
        fraction, rule, reserved = o.mem_fraction_static, "", 0.0
    else:
        fraction, reserved = b.default_fraction(gpu_mem, chunk=chunk, max_bs=max_bs, tp=tp, pp=pp,
                                                attn_dp=attn_dp, mla=b.uses_mla(model), graphs=graphs)
        rule = (f"SGLang {b.VERSION} default: round(({gpu_mem:,.0f} - {reserved:,.0f}) / {gpu_mem:,.0f}, 3) MiB; "
                f"reserved for chunked prefill {chunk:,}, CUDA graphs up to batch {max_bs}, tp x pp {tp * pp}")
        if model.vision is not None:
            factor = b.vlm_factor(model.vision.num_layers, model.vision.hidden_size)
            fraction = fraction * factor
            rule += (f"; x {factor:.4f} for the {model.vision.num_layers}-layer, {model.vision.hidden_size}-wide "
                     "vision tower (adjust_mem_fraction_for_vlm)")
    return b.Settings(chunked_prefill_size=chunk, cuda_graph_max_bs=max_bs if graphs else 0, page_size=page,
                      mem_fraction_static=fraction, fraction_rule=rule, reserved_mib=reserved)


class SglangEngine(EngineBase):
    name = "sglang"

    def prepare(self, model: ModelSpec, target: GpuTarget, workload: Workload) -> Setup:
        w, o = workload, workload.sglang or SglangOptions()
        tp, pp = w.serve.tp, w.serve.pp
        check_parallel(model, tp, pp)
        attn_dp = o.dp_size if o.enable_dp_attention else 1
        fmt = _format(model, w.dtype)
        if w.kv_dtype not in ("auto", *KV_DTYPES):
            raise BadInput(f"SGLang has no {w.kv_dtype} KV cache; its --kv-cache-dtype takes auto, bf16, "
                           f"fp8_e4m3 or fp8_e5m2 ({{kv_dtype}} auto, bf16 or fp8).")
        kv_dtype = resolve_kv_dtype(w.kv_dtype, fmt)
        act_elem, kv_elem = FLOAT_BYTES[fmt.base], FLOAT_BYTES[kv_dtype]
        s = settings(model, target, w, o, attn_dp)
        world = tp * pp
        free = target.free_bytes if target.free_bytes is not None else target.per_gpu_bytes
        before = {"cuda_context": CUDA_CONTEXT_BYTES}
        if world > 1:
            before["nccl"] = b.distributed_bytes(target.gpu)
        pre = free - sum(before.values())
        stages = b.stages(model, fmt, tp=tp, pp=pp, attn_tp=tp // attn_dp, kv_elem=kv_elem, pre=pre,
                          fraction=s.mem_fraction_static, page=s.page_size,
                          reserve=b.VLM_CACHE_BYTES if model.vision is not None else 0)
        holding = [st for st in stages if st.cell]
        worst = min(holding or stages, key=lambda st: (st.tokens, st.rest))
        tokens = min((st.tokens for st in holding), default=0)
        if o.max_total_tokens is not None:    # kv_cache_configurator.py _apply_token_constraints
            tokens = min(tokens, o.max_total_tokens) // s.page_size * s.page_size
        refusal = ""
        for st in stages:           # a stage without attention layers holds no pool to refuse
            refusal = refusal or memory_refusal(pre, st.weights, st.rest, st.tokens if st.cell else 1,
                                                s.mem_fraction_static)
        if not refusal and holding and tokens <= 0:
            refusal = memory_refusal(pre, worst.weights, worst.rest, tokens, s.mem_fraction_static)
        ctx = w.ctx
        reqs = b.max_running_requests(tokens, ctx, o.max_running_requests, attn_dp)
        chunk = s.chunked_prefill_size if s.chunked_prefill_size > 0 else ctx
        transient = b.prefill_activations(model, min(chunk, ctx * max(w.batch, 1)), act_elem, tp)
        slack = {"activations": transient.bytes, "req_to_token": b.req_to_token_bytes(reqs, ctx)}
        if s.cuda_graph_max_bs:
            slack["cuda_graphs"] = s.cuda_graph_max_bs * b.GRAPH_BYTES_PER_BS
        pool_alloc = (tokens + s.page_size) * worst.cell if worst.cell else 0
        headroom_ok = sum(slack.values()) <= pre - worst.weights - pool_alloc
        state = SglangState(settings=s, attn_dp=attn_dp, pre=pre, stages=tuple(stages), worst=worst,
                            tokens=tokens, pool_bytes=tokens * worst.cell, outside={**slack, **before},
                            context_len=ctx, context_limit=_limit(model), refusal=refusal,
                            headroom_ok=headroom_ok)
        overhead = {**slack, **before}
        capacity = min(worst.weights + state.pool_bytes + sum(overhead.values()), target.per_gpu_bytes)
        return Setup(model=model, target=target, workload=w, fmt=fmt, kv_dtype=kv_dtype, kv_elem=kv_elem,
                     act_elem=act_elem, weights=worst.weights, overhead=overhead, capacity=capacity, tp=tp,
                     state=state, warnings=tuple(self._notes(model, w, o, state)))

    def components(self, setup: Setup, batch: int, ctx: int) -> Breakdown:
        d, page = setup.state, setup.state.settings.page_size
        cells = batch * ceil_div(ctx, page) * page * d.worst.cell
        parts = {"weights": setup.weights, "kv_cache": cells, **setup.overhead}
        where = f"; per GPU, pipeline stage of layers {d.worst.layers.start}-{d.worst.layers.stop - 1}" \
            if setup.workload.serve.pp > 1 else ""
        notes = {"weights": setup.fmt.label + where,
                 "kv_cache": f"{batch} x {ctx:,} tokens of the pool's {d.tokens:,} (page {page}), {setup.kv_dtype}",
                 "activations": f"in SGLang's unclaimed slack: {setup.state.settings.chunked_prefill_size:,}-token "
                                "chunked prefill (estimate)",
                 "req_to_token": "request-to-token table, int32 (max_running_requests + 1) x (context_len + 4)",
                 "cuda_graphs": "decode CUDA graphs (estimate from SGLang's logged capture sizes)",
                 "nccl": "NCCL buffers, before SGLang's baseline (vLLM's measured figure)"}
        return Breakdown(parts, {k: v for k, v in notes.items() if k in parts}, "",
                         setup.weights + cells + parts["activations"])

    def report(self, setup: Setup, breakdown: Breakdown, ctx: int) -> SglangReport:
        d, s, o = setup.state, setup.state.settings, setup.workload.sglang or SglangOptions()
        refusal = context_refusal(ctx, d.context_limit) or d.refusal
        pool_alloc = (d.tokens + s.page_size) * d.worst.cell if d.tokens > 0 else 0
        after_load = d.pre - d.worst.weights
        reqs = b.max_running_requests(d.tokens, ctx, o.max_running_requests, d.attn_dp)
        left = after_load - pool_alloc - d.outside.get("cuda_graphs", 0) - d.outside["req_to_token"]
        return SglangReport(
            version=b.VERSION, mem_fraction_static=s.mem_fraction_static, fraction_rule=s.fraction_rule,
            chunked_prefill_size=s.chunked_prefill_size, cuda_graph_max_bs=s.cuda_graph_max_bs,
            page_size=s.page_size, max_running_requests=reqs, context_len=ctx,
            max_total_num_tokens=max(d.tokens, 0), cell_bytes=d.worst.cell, kv_size_bytes=pool_alloc,
            pre_load_free_bytes=d.pre, after_load_free_bytes=after_load, weight_bytes=d.worst.weights,
            rest_bytes=d.worst.rest, available_gpu_mem_bytes=left,
            outside_static={k: v for k, v in d.outside.items() if k not in ("cuda_context", "nccl")},
            headroom_ok=d.headroom_ok, starts=self._starts(setup, ctx), refusal=refusal,
            dp_size=o.dp_size, dp_attention=o.enable_dp_attention, ep_size=o.ep_size,
        )

    def _starts(self, setup: Setup, ctx: int) -> bool:
        d = setup.state
        return (not d.refusal and d.headroom_ok and d.tokens > 0
                and (d.context_limit is None or ctx <= d.context_limit))

    def fits(self, setup: Setup, breakdown: Breakdown, ctx: int) -> bool:
        """batch x ctx (page-rounded) within max_total_num_tokens, and SGLang starts."""
        return breakdown.total <= setup.capacity and self._starts(setup, ctx)

    def warnings(self, setup: Setup, report) -> list[str]:
        out = []                    # setup.warnings reach the plan through the planner
        d, w = setup.state, setup.workload
        if report is not None and report.starts and w.batch > report.max_running_requests > 0:
            out.append(f"--batch {w.batch} is above SGLang's max_running_requests ({report.max_running_requests}); "
                       "the rest of the requests wait in its queue.")
        if not d.headroom_ok and not d.refusal:
            out.append("The chunked-prefill activations, CUDA graphs and request table do not fit in the "
                       f"{1 - d.settings.mem_fraction_static:.1%} SGLang leaves outside its static fraction; it "
                       "would run out of memory capturing CUDA graphs or on the first long prefill. Lower "
                       "--mem-fraction-static or --chunked-prefill-size.")
        return out

    @staticmethod
    def _notes(model: ModelSpec, w: Workload, o: SglangOptions, d: SglangState) -> list[str]:
        out = []
        kinds = {l.mixer.kind for l in model.layers if hasattr(l.mixer, "kind")}
        if kinds & {"sliding", "chunked"}:
            out.append("SGLang sizes separate full and sliding-window pools for this model (its hybrid SWA "
                       "pool); vramplan plans one pool over every attention layer, as with "
                       "--disable-hybrid-swa-memory, so max_total_num_tokens is a lower bound.")
        if recurrent_layers(model):
            out.append("SGLang carves this model's Mamba states (a pool of their own, kv_cache_configurator.py "
                       "_handle_max_mamba_cache) out of the same budget before the token pool; vramplan does not "
                       "size them, so max_total_num_tokens here is an upper bound.")
        if model.vision is not None and o.mem_fraction_static is None:
            out.append("SGLang lowers its default mem_fraction_static for multimodal models by the size of the "
                       "vision tower, reading vision_config.num_hidden_layers (24 when the config names it "
                       "otherwise); vramplan applies it with the tower's own layer count, so compare the "
                       "fraction with your server's log.")
        if o.dp_size > 1 and not o.enable_dp_attention:
            out.append(f"--dp-size {o.dp_size}: {o.dp_size} independent replicas of {w.serve.tp * w.serve.pp} "
                       f"GPU(s); each holds the pool shown ({d.tokens:,} tokens), "
                       f"{d.tokens * o.dp_size:,} in all.")
        if o.enable_dp_attention:
            out.append(f"--enable-dp-attention: {o.dp_size} attention groups of {w.serve.tp // o.dp_size} "
                       f"rank(s); each DP rank holds the pool shown and runs up to its own "
                       "max_running_requests.")
        if o.ep_size > 1:
            out.append(f"--ep-size {o.ep_size}: each rank holds 1/{o.ep_size} of the experts whole instead of "
                       "a slice of each; the bytes per GPU are the same (moe_tp_size = tp / ep).")
        return out

    def levers(self, plan: Plan, attempt: Attempt) -> None:
        w = plan.workload
        o = w.sglang or SglangOptions()
        r = plan.sglang
        if r is not None and not r.headroom_ok and not r.refusal:
            lower = round(r.mem_fraction_static - 0.05, 2)
            if lower > 0:
                attempt(f"--mem-fraction-static {lower:g}", {"mem_fraction_static": lower},
                        sglang=replace(o, mem_fraction_static=lower))
            if r.chunked_prefill_size > 2048:
                attempt("--chunked-prefill-size 2048", {"chunked_prefill_size": 2048},
                        sglang=replace(o, chunked_prefill_size=2048))
        elif r is not None and r.pre_load_free_bytes > 0 and r.cell_bytes:
            # the fraction whose pool holds batch x ctx (whole pages, one spare), in hundredths
            page = r.page_size
            cells = (w.batch * ceil_div(w.ctx, page) * page + page) * r.cell_bytes
            higher = ceil_div(100 * (r.weight_bytes + cells), r.pre_load_free_bytes) / 100
            if r.mem_fraction_static < higher <= MAX_SUGGESTED_FRACTION:
                attempt(f"--mem-fraction-static {higher:g}", {"mem_fraction_static": higher},
                        sglang=replace(o, mem_fraction_static=higher))
        if FLOAT_BYTES.get(plan.kv_dtype, 2) > 1:
            attempt("--kv-dtype fp8 (--kv-cache-dtype fp8_e4m3)", {"kv_dtype": "fp8"}, kv_dtype="fp8")
        for dtype in ("fp8", "int4"):
            if not plan.weight_dtype.startswith(dtype):
                attempt(f"--dtype {dtype}", {"dtype": dtype}, dtype=dtype)

    def scale_out(self, plan: Plan, n: int) -> ScaleOut:
        gpu = plan.target.gpu.id if plan.target.gpu else "custom"
        return ScaleOut(f"--gpu {gpu}:{n} --tp-size {n}", {"gpu": f"{gpu}:{n}", "tp": n},
                        {"serve": replace(plan.workload.serve, tp=n)})


ENGINE = SglangEngine()
