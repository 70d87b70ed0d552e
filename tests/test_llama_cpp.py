"""llama.cpp and Ollama: reading GGUF files, llama.cpp's memory, partial offload, the
quantizer's per-tensor choices, Ollama's defaults. Sources: docs/llama-cpp.md."""

from __future__ import annotations

import io
import struct
import sys
import types
from pathlib import Path

import pytest

from tests.gguf_files import Q, gguf, write_llama
from vramplan.errors import BadConfig, BadInput, ModelNotFound
from vramplan.loading import load_model
from vramplan.sources import gguf as source
from vramplan.spec.gguf import GGML_TYPES, row_bytes, tensor_bytes


# ------------------------------------------------------------------ 1. reading GGUF exactly

def test_type_table_matches_gguf_package():
    # the gguf package's GGML_QUANT_SIZES (llama.cpp's own Python constants) is the oracle
    for t, (blck, size) in gguf.GGML_QUANT_SIZES.items():
        name, b, s = GGML_TYPES[int(t)]
        assert (name.lower(), b, s) == (t.name.lower(), blck, size)
    # q4_K: 2 fp16 + 12 scale bytes + 128 B of nibbles per 256 weights = 144 B (4.5 bits)
    assert row_bytes("q4_K", 4096) == 16 * 144
    assert tensor_bytes("q8_0", (4096, 1024)) == 4096 // 32 * 34 * 1024


def test_reader_agrees_with_gguf_reader(tmp_path):
    (path,) = write_llama(tmp_path / "m.gguf")
    m = load_model(str(path))
    ref = gguf.GGUFReader(str(path))
    assert [(t.name, t.type, t.shape, t.nbytes) for t in m.gguf.tensors] == [
        (t.name, GGML_TYPES[int(t.tensor_type)][0], tuple(int(d) for d in t.shape), int(t.n_bytes))
        for t in ref.tensors]
    # hand count: per layer q, o (256x256 q4_K: 256 blocks x 144 = 36,864 B each), k (64x256 q4_K:
    # 9,216), v (64x256 q6_K: 64 x 210 = 13,440), gate/up (512x256 q4_K: 73,728 each), down (256x512
    # q6_K: 256 x 2 x 210 = 107,520), 2 f32 norms (1,024 each) = 353,408; 4 layers = 1,413,632;
    # token_embd 1024x256 q4_K 147,456; output q6_K 1024 x 210 = 215,040; output_norm 1,024
    assert m.gguf.tensor_bytes == 1_413_632 + 147_456 + 215_040 + 1_024 == 1_777_152
    assert m.model_type == "llama" and m.num_layers == 4 and m.vocab_size == 1024
    assert m.gguf.file_type == "Q4_K_M" and m.max_position_embeddings == 8192
    a = m.layers[0].mixer
    assert (a.kind, a.num_heads, a.num_kv_heads, a.head_dim) == ("full", 8, 2, 32)
    assert not m.tie_word_embeddings


def test_split_set_and_directory(tmp_path):
    parts = write_llama(tmp_path / "big.gguf", splits=3)
    whole = write_llama(tmp_path / "one" / "m.gguf") if (tmp_path / "one").mkdir() is None else None
    a, b = load_model(str(parts[1])), load_model(str(tmp_path / "one"))
    assert a.gguf.files == 3 and len(a.gguf.tensors) == len(b.gguf.tensors)
    assert a.gguf.tensor_bytes == b.gguf.tensor_bytes
    assert {t.file for t in a.gguf.tensors} == {0, 1, 2}
    parts[2].unlink()
    with pytest.raises(ModelNotFound, match="00003-of-00003.gguf is missing"):
        load_model(str(parts[0]))
    assert whole is not None


def test_sliding_layers_as_llama_cpp_reads_them(tmp_path):
    # gemma3: load_swa_pattern(ml, 6): layers il % 6 < 5 slide (src/models/gemma3.cpp)
    (path,) = write_llama(tmp_path / "g.gguf", arch="gemma3", n_layer=12, swa=512)
    kinds = [l.mixer.kind for l in load_model(str(path)).layers]
    assert kinds == ["sliding"] * 5 + ["full"] + ["sliding"] * 5 + ["full"]
    # llama ignores a sliding_window key (Mistral's GGUF keeps full attention in llama.cpp)
    (path,) = write_llama(tmp_path / "l.gguf", swa=4096)
    assert {l.mixer.kind for l in load_model(str(path)).layers} == {"full"}


