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

# Expected types below are derived by hand from llama.cpp's rules, src/llama-quant.cpp at commit
# 0c1e57098 (lines cited as l.N); benchmarks/llama_cpp_snapshots.py compares every tensor of every
# mix with llama.cpp's own snapshots. Reminders used throughout:
# - use_more_bits(i, n) = i < n/8 || i >= 7*n/8 || (i - n/8) % 3 == 2, integer division (l.452-453);
# - attn_v counts its index over the attn_v tensors (n_attention_wv, l.932-933), ffn_down over
#   n_layer_all (l.940), or reads the layer from the name in a MoE model (layer_info, l.456-462);
# - a quantized type whose block does not divide the row (ne0) falls back (tensor_type_fallback,
#   l.396-418): q4_K -> q5_0, q5_K -> q5_1, q6_K -> q8_0, q2_K/q3_K -> q4_0, iq* -> iq4_nl.


def _types(model_id: str, mix: str) -> dict[str, str]:
    """Every tensor of the planned GGUF file -> its planned type."""
    from vramplan.engines.llama_cpp import quantize as qz

    return {t.name: t.type for t in qz.plan_file(load_model(model_id), mix).tensors}


def _layers(types: dict[str, str], leaf: str, type_: str) -> set[int]:
    return {int(n.split(".")[1]) for n, t in types.items() if n.endswith(f".{leaf}.weight") and t == type_}


# n = 80: n/8 = 10, 7n/8 = 70 -> layers 0-9 and 70-79, and (i - 10) % 3 == 2 for i = 12, 15, ..., 69
# (20 layers): 40 layers in all
MORE_BITS_80 = set(range(10)) | set(range(12, 70, 3)) | set(range(70, 80))


def test_quant_llama_70b_q4_k_m():
    """Llama-3.1-70B: 80 layers, 64 heads over 8 KV heads (n_gqa 8), hidden 8192, FFN 28672,
    untied; every row (8192, 28672) divides into 256-blocks, so nothing falls back."""
    t = _types("meta-llama/Llama-3.1-70B", "Q4_K_M")
    # attn_v (one per layer, n_attention_wv = 80): Q4_K_M + use_more_bits -> q6_K (l.590-591); the
    # other 40 keep the default q4_K (l.903-904), which LLM_TYPE_70B (llama, 80 layers,
    # n_head != n_head_kv: src/models/llama.cpp:28) lifts to q5_K (l.593-597)
    assert (_layers(t, "attn_v", "q6_K"), _layers(t, "attn_v", "q5_K")) == (MORE_BITS_80, set(range(80)) - MORE_BITS_80)
    # ffn_down, dense: i = layer, n = 80; Q4_K_M, not falcon: use_more_bits -> q6_K, else q4_K
    # (l.646-651); the 70B rule touches attn_v only
    assert _layers(t, "ffn_down", "q6_K") == MORE_BITS_80
    assert _layers(t, "ffn_down", "q4_K") == set(range(80)) - MORE_BITS_80
    # output.weight: row 8192 % 256 == 0, not falcon, not an IQ1/IQ2 mix -> q6_K (l.500-509); it exists,
    # so the embeddings are not tied (l.936-937) and token_embd, for which Q4_K_M has no rule
    # (l.525-541), keeps q4_K; so do attn_q, attn_k, attn_output, ffn_gate, ffn_up (no Q4_K_M rule)
    assert (t["output.weight"], t["token_embd.weight"]) == ("q6_K", "q4_K")
    assert {t[f"blk.{i}.{leaf}.weight"] for i in range(80)
            for leaf in ("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up")} == {"q4_K"}


