"""What a training script has already decided, read from its live objects: the model as loaded
(peft adapters and their targets, bitsandbytes 4/8-bit layers, what peft's k-bit preparation
upcast, gradient checkpointing switched on at the model level, attention implementation, dtypes,
where its tensors are) and the TrainingArguments (micro-batch, optimizer, precision, checkpointing,
DeepSpeed / FSDP, world size, local rank, TRL's max_length).

Why from the objects and not from the script's intentions: a script, peft's
prepare_model_for_kbit_training or TRL can switch checkpointing on at the model level
(`model.is_gradient_checkpointing`) while TrainingArguments still says False, and a pre-flight
that plans the arguments alone plans a different step (issue #14, case 1).

Duck-typed: imports neither torch nor transformers, so it reads real objects and stand-ins alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vramplan.engines.hf_trainer.options import ATTN_IMPLS

# torch dtype names (str(torch.bfloat16) == "torch.bfloat16") -> vramplan's
_DTYPES = {"torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.float32": "fp32"}
# bitsandbytes parameter classes: Linear4bit.weight is a Params4bit, Linear8bitLt.weight an Int8Params
_BNB_4BIT, _BNB_8BIT = "Params4bit", "Int8Params"


@dataclass(frozen=True, kw_only=True)
class LiveModel:
    """A loaded (peft) model as preflight() needs it: its config, the settings it implies, and
    the bytes of its tensors per device (unique storages, parameters and buffers)."""

    config: dict
    settings: dict                       # preflight keywords: mode, dtype, lora_*, grad_ckpt, attn, ...
    resident: dict[str, int] = field(default_factory=dict)   # "cuda:0" -> bytes


def is_live_model(obj) -> bool:
    """A torch module with a transformers config (a PreTrainedModel or a PeftModel around one)."""
    return callable(getattr(obj, "named_parameters", None)) and (
        getattr(obj, "config", None) is not None or callable(getattr(obj, "get_base_model", None)))


def _dtype(t) -> str | None:
    return _DTYPES.get(str(getattr(t, "dtype", "")))


def _base(model):
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def _config_dict(base) -> dict:
    config = base.config
    return dict(config.to_dict()) if callable(getattr(config, "to_dict", None)) else dict(config)


def _quant_type(config: dict) -> str:
    """bitsandbytes' 4-bit type from quantization_config (a dict after config.to_dict())."""
    q = config.get("quantization_config") or {}
    kind = str((q.get("bnb_4bit_quant_type") if isinstance(q, dict) else getattr(q, "bnb_4bit_quant_type", "")) or "nf4")
    return kind.lower() if kind.lower() in ("nf4", "fp4") else "nf4"


def _lora(model) -> tuple[dict, set[str], str | None]:
    """(the active LoraConfig's settings, the leaf names of the modules peft wrapped, adapter dtype)."""
    configs = getattr(model, "peft_config", None) or {}
    if not configs:
        return {}, set(), None
    active = getattr(model, "active_adapter", None)
    active = active if isinstance(active, str) and active in configs else next(iter(configs))
    c = configs[active]
    settings = {"lora_r": int(c.r), "lora_alpha": getattr(c, "lora_alpha", None),
                "lora_dropout": float(getattr(c, "lora_dropout", 0.0) or 0.0)}
    leaves, adapter_dtype = set(), None
    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if lora_a is None or not hasattr(lora_a, "keys") or active not in lora_a.keys():
            continue
        leaves.add(name.rsplit(".", 1)[-1])
        if adapter_dtype is None:
            adapter_dtype = _dtype(lora_a[active].weight)
    if not leaves:                      # stand-ins without modules: what the config says
        targets = getattr(c, "target_modules", None)
        leaves = {targets} if isinstance(targets, str) else set(targets or ())
    return settings, leaves, adapter_dtype


def _kbit_prepare(base) -> str:
    """What the k-bit preparation left in fp32: peft's prepare_model_for_kbit_training casts every
    16-bit parameter that is not a Params4bit to fp32 (peft 0.21.2 utils/other.py:203-209), so
    fp32 embeddings mean "peft"; fp32 norms with 16-bit embeddings are qlora.py / TRL 0.11's
    recipe ("trl"); nothing upcast is "none"."""
    emb = getattr(base, "get_input_embeddings", None)
    emb_dtype = _dtype(emb().weight) if callable(emb) and emb() is not None else None
    norm_dtypes = {_dtype(p) for n, p in base.named_parameters() if "norm" in n.rsplit(".", 2)[0 if n.count(".") < 1 else -2].lower()}
    if emb_dtype == "fp32":
        return "peft"
    if "fp32" in norm_dtypes:
        return "trl"
    return "none"


def _checkpointing(m) -> bool:
    """transformers >= 5.25 names it is_activation_checkpointing (is_gradient_checkpointing is its
    deprecated alias, modeling_utils.py:3314); earlier versions only the latter."""
    on = getattr(m, "is_activation_checkpointing", None)
    if on is None:
        on = getattr(m, "is_gradient_checkpointing", False)
    return bool(on)


def _resident(model) -> dict[str, int]:
    """Bytes of the unique storages of parameters and buffers, per device ("cuda:0", "cpu")."""
    seen: set = set()
    out: dict[str, int] = {}
    tensors = list(model.parameters()) + list(getattr(model, "buffers", lambda: [])())
    for t in tensors:
        device = getattr(t, "device", None)
        if device is None or getattr(device, "type", "") == "meta":
            continue
        try:
            storage = t.untyped_storage()
            key, nbytes = (str(device), storage.data_ptr()), storage.nbytes()
        except (AttributeError, RuntimeError, NotImplementedError):
            key, nbytes = (str(device), id(t)), t.numel() * t.element_size()
        if key in seen:
            continue
        seen.add(key)
        where = str(device) if getattr(device, "index", None) is not None or device.type != "cuda" else "cuda:0"
        out[where] = out.get(where, 0) + nbytes
    return out


