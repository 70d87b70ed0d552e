"""`vramplan verify` on device cpu with a tiny llama (no GPU here), plus GPU-only tests that are
marked `gpu` and skip cleanly without CUDA (never faked).

On the CPU the measurement is the trace tier's own storage tracker on real tensors, and the
trace's prediction is the same program on fake tensors: the two must agree to the byte.
"""

import contextlib
import gc
import json
import time
import weakref

import pytest

torch = pytest.importorskip("torch")

from tests.fakes.cuda import CUDA_13_ARCHS, FakeCuda, FakeDevice, from_nvml
from tests.tiny import TINY_LLAMA
from vramplan import BadInput, DoesNotFit, EnvironmentProblem
from vramplan.probe import fake
from vramplan.probe import nvml as nvml_mod
from vramplan.verify import alloc, record as rec
from vramplan.render.verify import result_text
from vramplan.verify.session import verify

MiB = 2**20
HUGE = dict(mode="infer", batch="1m", ctx="16m")     # 2^44 tokens: 4 PiB of KV cache


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY_LLAMA))
    return str(path)


def comp(result, name):
    (row,) = [r for r in result.rows if r.name == name]
    return row


# ------------------------------------------------------------------ --level alloc on cpu

def test_alloc_cpu_exact(tiny):
    r = verify(tiny, level="alloc", device="cpu", mode="infer", batch=2, ctx=64)
    assert r.completed and r.level == "alloc" and r.device == "cpu"
    # weights: 106,816 params x 2 B = 213,632 B in 21 tensors (9 per layer, embed, lm_head, final
    # norm); the 5 RMSNorm weights (128 B each) are rounded up to 512-B blocks as the caching
    # allocator rounds them: + 5 x 384 = 215,552, which the plan now predicts too
    w = comp(r, "weights")
    assert (w.planned, w.measured, w.pieces) == (215_552, 215_552, 21)
    # KV: 2 x 64 tokens x 256 B (2 layers x K,V x 2 heads x 16 x 2 B), K and V per layer
    kv = comp(r, "kv_cache")
    assert (kv.planned, kv.measured, kv.pieces) == (32_768, 32_768, 4)
    # activations: widest layer = MLP, residual stream 4 x 64 + act(gate), up, product 3 x 128
    # = 640 elements/token, x 128 tokens x 2 B = 163,840 (attention: 4 x 64 + q,k,v 128 +
    # rotary 96 + output 64 = 544, no K/V repeat without a mask)
    # + last-position logits 2 x 256 x (2 + 4 + 4) = 5,120  -> 168,960
    a = comp(r, "activations")
    assert (a.planned, a.measured, a.pieces) == (168_960, 168_960, 1)
    assert r.predicted["peak_allocated_bytes"] == 215_552 + 32_768 + 168_960
    assert r.measured["max_allocated_bytes"] == 215_552 + 32_768 + 168_960 == 417_280
    assert comp(r, "cuda_context").measured is None        # not allocated: GPU only
    assert "allocated" in result_text(r)


def test_alloc_cpu_training_components(tiny):
    r = verify(tiny, level="alloc", device="cpu", mode="lora", batch=2, ctx=64, lora_r=8)
    assert r.completed
    names = [row.name for row in r.rows]
    assert {"weights", "optimizer", "activations", "logits_and_loss"} <= set(names)
    for row in r.rows:
        if row.name not in alloc.NOT_ALLOCATED:      # each tensor rounded up to a 512-B block
            assert row.planned <= row.measured < row.planned + 512 * max(row.pieces, 1), row.name


# ------------------------------------------------------------------ --level run on cpu

@pytest.mark.trace
@pytest.mark.parametrize("mode, extra", [("infer", {}), ("lora", {"lora_r": 8})])
def test_run_cpu_equals_trace_to_the_byte(tiny, mode, extra):
    pytest.importorskip("transformers")
    if mode == "lora":
        pytest.importorskip("peft")
    r = verify(tiny, level="run", device="cpu", mode=mode, batch=2, ctx=64, **extra)
    assert r.completed
    assert r.measured["max_allocated_bytes"] == r.predicted["trace_peak_bytes"]
    for row in r.rows:
        if row.trace is not None:
            assert row.measured == row.trace, row.name
    assert comp(r, "weights").measured == 215_552
    if mode == "infer":
        assert comp(r, "kv_cache").measured == 32_768
    else:
        assert comp(r, "optimizer").measured > 0
    assert "= measured, to the byte" in result_text(r)


@pytest.mark.trace
def test_run_oom_says_where(tiny):
    pytest.importorskip("transformers")
    r = verify(tiny, level="run", device="cpu", force=True, **HUGE)
    assert not r.completed
    # the input ids alone (2^44 int64) cannot be allocated: the run stops in the inputs phase
    assert r.oom.startswith("out of memory during the run, in inputs with 216,576 B of tensors live")
    assert r.measured["max_allocated_bytes"] is None and "(not reached)" in result_text(r)


# ------------------------------------------------------------------ safety

def test_refuses_what_would_not_fit(tiny):
    with pytest.raises(DoesNotFit) as e:
        verify(tiny, level="alloc", device="cpu", **HUGE)
    assert str(e.value).startswith("would not fit: needs ")
    assert "GiB free on this host; pass --force" in str(e.value) and e.value.exit_code == 1


def spy_holder(monkeypatch, behaviour=None):
    """Wrap alloc.allocate to keep the list verify hands it (and weakrefs to what goes in)."""
    seen = {}
    real = alloc.allocate

    def wrapped(plan, device, meter, holder):
        seen["holder"] = holder
        if behaviour is None:
            out = real(plan, device, meter, holder)
            seen["refs"] = [weakref.ref(t) for t in holder]
            return out
        t = torch.empty(4096, dtype=torch.uint8)
        holder.append(t)
        seen["refs"] = [weakref.ref(t)]
        del t
        behaviour()

    monkeypatch.setattr(alloc, "allocate", wrapped)
    return seen


