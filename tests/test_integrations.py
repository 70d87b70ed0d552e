"""preflight(model=..., args=...) and VramplanCallback on live objects (issue #14 item 1): cases 1
and 2 of "What was seen", a real tiny Trainer run on the CPU, and this process's own device on a
fake CUDA + fake NVML.
"""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

import vramplan                                                       # noqa: E402
from tests.fakes.cuda import FakeCuda, MiB, from_nvml                 # noqa: E402
from tests.tiny import TINY_LLAMA                                     # noqa: E402
from vramplan.engines.hf_trainer.live import read_args, read_model    # noqa: E402
from vramplan.errors import BadInput, DoesNotFit                      # noqa: E402
from vramplan.probe import fake, nvml as nvml_mod                     # noqa: E402

GiB = 2**30
L8B = json.loads((Path(__file__).resolve().parent.parent / "configs" / "models"
                  / "meta-llama--Llama-3.1-8B.json").read_text())


def _hf_config(cfg: dict):
    return transformers.AutoConfig.for_model(**{k: v for k, v in cfg.items()
                                                if k not in ("architectures", "torch_dtype")})


def _meta_llama_8b_lora(checkpointing: bool):
    """Llama-3.1-8B in bf16 on the meta device with peft LoRA r=16, dropout 0.05 (q_proj, v_proj:
    peft's default for llama), checkpointing switched on at the model level or not."""
    with torch.device("meta"):
        m = transformers.AutoModelForCausalLM.from_config(_hf_config(L8B), dtype=torch.bfloat16)
    if checkpointing:
        m.gradient_checkpointing_enable()
    return peft.get_peft_model(m, peft.LoraConfig(r=16, lora_dropout=0.05, task_type="CAUSAL_LM"))


@pytest.fixture(scope="module")
def llama8b_ckpt():
    return _meta_llama_8b_lora(True)


def test_case1_checkpointing_on_at_the_model_level_is_read(llama8b_ckpt):
    """Case 1: the script (or peft's k-bit preparation) turned checkpointing on at the model
    level while TrainingArguments.gradient_checkpointing stayed False. The callback planned from
    the arguments: 74.96 GiB (every layer's activations); the model as loaded is checkpointed:
    30.8 GiB (one 4 x 2,048 x 4,096 bf16 checkpoint per layer, 64 MiB x 32 = 2 GiB, + one layer
    recomputed; the 11.74 GiB of logits at the lm_head backward unchanged)."""
    args = SimpleNamespace(per_device_train_batch_size=4, optim="adamw_torch", gradient_checkpointing=False,
                           bf16=False, fp16=False)
    p = vramplan.preflight(llama8b_ckpt, args=args, ctx=2048, gpu="h100")
    o = p.workload.train
    assert (p.workload.mode, p.workload.batch, o.grad_ckpt, o.lora_r, o.lora_targets, o.lora_dropout,
            o.lora_dtype, o.attn) == ("lora", 4, True, 16, ("q_proj", "v_proj"), 0.05, "fp32", "sdpa")
    assert 30.7 * GiB < p.total_bytes < 30.9 * GiB and p.fits
    by_words = vramplan.plan("meta-llama/Llama-3.1-8B", "h100", mode="lora", batch=4, ctx=2048, grad_ckpt=True,
                             lora_r=16, lora_dropout=0.05)
    assert p.total_bytes == by_words.total_bytes
    unchecked = vramplan.plan("meta-llama/Llama-3.1-8B", "h100", mode="lora", batch=4, ctx=2048, lora_r=16,
                              lora_dropout=0.05)
    assert 74.9 * GiB < unchecked.total_bytes < 75.0 * GiB      # what the old callback planned


def test_caller_wins_over_what_is_read(llama8b_ckpt):
    args = SimpleNamespace(per_device_train_batch_size=4, optim="adamw_torch", bf16=False, fp16=False)
    p = vramplan.preflight(llama8b_ckpt, args=args, ctx=1024, batch=1, gpu="h100", lora_r=64)
    assert (p.workload.batch, p.workload.ctx, p.workload.train.lora_r) == (1, 1024, 64)