def test_header_only_and_capped(tmp_path):
    (path,) = write_llama(tmp_path / "m.gguf")
    data = path.read_bytes()
    h = source.read_header(io.BytesIO(data))
    assert len(h.tensors) == 39
    # the data section is never read: the header alone (here 2,716 of 1,779,872 bytes) suffices
    assert h.header_bytes < 3000 and len(data) > 1_700_000
    assert len(source.read_header(io.BytesIO(data[:h.header_bytes])).tensors) == 39
    with pytest.raises(BadConfig, match="truncated"):
        source.read_header(io.BytesIO(data[:h.header_bytes - 1]))
    with pytest.raises(BadConfig, match="not a GGUF file"):
        source.read_header(io.BytesIO(b"PK\x03\x04" + data[4:]))
    # a header that claims a 1 TiB string is refused by the cap, not read
    bad = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**40)
    with pytest.raises(BadConfig, match="larger than"):
        source.read_header(io.BytesIO(bad))


def test_hub_gguf_repo_through_a_fake_hub(tmp_path, monkeypatch):
    (path,) = write_llama(tmp_path / "Model-Q4_K_M.gguf")
    write_llama(tmp_path / "Model-Q8_0.gguf", weight=Q.Q8_0, down=Q.Q8_0, file_type=7)
    opened = []

    class Api:
        def list_repo_files(self, repo):
            assert repo == "org/Model-GGUF"
            return ["README.md", "Model-Q4_K_M.gguf", "Model-Q8_0.gguf", "mmproj-f16.gguf"]

    class Fs:
        def open(self, name, mode, block_size=None):
            opened.append(name)
            return open(tmp_path / name.split("/")[-1], "rb")

        def info(self, name):
            return {"size": (tmp_path / name.split("/")[-1]).stat().st_size}

    fake = types.ModuleType("huggingface_hub")
    fake.HfApi, fake.HfFileSystem = Api, Fs
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    m = load_model("org/Model-GGUF")          # no tag: Q4_K_M, as llama.cpp -hf picks
    assert m.gguf.file_type == "Q4_K_M" and opened == ["org/Model-GGUF/Model-Q4_K_M.gguf"]
    assert load_model("org/Model-GGUF:q8_0").gguf.file_type == "Q8_0"
    with pytest.raises(ModelNotFound, match="no GGUF file for IQ2_XXS"):
        load_model("org/Model-GGUF:IQ2_XXS")


def test_directory_with_two_models_is_refused(tmp_path):
    write_llama(tmp_path / "a.gguf")
    write_llama(tmp_path / "b.gguf")
    with pytest.raises(BadInput, match="holds 2 GGUF models"):
        load_model(str(tmp_path))


# ------------------------------------------------------------------ 4. the quantizer's choices

SNAPSHOTS = Path(__file__).parent / "data" / "llama_cpp"


def _snapshot(path: Path) -> dict:
    sections, cur = {}, None
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("["):
            cur = sections[line[1:line.index("]")]] = {"default": line.split()[-1], "over": {}}
        else:
            name, type_ = line.rsplit(" ", 1)
            cur["over"][name] = type_
    return sections


@pytest.mark.parametrize("model_id, snapshot", [
    ("Qwen/Qwen3-14B", "qwen3-14b"),
    ("meta-llama/Llama-3.1-70B", "meta-llama-3.1-70b-instruct"),   # the 70B attn_v rule
    ("google/gemma-3-4b-it", "gemma-3-4b-it"),                     # tied embeddings
    ("openai/gpt-oss-120b", "gpt-oss-120b"),                       # MoE, rows of 2880: fallbacks
])
def test_quantizer_matches_llama_cpp_snapshots(model_id, snapshot):
    """Every quantizable tensor, every mix: the type llama.cpp's own test suite pins
    (tests/snapshots, made from the real GGUF headers) equals the one planned from the HF config."""
    from vramplan.engines.llama_cpp import quantize as qz

    model = load_model(model_id)
    checked = 0
    for mix, section in _snapshot(SNAPSHOTS / f"{snapshot}.schema").items():
        planned = qz.plan_file(model, mix)
        ours = {t.name: t.type for t in planned.tensors if qz.allows_quantization(t.name, len(t.shape))}
        assert set(section["over"]) <= set(ours), mix
        for name, type_ in ours.items():
            assert type_.lower() == section["over"].get(name, section["default"]).lower(), (mix, name)
            checked += 1
    assert checked > 7000