def test_forced_oom_stops_reports_and_frees(tiny, monkeypatch):
    seen = spy_holder(monkeypatch)
    r = verify(tiny, level="alloc", device="cpu", force=True, **HUGE)
    assert not r.completed
    assert r.oom.startswith("out of memory allocating kv_cache: tensor 1 of 4 (")
    assert comp(r, "weights").measured == 215_552            # what got through is reported
    assert any("--force" in n for n in r.notes)
    assert seen["holder"] == [] and all(ref() is None for ref in seen["refs"])
    assert "OOM" in result_text(r)


@pytest.fixture
def warm(tiny):
    """The first tensor op under a dispatch mode imports sympy and more (seconds): done before
    a test's clock starts, so a short --timeout lands in the test's own code."""
    verify(tiny, level="alloc", device="cpu", mode="infer")


def test_timeout_frees_and_says_so(tiny, monkeypatch, warm, no_gc_callbacks):
    seen = spy_holder(monkeypatch, lambda: time.sleep(5))
    start = time.monotonic()
    with pytest.raises(EnvironmentProblem, match=r"timed out after 0\.3 s"):
        verify(tiny, level="alloc", device="cpu", mode="infer", timeout=0.3)
    assert time.monotonic() - start < 3
    assert seen["holder"] == [] and seen["refs"][0]() is None


def test_ctrl_c_frees_and_propagates(tiny, monkeypatch):
    def interrupt():
        raise KeyboardInterrupt

    seen = spy_holder(monkeypatch, interrupt)
    with pytest.raises(KeyboardInterrupt):
        verify(tiny, level="alloc", device="cpu", mode="infer")
    assert seen["holder"] == [] and seen["refs"][0]() is None


@pytest.mark.parametrize("kwargs, words", [
    ({"level": "fast"}, "--level 'fast'"),
    ({"device": "tpu"}, "--device 'tpu'"),
    ({"timeout": 0}, "--timeout"),
])
def test_bad_flags(tiny, kwargs, words):
    with pytest.raises(BadInput) as e:
        verify(tiny, **{"device": "cpu", **kwargs})
    assert words in e.value.for_cli()


def test_cuda_without_a_gpu_is_exit_3(tiny):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(EnvironmentProblem) as e:
        verify(tiny, device="cuda:0", mode="infer")
    assert "torch sees no CUDA GPU" in str(e.value) and e.value.exit_code == 3


def test_no_caching_allocator_is_refused(tiny, monkeypatch):
    monkeypatch.setenv("PYTORCH_NO_CUDA_MEMORY_CACHING", "1")
    with pytest.raises(EnvironmentProblem, match="PYTORCH_NO_CUDA_MEMORY_CACHING"):
        verify(tiny, device="cuda:0", mode="infer")


# ------------------------------------------------------------------ --record

def test_record_appends_self_describing_lines(tiny, tmp_path):
    out = tmp_path / "results" / "verify.jsonl"
    for batch in (1, 2):
        verify(tiny, level="alloc", device="cpu", mode="infer", batch=batch, ctx=64, record=str(out))
    lines = out.read_text().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(x) for x in lines)
    assert rec.read(out) == [first, second]
    assert first["schema"] == "vramplan.verify/1"
    assert set(first["versions"]) >= {"vramplan", "torch", "torch_cuda", "transformers", "python"}
    assert first["flags"]["batch"] == 1 and second["flags"]["batch"] == 2
    assert first["plan"]["workload"]["batch"] == 1
    # weights + KV 64 x 256 B + activations (MLP, 640 elements) 640 x 64 x 2 B + logits 1 x 256 x 10 B
    assert first["predicted"]["peak_allocated_bytes"] == 215_552 + 16_384 + 81_920 + 2_560
    assert first["measured"]["max_allocated_bytes"] > 0
    assert {c["name"] for c in first["components"]} >= {"weights", "kv_cache", "activations"}


# ------------------------------------------------------------------ the command

def cli(args):
    import typer
    from typer.testing import CliRunner

    from vramplan import cli as main_cli
    from vramplan.cli import verify as commands

    names = [c.name or c.callback.__name__ for c in main_cli.app.registered_commands]
    if "verify" in names:
        app = main_cli.app
    else:      # not wired into the CLI yet: wrap it the way cli/__init__.py does
        app = typer.Typer()
        app.command()(main_cli._errors_to_exit_codes(commands.verify))
        app.command("unused")(lambda: None)
    result = CliRunner().invoke(app, ["verify", *args])
    return result.exit_code, result.stdout, result.stderr


def test_cli_alloc_json(tiny):
    code, out, _ = cli([tiny, "--device", "cpu", "--mode", "infer", "--batch", "2", "--ctx", "64", "--json"])
    assert code == 0
    j = json.loads(out)
    assert j["completed"] and j["level"] == "alloc"
    assert j["measured"]["max_allocated_bytes"] == 417_280   # see test_alloc_cpu_exact


def test_cli_refusal_is_exit_1(tiny):
    code, out, err = cli([tiny, "--device", "cpu", "--mode", "infer", "--batch", "1m", "--ctx", "16m"])
    assert code == 1 and "vramplan: would not fit: needs" in err


def test_cli_no_gpu_is_exit_3(tiny):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    code, _, err = cli([tiny, "--mode", "infer"])
    assert code == 3 and "torch sees no CUDA GPU" in err and "Traceback" not in err


# ------------------------------------------------------------------ real GPU (skipped here)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_cuda
def test_gpu_alloc_level(tiny):
    r = verify(tiny, level="alloc", device="cuda:0", mode="infer", batch=2, ctx=64)
    assert r.completed and r.gpu["cuda_total_bytes"] > 0
    for row in r.rows:
        if row.name not in alloc.NOT_ALLOCATED and row.planned:
            assert row.measured >= row.planned and row.reserved >= 0
    assert r.measured["max_reserved_bytes"] >= r.measured["max_allocated_bytes"] > 0
    assert r.context["source"] in ("nvml process", "nvml device delta", "unavailable",
                                   "context existed before verify started")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("mode, extra", [("infer", {}), ("lora", {"lora_r": 8})])
