"""Analytic vs trace, case by case: how the tests and benchmarks/trace_agreement.py hold the
analytic tier to the trace.

A case is one `vramplan fit` question. `compare` answers it with both methods and returns the
totals, the exact-by-design components (weights, KV cache) and every component's difference.
Tolerances (the targets of the design): weights and KV exact, total within 3 % for serve/infer
and 8 % for training. tests/test_trace_agreement.py lists the cases outside them with the reason
(none at present); docs/trace.md has the latest report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from vramplan import methods, trace
from vramplan.request import PlanRequest
from vramplan.targets import resolve_target

TOLERANCE = {"serve": 0.03, "infer": 0.03, "full": 0.08, "lora": 0.08, "qlora": 0.08}


@dataclass(frozen=True)
class Case:
    model: str
    mode: str
    batch: int
    ctx: int
    options: tuple = ()          # (("grad_ckpt", True), ...) extra plan() keywords
    gpu: str = "h100"

    @property
    def label(self) -> str:
        opts = " ".join(f"{k}={v}" for k, v in self.options)
        return f"{self.model} {self.mode} b{self.batch} c{self.ctx} {opts}".strip()


@dataclass
class Row:
    case: Case
    analytic_total: int
    trace_total: int
    weights: tuple[int, int]               # (analytic, trace)
    kv_cache: tuple[int, int]
    components: dict[str, tuple[int, int]]
    analytic_phase: str
    trace_where: str
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def diff(self) -> float:
        """(analytic - trace) / trace: positive = the analytic tier overestimates."""
        return self.analytic_total / self.trace_total - 1

    @property
    def within(self) -> bool:
        return abs(self.diff) <= TOLERANCE[self.case.mode]


# Bundled configs by family, at their real sizes. Quantized checkpoints are traced in bf16
# (the trace lays out 16-bit and bitsandbytes 4-bit weights only).
FAMILIES = {
    "llama": "meta-llama/Llama-3.1-8B",
    "llama-70b": "meta-llama/Llama-3.1-70B",
    "qwen2": "Qwen/Qwen2.5-7B",
    "qwen3": "Qwen/Qwen3-8B",
    "mistral": "mistralai/Mistral-7B-v0.1",
    "mixtral": "mistralai/Mixtral-8x7B-v0.1",
    "gemma3": "google/gemma-3-4b-it",
    "phi3": "microsoft/Phi-3-mini-4k-instruct",
    "gpt2": "openai-community/gpt2-large",
    "gpt_oss": "openai/gpt-oss-20b",
    "deepseek_v3": "deepseek-ai/DeepSeek-V3",
    "falcon": "tiiuae/falcon-40b",
    "nemotron_h": "nvidia/Nemotron-H-56B-Base-8K",
}
_BF16 = {"openai/gpt-oss-20b", "deepseek-ai/DeepSeek-V3"}
# Explicit LoRA targets where peft has no default for the model type (phi3, multimodal gemma3)
# or where peft 0.21 + transformers 5 refuse the default on fused-expert MoE models.
_TARGETS = {"microsoft/Phi-3-mini-4k-instruct": "qkv_proj,o_proj", "google/gemma-3-4b-it": "q_proj,v_proj",
            "mistralai/Mixtral-8x7B-v0.1": "q_proj,v_proj", "openai/gpt-oss-20b": "q_proj,v_proj",
            "deepseek-ai/DeepSeek-V3": "q_b_proj,kv_b_proj", "tiiuae/falcon-40b": "query_key_value"}
_PEFT_PARAM_WRAPPED = {"mistralai/Mixtral-8x7B-v0.1", "deepseek-ai/DeepSeek-V3"}
# QLoRA with --kbit-prepare none: peft's prepare_model_for_kbit_training upcasts what bitsandbytes
# left 16-bit to fp32: fused experts, which grouped_mm then refuses (a real script fails the same
# way), and Falcon's every FalconLinear, which the analytic tier refuses to plan as QLoRA.
_KBIT_NONE = {"mistralai/Mixtral-8x7B-v0.1", "openai/gpt-oss-20b", "deepseek-ai/DeepSeek-V3",
              "nvidia/Nemotron-H-56B-Base-8K", "tiiuae/falcon-40b"}


def cases(model: str) -> list[Case]:
    """The agreement questions for one model: serve, infer, full / LoRA / QLoRA, +- checkpointing."""
    base = (("dtype", "bf16"),) if model in _BF16 else ()
    lora = base + ((("lora_targets", _TARGETS[model]),) if model in _TARGETS else ())
    qlora = tuple(kv for kv in lora if kv[0] != "dtype")
    if model in _KBIT_NONE:
        qlora += (("kbit_prepare", "none"),)
    out = [Case(model, "serve", 8, 4096, base), Case(model, "infer", 8, 4096, base)]
    for ckpt in (False, True):
        extra = (("grad_ckpt", True),) if ckpt else ()
        out += [Case(model, "full", 1, 2048, base + extra),
                Case(model, "lora", 4, 2048, lora + extra),
                Case(model, "qlora", 4, 2048, qlora + extra)]
    if model in _PEFT_PARAM_WRAPPED:
        # all-linear reaches the fused experts through peft's ParamWrapper (dropout must be 0)
        out.append(Case(model, "lora", 1, 2048, base + (("lora_targets", "all-linear"), ("lora_dropout", 0.0))))
    return out


def all_cases() -> list[Case]:
    return [c for m in FAMILIES.values() for c in cases(m)]


# A representative subset for the default test run (a few minutes on 2 cores): the common
# decoder in every mode, and one case for each family-specific rule of the analytic tier.
DEFAULT = [
    Case("meta-llama/Llama-3.1-8B", "serve", 8, 4096),
    Case("meta-llama/Llama-3.1-8B", "infer", 8, 4096),
    Case("meta-llama/Llama-3.1-8B", "full", 1, 2048),
    Case("meta-llama/Llama-3.1-8B", "lora", 4, 2048, (("grad_ckpt", True),)),
    Case("Qwen/Qwen3-8B", "qlora", 4, 2048),
    Case("mistralai/Mixtral-8x7B-v0.1", "infer", 4, 4096),               # grouped_mm experts
    Case("mistralai/Mixtral-8x7B-v0.1", "qlora", 4, 2048,                # experts stay bf16
         (("lora_targets", "q_proj,v_proj"), ("kbit_prepare", "none"), ("grad_ckpt", True))),
    Case("openai/gpt-oss-20b", "infer", 8, 4096, (("dtype", "bf16"),)),  # eager attention, sinks
    Case("openai-community/gpt2-large", "lora", 4, 2048),                # gelu_new, dropout masks
    Case("microsoft/Phi-3-mini-4k-instruct", "lora", 4, 2048, (("lora_targets", "qkv_proj,o_proj"),)),
    Case("google/gemma-3-4b-it", "full", 1, 2048),                       # fp32 norms, masked GQA
    Case("nvidia/Nemotron-H-56B-Base-8K", "lora", 4, 2048),              # Mamba kernels, frozen prefix
]


def compare(case: Case, no_cache: bool = False) -> Row:
    kw = dict(case.options)
    target = resolve_target(case.gpu)
    analytic = methods.plan(PlanRequest.from_keywords(case.model, target, mode=case.mode, batch=case.batch,
                                                      ctx=case.ctx, **kw))
    start = time.perf_counter()
    traced = trace.plan(case.model, target, analytic.workload, no_cache=no_cache, progress=False)
    seconds = time.perf_counter() - start
    a, t = analytic.components, traced.components
    names = list(dict.fromkeys(list(a) + list(t)))
    return Row(case, analytic.total_bytes, traced.total_bytes,
               (a.get("weights", 0), t.get("weights", 0)), (a.get("kv_cache", 0), t.get("kv_cache", 0)),
               {k: (a.get(k, 0), t.get(k, 0)) for k in names}, analytic.phase, traced.trace.where,
               round(seconds, 1), list(traced.trace.measured.get("warnings", ())))
