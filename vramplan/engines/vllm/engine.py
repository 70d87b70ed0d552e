"""vLLM as an engine: its budget and profile (serving.py), its start-up report and refusals,
and the knobs a vLLM user reaches for."""

from __future__ import annotations

from dataclasses import replace

from vramplan.engines.base import Attempt, EngineBase, ScaleOut
from vramplan.engines.vllm import serving
from vramplan.memory.dtypes import FLOAT_BYTES
from vramplan.memory.setup import Breakdown, Setup
from vramplan.spec import GpuTarget, ModelSpec, Plan, ServeReport, Workload


class VllmEngine(EngineBase):
    name = "vllm"

    def prepare(self, model: ModelSpec, target: GpuTarget, workload: Workload) -> Setup:
        return serving.prepare(model, target, workload)

    def components(self, setup: Setup, batch: int, ctx: int) -> Breakdown:
        return serving.components(setup, batch, ctx)

    def report(self, setup: Setup, breakdown: Breakdown, ctx: int) -> ServeReport:
        return serving.startup(setup, breakdown, ctx)

    def fits(self, setup: Setup, breakdown: Breakdown, report: ServeReport | None) -> bool:
        return breakdown.total <= setup.capacity and (report is None or report.headroom_ok)

    def warnings(self, setup: Setup, report: ServeReport | None) -> list[str]:
        if report is None or report.headroom_ok or report.refusal:
            return []
        return ["The CUDA context, CUDA graphs and NCCL buffers do not fit in the "
                f"{1 - setup.workload.serve.gpu_memory_utilization:.0%} vLLM leaves outside its budget; "
                "lower --gpu-memory-utilization."]

    def levers(self, plan: Plan, attempt: Attempt) -> None:
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