def test_gpu_run_level(tiny, mode, extra):
    r = verify(tiny, level="run", device="cuda:0", mode=mode, batch=2, ctx=64, **extra)
    assert r.completed
    m = r.measured
    # the allocator holds at least every tensor the tracker saw (plus the cuBLAS workspace)
    assert m["max_allocated_bytes"] >= m["tracker_peak_bytes"] > 0
    assert abs(m["tracker_peak_bytes"] - r.predicted["trace_peak_bytes"]) <= 0.1 * r.predicted["trace_peak_bytes"]


# ------------------------------------------------------------------ NVML side of the GPU meter

def test_nvml_view_prefers_this_process_then_device_delta():
    """What verify reads from NVML during a GPU run, against the fake NVML backend."""
    import os

    from vramplan.probe import fake
    from vramplan.verify.meter import NvmlView

    n = fake.busy_h100()
    n.init()
    view = NvmlView(n, n.handle(0))
    assert view.baseline == 28672 * MiB
    assert view.used() == (0, "nvml device delta")          # our PID is not on the card yet
    n.gpus[0].processes.append((os.getpid(), 600 * MiB))
    n.gpus[0].used += 600 * MiB
    assert view.used() == (600 * MiB, "nvml process")
    n.gpus[0].processes.pop()                                 # e.g. a container hides PIDs
    assert view.used() == (600 * MiB, "nvml device delta")


# ------------------------------------------------------------------ the CUDA branch, on the fake GPU
# tests/fakes/cuda.py: torch.cuda faked over a FakeNvml scenario (no GPU here; see docs/verify.md).

@contextlib.contextmanager
def fake_gpu(monkeypatch, nvml, env=None, devices=None, **options):
    """The CUDA branch of verify against a fake GPU: NVML `nvml`, torch.cuda over `devices`."""
    env = dict(env or {})
    for k in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "PYTORCH_CUDA_ALLOC_CONF", "CUDA_MODULE_LOADING"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(nvml_mod, "default_backend", lambda: nvml)
    fc = FakeCuda(devices if devices is not None else from_nvml(nvml), nvml, environ=env, **options)
    with fc.installed(monkeypatch):
        yield fc


def test_1_mig_maps_the_device_by_uuid(tiny, monkeypatch):
    """Problem 1: CUDA exposes one MIG device; which one is read from torch's UUID, not guessed
    from positions (here CUDA enumerates the 2g.10gb first, NVML lists the 3g.20gb first)."""
    n = fake.mig_a100()
    slots = from_nvml(n)
    with fake_gpu(monkeypatch, n, devices=[slots[1], slots[0], slots[2]]) as fc:
        r = verify(tiny, level="alloc", device="cuda:0", mode="infer", batch=2, ctx=64)
    assert [d.uuid for d in fc.visible] == [fake.MIG_UUIDS[1]]
    assert r.gpu["uuid"] == fake.MIG_UUIDS[1] and r.gpu["name"].endswith("MIG 2g.10gb")
    assert r.gpu["nvml_total_bytes"] == 9856 * MiB and r.gpu["cuda_total_bytes"] == 9856 * MiB - 480 * MiB
    # the context was seen where it was made: this process on that slice
    assert r.context["source"] == "nvml process" and r.context["measured_bytes"] == 500 * MiB


def test_1_mig_second_device_is_exit_3(tiny, monkeypatch):
    with fake_gpu(monkeypatch, fake.mig_a100()):
        with pytest.raises(EnvironmentProblem) as e:
            verify(tiny, level="alloc", device="cuda:1", mode="infer", batch=2, ctx=64)
    assert str(e.value).startswith("There is no CUDA device 1: torch sees 1") and e.value.exit_code == 3


def test_2_nvml_view_keeps_this_process_when_graphics_fails(monkeypatch):
    """Problem 2, as verify sees it: a graphics-process error no longer turns the per-process
    reading into a whole-card delta."""
    import os
    import sys

    from tests.fakes import pynvml as fake_pynvml
    from vramplan.verify.meter import NvmlView

    n = fake.busy_h100()
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml.make(n, fail={
        "nvmlDeviceGetGraphicsRunningProcesses_v3": nvml_mod.NO_PERMISSION,
        "nvmlDeviceGetGraphicsRunningProcesses_v2": nvml_mod.NO_PERMISSION}))
    b = nvml_mod.PynvmlBackend()
    b.init()
    view = NvmlView(b, b.handle(0))
    n.gpus[0].processes.append((os.getpid(), 600 * MiB))
    n.gpus[0].used += 600 * MiB + 100 * MiB          # someone else grew by 100 MiB meanwhile
    assert view.used() == (600 * MiB, "nvml process")


V100_UUID = "GPU-0c0c0c0c-1111-4222-8333-444455556666"


def volta_and_hopper():
    """GPU 0 a V100 (sm_70, someone else's, say), GPU 1 an H100: verify runs on cuda:1."""
    return fake.FakeNvml([
        fake.FakeGpu("Tesla V100-SXM2-32GB", V100_UUID, total=32768 * MiB, reserved=0, used=0,
                     capability=(7, 0)),
        fake.FakeGpu("NVIDIA H100 80GB HBM3", fake.H100_UUID, total=81559 * MiB, reserved=512 * MiB,
                     used=0, mig=(False, False), capability=(9, 0))])


@pytest.mark.parametrize("level, options", [
    ("alloc", dict(mode="infer")),
    ("run", dict(mode="infer")),
    ("run", dict(mode="full", precision="mixed")),      # bf16 autocast: torch checks the current device
])
def test_4_no_context_on_another_gpu(tiny, monkeypatch, level, options):
    """Problem 4: verifying cuda:1 must not create a context on GPU 0 (cleanup's synchronize()
    and autocast's bf16 check both read the *current* device unless it is set)."""
    n = volta_and_hopper()
    with fake_gpu(monkeypatch, n) as fc:
        r = verify(tiny, level=level, device="cuda:1", batch=2, ctx=64, **options)
        assert r.completed and r.gpu["uuid"] == fake.H100_UUID
        assert list(fc.contexts) == [1]
        assert torch.cuda.current_device() == 0          # the caller's device, restored
    assert n.gpus[0].used == 0 and n.gpus[0].processes == []


