"""The HF Trainer (+ peft + bitsandbytes) as an engine: one training step's peak (engine.py,
phases.py) and the levers of a fine-tuning run, in the order people reach for them."""

from __future__ import annotations

from dataclasses import replace

from vramplan.engines.base import Attempt, EngineBase, ScaleOut
from vramplan.engines.hf_trainer import step
from vramplan.engines.hf_trainer.options import recipe_grad_ckpt
from vramplan.memory.setup import Breakdown, Setup
from vramplan.spec import GpuTarget, ModelSpec, Plan, Workload


class HfTrainerEngine(EngineBase):
    name = "hf_trainer"

    def prepare(self, model: ModelSpec, target: GpuTarget, workload: Workload) -> Setup:
        return step.prepare(model, target, workload)

    def components(self, setup: Setup, batch: int, ctx: int) -> Breakdown:
        return step.components(setup, batch, ctx)

    def warnings(self, setup: Setup, report) -> list[str]:
        w = setup.workload
        paging = step.paging_warning(setup, step.components(setup, w.batch, w.ctx))
        return [paging] if paging else []

    def levers(self, plan: Plan, attempt: Attempt) -> None:
        w, o = plan.workload, plan.workload.train
        if not o.grad_ckpt:
            attempt("--grad-ckpt", {"grad_ckpt": True}, train=replace(o, grad_ckpt=True))
        if w.mode != "qlora" and "8bit" not in o.optim:
            attempt("--optim adamw_8bit", {"optim": "adamw_8bit"}, train=replace(o, optim="adamw_8bit"))
        if w.mode == "full":
            if attempt("--mode lora", {"mode": "lora"}, mode="lora") is None:   # no default targets
                attempt("--mode lora --lora-targets all-linear", {"mode": "lora", "lora_targets": "all-linear"},
                        mode="lora", train=replace(o, lora_targets=("all-linear",)))
        if w.mode in ("full", "lora"):
            # QLoRA as its recipes run it: checkpointing on (options.recipe_grad_ckpt)
            attempt("--mode qlora", {"mode": "qlora"}, mode="qlora", dtype="auto",
                    train=replace(o, grad_ckpt=o.grad_ckpt or recipe_grad_ckpt("qlora", o.kbit_prepare)))

    def scale_out(self, plan: Plan, n: int) -> ScaleOut:
        gpu = plan.target.gpu.id if plan.target.gpu else "custom"
        return ScaleOut(f"--gpu {gpu}:{n} --zero 3", {"gpu": f"{gpu}:{n}", "zero": 3},
                        {"train": replace(plan.workload.train, world=n, zero=3)})


ENGINE = HfTrainerEngine()