def read_model(model, bf16_or_fp16: bool = False) -> LiveModel:
    """The settings the loaded model implies. `bf16_or_fp16`: the Trainer runs under autocast."""
    base = _base(model)
    config = _config_dict(base)
    classes = {type(p).__name__ for p in base.parameters()}
    four = _BNB_4BIT in classes or bool(getattr(base, "is_loaded_in_4bit", False))
    eight = _BNB_8BIT in classes or bool(getattr(base, "is_loaded_in_8bit", False))
    lora, leaves, adapter_dtype = _lora(model)
    s: dict = {}
    if four or eight:
        s["mode"] = "qlora"
        s["dtype"] = "int8" if eight and not four else _quant_type(config)
        s["kbit_prepare"] = _kbit_prepare(base)
    else:
        s["mode"] = "lora" if lora else "full"
        floats = [d for d in (_dtype(p) for p in base.parameters()) if d]
        weights = max(set(floats), key=floats.count) if floats else None
        if weights is not None:
            s["dtype"] = weights
        if bf16_or_fp16 and (weights == "fp32" or lora):
            s["precision"] = "mixed"         # fp32 masters (full) / autocast over the base (LoRA)
    if lora:
        s.update({k: v for k, v in lora.items() if v is not None})
        s["lora_targets"] = ",".join(sorted(leaves))
        if adapter_dtype is not None:
            s["lora_dtype"] = "fp32" if adapter_dtype == "fp32" else "bf16"
    # Checkpointing switched on at the model level (gradient_checkpointing_enable(), peft's
    # prepare_model_for_kbit_training, TRL): the truth about the step, whatever the arguments say.
    s["grad_ckpt"] = _checkpointing(model) or _checkpointing(base)
    attn = str(getattr(base.config, "_attn_implementation", "") or "")
    if attn in ATTN_IMPLS:
        s["attn"] = attn
    return LiveModel(config=config, settings=s, resident=_resident(model))


@dataclass(frozen=True, kw_only=True)
class LiveArgs:
    """TrainingArguments (or TRL's SFTConfig) as preflight() needs them."""

    settings: dict                       # preflight keywords: batch, optim, grad_ckpt, deepspeed, fsdp
    world: int = 1                       # processes training together (args.world_size)
    local_rank: int = -1                 # args.local_rank (-1: not distributed)
    device: str | None = None            # args.device: "cuda:N", "cpu"
    ctx: int | None = None               # SFTConfig.max_length (TRL truncates there, default 1024)
    autocast: bool = False               # bf16 / fp16 mixed precision
    grad_accum: int = 1                  # gradient_accumulation_steps: read, not yet planned (issue
                                         # #14 item 6 adds it to the plan: gradients kept through
                                         # the next micro-batch's forward)


def _local_rank(value) -> int:
    """TrainingArguments.local_rank: -1 when not distributed; rank 0 is a rank."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else -1


def _steps(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else 1


def read_args(args) -> LiveArgs:
    s: dict = {"batch": int(args.per_device_train_batch_size)}
    optim = getattr(args, "optim", None)
    if optim is not None:
        s["optim"] = str(getattr(optim, "value", optim))
    if getattr(args, "activation_checkpointing", None) or getattr(args, "gradient_checkpointing", None):
        s["grad_ckpt"] = True          # the Trainer enables it on the model at train start
    ds = getattr(args, "deepspeed", None)
    if ds:
        s["deepspeed"] = ds
    fsdp = getattr(args, "fsdp", None)
    if fsdp:
        words = fsdp.split() if isinstance(fsdp, str) else [str(getattr(o, "value", o)) for o in fsdp]
        s["fsdp"] = " ".join(words)
    world = getattr(args, "world_size", 1)
    device = getattr(args, "device", None)
    length = getattr(args, "max_length", None)
    if length is None:
        length = getattr(args, "max_seq_length", None)        # TRL < 0.20
    return LiveArgs(settings=s, world=int(world) if isinstance(world, int) and world > 0 else 1,
                    local_rank=_local_rank(getattr(args, "local_rank", -1)),
                    device=None if device is None else str(device),
                    ctx=length if isinstance(length, int) and not isinstance(length, bool) and length > 0 else None,
                    autocast=bool(getattr(args, "bf16", False) or getattr(args, "fp16", False)),
                    grad_accum=_steps(getattr(args, "gradient_accumulation_steps", 1)))


def own_cuda_index(args: LiveArgs | None, model: LiveModel | None, local_rank_env: str | None,
                   current_device: int | None) -> int:
    """The CUDA device this process trains on: TrainingArguments.device, else where the model's
    tensors already are, else the local rank (torchrun's LOCAL_RANK: rank k trains on cuda:k),
    else torch's current device, else 0. Never "GPU 0" by default when the process is rank k."""
    if args is not None and args.device and args.device.startswith("cuda"):
        _, _, index = args.device.partition(":")
        if index.isdigit():
            return int(index)
        if current_device is not None:
            return current_device
    if model is not None:
        cuda = [d for d in model.resident if d.startswith("cuda:")]
        if cuda:
            return int(max(cuda, key=lambda d: model.resident[d]).split(":")[1])
    if args is not None and args.local_rank >= 0:
        return args.local_rank
    if local_rank_env is not None and local_rank_env.strip().isdigit():
        return int(local_rank_env)
    return current_device or 0