@pytest.mark.parametrize("mode, grown", [("infer", (70 + 24) * MiB), ("lora", (70 + 24 + 8) * MiB)])
def test_5_non_torch_memory_read_again_at_the_end(tiny, monkeypatch, mode, grown):
    """Problem 5: with lazy module loading the context grows at the first matmul (cuBLAS),
    SDPA and optimizer kernels (the fake: +70, +24, +8 MiB on a 500 MiB context); the record
    keeps the figure at the end of the run beside the one before it."""
    with fake_gpu(monkeypatch, fake.healthy_l40s()):
        r = verify(tiny, level="run", device="cuda:0", mode=mode, batch=2, ctx=64, lora_r=8 if mode == "lora" else None)
    c = r.context
    assert (c["measured_bytes"], c["source"]) == (500 * MiB, "nvml process")
    assert c["end_non_torch_bytes"] == 500 * MiB + grown and c["non_torch_growth_bytes"] == grown
    assert r.gpu["pid_visible"] is True


def test_5_hidden_pid_is_flagged(tiny, monkeypatch):
    """Problem 5: in a container NVML never lists our PID; every NVML figure is then a device
    delta, which other processes on the card pollute: say so, in the record too."""
    n = fake.busy_h100()
    with fake_gpu(monkeypatch, n, hide_pid=True):
        r = verify(tiny, level="run", device="cuda:0", mode="infer", batch=2, ctx=64)
    assert r.gpu["pid_visible"] is False
    assert r.context["source"] == "nvml device delta" and r.context["measured_bytes"] == 500 * MiB
    assert r.context["end_non_torch_bytes"] == (500 + 70 + 24) * MiB
    (note,) = [x for x in r.notes if "PID" in x]
    assert "2 other processes use this GPU" in note
    assert r.to_json()["gpu"]["pid_visible"] is False


def test_6_qlora_on_a_gpu_without_bitsandbytes_is_exit_3(tiny, monkeypatch):
    """Problem 6: on a GPU the emulated 4-bit layers must not pass for a measurement."""
    pytest.importorskip("peft")
    import sys

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)        # not installed
    with fake_gpu(monkeypatch, fake.healthy_l40s()) as fc:
        with pytest.raises(EnvironmentProblem) as e:
            verify(tiny, level="run", device="cuda:0", mode="qlora", batch=2, ctx=64, lora_r=8)
        assert fc.contexts == {}                              # refused before touching the GPU
    assert e.value.exit_code == 3 and "pip install bitsandbytes" in str(e.value)
    assert "--emulate" in e.value.for_cli()
    with fake_gpu(monkeypatch, fake.healthy_l40s()):
        with pytest.raises(EnvironmentProblem, match="adamw_bnb_8bit optimizer on a GPU needs bitsandbytes"):
            verify(tiny, level="run", device="cuda:0", mode="lora", optim="adamw_8bit", batch=2, ctx=64, lora_r=8)


def test_6_emulate_is_marked_in_the_record(tiny, monkeypatch, tmp_path):
    pytest.importorskip("peft")
    import sys

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    out = tmp_path / "r.jsonl"
    with fake_gpu(monkeypatch, fake.healthy_l40s()):
        r = verify(tiny, level="run", device="cuda:0", mode="qlora", batch=2, ctx=64, lora_r=8,
                   emulate=True, record=str(out))
    assert r.completed and r.emulated == ("bitsandbytes nf4 weights (vramplan/trace/quant.py)",)
    assert json.loads(out.read_text())["emulated"] == ["bitsandbytes nf4 weights (vramplan/trace/quant.py)"]
    assert "emulated:" in result_text(r)
    # on the CPU the run is the trace's own emulation, always, and says so
    r = verify(tiny, level="run", device="cpu", mode="qlora", batch=2, ctx=64, lora_r=8)
    assert r.emulated == ("bitsandbytes nf4 weights (vramplan/trace/quant.py)",)
    # --level alloc allocates the plan's sizes: nothing is emulated
    assert verify(tiny, level="alloc", device="cpu", mode="qlora", batch=2, ctx=64, lora_r=8).emulated == ()


def test_6_real_bitsandbytes_on_a_gpu(tiny, monkeypatch):
    """With bitsandbytes installed the run calls it: the 4-bit weights are quantized by
    functional.quantize_4bit and multiplied by matmul_4bit, the 8-bit optimizer is its
    AdamW8bit (tests/fakes/bitsandbytes.py stands in for the library here)."""
    pytest.importorskip("peft")
    import sys

    from tests.fakes import bitsandbytes as fake_bnb

    bnb = fake_bnb.make()
    monkeypatch.setitem(sys.modules, "bitsandbytes", bnb)
    with fake_gpu(monkeypatch, fake.healthy_l40s()):
        r = verify(tiny, level="run", device="cuda:0", mode="qlora", optim="adamw_8bit", batch=2,
                   ctx=64, lora_r=8)
    assert r.completed and r.emulated == ()
    names = [c[0] for c in bnb.calls]
    # 7 linears per layer x 2 layers quantized; the head stays 16-bit
    assert names.count("quantize_4bit") == 14 and "matmul_4bit" in names and "AdamW8bit" in names
    w = comp(r, "weights")
    assert w.measured == w.trace          # the same layout as the emulation, byte for byte


def cli_refuses(monkeypatch, nvml, argv, needle, **fake_options):
    """`vramplan verify ARGV` on a fake GPU: exit 3 with one plain sentence, no traceback."""
    from tests.bad_input.contract import assert_cli_refuses

    with fake_gpu(monkeypatch, nvml, **fake_options) as fc:
        assert_cli_refuses(["verify", *argv], 3, needle)
    return fc