def test_quant_q3_k_m_and_the_70b_rule(tmp_path):
    # Q3_K_M, default q3_K (l.900-902). attn_v: index < 2 -> q5_K, else q4_K (l.583-584);
    # Llama-3.1-8B (32 layers) is no 70B, so that stands; in the 70B every q4_K attn_v becomes q5_K
    # (l.593-597)
    small = _types("meta-llama/Llama-3.1-8B", "Q3_K_M")
    assert (_layers(small, "attn_v", "q5_K"), _layers(small, "attn_v", "q4_K")) == ({0, 1}, set(range(2, 32)))
    t = _types("meta-llama/Llama-3.1-70B", "Q3_K_M")
    assert _layers(t, "attn_v", "q5_K") == set(range(80))
    # ffn_down: i < n/16 = 5 -> q5_K, else (not falcon) q4_K (l.634-637); attn_output -> q4_K (l.681)
    # (attn_q, attn_k, ffn_gate, ffn_up keep q3_K)
    assert (_layers(t, "ffn_down", "q5_K"), _layers(t, "ffn_down", "q4_K")) == (set(range(5)), set(range(5, 80)))
    assert _layers(t, "attn_output", "q4_K") == _layers(t, "ffn_up", "q3_K") == set(range(80))
    # qwen2 at 80 layers is LLM_TYPE_70B whatever its heads (src/models/qwen2.cpp:14): Qwen1.5-72B's
    # config (80 layers, 64 heads, 64 KV heads) at Q4_K_M gets q5_K, not q4_K, outside MORE_BITS_80
    (tmp_path / "config.json").write_text(
        '{"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 8192, '
        '"intermediate_size": 24576, "num_hidden_layers": 80, "num_attention_heads": 64, '
        '"num_key_value_heads": 64, "vocab_size": 152064, "max_position_embeddings": 32768, '
        '"rms_norm_eps": 1e-06, "tie_word_embeddings": false, "torch_dtype": "bfloat16"}')
    mha = _types(str(tmp_path), "Q4_K_M")
    assert _layers(mha, "attn_v", "q5_K") == set(range(80)) - MORE_BITS_80
    # the same shapes as a llama (LLaMA-65B: n_head == n_head_kv) are LLM_TYPE_65B
    # (src/models/llama.cpp:28): there q4_K stays
    cfg = (tmp_path / "config.json").read_text().replace("Qwen2ForCausalLM", "LlamaForCausalLM")
    (tmp_path / "config.json").write_text(cfg.replace('"qwen2"', '"llama"'))
    assert _layers(_types(str(tmp_path), "Q4_K_M"), "attn_v", "q4_K") == set(range(80)) - MORE_BITS_80


def test_quant_gemma3_4b_tied_and_iq2_m():
    """Gemma-3-4B: 34 layers, 8 heads over 4 KV heads (n_gqa 2) of 256, hidden 2560, FFN 10240,
    tied embeddings (no output.weight); rows 2560, 2048 and 10240 divide into 256-blocks."""
    t = _types("google/gemma-3-4b-it", "Q4_K_M")
    # n = 34: n/8 = 4, 7n/8 = 238/8 = 29 -> 0-3, 29-33, and (i - 4) % 3 == 2: 6, 9, ..., 27 -> 17 layers
    more = set(range(4)) | set(range(6, 29, 3)) | set(range(29, 34))
    assert _layers(t, "attn_v", "q6_K") == _layers(t, "ffn_down", "q6_K") == more
    # no output.weight: has_tied_embeddings stays true (l.185, l.936) and token_embd takes the output
    # rule: row 2560 % 256 == 0 -> q6_K (l.490, l.508-509), not the Q4_K_M default
    assert "output.weight" not in t and t["token_embd.weight"] == "q6_K"
    # IQ2_M, default iq2_s (l.913). Tied token_embd: IQ2_M -> q5_K (l.503-506). attn_v: n_gqa 2 < 4 and
    # no experts -> iq3_s (l.546-547). ffn_down: counter < n_ffn_down/8 = 34/8 = 4 -> iq3_s (l.554-555).
    # attn_output -> iq3_s (l.564). attn_q, attn_k, ffn_gate, ffn_up keep iq2_s
    t = _types("google/gemma-3-4b-it", "IQ2_M")
    assert t["token_embd.weight"] == "q5_K"
    assert _layers(t, "attn_v", "iq3_s") == _layers(t, "attn_output", "iq3_s") == set(range(34))
    assert (_layers(t, "ffn_down", "iq3_s"), _layers(t, "ffn_down", "iq2_s")) == (set(range(4)), set(range(4, 34)))


