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
        out = [paging] if paging else []
        if w.train.liger and not setup.model.traits.liger:
            out.append("--liger: Liger-Kernel does not patch this model type (not in its "
                       "MODEL_TYPE_TO_APPLY_LIGER_FN), so transformers runs the step unchanged; planned without it.")
        return out

    def levers(self, plan: Plan, attempt: Attempt) -> None:
        """A trainer's switches, cheapest first (docs/training.md §16): what costs no speed or
        quality (Liger's kernels, a smaller micro-batch with the same effective batch by gradient
        accumulation, 8-bit or paged optimizer state), then recomputation and host transfers
        (checkpointing, activation offloading), then a smaller or quantized model of the update
        (LoRA rank, LoRA, QLoRA); more GPUs and ZeRO come from scale_out."""
        w, o = plan.workload, plan.workload.train
        if not o.liger and plan.model.traits.liger:
            attempt("--liger", {"liger": True}, train=replace(o, liger=True, loss="chunked"))
        for b, a in traded_batches(w.batch, o.grad_accum):
            if attempt(f"--batch {b} --grad-accum {a}", {"batch": b, "grad_accum": a}, batch=b,
                       train=replace(o, grad_accum=a)):
                break           # the largest micro-batch that fits is the fastest
        if w.mode != "qlora" and "8bit" not in o.optim:
            attempt("--optim adamw_8bit", {"optim": "adamw_8bit"}, train=replace(o, optim="adamw_8bit"))
        if "paged" not in o.optim and o.optim in ("adamw_torch", "adamw_torch_fused", "adamw_8bit"):
            paged = "paged_adamw_8bit" if (w.mode == "qlora" or "8bit" in o.optim) else "paged_adamw_32bit"
            attempt(f"--optim {paged}", {"optim": paged}, train=replace(o, optim=paged))
        if not o.grad_ckpt:
            attempt("--grad-ckpt", {"grad_ckpt": True}, train=replace(o, grad_ckpt=True))
        if not o.offload_activations:
            attempt("--offload-activations", {"offload_activations": True},
                    train=replace(o, offload_activations=True))
        if w.mode != "full" and o.lora_r > LEVER_LORA_R:
            attempt(f"--lora-r {LEVER_LORA_R}", {"lora_r": LEVER_LORA_R}, train=replace(o, lora_r=LEVER_LORA_R))
        if w.mode == "full":
            if attempt("--mode lora", {"mode": "lora"}, mode="lora") is None:   # no default targets
                attempt("--mode lora --lora-targets all-linear", {"mode": "lora", "lora_targets": "all-linear"},
                        mode="lora", train=replace(o, lora_targets=("all-linear",)))
        if w.mode in ("full", "lora"):
            # QLoRA as its recipes run it: checkpointing on (options.recipe_grad_ckpt)
            attempt("--mode qlora", {"mode": "qlora"}, mode="qlora", dtype="auto",
                    train=replace(o, grad_ckpt=o.grad_ckpt or recipe_grad_ckpt("qlora", o.kbit_prepare)))
        if o.world > 1 and 0 < o.zero < 3:
            z = o.zero + 1
            train = replace(o, zero=z, deepspeed=replace(o.deepspeed, stage=z)) if o.deepspeed is not None else None
            if train is not None:
                attempt(f"--zero {z}", {"zero": z}, train=train)

    def scale_out(self, plan: Plan, n: int) -> ScaleOut:
        gpu = plan.target.gpu.id if plan.target.gpu else "custom"
        return ScaleOut(f"--gpu {gpu}:{n} --zero 3", {"gpu": f"{gpu}:{n}", "zero": 3},
                        {"train": replace(plan.workload.train, world=n, zero=3)})


# The rank the LoRA lever lowers to: 16, the rank most recipes start from (peft's default is 8).
LEVER_LORA_R = 16
# Micro-batches tried by the accumulation lever, at most: the divisors of the effective batch.
MAX_TRADES = 6


def traded_batches(batch: int, accum: int) -> list[tuple[int, int]]:
    """(micro-batch, accumulation) pairs with the same effective batch per device as
    batch x accum and a smaller micro-batch, largest first: --batch 3 --grad-accum 1 ->
    (1, 3); --batch 8 -> (4, 2), (2, 4), (1, 8). The optimizer sees the same batch; only
    the step takes longer (more, smaller forward/backward passes)."""
    effective = batch * accum
    out = [(b, effective // b) for b in range(batch - 1, 0, -1) if effective % b == 0]
    return out[:MAX_TRADES]


ENGINE = HfTrainerEngine()