def test_7_no_kernel_image_is_refused_before_anything_runs(tiny, monkeypatch):
    """Problem 7: a V100 (sm_70) under a CUDA 13 torch build (no sm_70 kernels) is refused up
    front by comparing the compute capability with torch.cuda.get_arch_list()."""
    n = volta_and_hopper()
    with fake_gpu(monkeypatch, n, arch_list=CUDA_13_ARCHS) as fc:
        with pytest.raises(EnvironmentProblem) as e:
            verify(tiny, level="alloc", device="cuda:0", mode="infer", batch=2, ctx=64)
        assert fc.contexts == {}                         # nothing was built, no context made
        # the H100 beside it is fine
        assert verify(tiny, level="alloc", device="cuda:1", mode="infer", batch=2, ctx=64).completed
    assert str(e.value) == (
        "This torch (CUDA 12.8) has no kernels for cuda:0, a Tesla V100-SXM2-32GB with compute "
        "capability 7.0: it was built for sm_75, sm_80, sm_86, sm_90, sm_100, sm_120, compute_120; "
        "install a torch build that includes sm_70.")
    cli_refuses(monkeypatch, volta_and_hopper(), [tiny, "--mode", "infer", "--level", "run"],
                "has no kernels for cuda:0", arch_list=CUDA_13_ARCHS)


def test_7_context_oom_is_exit_3(tiny, monkeypatch):
    n = fake.healthy_l40s()
    devs = from_nvml(n, context_oom=True)
    cli_refuses(monkeypatch, n, [tiny, "--mode", "infer"], "could not create a CUDA context on cuda:0",
                devices=devs)


def test_7_cublas_failure_is_exit_3(tiny, monkeypatch):
    n = fake.healthy_l40s()
    cli_refuses(monkeypatch, n, [tiny, "--mode", "infer", "--level", "run", "--batch", "2", "--ctx", "64"],
                "cuBLAS could not be initialized on cuda:0", devices=from_nvml(n, cublas_fails=True))


def test_7_nvml_error_is_exit_3(tiny, monkeypatch):
    """An NVML call failing once verify has started (the GPU fell off the bus after the probe)."""
    n = fake.healthy_l40s()
    calls = {"n": 0}
    real_init = n.init

    def init():
        calls["n"] += 1
        if calls["n"] > 1:                 # the probe's init works, verify's own does not
            raise nvml_mod.NvmlError(nvml_mod.GPU_IS_LOST)
        real_init()

    n.init = init
    cli_refuses(monkeypatch, n, [tiny, "--mode", "infer"], "NVML failed on cuda:0: GPU is lost")


def test_7_invalid_device_is_exit_3(tiny, monkeypatch):
    cli_refuses(monkeypatch, fake.healthy_l40s(), [tiny, "--device", "cuda:3"], "There is no CUDA device 3")


def test_8_timeout_not_lost_in_a_finalizer(tiny, monkeypatch, warm):
    """Problem 8: a one-shot SIGALRM that fires inside a weakref.finalize callback (the trace
    tracker frees storages in them) is printed as "Exception ignored" and lost: no timeout at
    all. The watchdog raises in the code that triggered the finalizer instead."""
    class Box:
        pass

    def busy():                        # nearly all of the time is spent inside finalizers
        end = time.monotonic() + 4
        while time.monotonic() < end:
            b = Box()
            weakref.finalize(b, time.sleep, 0.05)
            del b

    seen = spy_holder(monkeypatch, busy)
    start = time.monotonic()
    with pytest.raises(EnvironmentProblem, match=r"timed out after 0\.3 s"):
        verify(tiny, level="alloc", device="cpu", mode="infer", timeout=0.3)
    assert time.monotonic() - start < 2.5
    assert seen["holder"] == [] and seen["refs"][0]() is None


BLOCKED = """
import signal, sys, time
from vramplan.verify import alloc, guard
guard.GRACE_S = 1.0

def blocked(plan, device, meter, holder):
    # a CUDA call that never returns to Python: no signal handler can run in this thread
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(60)

alloc.allocate = blocked
from vramplan.cli import main
sys.argv = ["vramplan", "verify", sys.argv[1], "--device", "cpu", "--mode", "infer", "--timeout", "0.5"]
main()
"""


def test_8_timeout_ends_a_blocked_call(tiny, tmp_path):
    """Problem 8: SIGALRM cannot interrupt a blocked CUDA call or a backward in the autograd
    thread. The command's watchdog, after a grace period, ends the process (the driver frees
    everything it held): exit 3, one sentence, no hang."""
    import subprocess
    import sys

    import os
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])        # this checkout, not an installed vramplan
    script = tmp_path / "blocked.py"
    script.write_text(BLOCKED)
    start = time.monotonic()
    p = subprocess.run([sys.executable, str(script), tiny], capture_output=True, text=True, timeout=40,
                       cwd=root, env={**os.environ, "PYTHONPATH": root})
    took = time.monotonic() - start
    assert p.returncode == 3, p.stderr[-2000:]
    assert p.stderr.strip().splitlines()[-1] == (
        "vramplan: verify timed out after 0.5 s and the device did not give control back within "
        "1 s more; vramplan exits now, which frees everything it held on the device.")
    assert took < 30 and "Traceback" not in p.stderr