# ------------------------------------------------------------------ 2. llama.cpp's buffers

from vramplan import api  # noqa: E402
from vramplan.engines.llama_cpp import buffers as B  # noqa: E402
from tests.bad_input.contract import assert_api_refuses, assert_cli_refuses  # noqa: E402

MiB = 2**20


def test_q4_k_m_8b_on_a_4090(tmp_path):
    """Llama-3.1-8B at Q4_K_M, planned from its config, all 33 layers on an RTX 4090 at 8k."""
    p = api.plan("meta-llama/Llama-3.1-8B", "rtx-4090", ctx="8k", engine="llama.cpp", dtype="q4_k_m")
    r = p.local
    assert p.fits and r.n_gpu_layers == r.n_layers == 33 and r.solved
    gpu, cpu = r.devices
    # token_embd (128256 x 4096 q4_K: 128256 x 16 blocks x 144 B = 295,501,824 B) stays on the CPU
    assert cpu.model == cpu.mapped == 295_501_824
    # every other tensor on CUDA0, each padded to 128 B (rows of 4096 and 14336 divide by 512)
    assert gpu.model == r.file_bytes - 295_501_824 == p.components["weights"] == 4_617_396_224
    # KV: 32 layers x 8192 cells x (K + V) 8 heads x 128 x 2 B = 1 GiB exactly
    assert gpu.kv == p.components["kv_cache"] == 32 * 8192 * 2 * 8 * 128 * 2 == 2**30
    assert p.kv_bytes_per_token == 32 * 2 * 8 * 128 * 2 == 131_072
    # output buffer: f32 logits for one sequence, 128256 x 4 B, on the host
    assert cpu.output == 513_024


def test_ngl_solved_and_the_rest_in_ram():
    p = api.plan("meta-llama/Llama-3.1-70B", "rtx-4090", ctx="8k", engine="llama.cpp", dtype="q4_k_m")
    r = p.local
    assert not p.fits                                  # the whole model does not fit one 4090
    assert 0 < r.n_gpu_layers < r.n_layers == 81
    gpu, cpu = r.devices
    assert r.gpu_bytes[0] <= p.capacity_bytes           # the solved split fits ...
    one_more = api.plan("meta-llama/Llama-3.1-70B", "rtx-4090", ctx="8k", engine="llama.cpp", dtype="q4_k_m",
                        n_gpu_layers=r.n_gpu_layers + 1)
    assert one_more.total_bytes > p.capacity_bytes     # ... and one more layer does not
    # the layers not on the GPU are on the CPU with their KV; weights split exactly
    assert len(gpu.layers) + len(cpu.layers) == 80 and cpu.layers == tuple(range(len(cpu.layers)))
    assert gpu.model + cpu.model == r.file_bytes + sum(  # GPU tensors padded to 128 B
        B.pad(t.nbytes, 128) - t.nbytes for t in load_model_gguf_plan(p) if t.layer in gpu.layers or t.name.startswith("output"))
    assert gpu.kv + cpu.kv == 80 * 8192 * 2 * 8 * 128 * 2
    assert r.host_ram_bytes == cpu.model + cpu.kv + cpu.compute + cpu.output
    fitting = [s for s in p.suggestions if s.fits]
    assert fitting[0].flags == {"n_gpu_layers": r.n_gpu_layers}


def load_model_gguf_plan(p):
    from vramplan.engines.llama_cpp.engine import gguf_file
    return gguf_file(p.model, p.workload.dtype)[0].tensors