def test_quant_qwen25_05b_row_fallbacks():
    """Qwen2.5-0.5B: 24 layers, 14 heads over 2 KV heads (n_gqa 7) of 64, hidden 896 = 3.5 blocks
    of 256 (32-blocks: 28), FFN 4864 = 19 x 256, tied. Every tensor whose row is 896 long (all but
    ffn_down) cannot take a 256-block type and falls back (l.396-418)."""
    t = _types("Qwen/Qwen2.5-0.5B", "Q4_K_M")
    # tied token_embd: 896 % blck(q4_K) = 896 % 256 != 0 -> q8_0 directly (l.500-501)
    assert t["token_embd.weight"] == "q8_0"
    # n = 24: n/8 = 3, 7n/8 = 21 -> 0-2, 21-23, and (i - 3) % 3 == 2: 5, 8, 11, 14, 17, 20 -> 12 layers.
    # attn_v (row 896): q6_K there -> q8_0 (l.418); q4_K elsewhere -> q5_0 (l.416). ffn_down (row
    # 4864): q6_K there, q4_K elsewhere, no fallback
    more = {0, 1, 2, 5, 8, 11, 14, 17, 20, 21, 22, 23}
    assert (_layers(t, "attn_v", "q8_0"), _layers(t, "attn_v", "q5_0")) == (more, set(range(24)) - more)
    assert (_layers(t, "ffn_down", "q6_K"), _layers(t, "ffn_down", "q4_K")) == (more, set(range(24)) - more)
    # attn_q, attn_k, attn_output (row 14 x 64 = 896), ffn_gate, ffn_up: q4_K -> q5_0
    assert {t[f"blk.{i}.{leaf}.weight"] for i in range(24)
            for leaf in ("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up")} == {"q5_0"}
    # Q2_K: attn_v n_gqa 7 >= 4 -> q4_K (l.568-569) -> q5_0; attn_output -> q3_K (l.679) -> q4_0
    # (l.413-415); ffn_down -> q3_K (l.627, row 4864 divides); attn_q -> q2_K -> q4_0 (l.412)
    t = _types("Qwen/Qwen2.5-0.5B", "Q2_K")
    assert (t["blk.7.attn_v.weight"], t["blk.7.attn_output.weight"], t["blk.7.ffn_down.weight"],
            t["blk.7.attn_q.weight"], t["token_embd.weight"]) == ("q5_0", "q4_0", "q3_K", "q4_0", "q8_0")
    # IQ4_XS, default iq4_xs (l.918, 256-block): attn_v n_gqa >= 4 -> q5_K (l.587-588) -> q5_1 (l.417);
    # ffn_down i < 24/8 = 3 without imatrix -> q5_K (l.654-655), else iq4_xs (row 4864 divides);
    # attn_q -> iq4_xs -> iq4_nl (l.410)
    t = _types("Qwen/Qwen2.5-0.5B", "IQ4_XS")
    assert (t["blk.0.attn_v.weight"], t["blk.2.ffn_down.weight"], t["blk.3.ffn_down.weight"],
            t["blk.0.attn_q.weight"]) == ("q5_1", "q5_K", "iq4_xs", "iq4_nl")


