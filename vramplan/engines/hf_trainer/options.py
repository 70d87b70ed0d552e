"""The settings of a training step (`TrainOptions`) and their validation.

Why apart from the memory model: every entry point (CLI, `plan()`, the trace tier) must accept
the same spellings and reject the same mistakes with a sentence naming the flag, before any
number is computed. Names follow HF TrainingArguments / peft LoraConfig (docs/training.md §1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from vramplan.errors import BadInput
from vramplan.memory.dtypes import normalize
from vramplan.units import real, whole
from vramplan.engines.hf_trainer.lora import normalize_targets
from vramplan.engines.hf_trainer.optimizers import resolve_optim
from vramplan.engines.hf_trainer.sharding import FsdpConfig, ZeroConfig, parse_deepspeed, parse_fsdp

# How the step trains: every weight, LoRA adapters on a 16-bit base, or on a quantized base.
# At the CLI/API edge this is the workload's mode; inside the engine it is the `method`.
Method = Literal["full", "lora", "qlora"]
TRAIN_MODES: tuple[Method, ...] = get_args(Method)
ADAPTER_METHODS: tuple[Method, ...] = ("lora", "qlora")     # peft trains adapters, the base is frozen
PRECISIONS = ("bf16", "mixed")
ATTN_IMPLS = ("sdpa", "eager", "flash_attention_2")
KBIT_PREPARE = ("peft", "trl", "none")
LORA_DTYPES = ("fp32", "bf16")
# lora_alpha only scales the adapters' output (alpha / r); no memory depends on it. Bounded so a
# typo (1e308) is caught: 16x the largest rank accepted (65,536).
MAX_LORA_ALPHA = 2**20


@dataclass(frozen=True, kw_only=True)
class TrainOptions:
    """Training settings, named as in HF TrainingArguments / peft LoraConfig.

    precision "bf16": parameters stored and computed in 16 bits, no autocast (pure bf16);
    "mixed": trainable parameters kept in fp32 and the forward/backward under bf16 autocast.
    QLoRA always runs under autocast (the Trainer's bf16=True), whatever `precision` says.
    zero 1/2/3 shard optimizer state / + gradients / + parameters over `world` GPUs (FSDP
    full-shard counts as 3). kbit_prepare says what QLoRA keeps out of 4 bits and in which dtype:
    "peft" = peft.prepare_model_for_kbit_training (embeddings, norms, lm_head upcast to fp32),
    "trl" = TRL SFTTrainer / qlora.py (norms fp32, embeddings and adapters bf16, autocast),
    "none" = everything left 16-bit. lora_dtype is the adapters' dtype (peft upcasts to fp32).
    """

    optim: str = "adamw_torch"
    grad_ckpt: bool = False          # TrainingArguments' default; QLoRA's recipes: recipe_grad_ckpt
    lora_r: int = 8                  # peft LoraConfig defaults (peft 0.21.2 tuners/lora/config.py:632,
    lora_alpha: int = 8              # :652, :653): r=8, lora_alpha=8, lora_dropout=0.0
    lora_targets: tuple[str, ...] | None = None
    lora_dropout: float = 0.0
    precision: str = "bf16"
    zero: int = 0
    world: int = 1
    attn: str = "sdpa"
    lora_dtype: str = "fp32"
    kbit_prepare: str = "peft"
    deepspeed: ZeroConfig | None = None     # DeepSpeed's ZeRO settings (--deepspeed, or --zero 1/2)
    fsdp: FsdpConfig | None = None          # FSDP (--fsdp, or --zero 3 without --deepspeed)


# The parameter each option is set by, as BadInput names it (and the list of known options).
_FLAGS = {"optim": "{optim}", "grad_ckpt": "{grad_ckpt}", "lora_r": "{lora_r}",
          "lora_alpha": "{lora_alpha}", "lora_targets": "{lora_targets}",
          "lora_dropout": "{lora_dropout}", "precision": "{precision}", "zero": "{zero}",
          "world": "the GPU count ({gpu} ID:COUNT)", "attn": "{attn}",
          "lora_dtype": "{lora_dtype}", "kbit_prepare": "{kbit_prepare}", "deepspeed": "{deepspeed}",
          "fsdp": "{fsdp}", "gpus_per_node": "{gpus_per_node}"}


def _int(value, flag: str, low: int, high: int) -> int:
    """A whole number in [low, high]; "2" and 2.0 are accepted, 2.5, True and nan are not."""
    return whole(value, flag, low, high)


def _real(value, flag: str, within, what: str) -> float:
    """A finite float(value) when `within` accepts it (never a bool); else BadInput '{flag} must be {what}'."""
    return real(value, flag, within, what)


def _choice(value, flag: str, allowed: tuple[str, ...], aliases: dict | None = None) -> str:
    key = str(value).strip().lower()
    return normalize((aliases or {}).get(key, key), allowed, flag)


def _bool(value, flag: str) -> bool:
    if isinstance(value, bool):
        return value
    key = str(value).strip().lower()
    if key in ("1", "true", "yes", "on"):
        return True
    if key in ("0", "false", "no", "off"):
        return False
    raise BadInput(f"{flag} must be true or false, got {value!r}.")


def deepspeed_masters(o: TrainOptions) -> bool:
    """DeepSpeed ZeRO always steps an fp32 master partition (stage_1_and_2.py:490-516
    single_partition_of_fp32_groups; stage3.py fp32_partitioned_groups_flat), whatever the
    16-bit training says: under it full fine-tuning is the "mixed" row of the dtype plan."""
    return o.deepspeed is not None and o.zero >= 1


def recipe_grad_ckpt(method: str | None, kbit_prepare: str) -> bool:
    """Gradient checkpointing when the user says nothing: on for QLoRA prepared the way its
    recipes prepare it, off otherwise (TrainingArguments.gradient_checkpointing defaults off).

    peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=True) calls
    model.gradient_checkpointing_enable() (peft 0.21.2 utils/other.py:158-159, :221-240); TRL's
    SFTConfig defaults gradient_checkpointing=True (trl 1.16.0 trainer/base_config.py:62-63,
    sft_config.py:132) and qlora.py's finetune scripts pass --gradient_checkpointing. A QLoRA
    base loaded without either (kbit_prepare "none") keeps the Trainer's default."""
    return method == "qlora" and kbit_prepare in ("peft", "trl")