@pytest.mark.parametrize("how", ["args.device", "LOCAL_RANK"])
def test_9_callback_measures_its_own_device(monkeypatch, how):
    """Problem 9: under torchrun each rank's callback must read its own GPU (LOCAL_RANK, the
    Trainer's args.device), from train start (the model already loaded, a loading transient
    already gone), not cuda:0 since the process began."""
    transformers = pytest.importorskip("transformers")
    from types import SimpleNamespace

    from vramplan.integrations import VramplanCallback

    config = transformers.LlamaConfig(**{k: v for k, v in TINY_LLAMA.items()
                                         if k not in ("model_type", "architectures", "torch_dtype")})
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    fc = FakeCuda([FakeDevice("GPU a", "GPU-a", 8 * 2**30), FakeDevice("GPU b", "GPU-b", 8 * 2**30, gpu=1)],
                  environ={})
    args = SimpleNamespace(per_device_train_batch_size=2, optim="adamw_torch", gradient_checkpointing=False,
                           bf16=False, fp16=False)
    if how == "args.device":
        args.device = torch.device("cuda", 1)
    else:
        monkeypatch.setenv("LOCAL_RANK", "1")
    with fc.installed(monkeypatch):
        rank0 = torch.empty(5 * MiB, dtype=torch.uint8, device="cuda:0")      # not this rank's
        loading = torch.empty(50 * MiB, dtype=torch.uint8, device="cuda:1")   # a loading transient
        del loading
        weights = torch.empty(3 * MiB, dtype=torch.uint8, device="cuda:1")
        cb = VramplanCallback(ctx=256, gpu="l40s")
        cb.on_train_begin(args, None, None, model=model)
        step = torch.empty(2 * MiB, dtype=torch.uint8, device="cuda:1")
        del step
        cb.on_step_end(args, SimpleNamespace(global_step=1), None)
        assert (cb.device, cb.baseline_bytes, cb.measured_bytes) == ("cuda:1", 3 * MiB, 5 * MiB)
        del rank0, weights


# ------------------------------------------------------------------ the "Also" list of issue 16

def test_also_allocator_peak_reset_where_the_tracker_resets(tiny, monkeypatch):
    """The tracker measures the last training step; the allocator's peak must cover the same
    window, or a first-step-only spike (here 64 MiB of scratch the first optimizer kernel takes
    and frees, as autotuning does) is reported as the step's."""
    n = fake.healthy_l40s()
    devs = from_nvml(n, scratch={"optimizer": 64 * MiB})
    with fake_gpu(monkeypatch, n, devices=devs):
        r = verify(tiny, level="run", device="cuda:0", mode="lora", batch=2, ctx=64, lora_r=8)
    m = r.measured
    host = comp(r, "host").measured           # AdamW's step counters: host memory on a GPU
    # everything the program allocated on the device at its peak, plus the cuBLAS workspace
    assert m["max_allocated_bytes"] == m["tracker_peak_bytes"] - host + 40 * MiB
    assert m["outside_tracker_bytes"] == 40 * MiB - host


def test_also_callers_baseline_is_subtracted(tiny, monkeypatch):
    """verify from a process that already holds 100 MiB on the device (a notebook): the peaks
    are verify's own."""
    with fake_gpu(monkeypatch, fake.healthy_l40s()):
        clean = verify(tiny, level="alloc", device="cuda:0", mode="infer", batch=2, ctx=64)
        mine = torch.empty(100 * MiB, dtype=torch.uint8, device="cuda:0")
        r = verify(tiny, level="alloc", device="cuda:0", mode="infer", batch=2, ctx=64)
        del mine
    assert r.measured["baseline_allocated_bytes"] == 100 * MiB
    assert r.measured["max_allocated_bytes"] == clean.measured["max_allocated_bytes"] == 417_280
    assert r.context["source"] == "context existed before verify started"


def test_also_allocator_settings_are_recorded(tiny, monkeypatch, tmp_path):
    out = tmp_path / "r.jsonl"
    env = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "CUDA_MODULE_LOADING": "EAGER"}
    with fake_gpu(monkeypatch, fake.healthy_l40s(), env=env):
        verify(tiny, level="alloc", device="cuda:0", mode="infer", batch=2, ctx=64, record=str(out))
    assert json.loads(out.read_text())["environment"] == env
    for k in env:
        monkeypatch.delenv(k)
    verify(tiny, level="alloc", device="cpu", mode="infer", batch=2, ctx=64, record=str(out))
    assert json.loads(out.read_text().splitlines()[1])["environment"] == {
        "PYTORCH_CUDA_ALLOC_CONF": None, "CUDA_MODULE_LOADING": None}


def test_also_cublas_workspace_released(tiny, monkeypatch):
    """After a run the card is left as found: the cuBLAS workspace (allocated through the caching
    allocator at the first matmul) is released with the cached blocks."""
    n = fake.healthy_l40s()
    with fake_gpu(monkeypatch, n) as fc:
        verify(tiny, level="run", device="cuda:0", mode="infer", batch=2, ctx=64)
        a = fc.allocators[0]
        assert (a.allocated, a.reserved, fc.workspaces) == (0, 0, {})
    assert n.gpus[0].used == (500 + 70 + 24) * MiB      # only the context (with its modules) left


def test_also_free_memory_read_again_before_the_run(tiny, monkeypatch):
    """Free memory is read again once the context exists (mem_get_info), with a margin: another
    process that grabbed the card after the probe makes verify refuse (exit 1) instead of
    running someone's job out of memory."""
    n = fake.healthy_l40s()
    with fake_gpu(monkeypatch, n) as fc:
        def someone_else(i):
            n.gpus[0].used += 44 * 2**30                 # leaves ~0.3 GiB after our context
        fc.on_context = someone_else
        with pytest.raises(DoesNotFit) as e:
            verify(tiny, level="alloc", device="cuda:0", mode="infer", batch=2, ctx=64)
        assert fc.allocators[0].peak_allocated == 0
    assert "free on cuda:0 now" in str(e.value) and "256 MiB margin" in str(e.value)


def test_also_free_check_keeps_a_margin(tiny, monkeypatch):
    """A need within 256 MiB of what is free is refused up front (the context grows at the
    first kernels, segments round up)."""
    n = fake.FakeNvml([fake.FakeGpu("NVIDIA Prototype X1", "GPU-12345678-aaaa-bbbb-cccc-1234567890ab",
                                    total=1024 * MiB, reserved=0, used=0)])
    with fake_gpu(monkeypatch, n, devices=from_nvml(n, context=300 * MiB)):
        with pytest.raises(DoesNotFit, match="256 MiB margin"):
            # capacity 544 MiB (NVML total - 480 MiB reserve); the plan needs its planned
            # context (~426 MiB) + 0.4 MiB: fits, but not with the margin
            verify(tiny, level="alloc", device="cuda:0", mode="infer", batch=2, ctx=64)


