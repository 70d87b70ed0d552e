"""Unsloth's LoRA/QLoRA recipe as an engine: the HF Trainer's step (engines/hf_trainer) with
what FastLanguageModel changes, each from Unsloth's source (unsloth commit 015bdef,
unsloth-zoo commit ce232d6):

- its per-layer kernels (kernels.py);
- use_gradient_checkpointing="unsloth", get_peft_model's default (unsloth/models/llama.py:3079):
  checkpointing whose saved layer inputs go to pinned host buffers and come back through one or
  two GPU buffers (unsloth_zoo/gradient_checkpointing.py:259, :602-673): the HF step with
  checkpointing and activation offloading;
- its fused CE loss (unsloth/models/llama.py:1497 unsloth_fused_ce_loss): the logits in chunks
  sized to the memory left free, at most 4 GB (unsloth_zoo/fused_losses/cross_entropy_loss.py:
  140-165), beside the hidden-state gradient: planned as the cut loss's terms (the chunk adapts
  to what is free, so it never decides the verdict);
- its 4-bit models keep norms and embeddings in 16 bits (no peft k-bit upcast): kbit_prepare none;
- its notebooks' optimizer, adamw_8bit, unless another --optim is given;
- get_peft_model's target_modules (q, k, v, o, gate, up, down: unsloth/models/llama.py:3064-3072)
  when --lora-targets is not given. Its default r = 16, alpha = 16 (:3063, :3073) are not applied:
  --lora-r keeps peft's default 8 unless given.
"""

from __future__ import annotations

from dataclasses import replace

from vramplan.engines.base import Attempt
from vramplan.engines.hf_trainer import step
from vramplan.engines.hf_trainer.engine import HfTrainerEngine, traded_batches
from vramplan.engines.hf_trainer.options import ADAPTER_METHODS
from vramplan.engines.hf_trainer.lora import adapted_modules
from vramplan.engines.unsloth.kernels import FAST_TARGETS, fast_path, unsloth_layer_cost
from vramplan.errors import BadInput
from vramplan.memory.setup import Breakdown, Setup
from vramplan.spec import GpuTarget, ModelSpec, Plan, Workload

LOSS_NOTE = ("Unsloth fused CE loss: logits in chunks sized to the free memory (at most 4 GB) + the "
             "hidden-state gradient")


# Unsloth's notebooks train with optim="adamw_8bit"; its notebook validator flags anything else
# (unsloth scripts/notebook_validator.py:727-742). TrainingArguments' own default is read as "not given".
UNSLOTH_OPTIM = "adamw_8bit"


def unsloth_options(o):
    """The training options as Unsloth's recipe runs them."""
    optim = UNSLOTH_OPTIM if o.optim == "adamw_torch" else o.optim
    targets = o.lora_targets if o.lora_targets is not None else FAST_TARGETS   # get_peft_model's default
    return replace(o, grad_ckpt=True, offload_activations=True, loss="cut", liger=False, kbit_prepare="none",
                   optim=optim, lora_targets=targets)


class UnslothEngine(HfTrainerEngine):
    name = "unsloth"

    def prepare(self, model: ModelSpec, target: GpuTarget, workload: Workload) -> Setup:
        if workload.mode not in ADAPTER_METHODS:
            raise BadInput("{engine} unsloth plans Unsloth's LoRA and QLoRA recipe; use {mode} lora or qlora.")
        if workload.train.world > 1:
            raise BadInput("{engine} unsloth plans one GPU (Unsloth's open-source recipe trains on one); "
                           "plan several GPUs with the HF trainer and {zero} or {fsdp}.")
        w = replace(workload, train=unsloth_options(workload.train))
        return step.prepare(model, target, w)

    def components(self, setup: Setup, batch: int, ctx: int) -> Breakdown:
        b = step.components(setup, batch, ctx, unsloth_layer_cost)
        notes = dict(b.notes)
        if "logits_and_loss" in notes:
            notes["logits_and_loss"] = LOSS_NOTE
        if "activations" in notes:
            a = notes["activations"].replace("saved tensors offloaded to host RAM",
                                             "Unsloth checkpointing: layer inputs in host RAM")
            if setup.workload.train.attn != "flash_attention_2":
                a = a.replace("SDPA flash/efficient kernel", "xFormers (Unsloth's dispatch without flash-attn)")
            notes["activations"] = a
        return replace(b, notes=notes)

    def warnings(self, setup: Setup, report) -> list[str]:
        out = super().warnings(setup, report)
        w, o = setup.workload, setup.workload.train
        by_layer: dict = {}
        for a in adapted_modules(setup.model, o.lora_targets, w.transformers):
            by_layer.setdefault(a.layer, {})[a.tensor.name] = a
        slow = [l.index for l in setup.model.layers if not fast_path(l, o, by_layer.get(l.index, {}))]
        if slow:
            out.append(f"{len(slow)} of {len(setup.model.layers)} layers are planned with peft's modules, not "
                       f"Unsloth's fused LoRA kernels (they need attention + gated MLP with all seven "
                       f"projections adapted and no LoRA dropout, as Unsloth's default targets): an upper bound there.")
        return out

    def levers(self, plan: Plan, attempt: Attempt) -> None:
        w, o = plan.workload, plan.workload.train
        for b, a in traded_batches(w.batch, o.grad_accum):
            if attempt(f"--batch {b} --grad-accum {a}", {"batch": b, "grad_accum": a}, batch=b,
                       train=replace(o, grad_accum=a)):
                break
        lora, qlora = ADAPTER_METHODS          # the trainer's own methods (options.py)
        if w.mode == lora:
            attempt(f"--mode {qlora}", {"mode": qlora}, mode=qlora, dtype="auto")

    def scale_out(self, plan: Plan, n: int):
        return None


ENGINE = UnslothEngine()
