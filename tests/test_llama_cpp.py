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