# ------------------------------------------------------------------ OOM, Ctrl-C, timeout on the fake GPU

def test_fake_gpu_oom_stops_and_frees(tiny, monkeypatch):
    n = fake.healthy_l40s()
    with fake_gpu(monkeypatch, n) as fc:
        r = verify(tiny, level="alloc", device="cuda:0", force=True, **HUGE)
        assert not r.completed and r.oom.startswith("out of memory allocating kv_cache: tensor 1 of 4")
        assert comp(r, "weights").measured == 215_552 and r.measured["memory_stats"]["num_ooms"] == 1
        assert (fc.allocators[0].allocated, fc.allocators[0].reserved) == (0, 0)


def test_fake_gpu_ctrl_c_frees(tiny, monkeypatch):
    n = fake.healthy_l40s()
    with fake_gpu(monkeypatch, n) as fc:
        def interrupt(func, i):
            if "scaled_dot_product" in str(func):          # in the middle of the prefill
                raise KeyboardInterrupt
        fc.on_op = interrupt
        with pytest.raises(KeyboardInterrupt):
            verify(tiny, level="run", device="cuda:0", mode="infer", batch=2, ctx=64)
        assert (fc.allocators[0].allocated, fc.allocators[0].reserved, fc.workspaces) == (0, 0, {})


@pytest.fixture
def no_gc_callbacks():
    """hypothesis installs a gc callback once a property test has run. An alarm that lands in it
    is an unraisable exception, and pytest's unraisable-exception hook keeps its traceback (the
    interrupted run's frames, and the tensors they name) until the test ends, where a plain
    process prints and drops it; the watchdog's repeat then stops the run. The device checks run
    without other libraries' callbacks, as a verify process does."""
    saved = list(gc.callbacks)
    gc.callbacks.clear()
    yield
    gc.callbacks.extend(saved)


def test_fake_gpu_timeout_frees(tiny, monkeypatch, warm, no_gc_callbacks):
    n = fake.healthy_l40s()
    with fake_gpu(monkeypatch, n) as fc:
        fc.on_op = lambda func, i: time.sleep(0.05)           # a slow kernel, every op
        with pytest.raises(EnvironmentProblem, match=r"timed out after 0\.5 s") as caught:
            verify(tiny, level="run", device="cuda:0", mode="infer", batch=2, ctx=64, timeout=0.5)
        # Once the caller has handled the error, nothing is left on the device. pytest's record of
        # the exception keeps its traceback (and so the frames the timeout interrupted) alive;
        # where the timeout lands decides whether a frame still names a tensor, so the record is
        # dropped and the cycle collector run first, as a caller that moves on would.
        del caught
        gc.collect()
        assert (fc.allocators[0].allocated, fc.allocators[0].reserved) == (0, 0)


# ------------------------------------------------------------------ issue 15: --record checked first

@pytest.mark.parametrize("where", ["a file/r.jsonl", "a directory"])
def test_15_unusable_record_path_is_refused_before_the_run(tiny, tmp_path, monkeypatch, where):
    from tests.bad_input.contract import assert_cli_refuses

    (tmp_path / "a file").write_text("x")
    (tmp_path / "a directory").mkdir()
    seen = spy_holder(monkeypatch)
    msg = assert_cli_refuses(["verify", tiny, "--device", "cpu", "--mode", "infer",
                              "--record", str(tmp_path / where)], 2, "--record")
    assert "cannot be written" in msg and "holder" not in seen      # refused before any allocation


def test_15_record_that_fails_at_the_end_is_kept(tiny, tmp_path, monkeypatch):
    """If the file cannot be appended after all (disk full, removed rights), the finished
    result is written to a temporary file and the note says where."""
    out = tmp_path / "r.jsonl"
    real = rec.append

    def full(path, record):
        if str(path) == str(out):
            raise OSError(28, "No space left on device")
        return real(path, record)

    monkeypatch.setattr(rec, "append", full)
    r = verify(tiny, level="alloc", device="cpu", mode="infer", batch=2, ctx=64, record=str(out))
    (note,) = [x for x in r.notes if "--record" in x]
    kept = note.split("kept in ")[1].split(" ")[0]
    assert json.loads(open(kept).read())["schema"] == "vramplan.verify/1"


# ------------------------------------------------------------------ problem 10: before sm80

TINY_MHA = {**TINY_LLAMA, "num_key_value_heads": 4}


@pytest.fixture
def tiny_mha(tmp_path):
    path = tmp_path / "mha.json"
    path.write_text(json.dumps(TINY_MHA))
    return str(path)


def test_10_analytic_takes_sdpa_math_below_sm80(tiny, tiny_mha):
    """Problem 10: on a T4 (Turing) bf16 attention, or any GQA attention, runs SDPA's math
    backend (no flash below sm80; the efficient kernel takes neither bf16 nor enable_gqa)."""
    from vramplan import api

    l4 = api.plan(tiny, "l4", mode="infer", batch=1, ctx=2048, transformers=5)
    t4 = api.plan(tiny, "t4", mode="infer", batch=1, ctx=2048, transformers=5)
    assert l4.components["activations"] == 2_624_000        # widest MLP, no scores
    # per token: residual 4 x 64 + q 64 + k, v 2 x 32 + fp32 q, scaled q, k and v repeated to
    # 4 heads: 2 x (2 x 64 + 4 x 32) = 896; per token per position: 2 fp32 scores x 4 heads
    # (16 elements) + the fp32 (s, s) mask (2) = 18; (896 + 18 x 2048) x 2048 tokens x 2 B
    # = 154,664,960, + last-position logits 1 x 256 x (2 + 4 + 4) = 2,560
    assert t4.components["activations"] == 154_667_520
    assert "SDPA math backend" in t4.phase and any("no bf16 tensor cores" in w for w in t4.warnings)
    # fp16 without grouped heads: the memory-efficient kernel takes it, no scores
    mha16 = api.plan(tiny_mha, "t4", mode="infer", batch=1, ctx=2048, dtype="fp16", transformers=5)
    assert "math" not in mha16.phase and not any("bf16" in w for w in mha16.warnings)
    assert "math" in api.plan(tiny, "t4", mode="infer", batch=1, ctx=2048, dtype="fp16", transformers=5).phase


