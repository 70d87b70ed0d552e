"""`vramplan probe` and `--gpu auto` against the fake NVML backend (no GPU here, none needed).

Each scenario in vramplan.probe.fake is asserted figure by figure: what NVML reports, which
memory call was used, the CUDA capacity (NVML total - 480 MiB catalog driver reserve) and the
free memory `--gpu auto` plans against.
"""

import json
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from vramplan import EnvironmentProblem
from vramplan.probe import auto_target, fake, nvml, probe
from vramplan.cli import probe as probe_commands
from vramplan.render.probe import report_json, report_text

MiB = 2**20
RESERVE = 480 * MiB


def run_probe(scenario, **env):
    return probe(scenario(), environ=env)


# ------------------------------------------------------------------ healthy L40S

def test_healthy_l40s_figures():
    r = run_probe(fake.healthy_l40s)
    assert (r.driver_version, r.cuda_driver_version) == ("550.54.15", "12.4")
    (g,) = r.gpus
    assert (g.index, g.cuda_index, g.name, g.uuid) == (0, 0, "NVIDIA L40S", fake.L40S_UUID)
    assert g.catalog_id == "l40s"
    m = g.memory
    assert m.api == "v2"
    assert m.total == 46068 * MiB == 48_305_799_168
    assert (m.reserved, m.used, m.free) == (512 * MiB, 0, 45556 * MiB)
    assert g.capacity_bytes == 45588 * MiB == 47_802_482_688     # 44.52 GiB, = catalog's measured
    assert g.ecc == (True, True) and g.mig is None
    assert g.pcie == (4, 16, 4, 16) and g.power_limit_w == 350
    assert g.processes == () and g.errors == {} and r.warnings == ()


def test_healthy_l40s_auto_target():
    t = auto_target(0, fake.healthy_l40s(), {})
    assert t.gpu.id == "l40s" and t.count == 1 and t.memory_bytes is None
    assert t.per_gpu_bytes == 47_802_482_688
    assert t.free_bytes == 45556 * MiB == 47_768_928_256
    assert t.gpu.nvml_total_bytes == 48_305_799_168
    assert t.gpu.prices and t.gpu.architecture == "Ada Lovelace"    # catalog facts kept


def test_healthy_l40s_text_and_json():
    r = run_probe(fake.healthy_l40s)
    text = report_text(r)
    assert "memory (NVML v2)  total 46,068 MiB  reserved 512 MiB  used 0 MiB  free 45,556 MiB" in text
    assert "CUDA capacity       45,588 MiB (44.52 GiB)" in text
    assert "ECC on, MIG unsupported, PCIe Gen4 x16 (max Gen4 x16), power limit 350 W" in text
    j = report_json(r)
    assert json.loads(json.dumps(j)) == j
    g = j["gpus"][0]
    assert g["memory"] == {"api": "v2", "total_bytes": 48_305_799_168, "reserved_bytes": 536_870_912,
                           "used_bytes": 0, "free_bytes": 47_768_928_256}
    assert g["cuda_capacity_bytes"] == 47_802_482_688 and g["catalog_id"] == "l40s"
    assert g["ecc"] == {"current": True, "pending": True} and g["mig"] is None
    assert g["pcie"] == {"generation": 4, "width": 16, "max_generation": 4, "max_width": 16}
    assert j["driver_reserve_bytes"] == RESERVE


# ------------------------------------------------------------------ H100 with other processes

def test_busy_h100_figures():
    r = run_probe(fake.busy_h100)
    assert (r.driver_version, r.cuda_driver_version) == ("560.35.03", "12.6")
    (g,) = r.gpus
    assert g.catalog_id == "h100" and g.mig == (False, False)
    assert (g.memory.total, g.memory.reserved, g.memory.used, g.memory.free) == (
        81559 * MiB, 512 * MiB, 28672 * MiB, 52375 * MiB)
    assert g.capacity_bytes == 81079 * MiB == 85_017_493_504
    assert [(p.pid, p.name, p.used_bytes) for p in g.processes] == [
        (4242, "python3", 20480 * MiB), (5151, "/opt/tritonserver/bin/tritonserver", 8192 * MiB)]
    assert g.pcie == (5, 16, 5, 16) and g.power_limit_w == 700
    t = auto_target(0, fake.busy_h100(), {})
    assert t.per_gpu_bytes == 85_017_493_504
    assert t.free_bytes == 52375 * MiB == 54_919_168_000       # what others leave us


