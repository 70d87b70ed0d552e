"""vLLM as an engine: its budget and profile (serving.py), its start-up report and refusals,
and the knobs a vLLM user reaches for."""

from __future__ import annotations

from dataclasses import replace

from vramplan.engines.base import Attempt, EngineBase, ScaleOut
from vramplan.engines.vllm import serving
from vramplan.memory.dtypes import FLOAT_BYTES
from vramplan.memory.setup import Breakdown, Setup
from vramplan.units import GiB
from vramplan.spec import GpuTarget, ModelSpec, Plan, ServeReport, Workload


class VllmEngine(EngineBase):
    name = "vllm"

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
        if report is not None and not report.headroom_ok and not report.refusal:
            out.append("The CUDA context, CUDA graphs and NCCL buffers do not fit in the "
                       f"{1 - w.serve.gpu_memory_utilization:.0%} vLLM leaves outside its budget; "
                       "lower --gpu-memory-utilization.")
        return out

    def levers(self, plan: Plan, attempt: Attempt) -> None:
        o = plan.workload.serve
        if o.kv_cache_memory is not None and plan.serve is not None and not plan.serve.headroom_ok:
            room = self.prepare(plan.model, plan.target, plan.workload).state.kv_room
            hundredths = room * 100 // GiB          # the most the card holds, rounded down to 0.01 GiB
            if hundredths > 0:
                size = f"{hundredths / 100:.2f}GiB"
                attempt(f"--kv-cache-memory {size}", {"kv_cache_memory": size},
                        serve=replace(o, kv_cache_memory=hundredths * GiB // 100))
        util = serving.utilization_that_starts(plan.target, plan.serve, plan.workload.serve)
        if util is not None:
            attempt(f"--gpu-memory-utilization {util:g}", {"gpu_memory_utilization": util},
                    serve=replace(plan.workload.serve, gpu_memory_utilization=util))
        if FLOAT_BYTES.get(plan.kv_dtype, 2) > 1:
            attempt("--kv-dtype fp8", {"kv_dtype": "fp8"}, kv_dtype="fp8")
        for dtype in ("fp8", "int4"):
            if not plan.weight_dtype.startswith(dtype):
                attempt(f"--dtype {dtype}", {"dtype": dtype}, dtype=dtype)

    def scale_out(self, plan: Plan, n: int) -> ScaleOut:
        gpu = plan.target.gpu.id if plan.target.gpu else "custom"
        return ScaleOut(f"--gpu {gpu}:{n} --tp {n}", {"gpu": f"{gpu}:{n}", "tp": n},
                        {"serve": replace(plan.workload.serve, tp=n)})


ENGINE = VllmEngine()
