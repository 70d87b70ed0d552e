"""transformers `generate()` as an engine: the formulas are in generate.py; the levers are the
ones a transformers user has (a quantized cache, bitsandbytes weights)."""

from __future__ import annotations

from vramplan.engines.base import Attempt, EngineBase, ScaleOut
from vramplan.engines.transformers import generate
from vramplan.memory.dtypes import FLOAT_BYTES
from vramplan.memory.setup import Breakdown, Setup
from vramplan.spec import GpuTarget, ModelSpec, Plan, Workload


class TransformersEngine(EngineBase):
    name = "transformers"

    def prepare(self, model: ModelSpec, target: GpuTarget, workload: Workload) -> Setup:
        return generate.prepare(model, target, workload)

    def components(self, setup: Setup, batch: int, ctx: int) -> Breakdown:
        return generate.components(setup, batch, ctx)

    def levers(self, plan: Plan, attempt: Attempt) -> None:
        if FLOAT_BYTES.get(plan.kv_dtype, 2) > 1:
            attempt("--kv-dtype fp8", {"kv_dtype": "fp8"}, kv_dtype="fp8")
        for dtype in ("int8", "nf4"):
            if not plan.weight_dtype.startswith(dtype):
                attempt(f"--dtype {dtype}", {"dtype": dtype}, dtype=dtype)


    def scale_out(self, plan: Plan, n: int) -> ScaleOut:
        """device_map="auto" over n cards of the same kind (device_map.py): the layers split,
        one process, no tensor parallelism."""
        gpu = plan.target.gpu.id if plan.target.gpu else "custom"
        return ScaleOut(f"--gpu {gpu}:{n}", {"gpu": f"{gpu}:{n}"})


ENGINE = TransformersEngine()
