"""The pre-flight API and the Trainer callback: fits, refuses with a useful message, no network."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

import vramplan
from tests.tiny import TINY_LLAMA
from vramplan.errors import BadInput, DoesNotFit, VramplanError
from vramplan.integrations import trainer_settings

LLAMA = "meta-llama/Llama-3.1-8B"


def test_fitting_step_returns_the_plan():
    p = vramplan.preflight(LLAMA, mode="lora", batch=4, ctx=2048, gpu="l40s", grad_ckpt=True)
    assert p.fits and p.workload.mode == "lora" and p.workload.train.grad_ckpt
    assert p.total_bytes <= p.capacity_bytes


def test_does_not_fit_names_limits_and_the_cheapest_fix():
    with pytest.raises(DoesNotFit) as e:
        vramplan.preflight(LLAMA, mode="lora", batch=4, ctx=2048, gpu="l40s")
    err = e.value
    assert isinstance(err, RuntimeError) and isinstance(err, VramplanError)
    msg = str(err)
    p = err.plan
    assert f"largest micro-batch that fits at 2,048 tokens is {p.max_batch}" in msg
    assert f"longest sequence at batch 4 is {p.max_ctx:,} tokens" in msg
    first_fix = next(s for s in p.suggestions if s.fits)
    assert first_fix.change in msg
    # the named fix really fits when applied
    assert vramplan.preflight(LLAMA, mode="lora", batch=4, ctx=2048, gpu="l40s", **first_fix.flags).fits


def test_gpu_as_bytes_and_as_catalog_id_agree():
    a = vramplan.preflight(LLAMA, mode="qlora", batch=1, ctx=1024, gpu="l40s")
    b = vramplan.preflight(LLAMA, mode="qlora", batch=1, ctx=1024, gpu=a.target.per_gpu_bytes)
    assert a.total_bytes == b.total_bytes and a.capacity_bytes == b.capacity_bytes


def test_config_dict_is_planned_without_any_lookup():
    p = vramplan.preflight(dict(TINY_LLAMA), mode="full", batch=1, ctx=128, gpu="l40s")
    assert p.fits and p.model.params == 106_816


@pytest.mark.parametrize("kwargs", [
    {"batch": 0}, {"ctx": "32q"}, {"mode": "train"}, {"gpu": ["l40s"]}, {"gpu": "rtx-9090"},
    {"optim": "adam_ultra"}, {"lora_r": 0}, {"zero": 5},
])
def test_bad_arguments_are_value_errors(kwargs):
    args = {"mode": "lora", "batch": 1, "ctx": 512, "gpu": "l40s", **kwargs}
    with pytest.raises(BadInput) as e:
        vramplan.preflight(LLAMA, **args)
    assert isinstance(e.value, ValueError) and len(str(e.value)) < 400


def test_bundled_config_needs_no_network_and_no_heavy_import():
    code = ("import sys, vramplan; vramplan.preflight('meta-llama/Llama-3.1-8B', mode='qlora', "
            "batch=1, ctx=1024, gpu='l40s'); "
            "print(sorted(m for m in ('torch','transformers','huggingface_hub') if m in sys.modules))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=os.path.join(os.path.dirname(__file__), ".."))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_trainer_settings_from_arguments_and_peft_model():
    """Stand-ins for a peft QLoRA model and TrainingArguments: what each says, merged (the full
    reading of real objects is tests/test_integrations.py)."""
    args = SimpleNamespace(per_device_train_batch_size=2, optim=SimpleNamespace(value="adamw_torch_fused"),
                           gradient_checkpointing=True, bf16=True, fp16=False)
    lora = SimpleNamespace(r=8, target_modules={"v_proj", "q_proj"}, lora_dropout=0.1, lora_alpha=16)
    base = SimpleNamespace(config={"model_type": "llama"}, is_loaded_in_4bit=True,
                           named_parameters=lambda: iter(()), parameters=lambda: iter(()),
                           get_input_embeddings=lambda: None)
    model = SimpleNamespace(peft_config={"default": lora}, get_base_model=lambda: base,
                            named_parameters=lambda: iter(()), parameters=lambda: iter(()),
                            named_modules=lambda: iter(()))
    assert trainer_settings(args, model) == {
        "mode": "qlora", "dtype": "nf4", "kbit_prepare": "none", "lora_r": 8, "lora_alpha": 16,
        "lora_dropout": 0.1, "lora_targets": "q_proj,v_proj", "grad_ckpt": True, "batch": 2,
        "optim": "adamw_torch_fused"}
    plain = SimpleNamespace(dtype="torch.float32")          # not a model: the arguments alone
    assert trainer_settings(args, plain) == {"batch": 2, "optim": "adamw_torch_fused", "grad_ckpt": True}


def test_trainer_callback_checks_at_train_start():
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from vramplan.integrations import VramplanCallback

    config = transformers.LlamaConfig(**{k: v for k, v in TINY_LLAMA.items()
                                         if k not in ("model_type", "architectures", "torch_dtype")})
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    args = SimpleNamespace(per_device_train_batch_size=2, optim="adamw_torch", gradient_checkpointing=False,
                           bf16=False, fp16=False)
    cb = VramplanCallback(ctx=256, gpu="l40s")
    cb.on_train_begin(args, None, None, model=model)
    assert cb.plan.fits and cb.plan.model.params == 106_816 and cb.plan.workload.batch == 2
    small = VramplanCallback(ctx=256, gpu=10**6)        # 1 MB: nothing fits
    with pytest.raises(DoesNotFit):
        small.on_train_begin(args, None, None, model=model)
    lenient = VramplanCallback(ctx=256, gpu=10**6, raise_if_no_fit=False)
    lenient.on_train_begin(args, None, None, model=model)
    assert lenient.plan is not None and not lenient.plan.fits
