"""vLLM as an engine: its budget and profile (serving.py), its start-up report and refusals,
and the knobs a vLLM user reaches for."""

from __future__ import annotations

from dataclasses import replace

from vramplan.engines.base import Attempt, EngineBase, ScaleOut
from vramplan.engines.vllm import serving
from vramplan.memory.dtypes import FLOAT_BYTES
from vramplan.memory.parallel import NODE_GPUS
from vramplan.memory.setup import Breakdown, Setup
from vramplan.units import GiB, ceil_div
from vramplan.spec import GpuTarget, ModelSpec, Plan, ServeReport, Workload


def serve_flag_notes(model: ModelSpec, o) -> list[str]:
    """What the plan says about vLLM flags it reads but that move no GPU bytes here, and the
    multi-node layout it assumed."""
    out = [o.layout_note] if o.layout_note else []
    moe = any(l.mlp is not None and l.mlp.kind == "moe" for l in model.layers)
    if o.enable_expert_parallel and not moe:
        out.append(f"--enable-expert-parallel has no effect: {model.id} has no MoE layers.")
    elif o.enable_expert_parallel and o.tp * o.dp == 1:
        out.append("--enable-expert-parallel has no effect on one rank (tp x dp = 1).")
    if o.dp > 1:
        out.append(f"--data-parallel-size {o.dp}: {o.dp} engines, each with its own KV cache and max_num_seqs; "
                   f"the batch is spread evenly over them and the figures are per engine.")
    if o.limit_mm_per_prompt:
        limits = ", ".join(f"{k}={v}" for k, v in o.limit_mm_per_prompt)
        out.append(f"--limit-mm-per-prompt {limits} is read but not modelled: the multimodal encoder's "
                   "profiling budget is not part of this plan.")
    if o.swap_space_gib is not None:
        out.append(f"--swap-space {o.swap_space_gib:g} is CPU memory; it changes nothing on the GPU.")
    return out