def test_sequence_length_from_sft_config_or_refused(llama8b_ckpt):
    """TRL's SFTConfig truncates at max_length (default 1024, trl 1.16.0 sft_config.py:202-203):
    the callback plans that length when no ctx is given; plain TrainingArguments say nothing about
    it, and guessing would be a confident wrong answer."""
    sft = SimpleNamespace(per_device_train_batch_size=2, optim="adamw_torch", max_length=1024)
    assert vramplan.preflight(llama8b_ckpt, args=sft, gpu="h100").workload.ctx == 1024
    plain = SimpleNamespace(per_device_train_batch_size=2, optim="adamw_torch")
    with pytest.raises(BadInput, match="ctx"):
        vramplan.preflight(llama8b_ckpt, args=plain, gpu="h100")


def test_read_args_world_rank_and_sharding():
    args = SimpleNamespace(per_device_train_batch_size=8, optim="paged_adamw_8bit", gradient_checkpointing=True,
                           world_size=8, local_rank=3, device="cuda:3", bf16=True,
                           fsdp="full_shard auto_wrap")
    la = read_args(args)
    assert (la.world, la.local_rank, la.device, la.autocast) == (8, 3, "cuda:3", True)
    assert la.settings == {"batch": 8, "optim": "paged_adamw_8bit", "grad_ckpt": True, "fsdp": "full_shard auto_wrap"}
    assert read_args(SimpleNamespace(per_device_train_batch_size=1, local_rank=0)).local_rank == 0
    assert read_args(SimpleNamespace(per_device_train_batch_size=1, gradient_accumulation_steps=4)).grad_accum == 4
    assert read_args(SimpleNamespace(per_device_train_batch_size=1, local_rank=-1)).local_rank == -1


def _tiny_model():
    cfg = _hf_config(TINY_LLAMA)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg)


def test_read_a_real_tiny_peft_model():
    """The reader on real objects: peft LoRA over a bf16 tiny llama, checkpointing switched on
    at the model level, parameters on the CPU (bytes counted per device, once per storage)."""
    m = _tiny_model().to(torch.bfloat16)
    m.gradient_checkpointing_enable()
    pm = peft.get_peft_model(m, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    lm = read_model(pm)
    assert lm.settings == {"mode": "lora", "dtype": "bf16", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
                           "lora_targets": "q_proj,v_proj", "lora_dtype": "fp32", "grad_ckpt": True,
                           "attn": "sdpa"}
    params = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in pm.parameters()}
    buffers = {b.untyped_storage().data_ptr(): b.untyped_storage().nbytes() for b in pm.buffers()}
    assert lm.resident == {"cpu": sum({**params, **buffers}.values())}


def test_real_trainer_run_on_cpu_fires_the_callback(tmp_path):
    """A real transformers Trainer, two steps on the CPU: the callback plans at train start from
    the live model and arguments (checkpointing turned on by the Trainer from the arguments)."""
    from torch.utils.data import Dataset

    from vramplan.integrations import VramplanCallback

    class Tokens(Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            ids = torch.arange(16) % 256 + i
            return {"input_ids": ids, "labels": ids.clone()}

    model = peft.get_peft_model(_tiny_model(), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                              task_type="CAUSAL_LM"))
    args = transformers.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=2,
                                          use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no",
                                          gradient_checkpointing=True, optim="adamw_torch")
    cb = VramplanCallback(ctx=16, gpu="l40s")
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=[cb])
    trainer.train()
    p = cb.plan
    assert p is not None and p.fits
    o = p.workload.train
    assert (p.workload.mode, p.workload.batch, p.workload.ctx) == ("lora", 2, 16)
    assert (o.grad_ckpt, o.lora_r, o.lora_targets, o.lora_dropout, o.optim, o.lora_dtype) == \
        (True, 4, ("q_proj", "v_proj"), 0.0, "adamw_torch", "fp32")
    assert p.model.params == 106_816                       # the tiny llama, read from the live config
    assert cb.device is None and cb.measured_bytes is None  # no CUDA: nothing measured
    # the same plan by keywords: the live reading adds nothing the words would not say (fp32
    # model, no bf16/fp16 arguments -> dtype fp32, pure fp32 training)
    again = vramplan.preflight(dict(TINY_LLAMA), mode="lora", batch=2, ctx=16, gpu="l40s", dtype="fp32",
                               grad_ckpt=True, lora_r=4, lora_alpha=8, lora_targets="q_proj,v_proj",
                               lora_dropout=0.0, lora_dtype="fp32", attn="sdpa")
    assert p.total_bytes == again.total_bytes