# ------------------------------------------------------------------ MIG-partitioned A100

def test_mig_a100_figures():
    r = run_probe(fake.mig_a100)
    (g,) = r.gpus
    assert g.catalog_id == "a100-40gb" and g.mig == (True, True) and g.mig_enabled
    assert g.cuda_index is None                          # the parent is not a CUDA device
    assert g.memory.total == 40960 * MiB
    # CUDA enumerates one MIG device per process: the first listed (issue 16, problem 1)
    assert [(m.profile, m.gpu_instance, m.compute_instance, m.memory.total, m.memory.free,
             m.capacity_bytes, m.cuda_index) for m in g.mig_instances] == [
        ("3g.20gb", 1, 0, 19968 * MiB, 15872 * MiB, 19488 * MiB, 0),
        ("2g.10gb", 5, 0, 9856 * MiB, 9856 * MiB, 9376 * MiB, None),
        ("1g.5gb", 13, 0, 4864 * MiB, 4864 * MiB, 4384 * MiB, None),
    ]
    assert [(p.pid, p.name, p.used_bytes) for p in g.mig_instances[0].processes] == [
        (777, "python", 4096 * MiB)]
    t = auto_target(0, fake.mig_a100(), {})
    assert t.gpu.id == "a100-40gb-mig-3g.20gb" and t.gpu.name == "NVIDIA A100-SXM4-40GB MIG 3g.20gb"
    assert t.per_gpu_bytes == 19488 * MiB and t.free_bytes == 15872 * MiB
    assert t.gpu.prices == ()


def test_mig_uuid_in_cuda_visible_devices():
    env = {"CUDA_VISIBLE_DEVICES": fake.MIG_UUIDS[1]}
    r = run_probe(fake.mig_a100, **env)
    assert [m.cuda_index for m in r.gpus[0].mig_instances] == [None, 0, None]
    t = auto_target(0, fake.mig_a100(), env)
    assert t.gpu.id == "a100-40gb-mig-2g.10gb"
    assert t.per_gpu_bytes == 9376 * MiB == 9_831_448_576 and t.free_bytes == 9376 * MiB
    # the R450/R460 form MIG-GPU-<uuid>/<gi>/<ci> and a unique prefix name the same instances
    legacy = {"CUDA_VISIBLE_DEVICES": f"MIG-{fake.A100_UUID}/13/0,{fake.MIG_UUIDS[0][:12]}"}
    r = run_probe(fake.mig_a100, **legacy)
    assert [m.cuda_index for m in r.gpus[0].mig_instances] == [None, None, 0]


def test_1_one_mig_device_per_process():
    """Problem 1: CUDA gives a process one MIG device, so a second MIG instance is no cuda:1."""
    r = run_probe(fake.mig_a100)
    assert [(g.index, m.profile if m else None) for g, m in r.cuda_devices()] == [(0, "3g.20gb")]
    assert r.warnings == ("CUDA gives a process one MIG device: cuda:0 is MIG 3g.20gb (GPU 0); the "
                          "other 2 MIG instances are not visible to it (choose one with "
                          "CUDA_VISIBLE_DEVICES=MIG-<uuid>).",)
    with pytest.raises(EnvironmentProblem, match="There is no CUDA device 1: 1 visible"):
        auto_target(1, fake.mig_a100(), {})
    env = {"CUDA_VISIBLE_DEVICES": f"{fake.MIG_UUIDS[2]},{fake.MIG_UUIDS[1]}"}
    r = run_probe(fake.mig_a100, **env)
    assert [m.cuda_index for m in r.gpus[0].mig_instances] == [None, None, 0]
    assert auto_target(0, fake.mig_a100(), env).gpu.id == "a100-40gb-mig-1g.5gb"
    # one MIG device beside whole GPUs: the MIG card's first instance, then the other card
    two = fake.mig_a100()
    two.gpus.append(fake.FakeGpu("NVIDIA H100 80GB HBM3", fake.H100_UUID, total=81559 * MiB,
                                 reserved=512 * MiB, used=0, mig=(False, False)))
    r = probe(two, environ={})
    assert [(g.index, m.profile if m else None) for g, m in r.cuda_devices()] == [(0, "3g.20gb"), (1, None)]