def test_quant_moe_gpt_oss_120b_and_deepseek_v3():
    """gpt-oss-120b: 36 layers, 128 experts, 64 heads over 8 KV heads of 64, hidden = expert FFN
    = 2880 = 11.25 x 256 (32-blocks: 90), untied; attn_output's row is 64 x 64 = 4096."""
    t = _types("openai/gpt-oss-120b", "MXFP4_MOE")
    # MXFP4_MOE: output -> q8_0 (l.497-498); 3-D experts (ne[2] = 128 > 1) -> mxfp4, every other
    # quantized tensor -> q8_0 (l.512-523), token_embd included (the MXFP4 branch comes first)
    assert {t[f"blk.5.{n}.weight"] for n in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")} == {"mxfp4"}
    assert {t["output.weight"], t["token_embd.weight"], t["blk.5.attn_v.weight"],
            t["blk.5.attn_output.weight"]} == {"q8_0"}
    # not quantized at all: attn_sinks is 1-D (l.292), the router ffn_gate_inp is excluded by name
    # (l.306), the experts' biases are 2-D but their names do not end in "weight" (l.297): all F32 as
    # the converter wrote them
    assert {t["blk.5.attn_sinks.weight"], t["blk.5.ffn_gate_inp.weight"], t["blk.5.ffn_down_exps.bias"]} == {"f32"}
    # Q4_K_M: 128 experts, so none of the 8-expert rules; n = 36: n/8 = 4, 7n/8 = 31 -> 0-3, 31-35 and
    # (i - 4) % 3 == 2: 6, 9, ..., 30 -> 18 layers. attn_v and ffn_down_exps (row 2880, the layer read
    # from the name, l.456-462): q6_K -> q8_0 there (l.418), q4_K -> q5_0 elsewhere (l.416)
    t = _types("openai/gpt-oss-120b", "Q4_K_M")
    more = set(range(4)) | set(range(6, 31, 3)) | set(range(31, 36))
    assert _layers(t, "attn_v", "q8_0") == _layers(t, "ffn_down_exps", "q8_0") == more
    assert _layers(t, "attn_v", "q5_0") == _layers(t, "ffn_down_exps", "q5_0") == set(range(36)) - more
    # output: 2880 % 256 != 0 -> q8_0 (l.500-501); untied token_embd and the 2880-row attn_q, attn_k,
    # gate/up experts: q4_K -> q5_0; attn_output (row 4096) keeps q4_K
    assert t["output.weight"] == "q8_0" and t["blk.9.attn_output.weight"] == "q4_K"
    assert {t["token_embd.weight"], t["blk.9.attn_q.weight"], t["blk.9.attn_k.weight"],
            t["blk.9.ffn_gate_exps.weight"], t["blk.9.ffn_up_exps.weight"]} == {"q5_0"}
    # DeepSeek-V3, 61 layers: ffn_down in dense layers 0-2, ffn_down_exps and ffn_down_shexp (both the
    # ffn_down category, l.150-151) in 3-60. The layer comes from the name (l.456-462), not from a
    # counter that two tensors a layer would advance twice. n/8 = 7, 7n/8 = 427/8 = 53 -> 0-6, 53-60
    # and (i - 7) % 3 == 2: 9, 12, ..., 51 -> 30 layers get q6_K (l.651), all of a layer's ffn_down*
    t = _types("deepseek-ai/DeepSeek-V3", "Q4_K_M")
    more = set(range(7)) | set(range(9, 53, 3)) | set(range(53, 61))
    down = {n: ty for n, ty in t.items() if ".ffn_down" in n and n.endswith(".weight")}
    assert len(down) == 3 + 58 * 2
    assert {n for n, ty in down.items() if ty == "q6_K"} == {n for n in down if int(n.split(".")[1]) in more}


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


def test_what_the_plan_does_not_model_is_said():
    """Nemotron-H: 54 Mamba2 layers whose recurrent state llama.cpp keeps in a buffer this plan does
    not count, and a model type without a modelled converter mapping: both said, not answered
    silently. gpt2 at 4,096 tokens per slot is past its 1,024 n_positions (llama.cpp's own
    n_ctx_train overflow warning). Llama-3.1-8B at 8k says none of these."""
    nemotron = api.plan("nvidia/Nemotron-H-56B-Base-8K", "h100", engine="llama.cpp", dtype="q4_k_m")
    assert any("recurrent (SSM) layers" in w for w in nemotron.warnings)
    assert any("model_type 'nemotron_h' is not modelled" in w for w in nemotron.warnings)
    gpt2 = api.plan("openai-community/gpt2", "l40s", engine="llama.cpp", ctx=4096)
    assert any("(4,096) is past the model's training length (1,024)" in w for w in gpt2.warnings)
    llama = api.plan("meta-llama/Llama-3.1-8B", "rtx-4090", engine="llama.cpp", dtype="q4_k_m", ctx="8k")
    assert not any("not modelled" in w or "recurrent" in w or "training length" in w for w in llama.warnings)