# ------------------------------------------------------------------ this process's own device

H100_TOTAL = 81559 * MiB


def _h100s(count: int, others: dict[int, int] | None = None) -> fake.FakeNvml:
    """`count` idle H100 SXM (NVML total 81,559 MiB), other processes holding others[i] bytes."""
    gpus = []
    for i in range(count):
        held = (others or {}).get(i, 0)
        gpus.append(fake.FakeGpu("NVIDIA H100 80GB HBM3", f"GPU-0000000{i}-7b3f-4e5d-8c6b-0a1b2c3d4e5f",
                                 total=H100_TOTAL, reserved=512 * MiB, used=held, mig=(False, False),
                                 processes=[(4242 + i, held)] if held else []))
    return fake.FakeNvml(gpus, driver="560.35.03", cuda=12060)


@pytest.fixture
def gpus(monkeypatch):
    """Install fake NVML + fake CUDA; yields a function building them."""
    for k in ("CUDA_VISIBLE_DEVICES", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)

    def make(n, **options):
        monkeypatch.setattr(nvml_mod, "default_backend", lambda: n)
        fc = FakeCuda(from_nvml(n), n, environ={}, **options)
        return fc.installed(monkeypatch)
    return make


# Llama-3.1-8B LoRA r=16, dropout 0.05 at micro-batch 4 x 2,048, no checkpointing: 74.96 GiB,
# of which the bf16 weights are 16,060,522,496 B. On an H100 (CUDA total 79.18 GiB) it fits.
JOB = dict(mode="lora", batch=4, ctx=2048, lora_r=16, lora_dropout=0.05)
WEIGHTS = 16_060_522_496


def _load_weights(fc, index: int) -> None:
    """This process loads the weights on cuda:index (charged to the fake allocator, no host RAM)."""
    fc.touch(index)                     # the CUDA context (500 MiB in the fake)
    fc.allocators[index].malloc(WEIGHTS)


def test_case2_loaded_weights_do_not_count_twice(gpus):
    """Case 2: with gpu="auto" after the model is loaded, NVML's free memory already lacks the
    weights (15 GiB + the 500 MiB context): 79.18 - 15.46 = 63.7 GiB free, and the 74.96 GiB
    plan (weights included) was refused. The room is total minus what OTHER processes hold:
    free + this process's own 15.46 GiB = the card's 79.18 GiB."""
    n = _h100s(1)
    with gpus(n) as fc:
        _load_weights(fc, 0)
        free_now = torch.cuda.mem_get_info(0)[0]
        assert free_now < 64 * GiB
        p = vramplan.preflight("meta-llama/Llama-3.1-8B", gpu="auto", **JOB)
    # NVML's own reserve in this scenario is 512 MiB (the catalog's CUDA total assumes 480)
    assert p.fits and p.capacity_bytes == H100_TOTAL - 512 * MiB
    assert 74.9 * GiB < p.total_bytes < 75.0 * GiB


def test_other_processes_still_count(gpus):
    """Another process holding 20 GiB on the same card leaves 59.18 GiB: the same job does not
    fit, and the message says what is available."""
    n = _h100s(1, others={0: 20 * GiB})
    with gpus(n) as fc:
        _load_weights(fc, 0)
        with pytest.raises(DoesNotFit) as e:
            vramplan.preflight("meta-llama/Llama-3.1-8B", gpu="auto", **JOB)
    p = e.value.plan
    assert p.capacity_bytes == H100_TOTAL - 512 * MiB - 20 * GiB
    assert f"{p.capacity_bytes / GiB:.2f} GiB is available" in str(e.value)


def test_local_rank_picks_its_own_device(gpus, monkeypatch):
    """Under torchrun rank 1 trains on cuda:1; GPU 0 is full of another job (70 GiB). The old
    pre-flight probed GPU 0 whatever the rank and refused."""
    n = _h100s(2, others={0: 70 * GiB})
    monkeypatch.setenv("LOCAL_RANK", "1")
    with gpus(n) as fc:
        _load_weights(fc, 1)
        p = vramplan.preflight("meta-llama/Llama-3.1-8B", gpu="auto", **JOB)
    assert p.fits and p.capacity_bytes == H100_TOTAL - 512 * MiB