@pytest.mark.trace
def test_10_trace_takes_sdpa_math_below_sm80(tiny):
    """The trace tier picks the same path on a T4, and the two tiers move by the same bytes
    (their constant gap, 162,304 B, is the same as on an L4)."""
    pytest.importorskip("transformers")
    from vramplan import api

    def both(gpu):
        a = api.plan(tiny, gpu, mode="infer", batch=1, ctx=2048, transformers=5)
        t = api.plan(tiny, gpu, mode="infer", batch=1, ctx=2048, transformers=5, method="trace", no_cache=True)
        return a.components["activations"], t.components["activations"]

    (a_l4, t_l4), (a_t4, t_t4) = both("l4"), both("t4")
    assert t_t4 - a_t4 == t_l4 - a_l4 == 162_304
    assert t_t4 - t_l4 > 2 * 4 * 2048**2 * 4 + 2048**2 * 4   # two fp32 score tensors + the fp32 mask


# ------------------------------------------------------------------ vramplan calibrate

def test_calibrate_reads_records_and_names_the_constants_they_move(tiny, tmp_path, monkeypatch):
    """Records from a fake L40S whose driver reserve is 512 MiB (the catalog says 480), whose
    context is 500 MiB growing by 70 + 24 (+ 8) MiB at the first kernels, and whose cuBLAS
    workspace is 40 MiB (the plan's 8 MiB + 128 KiB for Ada)."""
    from vramplan import api
    from vramplan.render.verify import calibration_text

    out = tmp_path / "r.jsonl"
    for level, mode in (("alloc", "infer"), ("run", "infer"), ("run", "lora")):
        n = fake.healthy_l40s()              # each record from a fresh process, as gpu_check.sh runs them
        with fake_gpu(monkeypatch, n, devices=from_nvml(n, cuda_reserve=512 * MiB)):
            verify(tiny, level=level, device="cuda:0", mode=mode, batch=2, ctx=64, record=str(out),
                   lora_r=8 if mode == "lora" else None)
    verify(tiny, level="alloc", device="cpu", mode="infer", batch=2, ctx=64, record=str(out))
    c = api.calibrate(str(out))
    assert c.records == 4 and c.skipped == {"cpu (no GPU constant)": 1}
    k = {(x.name, x.scope): x for x in c.constants}
    # run records: the end-of-run figure (infer 500 + 94, lora 500 + 102 MiB); the alloc record
    # ran no kernel: 500 MiB; median of (500, 594, 602)
    ctx = k["CUDA_CONTEXT_BYTES", "all"]
    assert (ctx.current, ctx.measured, ctx.records, ctx.verdict) == (426 * MiB, 594 * MiB, 3, "would move")
    res = k["driver_reserve_mib", "all"]
    assert (res.current, res.measured, res.verdict) == (480, 512, "would move")
    total = k["cuda_total_bytes", "l40s"]
    assert total.measured == (46068 - 512) * MiB and total.verdict == "agrees"   # 45,556 vs 45,588 MiB
    ws = k["CUBLAS_WORKSPACE_BYTES", "Ada Lovelace"]
    assert (ws.current, ws.measured, ws.records) == (8 * MiB + 128 * 1024, 40 * MiB, 2)
    assert {x.name for x in c.components} >= {"weights", "kv_cache", "activations"}
    w = [x for x in c.components if x.name == "weights" and x.gpu == "NVIDIA L40S"][0]
    assert (w.records, w.planned, w.measured, w.error) == (3, 3 * 215_552, 3 * 215_552, 0.0)
    text = calibration_text(c)
    assert "3 constants the records would move" in text and "CUDA_CONTEXT_BYTES (all)" in text
    # a tiny model's transients are smaller than the allocator's segments: no slack figure
    assert k["ALLOCATOR_SLACK_INFER", "infer"].verdict == k["ALLOCATOR_SLACK_TRAIN", "train"].verdict == "no records"
    assert json.loads(json.dumps(c.to_json()))["constants"][0]["verdict"] == "would move"


def test_calibrate_command(tiny, tmp_path):
    from typer.testing import CliRunner

    from tests.bad_input.contract import assert_cli_refuses
    from vramplan.cli import app

    out = tmp_path / "r.jsonl"
    verify(tiny, level="alloc", device="cpu", mode="infer", batch=2, ctx=64, record=str(out))
    r = CliRunner().invoke(app, ["calibrate", str(out)])
    assert r.exit_code == 0 and "CUDA_CONTEXT_BYTES" in r.stdout and "no records" in r.stdout
    assert json.loads(CliRunner().invoke(app, ["calibrate", str(out), "--json"]).stdout)["records"] == 1
    assert_cli_refuses(["calibrate", str(tmp_path / "missing.jsonl")], 2, "cannot be read")
    (tmp_path / "other.jsonl").write_text('{"schema": "something/else"}\n')
    assert_cli_refuses(["calibrate", str(tmp_path / "other.jsonl")], 2, "holds no vramplan.verify/1 records")
    (tmp_path / "bad.jsonl").write_text("not json\n")
    assert_cli_refuses(["calibrate", str(tmp_path / "bad.jsonl")], 2, "not JSON lines")


def test_cli_ctrl_c_is_exit_130_after_freeing(tiny, monkeypatch):
    """Ctrl-C: everything freed, then exit 130 with one sentence (click's own handling would
    exit 1, the code that means "does not fit")."""
    def interrupt():
        raise KeyboardInterrupt

    seen = spy_holder(monkeypatch, interrupt)
    code, out, err = cli([tiny, "--device", "cpu", "--mode", "infer"])
    assert code == 130 and out == ""
    assert err.strip() == "vramplan: interrupted; everything verify allocated was freed."
    assert seen["holder"] == [] and seen["refs"][0]() is None
