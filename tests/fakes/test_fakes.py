"""The fakes themselves: what each simulates, asserted, so a test that leans on them leans on
known behaviour (allocator rounding and caching, where contexts appear, CUDA's enumeration,
nvidia-ml-py's error classes and call surfaces)."""

import sys

import pytest

torch = pytest.importorskip("torch")

from tests.fakes import pynvml as fake_pynvml
from tests.fakes.cuda import FakeCuda, FakeDevice, MiB, from_nvml
from vramplan.probe import fake
from vramplan.probe.nvml import PynvmlBackend


def test_allocator_rounds_and_caches(monkeypatch):
    n = fake.healthy_l40s()
    fc = FakeCuda(from_nvml(n), n, environ={})
    with fc.installed(monkeypatch):
        assert not torch.cuda.is_initialized() and fc.contexts == {}
        a = torch.empty(1000, dtype=torch.uint8, device="cuda:0")      # 1,000 -> one 512-B multiple
        assert (torch.cuda.memory_allocated(0), torch.cuda.memory_reserved(0)) == (1024, 2 * MiB)
        b = torch.empty(5 * MiB, dtype=torch.uint8, device="cuda")     # 1-10 MiB: a 20 MiB segment
        assert torch.cuda.memory_reserved(0) == 22 * MiB
        c = torch.empty(33 * MiB + 1, dtype=torch.uint8, device=0)       # >= 10 MiB: rounded to 2 MiB
        assert torch.cuda.memory_reserved(0) == 22 * MiB + 34 * MiB
        del a, b, c
        assert torch.cuda.memory_allocated(0) == 0 and torch.cuda.memory_reserved(0) == 56 * MiB
        assert torch.cuda.max_memory_allocated(0) == 1024 + 5 * MiB + 33 * MiB + 512
        torch.cuda.empty_cache()
        assert torch.cuda.memory_reserved(0) == 0
        # NVML: this process = the context (500 MiB), nothing reserved any more
        assert n.gpus[0].processes == [(fc.pid, 500 * MiB)] and n.gpus[0].used == 500 * MiB


def test_first_matmul_loads_cublas_and_grows_the_context(monkeypatch):
    n = fake.healthy_l40s()
    fc = FakeCuda(from_nvml(n), n, environ={})
    with fc.installed(monkeypatch):
        x = torch.ones(4, 4, device="cuda:0")
        assert fc.contexts[0] == 500 * MiB
        y = x @ x
        assert fc.device_of(y) == 0
        assert fc.contexts[0] == 570 * MiB and torch.cuda.memory_allocated(0) == 2 * 512 + 40 * MiB
        torch._C._cuda_clearCublasWorkspaces()
        assert torch.cuda.memory_allocated(0) == 2 * 512


def test_host_tensors_stay_on_the_host_and_transfers_copy(monkeypatch):
    fc = FakeCuda([FakeDevice("GPU a", "GPU-a", 8 * 2**30), FakeDevice("GPU b", "GPU-b", 8 * 2**30, gpu=1)],
                  environ={})
    with fc.installed(monkeypatch):
        h = torch.ones(3)
        assert fc.device_of(h) is None and fc.contexts == {}
        g = h.to("cuda:1")
        assert fc.device_of(g) == 1 and g is not h
        k = torch.zeros(2, device=g.device)          # x.device reads "cpu": the program's device
        assert fc.device_of(k) == 1 and list(fc.contexts) == [1]
        assert fc.device_of(g.cuda(0)) == 0


def test_contexts_appear_where_cuda_creates_them(monkeypatch):
    fc = FakeCuda([FakeDevice("a", "GPU-a", 2**30), FakeDevice("b", "GPU-b", 2**30, gpu=1)], environ={})
    with fc.installed(monkeypatch):
        torch.cuda.get_device_properties(1)
        torch.cuda.memory_allocated(1)
        assert torch.cuda.is_initialized() and fc.contexts == {}
        torch.cuda.synchronize(1)
        assert list(fc.contexts) == [1]
        torch.cuda.synchronize()                      # no device: the current one, GPU 0
        assert list(fc.contexts) == [1, 0]


@pytest.mark.parametrize("value, uuids", [
    (None, ["GPU-a", "MIG-x"]),                       # one MIG device per process
    ("MIG-y,0", ["MIG-y", "GPU-a"]),
    ("1", ["MIG-x"]),
    ("0,7,1", ["GPU-a"]),
])
def test_enumeration(value, uuids):
    devs = [FakeDevice("a", "GPU-a", 1), FakeDevice("x", "MIG-x", 1, gpu=1, mig_slot=0),
            FakeDevice("y", "MIG-y", 1, gpu=1, mig_slot=1)]
    env = {} if value is None else {"CUDA_VISIBLE_DEVICES": value}
    assert [d.uuid for d in FakeCuda(devs, environ=env).visible] == uuids