class VllmEngine(EngineBase):
    name = "vllm"
    ctx_flag = "--max-model-len"

    def prepare(self, model: ModelSpec, target: GpuTarget, workload: Workload) -> Setup:
        return serving.prepare(model, target, workload)

    def components(self, setup: Setup, batch: int, ctx: int) -> Breakdown:
        return serving.components(setup, batch, ctx)

    def report(self, setup: Setup, breakdown: Breakdown, ctx: int) -> ServeReport:
        return serving.startup(setup, breakdown, ctx)

    def fits(self, setup: Setup, breakdown: Breakdown, ctx: int) -> bool:
        """The budget holds the workload and vLLM starts (the report's `starts`)."""
        return breakdown.total <= setup.capacity and serving.starts(setup, ctx)

    def warnings(self, setup: Setup, report: ServeReport | None) -> list[str]:
        out = []
        w, limit = setup.workload, serving.context_limit(setup.model)
        if setup.state.version.note:
            out.append(setup.state.version.note)
        if limit is not None and w.ctx > limit.tokens and not w.serve.allow_long_max_model_len:
            out.append(f"--ctx {w.ctx:,} is above the model's derived max_model_len ({limit.tokens:,}), which "
                       "vLLM refuses; --allow-long-max-model-len plans it as vLLM runs with "
                       "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1.")
        elif limit is not None and w.ctx > limit.tokens:
            out.append(f"--ctx {w.ctx:,} is above the model's derived max_model_len ({limit.key}={limit.shown}); "
                       "planned as vLLM starts with VLLM_ALLOW_LONG_MAX_MODEL_LEN=1, which warns that "
                       "positions past it give NaN (RoPE) or CUDA out-of-bounds errors (absolute positions).")
        mpe = setup.model.max_position_embeddings
        if limit is None and mpe and w.ctx > mpe:
            out.append(f"--ctx {w.ctx:,} exceeds the model's max_position_embeddings ({mpe:,}); quality past it "
                       "is not guaranteed, and vLLM, which reads no length from this config, does not refuse it.")
        out += serve_flag_notes(setup.model, w.serve)
        if report is not None and not report.headroom_ok and not report.refusal:
            out.append("The CUDA context, CUDA graphs and NCCL buffers do not fit in the "
                       f"{1 - w.serve.gpu_memory_utilization:.0%} vLLM leaves outside its budget; "
                       "lower --gpu-memory-utilization.")
        return out

    def levers(self, plan: Plan, attempt: Attempt) -> None:
        """vLLM's own flags, each re-planned, in the order a vLLM user reaches for them: the budget
        share, the profiled sampler (--max-num-seqs) and forward (--max-num-batched-tokens), an
        fp8 KV cache, no CUDA graphs, weights kept in CPU memory, then online fp8 / 4-bit weights.
        Printed with vLLM's names, so the change pastes into the launch line."""
        o, w, report = plan.workload.serve, plan.workload, plan.serve
        if o.kv_cache_memory is not None and report is not None and not report.headroom_ok:
            room = self.prepare(plan.model, plan.target, plan.workload).state.kv_room
            hundredths = room * 100 // GiB          # the most the card holds, rounded down to 0.01 GiB
            if hundredths > 0:
                size = f"{hundredths / 100:.2f}GiB"
                attempt(f"--kv-cache-memory {size}", {"kv_cache_memory": size},
                        serve=replace(o, kv_cache_memory=hundredths * GiB // 100))
        util = serving.utilization_that_starts(plan.target, report, o) or _utilization_ceiling(plan, report, o)
        if util is not None:
            attempt(f"--gpu-memory-utilization {util:g}", {"gpu_memory_utilization": util},
                    serve=replace(o, gpu_memory_utilization=util))
        if report is not None:
            _smaller(attempt, "--max-num-seqs", "max_num_seqs", report.max_num_seqs, SEQS_STEPS, w.batch, o)
            _smaller(attempt, "--max-num-batched-tokens", "max_num_batched_tokens", report.max_num_batched_tokens,
                     TOKENS_STEPS, max(w.batch, MIN_BATCHED_TOKENS), o)
        if FLOAT_BYTES.get(plan.kv_dtype, 2) > 1:
            attempt("--kv-cache-dtype fp8", {"kv_dtype": "fp8"}, kv_dtype="fp8")
        if not o.enforce_eager:
            attempt("--enforce-eager", {"enforce_eager": True}, serve=replace(o, enforce_eager=True))
        short = plan.total_bytes - plan.capacity_bytes
        if short > 0 and o.kv_cache_memory is None:
            for gib in (ceil_div(short, GiB), ceil_div(short, GiB) + 1):
                fits = attempt(f"--cpu-offload-gb {gib}", {"cpu_offload_gb": gib}, quiet=True,
                               serve=replace(o, cpu_offload_bytes=o.cpu_offload_bytes + gib * GiB))
                if fits or gib > ceil_div(short, GiB):
                    attempt(f"--cpu-offload-gb {gib}", {"cpu_offload_gb": gib},
                            serve=replace(o, cpu_offload_bytes=o.cpu_offload_bytes + gib * GiB))
                    break
        if plan.weight_dtype in ("bf16", "fp16", "fp32"):       # unquantized: vLLM quantizes on load
            attempt("--quantization fp8", {"dtype": "fp8"}, dtype="fp8")
            attempt("--quantization bitsandbytes", {"dtype": "nf4"}, dtype="nf4")

    def scale_out(self, plan: Plan, n: int) -> ScaleOut:
        gpu = plan.target.gpu.id if plan.target.gpu else "custom"
        o = plan.workload.serve
        if n > NODE_GPUS and n % NODE_GPUS == 0:      # whole nodes: TP inside, PP across (serve_layout)
            tp, pp = NODE_GPUS, n // NODE_GPUS
            return ScaleOut(f"--gpu {gpu}:{n} -tp {tp} -pp {pp}", {"gpu": f"{gpu}:{n}", "tp": tp, "pp": pp},
                            {"serve": replace(o, tp=tp, pp=pp, dp=1, layout_note="")})
        return ScaleOut(f"--gpu {gpu}:{n} -tp {n}", {"gpu": f"{gpu}:{n}", "tp": n},
                        {"serve": replace(o, tp=n, pp=1, dp=1, layout_note="")})


# Candidates for the profile's sizes, largest first; the first that fits is offered, else a
# quarter of the current size (vLLM's own step from its large-card defaults, 1024 sequences and
# 8192 tokens, to those of smaller cards, 256 and 2048: serving.DEFAULT_MAX_SEQS,
# DEFAULT_BATCHED_TOKENS), for pairs with another change. vLLM needs max_num_seqs >= the
# requests served at once (here --batch).
SEQS_STEPS = (512, 256, 128, 64, 32, 16, 8, 4, 2, 1)
TOKENS_STEPS = (4096, 2048, 1024, 512)
MIN_BATCHED_TOKENS = 512
# The highest --gpu-memory-utilization suggested: what vLLM keeps outside its budget is modelled,
# but allocator fragmentation and other processes are not, so we keep 5 % of the card back
# (our margin, not vLLM's).
UTIL_CAP = 0.95


def _utilization_ceiling(plan: Plan, report: ServeReport | None, o) -> float | None:
    """A higher --gpu-memory-utilization than the one given, when what vLLM keeps outside its budget
    (CUDA context, graphs, NCCL) leaves room: the largest share that still fits it, at most UTIL_CAP."""
    if report is None or o.kv_cache_memory is not None or not report.headroom_ok:
        return None
    top = serving.utilization_that_starts(plan.target, replace(report, headroom_ok=False),
                                          replace(o, gpu_memory_utilization=1.0))
    util = min(top or 0.0, UTIL_CAP)
    return util if util > o.gpu_memory_utilization else None


def _smaller(attempt: Attempt, flag: str, field: str, current: int, steps, floor: int, o) -> None:
    """Offer the largest of `steps` below `current` (and at least `floor`) that fits, else the
    largest step at most a quarter of `current` (or the smallest), which pairs may combine."""
    choices = [n for n in steps if floor <= n < current]
    if not choices:
        return

    def fits(k: int) -> bool:
        return bool(attempt(f"{flag} {choices[k]}", {field: choices[k]}, quiet=True,
                            serve=replace(o, **{field: choices[k]})))

    if fits(len(choices) - 1):      # fewer is never more memory: bisect for the largest that fits
        lo, hi = 0, len(choices) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if fits(mid) else (mid + 1, hi)
        n = choices[lo]
    else:
        n = next((c for c in choices if c <= current // 4), choices[-1])
    attempt(f"{flag} {n}", {field: n}, serve=replace(o, **{field: n}))


ENGINE = VllmEngine()