def test_1_handle_by_uuid_takes_mig_uuids():
    n = fake.mig_a100()
    n.init()
    assert n.handle_by_uuid(fake.MIG_UUIDS[1]) == ("mig", 0, 1)
    assert n.handle_by_uuid(fake.A100_UUID) == ("gpu", 0)
    with pytest.raises(nvml.NvmlError):
        n.handle_by_uuid("MIG-00000000-0000-0000-0000-000000000000")


# ------------------------------------------------------------------ old driver: no v2 call

def test_old_driver_uses_v1():
    r = run_probe(fake.old_driver_t4)
    assert (r.driver_version, r.cuda_driver_version) == ("470.82.01", "11.4")
    (g,) = r.gpus
    assert g.catalog_id == "t4"
    assert g.memory.api == "v1" and g.memory.reserved is None
    assert (g.memory.total, g.memory.used, g.memory.free) == (15360 * MiB, 263 * MiB, 15097 * MiB)
    assert g.capacity_bytes == 14880 * MiB
    assert "memory (NVML v1)" in report_text(r) and "counts its reserve as used" in report_text(r)
    assert report_json(r)["gpus"][0]["memory"]["api"] == "v1"
    t = auto_target(0, fake.old_driver_t4(), {})
    assert t.per_gpu_bytes == 14880 * MiB == 15_602_810_880
    assert t.free_bytes == t.per_gpu_bytes      # NVML free 15,097 MiB, capped at the capacity


# ------------------------------------------------------------------ no driver, no GPU

@pytest.mark.parametrize("scenario, words", [
    (fake.no_driver, "No NVIDIA driver found"),
    (fake.no_gpu, "sees no GPU"),
])
def test_nothing_to_probe_is_exit_3(scenario, words):
    with pytest.raises(EnvironmentProblem) as e:
        run_probe(scenario)
    assert words in str(e.value) and e.value.exit_code == 3
    assert str(e.value).count(". ") == 0          # one sentence


def test_driver_not_loaded():
    with pytest.raises(EnvironmentProblem, match="not loaded"):
        probe(fake.FakeNvml([], init_error=nvml.DRIVER_NOT_LOADED), environ={})


# ------------------------------------------------------------------ NVML errors on one of two

def test_one_bad_of_two():
    r = run_probe(fake.one_bad_of_two)
    good, bad = r.gpus
    assert good.error is None and good.cuda_index == 0 and good.capacity_bytes == 45588 * MiB
    assert bad.error == "GPU is lost (NVML error 15)" and bad.cuda_index == 1
    assert bad.memory is None and bad.name is None
    assert r.readable
    assert r.warnings == ("GPU 1 could not be read: GPU is lost (NVML error 15).",)
    assert auto_target(0, fake.one_bad_of_two(), {}).per_gpu_bytes == 45588 * MiB
    with pytest.raises(EnvironmentProblem, match="could not be read"):
        auto_target(1, fake.one_bad_of_two(), {})
    # hiding the lost card leaves a clean report
    assert run_probe(fake.one_bad_of_two, CUDA_VISIBLE_DEVICES="0").warnings == ()


# ------------------------------------------------------------------ unknown card