def normalize_train_options(method: str | None = None, **kwargs) -> TrainOptions:
    """Validate and canonicalize training settings; a bad value raises BadInput naming the flag.
    `method` (full, lora, qlora) fills the recipe's defaults for what was not given."""
    unknown = sorted(set(kwargs) - set(_FLAGS))
    if unknown:
        raise BadInput(f"unknown training option {unknown[0]!r}; known: {', '.join(_FLAGS)}.")
    d = {k: v for k, v in kwargs.items() if v is not None or k == "lora_targets"}
    out = {}
    if "optim" in d:
        out["optim"] = resolve_optim(d["optim"]).name
    if "grad_ckpt" in d:
        out["grad_ckpt"] = _bool(d["grad_ckpt"], _FLAGS["grad_ckpt"])
    if "lora_r" in d:
        out["lora_r"] = _int(d["lora_r"], _FLAGS["lora_r"], 1, 65536)
    if "lora_alpha" in d:
        a = d["lora_alpha"]
        alpha = _real(a, _FLAGS["lora_alpha"], lambda x: 0 < x <= MAX_LORA_ALPHA,
                      f"a positive number up to {MAX_LORA_ALPHA:,}")
        out["lora_alpha"] = int(alpha) if alpha == int(alpha) else alpha
    if "lora_targets" in d:
        out["lora_targets"] = normalize_targets(d["lora_targets"])
    if "lora_dropout" in d:
        out["lora_dropout"] = _real(d["lora_dropout"], _FLAGS["lora_dropout"], lambda p: 0.0 <= p < 1.0,
                                    "a probability in [0, 1)")
    if "precision" in d:
        out["precision"] = _choice(d["precision"], "{precision}", PRECISIONS,
                                   {"bfloat16": "bf16", "pure": "bf16", "amp": "mixed", "fp32-master": "mixed"})
    if "zero" in d:
        out["zero"] = _int(d["zero"], "{zero}", 0, 3)
    if "world" in d:
        out["world"] = _int(d["world"], _FLAGS["world"], 1, 65536)
    if "attn" in d:
        out["attn"] = _choice(d["attn"], "{attn}", ATTN_IMPLS,
                              {"flash": "flash_attention_2", "fa2": "flash_attention_2",
                               "flash_attention": "flash_attention_2"})
    if "lora_dtype" in d:
        out["lora_dtype"] = _choice(d["lora_dtype"], "{lora_dtype}", LORA_DTYPES,
                                    {"float32": "fp32", "bfloat16": "bf16", "fp16": "bf16"})
    if "kbit_prepare" in d:
        out["kbit_prepare"] = _choice(d["kbit_prepare"], "{kbit_prepare}", KBIT_PREPARE)
    if "grad_ckpt" not in out:
        out["grad_ckpt"] = recipe_grad_ckpt(method, out.get("kbit_prepare", TrainOptions.kbit_prepare))
    out.update(_sharding(d, out.get("zero")))
    return TrainOptions(**out)


def _sharding(d: dict, zero: int | None) -> dict:
    """Which library shards, and how: --deepspeed (its JSON's zero stage), --fsdp, or --zero alone
    (1/2: DeepSpeed ZeRO with DeepSpeed's defaults; 3: FSDP full shard, as before)."""
    if d.get("deepspeed") is not None and d.get("fsdp") is not None:
        raise BadInput("Give {deepspeed} or {fsdp}, not both: a Trainer runs one of them.")
    per_node = _int(d["gpus_per_node"], "{gpus_per_node}", 1, 1024) if d.get("gpus_per_node") is not None else None
    if d.get("deepspeed") is not None:
        ds = d["deepspeed"] if isinstance(d["deepspeed"], ZeroConfig) else parse_deepspeed(d["deepspeed"])
        if zero is not None and zero != ds.stage:
            raise BadInput(f"{{zero}} {zero} contradicts the DeepSpeed config's zero_optimization.stage {ds.stage}.")
        return {"deepspeed": ds, "zero": ds.stage}
    if d.get("fsdp") is not None:
        f = d["fsdp"] if isinstance(d["fsdp"], FsdpConfig) else parse_fsdp(d["fsdp"], per_node)
        if zero is not None and zero != f.stage:
            raise BadInput(f"{{zero}} {zero} contradicts {{fsdp}} {f.mode} (which shards like stage {f.stage}).")
        return {"fsdp": f, "zero": f.stage}
    if zero in (1, 2):
        return {"deepspeed": ZeroConfig(stage=zero)}
    if zero == 3:
        return {"fsdp": FsdpConfig()}
    return {}