def test_tensor_split_and_cpu_moe():
    two = api.plan("meta-llama/Llama-3.1-70B", "rtx-4090:2", ctx="4k", engine="llama.cpp", dtype="q4_k_m",
                   n_gpu_layers="all", tensor_split="3,1")
    g0, g1, cpu = two.local.devices
    # load_tensors: upper_bound over the cumulative split (0.75, 1.0) of (il - 0) / 81
    assert len(g0.layers) == 61 and len(g1.layers) == 19 and not cpu.layers
    assert g1.model > 0 and g0.model > g1.model
    moe = api.plan("mistralai/Mixtral-8x7B-v0.1", "rtx-4090", ctx="4k", engine="llama.cpp", dtype="q4_k_m",
                   n_gpu_layers="all", n_cpu_moe=32)
    allgpu = api.plan("mistralai/Mixtral-8x7B-v0.1", "rtx-4090", ctx="4k", engine="llama.cpp", dtype="q4_k_m",
                      n_gpu_layers="all")
    experts = sum(t.nbytes for t in load_model_gguf_plan(moe) if "_exps" in t.name)
    assert moe.local.devices[-1].model == experts + next(t.nbytes for t in load_model_gguf_plan(moe)
                                                          if t.name == "token_embd.weight")
    assert moe.fits and not allgpu.fits               # all experts in RAM: Mixtral Q4_K_M runs on a 4090
    # the decode estimate reads the routed experts (2 of 8) from RAM: slower than all-GPU would be
    assert 0 < moe.local.decode_tokens_per_s < 200


def test_kv_cache_types_and_swa(tmp_path):
    (path,) = write_llama(tmp_path / "g.gguf", arch="gemma3", n_layer=12, swa=512, tied=True)
    p = api.plan(str(path), "rtx-4090", ctx="8k", cache_type_k="q8_0", cache_type_v="q8_0")
    gpu = p.local.devices[0]
    # 2 full layers x 8192 cells + 10 sliding layers x pad(512 + 512, 256) = 1024 cells; K and V rows of
    # 2 heads x 32 = 64 q8_0 values = 2 blocks x 34 B = 68 B each
    assert gpu.kv == (2 * 8192 + 10 * 1024) * 2 * 68
    # tied embeddings: the output layer gets a copy of token_embd on the GPU (TENSOR_DUPLICATED)
    embd = next(t for t in p.model.gguf.tensors if t.name == "token_embd.weight")
    assert p.local.devices[-1].model == embd.nbytes
    with_copy = gpu.model
    assert with_copy >= embd.nbytes


def test_slots_share_the_context():
    a = api.plan("Qwen/Qwen3-8B", "rtx-4090", ctx="16k", engine="llama.cpp", dtype="q4_k_m", parallel=4)
    b = api.plan("Qwen/Qwen3-8B", "rtx-4090", ctx="16k", engine="llama.cpp", dtype="q4_k_m", parallel=1)
    assert a.local.n_ctx_seq == 4096 and a.local.devices[0].kv == b.local.devices[0].kv
    # 5000 tokens over 3 slots: 5120 / 3 = 1706 -> padded to 1792 per slot, 5376 cells (llama.cpp logs
    # "n_ctx is not divisible by n_seq_max - rounding down to 5376")
    c = api.plan("Qwen/Qwen3-8B", "rtx-4090", ctx=5000, engine="llama.cpp", dtype="q4_k_m", parallel=3)
    assert (c.local.n_ctx, c.local.n_ctx_seq) == (5376, 1792)


def test_ollama_names_defaults_and_file_sizes():
    """Ollama's docs list llama3.2:latest at 2,019,393,189 B and deepseek-r1:latest at 4,683,075,271 B
    (docs/api.md): the Q4_K_M planned from the HF config is within 1 % (the rest is the header,
    mostly the tokenizer)."""
    for name, size in (("llama3.2", 2_019_393_189), ("deepseek-r1:latest", 4_683_075_271)):
        p = api.plan(name, "rtx-4090", ctx="4k")
        assert p.local.engine == "ollama" and p.local.file_type == "Q4_K_M"
        assert 0 < size - p.local.file_bytes < 0.01 * size
    p = api.plan("qwen3:32b-q8_0", "rtx-4090", ctx="8k", parallel=2)
    r = p.local
    assert r.file_type == "Q8_0" and r.n_seq == 2 and r.n_ctx == 16384      # -c num_ctx x parallel
    assert r.n_ubatch == 1024                        # num_batch 1024 above 4,096 tokens (sched.go)
    assert any("default num_ctx" in w and "32,768" in w for w in p.warnings)   # 24 GiB tier
    assert api.plan("mistral", "rtx-4090").local.file_type == "Q4_0"