def test_unknown_card_uses_measured_totals():
    t = auto_target(0, fake.unknown_card(), {})
    assert t.gpu.id == "probed" and t.gpu.name == "NVIDIA Prototype X1"
    assert t.per_gpu_bytes == 32288 * MiB and t.free_bytes == 31344 * MiB
    r = run_probe(fake.unknown_card)
    assert r.gpus[0].catalog_id is None and r.gpus[0].ecc == (False, False)
    assert r.gpus[0].processes[0].name == ""        # NVML would not name it


# ------------------------------------------------------------------ CUDA_VISIBLE_DEVICES

def two_gpus():
    return fake.FakeNvml([
        fake.FakeGpu("NVIDIA L40S", "GPU-aaaa1111-0000-0000-0000-000000000000", 46068 * MiB, 512 * MiB, 0),
        fake.FakeGpu("NVIDIA H100 80GB HBM3", "GPU-bbbb2222-0000-0000-0000-000000000000",
                     81559 * MiB, 512 * MiB, 0, mig=(False, False)),
    ])


@pytest.mark.parametrize("value, order", [
    (None, ["l40s", "h100"]),
    ("1,0", ["h100", "l40s"]),
    ("1", ["h100"]),
    ("GPU-bbbb2222-0000-0000-0000-000000000000", ["h100"]),
    ("GPU-bbbb", ["h100"]),                   # a unique prefix, as CUDA accepts
    ("0,-1,1", ["l40s"]),                     # an invalid entry ends the list
    ("1,1,0", ["h100"]),                      # so does a repeat
    ("GPU-,1", []),                           # an ambiguous prefix names nothing
])
def test_cuda_visible_devices_order(value, order):
    env = {} if value is None else {"CUDA_VISIBLE_DEVICES": value}
    if not order:
        with pytest.raises(EnvironmentProblem, match="hides all 2 GPU"):
            probe(two_gpus(), environ=env)
        return
    r = probe(two_gpus(), environ=env)
    assert [g.catalog_id for g, _ in r.cuda_devices()] == order
    assert [auto_target(i, two_gpus(), env).gpu.id for i in range(len(order))] == order