def test_oom_and_failures(monkeypatch):
    fc = FakeCuda([FakeDevice("small", "GPU-s", 64 * MiB, context=16 * MiB),
                   FakeDevice("volta", "GPU-v", 2**30, 7, 0, gpu=1),
                   FakeDevice("nocontext", "GPU-n", 2**30, gpu=2, context_oom=True)],
                  arch_list=("sm_80", "sm_90"), environ={})
    with fc.installed(monkeypatch):
        keep = torch.empty(20 * MiB, dtype=torch.uint8, device="cuda:0")
        with pytest.raises(torch.OutOfMemoryError, match="Tried to allocate 40.00 MiB. GPU 0"):
            torch.empty(40 * MiB, dtype=torch.uint8, device="cuda:0")
        assert torch.cuda.memory_stats(0)["num_ooms"] == 1
        torch.empty(8, device="cuda:1")                # allocating launches no kernel
        with pytest.raises(RuntimeError, match="no kernel image"):
            torch.ones(8, device="cuda:1")
        with pytest.raises(RuntimeError, match="CUDA error: out of memory"):
            torch.cuda.mem_get_info(2)
        with pytest.raises(RuntimeError, match="invalid device ordinal"):
            torch.cuda.set_device(5)
        with pytest.raises(AssertionError, match="Invalid device id"):
            torch.cuda.get_device_properties(5)
        del keep


def test_hidden_pid(monkeypatch):
    n = fake.busy_h100()
    fc = FakeCuda(from_nvml(n), n, hide_pid=True, environ={})
    with fc.installed(monkeypatch):
        torch.cuda.mem_get_info(0)
        assert [p for p, _ in n.gpus[0].processes] == [4242, 5151]
        assert n.gpus[0].used == 28672 * MiB + 500 * MiB


# ------------------------------------------------------------------ the fake pynvml module

def backend(monkeypatch, module):
    monkeypatch.setitem(sys.modules, "pynvml", module)
    return PynvmlBackend()


def test_error_classes_as_nvidia_ml_py():
    m = fake_pynvml.make(fake.healthy_l40s())
    e = m.NVMLError(3)
    assert type(e) is m.NVMLError_NotSupported and e.value == 3 and isinstance(e, m.NVMLError)
    assert type(m.NVMLError(13)).__name__ == "NVMLError_FunctionNotFound"
    assert type(m.NVMLError(4)).__name__ == "NVMLError_NoPermission"
    assert type(m.NVMLError(999)).__name__ == "NVMLError_Unknown"


def test_real_nvidia_ml_py_has_what_the_fake_models():
    real = pytest.importorskip("pynvml")
    if not hasattr(real, "nvmlMemory_v2"):
        pytest.skip("the installed pynvml is the old community module")
    for name in ("NVMLError_NotSupported", "NVMLError_NoPermission", "NVMLError_FunctionNotFound",
                 "NVMLError_Unknown", "NVMLLibraryMismatchError", "nvmlDeviceGetHandleByUUID",
                 "nvmlDeviceGetComputeRunningProcesses_v2", "nvmlDeviceGetComputeRunningProcesses_v3",
                 "nvmlDeviceGetGraphicsRunningProcesses_v3", "nvmlDeviceGetCudaComputeCapability"):
        assert hasattr(real, name), name
    assert real.nvmlMemory_v2 == fake_pynvml.nvmlMemory_v2
    assert real.NVML_ERROR_FUNCTION_NOT_FOUND == 13 and real.NVML_ERROR_UNKNOWN == 999
    assert real.nvmlSystemGetProcessName.__wrapped__     # functools.wraps keeps the raw call


def test_backend_reads_the_fake_module(monkeypatch):
    n = fake.busy_h100()
    b = backend(monkeypatch, fake_pynvml.make(n))
    b.init()
    h = b.handle(0)
    assert b.name(h) == "NVIDIA H100 80GB HBM3" and b.memory_v2(h)[0] == 81559 * MiB
    assert b.processes(h) == [(4242, 20480 * MiB), (5151, 8192 * MiB)]
    assert b.process_name(5151) == "/opt/tritonserver/bin/tritonserver"