def test_args_device_and_world_size(gpus, llama8b_ckpt):
    """TrainingArguments.device names the device; world_size the GPUs the step is sharded over
    (here DDP: zero 0 over 2, so DDP's gradient buckets appear)."""
    n = _h100s(2, others={0: 70 * GiB})
    args = SimpleNamespace(per_device_train_batch_size=4, optim="adamw_torch", device="cuda:1", world_size=2,
                           local_rank=1, bf16=False, fp16=False)
    with gpus(n) as fc:
        _load_weights(fc, 1)
        p = vramplan.preflight(llama8b_ckpt, args=args, ctx=2048, gpu="auto")
    assert p.fits and p.target.count == 2 and p.workload.train.world == 2
    assert "ddp_buckets" in p.components


def test_pid_hidden_from_nvml_uses_torch_s_figure(gpus):
    """In a container NVML lists no PID of ours: this process's share is torch's reserved memory
    plus the CUDA context (memory/overhead.CUDA_CONTEXT_BYTES), so the job still fits."""
    n = _h100s(1)
    with gpus(n, hide_pid=True) as fc:
        _load_weights(fc, 0)
        p = vramplan.preflight("meta-llama/Llama-3.1-8B", gpu="auto", **JOB)
    # NVML free = total - 512 MiB reserve - 15 GiB (16,060,522,496 rounded to 2 MiB) - the 500 MiB
    # fake context; + reserved + 426 MiB of planned context: 74 MiB short of what NVML says
    room = H100_TOTAL - 512 * MiB
    assert p.fits and p.capacity_bytes == room - (500 - 426) * MiB


def test_read_a_peft_prepared_kbit_model():
    """peft's real prepare_model_for_kbit_training on a tiny llama whose linear weights are
    bitsandbytes-like Params4bit (the class name is what peft and the reader look at): it casts
    every other 16-bit parameter to fp32 and switches checkpointing on (peft 0.21.2
    utils/other.py:203-209, :221-240); the reader sees QLoRA, "peft" and checkpointing."""
    class Params4bit(torch.nn.Parameter):          # noqa: N801 - bitsandbytes' class name
        pass

    m = _tiny_model().to(torch.bfloat16)
    for layer in m.model.layers:
        for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
                    layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
            lin.weight = Params4bit(lin.weight.data, requires_grad=False)
    m.is_loaded_in_4bit = True
    m = peft.prepare_model_for_kbit_training(m)
    pm = peft.get_peft_model(m, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    s = read_model(pm).settings
    assert (s["mode"], s["dtype"], s["kbit_prepare"], s["grad_ckpt"], s["lora_r"]) == ("qlora", "nf4", "peft", True, 4)
    # the arguments said nothing about checkpointing: the model did (peft turned it on)
    args = SimpleNamespace(per_device_train_batch_size=1, optim="paged_adamw_8bit", bf16=True)
    p = vramplan.preflight(pm, args=args, ctx=64, gpu="l40s")
    assert p.workload.mode == "qlora" and p.workload.train.grad_ckpt and p.workload.train.kbit_prepare == "peft"


def test_callback_reads_the_deepspeed_config_of_the_arguments(llama8b_ckpt, tmp_path):
    """TrainingArguments.deepspeed (a path, as the Trainer takes it) and world_size: the plan is
    DeepSpeed ZeRO-2 over 8 ranks, with its IPG bucket (2 buffers with overlap_comm, each
    reduce_bucket_size "auto" = hidden² = 16,777,216 elements of the fp32 adapters' gradients)."""
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 2, "overlap_comm": True, "reduce_bucket_size": "auto"}}))
    args = SimpleNamespace(per_device_train_batch_size=4, optim="adamw_torch", world_size=8, deepspeed=str(ds),
                           bf16=True, fp16=False)
    p = vramplan.preflight(llama8b_ckpt, args=args, ctx=2048, gpu="h100")
    o = p.workload.train
    assert (o.zero, o.world, o.deepspeed.stage, o.deepspeed.overlap) == (2, 8, 2, True)
    assert p.components["zero_buckets"] == 2 * 4096 * 4096 * 4
