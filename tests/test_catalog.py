"""The catalog against the facts it was built from (shared/reference/gpus.md, the bundled configs).

Expected values are typed in from gpus.md, not computed from the catalog; when shared/ sits
beside the repository (as in CI) the table is also parsed so the two cannot drift apart.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from vramplan import catalog
from vramplan.errors import BadInput, ModelNotFound, UnknownGpu

MiB, GiB = 2**20, 2**30
REPO = Path(__file__).resolve().parents[1]
SHARED = next((p for p in (REPO.parent / "shared", Path("/work/shared")) if p.is_dir()), None)

# gpus.md "Memory" table: id -> (NVML name, NVML total MiB, CUDA totals seen in GiB, marketing)
GPUS_MD = {
    "l40s": ("NVIDIA L40S", 46068, [44.52], "48 GB GDDR6 ECC"),
    "a100-40gb": ("NVIDIA A100-SXM4-40GB", 40960, [], "40 GB HBM2"),
    "a100-80gb": ("NVIDIA A100-SXM4-80GB", 81920, [79.15], "80 GB HBM2e"),
    "h100": ("NVIDIA H100 80GB HBM3", 81559, [79.22, 79.18], "80 GB HBM3"),
    "h200": ("NVIDIA H200", 143771, [], "141 GB HBM3e"),
    "b200": ("NVIDIA B200", 183359, [], "192 GB HBM3e"),
    "b300": ("NVIDIA B300 SXM6 AC", 275040, [], "288 GB HBM3e"),
    "rtx-pro-6000": ("NVIDIA RTX PRO 6000 Blackwell Server Edition", 97887, [], "96 GB GDDR7"),
    "l4": ("NVIDIA L4", 23034, [22.03], "24 GB GDDR6"),
    "a10": ("NVIDIA A10", 23028, [22.02, 22.06], "24 GB GDDR6"),
    "a10g": ("NVIDIA A10G", None, [21.99], "24 GB GDDR6"),
    "t4": ("Tesla T4", 15360, [14.57, 14.75], "16 GB GDDR6"),
    "rtx-4090": ("NVIDIA GeForce RTX 4090", None, [23.64], "24 GB GDDR6X"),
    "rtx-3090": ("NVIDIA GeForce RTX 3090", None, [23.58], "24 GB GDDR6X"),
    "v100-32gb": ("Tesla V100-SXM2-32GB", None, [31.75], "32 GB HBM2"),
    "rtx-4060": ("NVIDIA GeForce RTX 4060", None, [8.00], "8 GB"),
}
REQUIRED_IDS = set(GPUS_MD) | {"h100-pcie"}


def gpu(gpu_id):
    return {g.id: g for g in catalog.load_gpus()}[gpu_id]


def _parse_gpus_md(text: str) -> dict:
    """The gpus.md memory table as {id: (nvml MiB or None, [CUDA GiB...], marketing)}."""
    rows, in_table = {}, False
    for line in text.splitlines():
        if line.startswith("| catalog id |"):
            in_table = True
            continue
        if in_table and not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not in_table or set(cells[0]) <= {"-"}:
            continue
        gpu_id = cells[0].split()[0]
        nvml = int(cells[2]) if cells[2] else None
        cuda = [float(x) for x in re.findall(r"\d+\.\d+", cells[3])]
        rows[gpu_id] = (nvml, cuda, cells[4])
    return rows


@pytest.mark.skipif(SHARED is None, reason="shared/ is not beside the repository")
def test_typed_table_matches_shared_gpus_md():
    parsed = _parse_gpus_md((SHARED / "reference" / "gpus.md").read_text())
    assert set(parsed) == set(GPUS_MD)
    for gpu_id, (nvml, cuda, marketing) in parsed.items():
        assert (nvml, sorted(cuda), marketing) == (GPUS_MD[gpu_id][1], sorted(GPUS_MD[gpu_id][2]), GPUS_MD[gpu_id][3])


# --------------------------------------------------------------------------------------------- GPUs


def test_every_reference_gpu_is_in_the_catalog():
    ids = [g.id for g in catalog.load_gpus()]
    assert len(ids) == len(set(ids))
    assert REQUIRED_IDS <= set(ids)


@pytest.mark.parametrize("gpu_id", sorted(GPUS_MD))
def test_nvml_name_and_total_match_gpus_md(gpu_id):
    nvml_name, nvml_mib, _, _ = GPUS_MD[gpu_id]
    g = gpu(gpu_id)
    if gpu_id != "a10g":  # gpus.md writes "(AWS g5; reports as NVIDIA A10G)"
        assert g.nvml_name == nvml_name
    if nvml_mib is not None:
        assert g.nvml_total_bytes == nvml_mib * MiB


@pytest.mark.parametrize("gpu_id", sorted(k for k, v in GPUS_MD.items() if v[2]))
def test_measured_cuda_total_is_the_smallest_seen_in_gpus_md(gpu_id):
    g = gpu(gpu_id)
    assert g.cuda_total_measured
    assert abs(g.cuda_total_bytes / GiB - min(GPUS_MD[gpu_id][2])) < 0.01


def test_cuda_totals_in_bytes():
    # 44.52 GiB = 45588.48 MiB -> 45588 MiB; 79.18 GiB = 81080.32 MiB -> 81080 MiB.
    assert gpu("l40s").cuda_total_bytes == 45588 * MiB == 47_802_482_688
    assert gpu("h100").cuda_total_bytes == 81080 * MiB
    assert gpu("a100-80gb").cuda_total_bytes == 81049 * MiB
    assert gpu("t4").cuda_total_bytes == 14919 * MiB


def test_ecc_costs_one_sixteenth_of_gddr6():
    # 49140 x 15/16 = 46068.75 MiB: NVML reports whole MiB, so the L40S shows 46068.
    assert 49140 * 15 / 16 == 46068.75 and 49140 * 15 // 16 == 46068
    assert gpu("l40s").nvml_total_bytes == 49140 * 15 // 16 * MiB
    # The workstation cards ship with ECC off and report the full 49140 MiB.
    assert gpu("a6000").nvml_total_bytes == gpu("rtx-6000-ada").nvml_total_bytes == 49140 * MiB
    # The "48 GB" board carries 49140 MiB (47.99 GiB) of DRAM; after ECC and the driver CUDA
    # gets 44.52 GiB of it: 7% less than the label suggests.
    assert 0.92 < gpu("l40s").cuda_total_bytes / (49140 * MiB) < 0.93


def test_driver_reserve_is_the_median_of_the_reference_rows():
    reserves = [nvml - min(cuda) * 1024 for _, nvml, cuda, _ in GPUS_MD.values() if nvml and cuda]
    assert len(reserves) == 6
    assert catalog.driver_reserve_mib() == math.ceil(statistics.median(reserves)) == 480


def test_nvml_only_gpus_use_the_driver_reserve():
    for gpu_id, nvml_mib in [("b300", 275040), ("a6000", 49140), ("rtx-6000-ada", 49140)]:
        g = gpu(gpu_id)
        assert not g.cuda_total_measured
        assert g.cuda_total_bytes == (nvml_mib - 480) * MiB
        assert any("derived" in s and "480 MiB" in s for s in g.sources)


def test_estimated_totals_copy_a_card_with_the_same_memory():
    assert gpu("l40").cuda_total_bytes == gpu("a40").cuda_total_bytes == gpu("l40s").cuda_total_bytes
    assert gpu("h100-pcie").cuda_total_bytes == gpu("h100").cuda_total_bytes
    for gpu_id in ("l40", "a40", "h100-pcie"):
        assert not gpu(gpu_id).cuda_total_measured
        assert any("estimated" in s for s in gpu(gpu_id).sources)


def test_nominal_totals_are_labelled_estimates():
    # no NVML or CUDA total found: nominal capacity minus the H100 SXM's 840 MiB gap (81920 MiB of
    # HBM, 79.18 GiB = 81080 MiB CUDA total)
    assert round(79.18 * 1024) == 81080 == 81920 - 840
    for gpu_id, nominal in [("h100-nvl", 96256), ("h20", 98304), ("gh200", 98304), ("mi300x", 196608),
                            ("mi325x", 262144)]:
        g = gpu(gpu_id)
        assert g.cuda_total_bytes == (nominal - 840) * MiB and not g.cuda_total_measured
        assert any("estimated: nominal" in s for s in g.sources)
    # measured where a log was found: RTX 5090 31.37 GiB (Wan-Video/Wan2.1#465), MI355X 287.98 GiB
    assert gpu("rtx-5090").cuda_total_measured and gpu("mi355x").cuda_total_measured
    assert gpu("mi355x").cuda_total_bytes == round(287.98 * GiB) // MiB * MiB


def test_amd_cards_carry_the_rocm_notes():
    for gpu_id in ("mi300x", "mi325x", "mi355x"):
        g = gpu(gpu_id)
        assert g.vendor == "amd" and g.link_gbs and any("FlashInfer" in n for n in g.notes)
    assert gpu("h100").vendor == "nvidia" and not gpu("h100").notes


def test_totals_are_consistent():
    for g in catalog.load_gpus():
        assert isinstance(g.cuda_total_bytes, int) and g.cuda_total_bytes % MiB == 0, g.id
        if g.nvml_total_bytes is not None:
            # CUDA sees less than NVML: 0.4-0.9 GiB stays with the driver.
            assert 0.3 * GiB < g.nvml_total_bytes - g.cuda_total_bytes < 1.0 * GiB, g.id


def test_speed_and_capability_columns():
    h100, l40s, a100 = gpu("h100"), gpu("l40s"), gpu("a100-80gb")
    assert (h100.memory_bandwidth_gbs, h100.bf16_tflops, h100.fp8_tflops, h100.tdp_w) == (3350, 989, 1979, 700)
    assert (l40s.memory_bandwidth_gbs, l40s.bf16_tflops, l40s.fp8_tflops, l40s.tdp_w) == (864, 362, 733, 350)
    assert (a100.memory_bandwidth_gbs, a100.bf16_tflops, a100.fp8_tflops) == (2039, 312, None)
    assert h100.nvlink and h100.mig == 7 and not l40s.nvlink and l40s.mig == 0
    assert gpu("rtx-pro-6000").mig == 4
    assert gpu("t4").bf16_tflops is None  # Turing has no BF16 tensor cores
    native_fp8 = {"Ada Lovelace", "Hopper", "Blackwell", "CDNA 3", "CDNA 4"}     # MI300X and later: FP8
    for g in catalog.load_gpus():
        assert g.fp8 == (g.architecture in native_fp8), g.id
        assert g.fp8_tflops is None or g.fp8, g.id


def test_every_gpu_names_its_sources_and_dated_prices():
    for g in catalog.load_gpus():
        assert len(g.sources) >= 2, g.id
        for p in g.prices:
            assert p.usd_per_hour > 0 and p.provider and p.source, g.id
            assert p.kind in {"on-demand", "spot", "community", "secure", "reserved", "range"}
            if p.date:
                assert catalog.quote_date(p) is not None, (g.id, p.date)      # YYYY-MM-DD or YYYY-MM
            assert p.kind != "range" or not p.date          # ranges are the seeds' undated market spans
    l40s = {(p.provider, p.kind, p.date): p.usd_per_hour for p in gpu("l40s").prices}
    assert l40s[("Spheron", "on-demand", "2026-05-26")] == 0.72
    assert l40s[("Spheron", "spot", "2026-05-26")] == 1.07
    h100 = {(p.provider, p.kind, p.date): p.usd_per_hour for p in gpu("h100").prices}
    assert h100[("Spheron", "on-demand", "2026-03-15")] == 1.33
    assert h100[("Spheron", "on-demand", "2026-05-26")] == 3.84


@pytest.mark.parametrize("text, gpu_id", [
    ("l40s", "l40s"), ("L40S", "l40s"), ("NVIDIA L40S", "l40s"), ("nvidia_l40s", "l40s"),
    ("h100", "h100"), ("H100 SXM", "h100"), ("h100-sxm", "h100"), ("H100-SXM", "h100"),
    ("H100 SXM5", "h100"), ("NVIDIA H100 80GB HBM3", "h100"), ("H100 PCIe", "h100-pcie"),
    ("a100", "a100-80gb"), ("A100 80GB", "a100-80gb"), ("A100-SXM4-40GB", "a100-40gb"),
    ("Tesla T4", "t4"), ("RTX 4090", "rtx-4090"), ("NVIDIA GeForce RTX 4090", "rtx-4090"),
    ("NVIDIA B300 SXM6 AC", "b300"), ("A10G", "a10g"), ("A10", "a10"), ("rtx 6000 ada", "rtx-6000-ada"),
])
def test_find_gpu_aliases(text, gpu_id):
    assert catalog.find_gpu(text).id == gpu_id


def test_every_nvml_name_finds_its_own_gpu():
    for g in catalog.load_gpus():
        assert catalog.find_gpu(g.nvml_name) is g
        assert catalog.find_gpu(g.name) is g


def test_unknown_gpu_lists_ids_and_suggests():
    with pytest.raises(UnknownGpu) as err:
        catalog.find_gpu("h10")
    message = err.value.for_cli()
    assert isinstance(err.value, BadInput) and err.value.exit_code == 2
    assert "did you mean 'h100'" in message and "--gpu-mem 48GB" in message
    assert "e.g. gpu_mem 48GB" in str(err.value)           # the Python API names its keyword
    for g in catalog.load_gpus():
        assert g.id in message
    with pytest.raises(UnknownGpu) as err:
        catalog.find_gpu("quantum-gpu-9000")
    assert "did you mean" not in str(err.value)


@pytest.mark.parametrize("text, gpu_id, count", [
    ("l40s", "l40s", 1), ("l40s:2", "l40s", 2), ("NVIDIA L40S:4", "l40s", 4),
    (" h100 : 8 ", "h100", 8), ("a100:64", "a100-80gb", 64),
])
def test_parse_gpu_arg(text, gpu_id, count):
    target = catalog.parse_gpu_arg(text)
    assert (target.gpu.id, target.count, target.memory_bytes) == (gpu_id, count, None)
    assert target.per_gpu_bytes == gpu(gpu_id).cuda_total_bytes


@pytest.mark.parametrize("text", ["h100:0", "h100:65", "h100:x", "h100:2.5", "h100:-1", "h100:", ":2", ""])
def test_parse_gpu_arg_rejects_bad_counts(text):
    with pytest.raises(BadInput) as err:
        catalog.parse_gpu_arg(text)
    assert not isinstance(err.value, UnknownGpu)
    assert "Traceback" not in str(err.value) and len(str(err.value)) < 200


def test_parse_gpu_arg_unknown_gpu():
    with pytest.raises(UnknownGpu):
        catalog.parse_gpu_arg("rtx-9090:2")


# ------------------------------------------------------------------------------- bundled models

MODEL_FILES = sorted((REPO / "configs" / "models").glob("*.json"))


def test_bundled_ids_are_the_62_config_files():
    ids = catalog.bundled_model_ids()
    assert len(MODEL_FILES) == 62    # 35 from shared/reference, 27 added by issue #12 (SOURCES.md)
    assert sorted(ids) == sorted(f.stem.replace("--", "/", 1) for f in MODEL_FILES)
    assert "meta-llama/Llama-3.1-8B" in ids and "openai-community/gpt2" in ids


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: p.stem)
def test_every_bundled_config_resolves(path):
    model_id = path.stem.replace("--", "/", 1)
    found_id, resource = catalog.find_bundled(model_id)
    assert found_id == model_id
    text = catalog.load_bundled_text(model_id)
    assert text == path.read_text(encoding="utf-8") == resource.read_text(encoding="utf-8")
    reference = SHARED / "reference" / "models" / path.stem / "config.json" if SHARED is not None else None
    if reference is not None and reference.exists():    # the #12 additions have their own sources
        assert json.loads(text) == json.loads(reference.read_text())


@pytest.mark.parametrize("text, model_id", [
    ("META-LLAMA/LLAMA-3.1-8B", "meta-llama/Llama-3.1-8B"),
    ("  qwen/qwen3-8b ", "Qwen/Qwen3-8B"),
    ("meta-llama/Meta-Llama-3.1-8B", "meta-llama/Llama-3.1-8B"),
    ("meta-llama/meta-llama-3.1-405b", "meta-llama/Llama-3.1-405B"),
    ("gpt2", "openai-community/gpt2"),
    ("Llama-3.1-8B", "meta-llama/Llama-3.1-8B"),
    ("Mixtral-8x7B-v0.1", "mistralai/Mixtral-8x7B-v0.1"),
    ("Meta-Llama-3-8B", "meta-llama/Meta-Llama-3-8B"),
])
def test_find_bundled_case_alias_and_bare_name(text, model_id):
    assert catalog.find_bundled(text)[0] == model_id


def test_instruct_variants_are_not_aliases():
    # Different repositories (same architecture): they must come from the cache or the Hub.
    assert catalog.find_bundled("meta-llama/Llama-3.1-8B-Instruct") is None
    assert catalog.find_bundled("meta-llama/Meta-Llama-3.1-8B-Instruct") is None
    assert catalog.find_bundled("Qwen/Qwen3-8B-Base") is None


def test_nearest_bundled():
    near = catalog.nearest_bundled("meta-llama/Llama-3.1-13B")
    assert len(near) == 3 and near[0] == "meta-llama/Llama-3.1-8B"
    assert "meta-llama/Llama-3.1-8B" in catalog.nearest_bundled("Llama-3.1-13B")
    assert catalog.nearest_bundled("qwen3-8", n=1) == ["Qwen/Qwen3-8B"]
    assert set(catalog.nearest_bundled("mistral 7b", n=5)) <= set(catalog.bundled_model_ids())


def test_load_bundled_text_not_found_names_nearest():
    with pytest.raises(ModelNotFound) as err:
        catalog.load_bundled_text("meta-llama/Llama-3.1-13B")
    assert "meta-llama/Llama-3.1-8B" in str(err.value)
    assert err.value.exit_code == 2


def test_configs_dir_and_light_import():
    assert (catalog.configs_dir() / "gpus.toml").is_file()
    code = ("import sys, vramplan.catalog as c; c.load_gpus(); c.find_bundled('gpt2'); "
            "print(sorted(m for m in ('torch', 'transformers', 'typer', 'numpy', 'difflib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"