def test_cuda_visible_devices_warnings():
    r = probe(two_gpus(), environ={"CUDA_VISIBLE_DEVICES": "0,7"})
    assert r.warnings[0] == "CUDA_VISIBLE_DEVICES entry '7' names no device; CUDA ignores it and every entry after it."
    assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in r.warnings[1]
    r = probe(two_gpus(), environ={"CUDA_VISIBLE_DEVICES": "1,0", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
    assert r.warnings == ()
    with pytest.raises(EnvironmentProblem, match="hides all"):
        probe(two_gpus(), environ={"CUDA_VISIBLE_DEVICES": ""})
    with pytest.raises(EnvironmentProblem, match="no CUDA device 1"):
        auto_target(1, fake.healthy_l40s(), {})


def test_backend_is_shut_down_even_on_error():
    n = fake.one_bad_of_two()
    probe(n, environ={})
    assert n.initialized is False


# ------------------------------------------------------------------ the command

def cli(monkeypatch, scenario, args=(), env=None):
    """Run the probe command as cli/__init__.py registers it (through its error-to-exit-code wrapper)."""
    from vramplan import cli as main_cli

    monkeypatch.setattr(nvml, "default_backend", scenario)
    for k in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"):
        monkeypatch.delenv(k, raising=False)
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    names = [c.name or c.callback.__name__ for c in main_cli.app.registered_commands]
    if "probe" in names:
        app = main_cli.app
        args = ["probe", *args]
    else:   # not wired into the CLI yet: wrap it the same way cli/__init__.py does
        app = typer.Typer()
        app.command()(main_cli._errors_to_exit_codes(probe_commands.probe))
        app.command("unused")(lambda: None)
        args = ["probe", *args]
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_cli_healthy_json(monkeypatch):
    code, out, _ = cli(monkeypatch, fake.healthy_l40s, ["--json"])
    assert code == 0
    j = json.loads(out)
    assert j["gpus"][0]["memory"]["total_bytes"] == 48_305_799_168
    assert j["gpus"][0]["cuda_capacity_bytes"] == 47_802_482_688


def test_cli_no_driver_is_one_sentence_exit_3(monkeypatch):
    code, out, err = cli(monkeypatch, fake.no_driver)
    assert code == 3 and out == ""
    assert err.strip() == ("vramplan: No NVIDIA driver found: libnvidia-ml.so.1 (NVML) is not "
                           "installed, so there is no GPU to probe.")
    assert "Traceback" not in err


def test_cli_partial_failure_warns_and_exits_0(monkeypatch):
    code, out, err = cli(monkeypatch, fake.one_bad_of_two)
    assert code == 0
    assert "GPU 1  (cuda:1)  ERROR: GPU is lost (NVML error 15)" in out
    assert "warning: GPU 1 could not be read" in err


def test_cli_all_unreadable_is_exit_3(monkeypatch):
    code, out, _ = cli(monkeypatch, fake.one_bad_of_two, env={"CUDA_VISIBLE_DEVICES": "1"})
    assert code == 3 and "ERROR: GPU is lost" in out


def test_cli_without_nvidia_ml_py(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)      # import pynvml -> ImportError
    code, out, err = cli(monkeypatch, nvml.PynvmlBackend)
    assert code == 3
    assert "nvidia-ml-py is not installed" in err and "pip install 'vramplan[gpu]'" in err


def test_real_backend_on_this_machine():
    """The real pynvml backend, not faked: on a machine without a driver it must say so."""
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        pytest.skip("an NVIDIA driver is present; the no-driver path cannot be shown here")
    except pynvml.NVMLError:
        pass
    with pytest.raises(EnvironmentProblem) as e:
        probe(environ={})
    assert e.value.exit_code == 3


def test_importing_probe_is_light():
    code = ("import sys, vramplan.probe, vramplan.cli.probe; "
            "bad = {'torch', 'pynvml', 'transformers'} & set(sys.modules); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_real_backend_calls_exist_in_pynvml():
    """Every pynvml function PynvmlBackend names exists (a typo would only show on a GPU)."""
    import inspect
    import re

    pynvml = pytest.importorskip("pynvml")
    source = inspect.getsource(nvml.PynvmlBackend)
    names = set(re.findall(r'"(nvml\w+)"', source))
    names |= {f"nvmlDeviceGet{k}RunningProcesses{v}" for k in ("Compute", "Graphics") for v in ("", "_v2")}
    assert len(names) > 20
    assert [n for n in sorted(names) if not hasattr(pynvml, n)] == []
    assert hasattr(pynvml, "nvmlMemory_v2")


# ------------------------------------------------------------------ the real backend over a fake pynvml
# tests/fakes/pynvml.py models nvidia-ml-py's module (error subclasses, v1/v2/v3 calls, strict
# decoding) and the old community `pynvml`; PynvmlBackend runs unmodified on top of it.

from tests.fakes import pynvml as fake_pynvml   # noqa: E402


def real_backend(monkeypatch, scenario, **module_options):
    n = scenario() if callable(scenario) else scenario
    module = fake_pynvml.make(n, **module_options)
    monkeypatch.setitem(sys.modules, "pynvml", module)
    return nvml.PynvmlBackend(), module


def test_2_graphics_error_keeps_the_compute_list(monkeypatch):
    """Problem 2: WSL and some drivers answer NOT_SUPPORTED for graphics processes; the compute
    list read just before must survive it."""
    b, _ = real_backend(monkeypatch, fake.busy_h100, fail={
        "nvmlDeviceGetGraphicsRunningProcesses_v3": nvml.NOT_SUPPORTED,
        "nvmlDeviceGetGraphicsRunningProcesses_v2": nvml.NOT_SUPPORTED})
    b.init()
    assert b.processes(b.handle(0)) == [(4242, 20480 * MiB), (5151, 8192 * MiB)]
    r = probe(b, environ={})
    assert [p.pid for p in r.gpus[0].processes] == [4242, 5151] and "processes" not in r.gpus[0].errors


def test_2_v2_retry_only_when_v3_is_missing(monkeypatch):
    """Problem 2: NO_PERMISSION on the v3 call is an answer, not a missing function: no v2 retry
    (which would report what the v3 call refused); FUNCTION_NOT_FOUND (driver before R510) is."""
    b, _ = real_backend(monkeypatch, fake.busy_h100,
                        fail={"nvmlDeviceGetComputeRunningProcesses_v3": nvml.NO_PERMISSION})
    b.init()
    with pytest.raises(nvml.NvmlError) as e:
        b.processes(b.handle(0))
    assert e.value.code == nvml.NO_PERMISSION
    b, _ = real_backend(monkeypatch, fake.busy_h100, driver_lacks={
        "nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetGraphicsRunningProcesses_v3"})
    b.init()
    assert b.processes(b.handle(0)) == [(4242, 20480 * MiB), (5151, 8192 * MiB)]


def test_2_graphics_processes_are_merged(monkeypatch):
    b, _ = real_backend(monkeypatch, fake.busy_h100, graphics={0: [(7000, 300 * MiB), (4242, 100 * MiB)]})
    b.init()
    assert b.processes(b.handle(0)) == [(4242, 20480 * MiB), (5151, 8192 * MiB), (7000, 300 * MiB)]


def test_3_old_community_pynvml(monkeypatch):
    """Problem 3: the old community `pynvml` (11.x) has no nvmlMemory_v2 and no `version=`: the
    probe reads v1 memory instead of crashing."""
    b, _ = real_backend(monkeypatch, fake.healthy_l40s, flavour="community-11")
    r = probe(b, environ={})
    (g,) = r.gpus
    assert g.error is None and g.memory.api == "v1"
    assert (g.memory.total, g.memory.used, g.memory.free) == (46068 * MiB, 512 * MiB, 45556 * MiB)
    assert g.name == "NVIDIA L40S" and g.uuid == fake.L40S_UUID      # bytes decoded
    b, _ = real_backend(monkeypatch, fake.busy_h100, flavour="community-11")
    b.init()
    assert b.processes(b.handle(0)) == [(4242, 20480 * MiB), (5151, 8192 * MiB)]
    assert b.process_name(4242) == "python3"


def test_3_non_utf8_process_name(monkeypatch):
    """Problem 3: nvidia-ml-py decodes names strictly; a non-UTF-8 one (Latin-1 path) must not
    crash the probe: its bytes are decoded with replacement."""
    n = fake.busy_h100()
    n.process_names[5151] = b"/opt/caf\xe9/serve"
    b, _ = real_backend(monkeypatch, n)
    r = probe(b, environ={})
    assert [p.name for p in r.gpus[0].processes] == ["python3", "/opt/caf\ufffd/serve"]
    n = fake.busy_h100()
    n.process_names[5151] = b"/opt/caf\xe9/serve"
    b, _ = real_backend(monkeypatch, n, flavour="community-11")
    assert [p.name for p in probe(b, environ={}).gpus[0].processes][1] == "/opt/caf\ufffd/serve"


@pytest.mark.parametrize("code", [nvml.UNKNOWN, nvml.NO_PERMISSION])
def test_3_v2_memory_failure_falls_back_to_v1(monkeypatch, code):
    """Problem 3: WSL and vGPU answer the v2 memory call with UNKNOWN although v1 works."""
    n = fake.healthy_l40s()
    n.gpus[0].fail["memory_v2"] = code
    r = probe(n, environ={})
    assert r.gpus[0].error is None and r.gpus[0].memory.api == "v1"
    assert r.gpus[0].capacity_bytes == 45588 * MiB
    b, _ = real_backend(monkeypatch, fake.healthy_l40s, fail={"nvmlDeviceGetMemoryInfo_v2": code})
    assert probe(b, environ={}).gpus[0].memory.api == "v1"
    # both calls failing is still an unreadable GPU, with v1's error
    n.gpus[0].fail["memory_v1"] = nvml.GPU_IS_LOST
    assert probe(n, environ={}).gpus[0].error == "GPU is lost (NVML error 15)"