def test_json_keys_added(tmp_path):
    from vramplan.render import plan_json

    (path,) = write_llama(tmp_path / "m.gguf")
    out = plan_json(api.plan(str(path), "rtx-4090", ctx="4k"))
    assert out["engine"] == "llama.cpp" and out["n_gpu_layers"] == 5
    assert out["host_ram_bytes"] == out["local"]["host_ram_bytes"] > 0
    assert [d["name"] for d in out["local"]["devices"]] == ["CUDA0", "CPU"]
    assert out["components"]["kv_cache"] == out["local"]["devices"][0]["kv"] == 4 * 4096 * 2 * 64 * 2


def test_bad_input(tmp_path):
    (path,) = write_llama(tmp_path / "m.gguf")
    assert_cli_refuses(["fit", str(path), "--engine", "vllm"], 2, "GGUF file")
    assert_cli_refuses(["fit", "meta-llama/Llama-3.1-8B", "--n-gpu-layers", "4"], 2, "--engine llama.cpp")
    assert_cli_refuses(["fit", str(path), "--cache-type-k", "fp8"], 2, "cache types")
    assert_cli_refuses(["fit", str(path), "--flash-attn", "off", "--cache-type-v", "q8_0"], 2, "flash attention")
    assert_cli_refuses(["fit", str(path), "--dtype", "q4_k_m"], 2, "already a GGUF")
    assert_cli_refuses(["fit", "meta-llama/Llama-3.1-8B", "--engine", "llama.cpp", "--dtype", "q9_k"], 2,
                       "not a llama.cpp quantization mix")
    assert_cli_refuses(["fit", str(path), "--ctx", "256", "--parallel", "300"], 2, "n_ctx_seq == 0")
    assert_cli_refuses(["fit", "meta-llama/Llama-3.1-8B", "--mode", "infer", "--engine", "ollama"], 2,
                       "does not plan")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    assert_cli_refuses(["fit", str(tmp_path / "junk.gguf")], 2, "not a GGUF file")
    assert_api_refuses(api.plan, str(path), "rtx-4090", tensor_split="a,b", exc=BadInput, needle="tensor_split")


def test_llama_cpp_oracle_when_installed(tmp_path):
    """llama.cpp itself (llama-cpp-python) logs the same model, KV and output buffers, and its
    quantizer writes the planned Q4_K_M byte for byte (benchmarks/llama_cpp_oracle.py)."""
    pytest.importorskip("llama_cpp")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import llama_cpp_oracle as oracle

    path = tmp_path / "dense.gguf"
    oracle.write_model(path)
    args = dict(path=str(path), ctx=8192, np=4, fa="on")
    real, plan = oracle.llama_log(args), oracle.vramplan_cpu(args)
    assert (real["model"], real["kv"], real["output"]) == (round(plan["model"], 2), round(plan["kv"], 2),
                                                          round(plan["output"], 2))
    assert abs(real["compute"] - plan["compute"]) <= 0.05


def test_readme_llama_cpp_example_is_current():
    from typer.testing import CliRunner
    from vramplan.cli import app

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    block = text[text.index("  $ vramplan fit llama3.3:70b"):]
    block = block[:block.index("  ```")]
    command, _, shown = block.partition("\n  ...\n")
    result = CliRunner().invoke(app, command.split()[2:])      # after "$ vramplan"
    assert result.exit_code == 1
    for line in shown.rstrip().splitlines():
        assert line[2:] in result.stdout


def test_trace_refuses_a_gguf_file(tmp_path):
    (path,) = write_llama(tmp_path / "m.gguf")
    assert_cli_refuses(["fit", str(path), "--method", "trace"], 2, "GGUF file is planned with --method analytic")
