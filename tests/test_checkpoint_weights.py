"""Weights from the checkpoint itself (issue #12, item 1): `vramplan fit DIR` on small safetensors
files written by the `safetensors` package reports the weights as the checkpoint stores them.

The oracles are the files themselves: every tensor's bytes as torch counts them
(numel x element_size), and the data section of each file (its size minus the 8-byte length and
the header), which safetensors writes to cover every tensor exactly. On the GPU each tensor is
its own allocation, rounded up to PyTorch's 512-byte block (methodology §5), so the plan's
weights component is the sum of each stored tensor's bytes rounded to 512."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import huggingface_hub
from huggingface_hub.utils._safetensors import SafetensorsFileMetadata, SafetensorsRepoMetadata, TensorInfo

from vramplan import api
from vramplan.cli import app
from vramplan.loading import load_model
from vramplan.models import checkpoint as ckpt_model
from vramplan.sources import safetensors as st_source
from vramplan.spec.checkpoint import DTYPE_BITS, tensor_bytes
from tests.bad_input.contract import assert_cli_refuses

runner = CliRunner()
H, I, V, KV, LAYERS = 64, 128, 256, 32, 2          # tiny Llama: 4 heads of 16, 2 KV heads


def block(n: int) -> int:
    """PyTorch's caching allocator hands out multiples of 512 bytes (methodology §5)."""
    return -(-n // 512) * 512


# vLLM keeps the rotary cos_sin_cache buffer, [max_position, head_dim] in bf16, among the weights
# of every rank (engines/vllm/serving.py, rope_cache_bytes): 8,192 x (H / 4 heads) x 2 B.
ROPE = 8192 * (H // 4) * 2


def config(**over) -> dict:
    c = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H,
         "intermediate_size": I, "num_attention_heads": 4, "num_key_value_heads": 2,
         "num_hidden_layers": LAYERS, "vocab_size": V, "max_position_embeddings": 8192,
         "torch_dtype": "bfloat16", "tie_word_embeddings": False, "rms_norm_eps": 1e-5}
    c.update(over)
    return c


def llama_tensors(dtype=torch.bfloat16, tied=False, norm_dtype=None, inter=I) -> dict[str, torch.Tensor]:
    z = lambda *s, d=dtype: torch.zeros(s, dtype=d)     # noqa: E731
    nd = norm_dtype or dtype
    t = {"model.embed_tokens.weight": z(V, H), "model.norm.weight": z(H, d=nd)}
    if not tied:
        t["lm_head.weight"] = z(V, H)
    for l in range(LAYERS):
        p = f"model.layers.{l}."
        t |= {p + "self_attn.q_proj.weight": z(H, H), p + "self_attn.k_proj.weight": z(KV, H),
              p + "self_attn.v_proj.weight": z(KV, H), p + "self_attn.o_proj.weight": z(H, H),
              p + "mlp.gate_proj.weight": z(inter, H), p + "mlp.up_proj.weight": z(inter, H),
              p + "mlp.down_proj.weight": z(H, inter),
              p + "input_layernorm.weight": z(H, d=nd), p + "post_attention_layernorm.weight": z(H, d=nd)}
    return t


def write(directory: Path, cfg: dict, tensors: dict, shards: int = 1) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(cfg))
    if shards == 1:
        save_file(tensors, str(directory / "model.safetensors"))
        return directory
    names, weight_map = sorted(tensors), {}
    for k in range(shards):
        file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[k::shards]}
        save_file(part, str(directory / file))
        weight_map |= {n: file for n in part}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return directory


def nbytes(tensors: dict) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def data_section(directory: Path) -> int:
    """Bytes after the header in every safetensors file: what the files themselves say they hold."""
    total = 0
    for f in directory.glob("*.safetensors"):
        raw = f.read_bytes()[:8]
        total += f.stat().st_size - 8 - struct.unpack("<Q", raw)[0]
    return total


def fit_json(*argv: str, code: int | None = None, env: dict | None = None) -> dict:
    r = runner.invoke(app, ["fit", *argv, "--json"], env={"HF_HUB_OFFLINE": "1", **(env or {})})
    assert r.exit_code in ((0, 1) if code is None else (code,)), (r.exit_code, r.stderr, r.exception)
    return json.loads(r.stdout)


# ------------------------------------------------------------------ local directories

def test_single_file_bytes_exact(tmp_path):
    t = llama_tensors()
    d = write(tmp_path / "m", config(), t)
    out = fit_json(str(d), "--gpu", "l40s")
    m = out["model"]
    assert m["weights_from"] == "checkpoint"
    assert m["weights_source"] == "1 safetensors file, headers read"
    assert m["checkpoint_bytes"] == nbytes(t) == data_section(d) == 213_632
    assert out["components"]["weights"] == sum(block(x.numel() * 2) for x in t.values()) + ROPE
    # the config reads the same tensors, so the two agree and nothing is warned
    assert not any("checkpoint holds" in w for w in out["warnings"])
    assert m["params"] == sum(x.numel() for x in t.values())


def test_config_reading_on_request(tmp_path):
    d = write(tmp_path / "m", config(), llama_tensors())
    out = fit_json(str(d), "--gpu", "l40s", "--weights-from", "config")
    assert out["model"]["weights_from"] == "config" and out["model"]["checkpoint_bytes"] == 0
    same = fit_json(str(d), "--gpu", "l40s")
    assert same["components"]["weights"] == out["components"]["weights"]      # bf16 both ways


def test_sharded_with_index(tmp_path):
    t = llama_tensors()
    d = write(tmp_path / "m", config(), t, shards=3)
    out = fit_json(str(d), "--gpu", "l40s")
    assert out["model"]["weights_source"] == "3 safetensors files, headers read"
    assert out["model"]["checkpoint_bytes"] == nbytes(t) == data_section(d)
    assert out["components"]["weights"] == sum(block(x.numel() * 2) for x in t.values()) + ROPE


def test_only_headers_are_read(tmp_path):
    t = llama_tensors()
    d = write(tmp_path / "m", config(), t)
    ck = st_source.read_local(d)
    length = struct.unpack("<Q", (d / "model.safetensors").read_bytes()[:8])[0]
    assert ck.header_bytes == 8 + length < nbytes(t) / 20
    assert {s.name for s in ck.tensors} == set(t)
    assert all(s.nbytes == t[s.name].numel() * t[s.name].element_size() for s in ck.tensors)


def test_tied_embeddings_counted_once(tmp_path):
    t = llama_tensors(tied=True)
    d = write(tmp_path / "m", config(tie_word_embeddings=True), t)
    out = fit_json(str(d), "--gpu", "l40s")
    assert out["model"]["checkpoint_bytes"] == nbytes(t)
    assert out["components"]["weights"] == sum(block(x.numel() * 2) for x in t.values()) + ROPE
    # a tied checkpoint that stores lm_head anyway: stored bytes include it, the weights do not
    t2 = llama_tensors(tied=False)
    d2 = write(tmp_path / "m2", config(tie_word_embeddings=True), t2)
    out2 = fit_json(str(d2), "--gpu", "l40s")
    assert out2["model"]["checkpoint_bytes"] == nbytes(t2) == nbytes(t) + V * H * 2
    assert out2["components"]["weights"] == out["components"]["weights"]
    assert any("lm_head" in n and "once" in n for n in out2["model"]["weights_notes"])


def test_mixed_dtypes(tmp_path):
    """A bf16 model whose norms are stored in fp32: the checkpoint's bytes are exact as stored;
    loaded, vLLM copies each norm into a bf16 parameter (default_weight_loader), so a norm of H
    values takes 2 H bytes on the GPU."""
    t = llama_tensors(norm_dtype=torch.float32)
    d = write(tmp_path / "m", config(), t)
    out = fit_json(str(d), "--gpu", "l40s")
    norms = [x for n, x in t.items() if "norm" in n]
    assert out["model"]["checkpoint_bytes"] == nbytes(t) == data_section(d)
    assert nbytes(t) == sum(x.numel() * 2 for x in t.values()) + sum(x.numel() * 2 for x in norms)
    assert out["components"]["weights"] == sum(block(x.numel() * 2) for x in t.values()) + ROPE


def _gptq(tmp_path, group=32, bits=4) -> tuple[Path, dict]:
    """AutoGPTQ's layout (vLLM gptq.py create_weights): qweight int32 [in*bits/32, out], qzeros
    int32 [in/group, out*bits/32], scales fp16 [in/group, out], g_idx int32 [in]."""
    t = {k: v.to(torch.float16) for k, v in llama_tensors().items()
         if not any(s in k for s in ("proj",))}
    for l in range(LAYERS):
        for name, out_f, in_f in (("self_attn.q_proj", H, H), ("self_attn.k_proj", KV, H), ("self_attn.v_proj", KV, H),
                                  ("self_attn.o_proj", H, H), ("mlp.gate_proj", I, H), ("mlp.up_proj", I, H),
                                  ("mlp.down_proj", H, I)):
            p = f"model.layers.{l}.{name}."
            t[p + "qweight"] = torch.zeros(in_f * bits // 32, out_f, dtype=torch.int32)
            t[p + "qzeros"] = torch.zeros(in_f // group, out_f * bits // 32, dtype=torch.int32)
            t[p + "scales"] = torch.zeros(in_f // group, out_f, dtype=torch.float16)
            t[p + "g_idx"] = torch.zeros(in_f, dtype=torch.int32)
    cfg = config(torch_dtype="float16", quantization_config={"quant_method": "gptq", "bits": bits,
                                                             "group_size": group, "desc_act": False})
    return write(tmp_path / "gptq", cfg, t), t


def test_gptq_as_stored_and_formula_agree(tmp_path):
    d, t = _gptq(tmp_path)
    out = fit_json(str(d), "--gpu", "l40s")
    assert out["model"]["checkpoint_bytes"] == nbytes(t) == data_section(d)
    assert out["components"]["weights"] == sum(block(x.numel() * x.element_size()) for x in t.values()) + ROPE
    # the formula of memory/weights.py (GPTQ parts) gives the same bytes from the config alone
    formula = fit_json(str(d), "--gpu", "l40s", "--weights-from", "config")
    assert formula["components"]["weights"] == out["components"]["weights"]
    # packed params: qweight holds 8 four-bit values per int32, so the parameters agree too
    assert not any("checkpoint holds" in w for w in out["warnings"])


def test_fp8_block_scales(tmp_path):
    """DeepSeek-V3's layout: fp8 e4m3 weights, one fp32 weight_scale_inv per 128x128 block."""
    t = {k: v for k, v in llama_tensors().items() if "proj" not in k}
    for l in range(LAYERS):
        for name, out_f, in_f in (("self_attn.q_proj", H, H), ("self_attn.k_proj", KV, H), ("self_attn.v_proj", KV, H),
                                  ("self_attn.o_proj", H, H), ("mlp.gate_proj", I, H), ("mlp.up_proj", I, H),
                                  ("mlp.down_proj", H, I)):
            p = f"model.layers.{l}.{name}."
            t[p + "weight"] = torch.zeros(out_f, in_f, dtype=torch.float8_e4m3fn)
            t[p + "weight_scale_inv"] = torch.zeros(-(-out_f // 128), -(-in_f // 128), dtype=torch.float32)
    cfg = config(quantization_config={"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                      "weight_block_size": [128, 128]})
    d = write(tmp_path / "fp8", cfg, t)
    out = fit_json(str(d), "--gpu", "h100")
    assert out["model"]["checkpoint_bytes"] == nbytes(t) == data_section(d)
    assert out["components"]["weights"] == sum(block(x.numel() * x.element_size()) for x in t.values()) + ROPE
    formula = fit_json(str(d), "--gpu", "h100", "--weights-from", "config")
    assert formula["components"]["weights"] == out["components"]["weights"]


def test_on_the_fly_quantization_uses_the_formula(tmp_path):
    """--dtype fp8 on a bf16 checkpoint is vLLM's online quantization: the formula on the
    checkpoint's shapes, the same as from the config when the shapes agree."""
    d = write(tmp_path / "m", config(), llama_tensors())
    a = fit_json(str(d), "--gpu", "h100", "--dtype", "fp8")
    b = fit_json(str(d), "--gpu", "h100", "--dtype", "fp8", "--weights-from", "config")
    assert a["model"]["weights_from"] == "checkpoint"
    assert a["components"]["weights"] == b["components"]["weights"]
    assert a["components"]["weights"] < fit_json(str(d), "--gpu", "h100")["components"]["weights"]


def test_checkpoint_disagrees_with_config(tmp_path):
    """The config says intermediate_size 256, the checkpoint holds 128-wide MLPs: the checkpoint's
    shapes and bytes are used, and a warning says so."""
    t = llama_tensors()
    d = write(tmp_path / "m", config(intermediate_size=2 * I), t)
    out = fit_json(str(d), "--gpu", "l40s")
    assert out["components"]["weights"] == sum(block(x.numel() * 2) for x in t.values()) + ROPE
    warning = next(w for w in out["warnings"] if "checkpoint holds" in w)
    assert "the config reading gave" in warning and "the checkpoint's figures are used" in warning


def test_unknown_tensor_placed_by_layer_and_replicated(tmp_path):
    t = llama_tensors()
    extra = {"model.layers.1.mlp.mystery_mixer.weight": torch.zeros(H, 256, dtype=torch.bfloat16)}
    base = write(tmp_path / "a", config(), t)
    more = write(tmp_path / "b", config(), {**t, **extra})
    one = fit_json(str(more), "--gpu", "l40s")
    assert any("counted whole on every tensor-parallel rank" in n and "mystery_mixer" in n
               for n in one["model"]["weights_notes"])
    assert one["components"]["weights"] - fit_json(str(base), "--gpu", "l40s")["components"]["weights"] \
        == block(H * 256 * 2)
    # tensor parallel over 2: the unknown tensor is whole on each rank
    two_a = fit_json(str(base), "--gpu", "l40s:2")["components"]["weights"]
    two_b = fit_json(str(more), "--gpu", "l40s:2")["components"]["weights"]
    assert two_b - two_a == block(H * 256 * 2)
    # pipeline parallel over 2: it sits on the second stage with layer 1 (the plan's worst stage may
    # be either; the per-stage split is checked through the spec)
    s = load_model(str(more), "checkpoint")
    assert any(x.name.endswith("mystery_mixer") for x in s.layers[1].tensors)
    assert not any(x.name.endswith("mystery_mixer") for x in s.layers[0].tensors)


def test_api_keyword(tmp_path):
    t = llama_tensors()
    d = write(tmp_path / "m", config(), t)
    p = api.plan(str(d), "l40s", weights_from="checkpoint")
    assert p.model.weights_from == "checkpoint" and p.model.weights_exact
    assert p.model.checkpoint_bytes == nbytes(t)
    assert api.plan(str(d), "l40s", weights_from="config").model.weights_exact is False


def test_text_table_says_where_weights_came_from(tmp_path):
    d = write(tmp_path / "m", config(), llama_tensors())
    r = runner.invoke(app, ["fit", str(d), "--gpu", "l40s"], env={"HF_HUB_OFFLINE": "1"})
    assert "weights   from the checkpoint: 1 safetensors file, headers read, 213,632 bytes as stored" in r.stdout


def test_directory_without_safetensors(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config()))
    assert fit_json(str(d), "--gpu", "l40s")["model"]["weights_from"] == "config"     # auto: the config
    assert_cli_refuses(["fit", str(d), "--gpu", "l40s", "--weights-from", "checkpoint"], 2, "no *.safetensors")


# ------------------------------------------------------------------ names, dtypes, quantized layouts

def test_every_safetensors_dtype():
    """Bits per element: the format's Dtype enum (safetensors/src/tensor.rs). F4 packs two values a
    byte, F6 four values in three bytes; a count of F4 values that is not whole bytes is refused."""
    assert len(DTYPE_BITS) == 22
    assert tensor_bytes("F64", (3, 2)) == 48 and tensor_bytes("BOOL", (5,)) == 5
    assert tensor_bytes("F8_E4M3", (7,)) == 7 and tensor_bytes("F8_E8M0", (4, 2)) == 8
    assert tensor_bytes("BF16", (3,)) == 6 and tensor_bytes("I64", (2,)) == 16 and tensor_bytes("C64", (1,)) == 8
    assert tensor_bytes("F4", (2, 3)) == 3 and tensor_bytes("F6_E2M3", (4,)) == 3
    assert tensor_bytes("F4", (3,)) is None
    header = {"__metadata__": {"format": "pt"}}
    offset = 0
    for dtype in DTYPE_BITS:
        n = tensor_bytes(dtype, (8,))
        header[f"t.{dtype}"] = {"dtype": dtype, "shape": [8], "data_offsets": [offset, offset + n]}
        offset += n
    got = st_source.parse_header(json.dumps(header).encode(), "x.safetensors", offset)
    assert sum(t.nbytes for t in got) == offset == 8 * sum(DTYPE_BITS.values()) // 8


@pytest.mark.parametrize("name,module", [
    ("model.layers.0.self_attn.q_proj.qweight", "model.layers.0.self_attn.q_proj"),
    ("model.layers.0.self_attn.q_proj.g_idx", "model.layers.0.self_attn.q_proj"),
    ("model.layers.0.mlp.down_proj.weight_scale_inv", "model.layers.0.mlp.down_proj"),
    ("model.layers.0.mlp.down_proj.weight.quant_state.bitsandbytes__nf4", "model.layers.0.mlp.down_proj"),
    ("model.layers.0.mlp.down_proj.weight.nested_absmax", "model.layers.0.mlp.down_proj"),
    ("model.layers.3.mlp.experts.gate_up_proj_blocks", "model.layers.3.mlp.experts.gate_up_proj"),
    ("model.layers.3.mlp.experts.gate_up_proj_bias", "model.layers.3.mlp.experts.gate_up_proj_bias"),
    ("model.layers.0.self_attn.q_proj.bias", "model.layers.0.self_attn.q_proj.bias"),
])
def test_module_of(name, module):
    assert ckpt_model.module_of(name) == module


def test_wrappers_compared_away():
    """transformers 5 names Gemma 3's text stack model.language_model.layers, its 4.x checkpoints
    language_model.model.layers: both compare as layers.N."""
    assert ckpt_model.canonical("model.language_model.layers.0.mlp.up_proj") == "layers.0.mlp.up_proj"
    assert ckpt_model.canonical("language_model.model.layers.0.mlp.up_proj") == "layers.0.mlp.up_proj"
    assert ckpt_model.canonical("model.vision_tower.x") == "vision_tower.x"


def test_bnb_4bit_stored_layout(tmp_path):
    """A pre-quantized bitsandbytes NF4 checkpoint (transformers' serialization): uint8 packed
    weight [numel/2, 1] and its quant state (absmax, quant_map, nested_absmax, nested_quant_map,
    quant_state blob), each counted as stored."""
    t = {k: v for k, v in llama_tensors().items() if "proj" not in k}
    for l in range(LAYERS):
        for name, out_f, in_f in (("self_attn.q_proj", H, H), ("self_attn.k_proj", KV, H), ("self_attn.v_proj", KV, H),
                                  ("self_attn.o_proj", H, H), ("mlp.gate_proj", I, H), ("mlp.up_proj", I, H),
                                  ("mlp.down_proj", H, I)):
            p = f"model.layers.{l}.{name}.weight"
            numel = out_f * in_f
            t[p] = torch.zeros(numel // 2, 1, dtype=torch.uint8)
            t[p + ".absmax"] = torch.zeros(numel // 64, dtype=torch.uint8)
            t[p + ".quant_map"] = torch.zeros(16, dtype=torch.float32)
            t[p + ".nested_absmax"] = torch.zeros(-(-numel // 64 // 256), dtype=torch.float32)
            t[p + ".nested_quant_map"] = torch.zeros(256, dtype=torch.float32)
            t[p + ".quant_state.bitsandbytes__nf4"] = torch.zeros(120, dtype=torch.uint8)
    cfg = config(quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True,
                                      "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True})
    d = write(tmp_path / "bnb", cfg, t)
    out = fit_json(str(d), "--gpu", "l40s", "--mode", "infer")
    assert out["model"]["checkpoint_bytes"] == nbytes(t) == data_section(d)
    assert out["components"]["weights"] == sum(block(x.numel() * x.element_size()) for x in t.values()) + block(4 * 256)
    assert not any("checkpoint holds" in w for w in out["warnings"])


# ------------------------------------------------------------------ the Hub (a fake huggingface_hub)

def _hub_metadata(spec, files: int = 2) -> SafetensorsRepoMetadata:
    """The metadata get_safetensors_metadata returns for a bf16 checkpoint holding `spec`'s tensors."""
    per_file: list[dict] = [{} for _ in range(files)]
    offsets = [0] * files
    weight_map = {}
    for i, t in enumerate(spec.all_tensors()):
        k = i % files
        name = t.name if t.role == "bias" or t.name.endswith("bias") else t.name + ".weight"
        n = 2 * t.numel
        per_file[k][name] = TensorInfo(dtype="BF16", shape=list(t.shape), data_offsets=(offsets[k], offsets[k] + n))
        offsets[k] += n
        weight_map[name] = f"model-{k + 1:05d}-of-{files:05d}.safetensors"
    fm = {f"model-{k + 1:05d}-of-{files:05d}.safetensors": SafetensorsFileMetadata(metadata={}, tensors=per_file[k])
          for k in range(files)}
    return SafetensorsRepoMetadata(metadata={}, sharded=True, weight_map=weight_map, files_metadata=fm)


MODEL = "meta-llama/Llama-3.2-1B-Instruct"


def test_hub_checkpoint(monkeypatch):
    spec = load_model(MODEL)
    calls = []

    def fake(repo_id, **kw):
        calls.append(repo_id)
        return _hub_metadata(spec)

    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata", fake)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    out = fit_json(MODEL, "--gpu", "l40s", "--weights-from", "checkpoint", env={"HF_HUB_OFFLINE": ""})
    assert calls == [MODEL]
    m = out["model"]
    assert m["weights_from"] == "checkpoint"
    assert m["weights_source"] == "2 safetensors files on the Hub, metadata read"
    assert m["checkpoint_bytes"] == 2 * spec.params
    # the same tensors as the config reading, so the same bytes on the GPU
    config = fit_json(MODEL, "--gpu", "l40s", "--weights-from", "config")
    assert out["components"]["weights"] == config["components"]["weights"]
    assert out["warnings"] == config["warnings"]
    # auto: a bundled config plans offline, the Hub is not asked
    calls.clear()
    assert fit_json(MODEL, "--gpu", "l40s", env={"HF_HUB_OFFLINE": ""})["model"]["weights_from"] == "config"
    assert calls == []


def test_hub_offline_or_unreachable(monkeypatch):
    def unreachable(repo_id, **kw):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata", unreachable)
    msg = assert_cli_refuses(["fit", MODEL, "--gpu", "l40s", "--weights-from", "checkpoint"], 3, "HF_HUB_OFFLINE")
    assert "--weights-from config" in msg
    assert_cli_refuses(["fit", MODEL, "--gpu", "l40s", "--weights-from", "checkpoint"], 3, "from the Hub",
                       env={"HF_HUB_OFFLINE": ""})


def test_hub_config_falls_back_to_config_when_auto(monkeypatch, tmp_path):
    """A config fetched from the Hub (faked), whose safetensors metadata cannot be read: auto
    plans from the config and says why in a note; checkpoint refuses with exit 3."""
    from vramplan.sources import hub
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(config()))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.setattr(hub, "fetch", lambda model: (cfg, f"https://huggingface.co/{model}/resolve/main/config.json"))

    def refused(repo_id, **kw):
        raise huggingface_hub.errors.GatedRepoError("401 gated", response=None)

    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata", refused)
    out = fit_json("someorg/tiny-llama", "--gpu", "l40s", env={"HF_HUB_OFFLINE": ""})
    assert out["model"]["source"] == "hub" and out["model"]["weights_from"] == "config"
    assert any("could not be read" in n for n in out["model"]["weights_notes"])
    assert_cli_refuses(["fit", "someorg/tiny-llama", "--gpu", "l40s", "--weights-from", "checkpoint"], 3,
                       "HF_TOKEN", env={"HF_HUB_OFFLINE": ""})
    t = llama_tensors()
    d = write(tmp_path / "ref", config(), t)
    meta = st_source.read_local(d)        # the same tensors, served by the fake Hub

    def served(repo_id, **kw):
        infos = {s.name: TensorInfo(dtype=s.dtype, shape=list(s.shape), data_offsets=(0, s.nbytes)) for s in meta.tensors}
        return SafetensorsRepoMetadata(metadata=None, sharded=False, weight_map={n: "model.safetensors" for n in infos},
                                       files_metadata={"model.safetensors": SafetensorsFileMetadata(metadata={}, tensors=infos)})

    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata", served)
    out = fit_json("someorg/tiny-llama", "--gpu", "l40s", env={"HF_HUB_OFFLINE": ""})
    assert out["model"]["weights_from"] == "checkpoint" and out["model"]["checkpoint_bytes"] == nbytes(t)


# ------------------------------------------------------------------ refusals

def _raw_file(d: Path, raw: bytes, cfg: dict | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg or config()))
    (d / "model.safetensors").write_bytes(raw)
    return d


def _header(obj, pad: bytes = b"") -> bytes:
    body = json.dumps(obj).encode()
    return struct.pack("<Q", len(body)) + body + pad


@pytest.mark.parametrize("raw,needle", [
    (b"\x05\x00\x00", "too short"),                                             # truncated length
    (struct.pack("<Q", 4096) + b"{}", "only 10 bytes long"),                   # header past the file
    (struct.pack("<Q", 100 * 2**20 + 1) + b"{" * 64, "100 MiB cap"),           # a faked huge length
    (struct.pack("<Q", 5) + b"hello", "not JSON"),
    (_header({"w": {"dtype": "F12", "shape": [2], "data_offsets": [0, 3]}}, b"\0" * 3), "F12"),
    (_header({"w": {"dtype": "F16", "shape": [4], "data_offsets": [0, 8]}}, b"\0" * 3), "truncated"),
    (_header({"w": {"dtype": "F16", "shape": [4], "data_offsets": [0, 6]}}, b"\0" * 6), "not the 8"),
    (_header([1, 2]), "not an object"),
])
def test_malformed_files_refused(tmp_path, raw, needle):
    d = _raw_file(tmp_path / "m", raw)
    msg = assert_cli_refuses(["fit", str(d), "--gpu", "l40s"], 2, needle)
    assert "model.safetensors" in msg


def test_index_names_a_missing_shard(tmp_path):
    d = write(tmp_path / "m", config(), llama_tensors(), shards=2)
    (d / "model-00002-of-00002.safetensors").unlink()
    assert_cli_refuses(["fit", str(d), "--gpu", "l40s"], 2, "model-00002-of-00002.safetensors")


def test_index_out_of_its_directory(tmp_path):
    d = write(tmp_path / "m", config(), llama_tensors(), shards=2)
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "../elsewhere.safetensors"}}))
    assert_cli_refuses(["fit", str(d), "--gpu", "l40s"], 2, "not a file name in its directory")


def test_bad_weights_from_value(tmp_path):
    assert_cli_refuses(["fit", MODEL, "--gpu", "l40s", "--weights-from", "disk"], 2, "--weights-from")
    assert_cli_refuses(["fit", MODEL, "--gpu", "l40s", "--weights-from", "checkpoint", "--method", "trace"], 2,
                       "--method analytic")


def test_mxfp4_gpt_oss_layout(tmp_path):
    """gpt-oss stores its experts as MXFP4: "<name>_blocks" (uint8 [E, rows, cols/32, 16], two FP4
    values a byte) and "<name>_scales" (uint8 E8M0 [E, rows, cols/32]); biases, router and
    attention in bf16 (transformers integrations/mxfp4.py). Read as stored, the bytes equal the
    checkpoint's and the MXFP4 formula of memory/weights.py gives the same."""
    root = Path(__file__).resolve().parents[1]
    cfg = json.loads((root / "configs/models/openai--gpt-oss-20b.json").read_text())
    E, Hd, Ix, heads, kvh, hd = 4, 64, 64, 4, 2, 16
    cfg |= {"hidden_size": Hd, "intermediate_size": Ix, "num_attention_heads": heads, "num_key_value_heads": kvh,
            "head_dim": hd, "num_hidden_layers": 2, "layer_types": ["sliding_attention", "full_attention"],
            "num_local_experts": E, "experts_per_token": 2, "num_experts_per_tok": 2, "vocab_size": V,
            "torch_dtype": "bfloat16"}
    bf = lambda *s: torch.zeros(s, dtype=torch.bfloat16)     # noqa: E731
    u8 = lambda *s: torch.zeros(s, dtype=torch.uint8)        # noqa: E731
    t = {"model.embed_tokens.weight": bf(V, Hd), "model.norm.weight": bf(Hd), "lm_head.weight": bf(V, Hd)}
    for l in range(2):
        p = f"model.layers.{l}."
        t |= {p + "input_layernorm.weight": bf(Hd), p + "post_attention_layernorm.weight": bf(Hd),
              p + "self_attn.q_proj.weight": bf(heads * hd, Hd), p + "self_attn.q_proj.bias": bf(heads * hd),
              p + "self_attn.k_proj.weight": bf(kvh * hd, Hd), p + "self_attn.k_proj.bias": bf(kvh * hd),
              p + "self_attn.v_proj.weight": bf(kvh * hd, Hd), p + "self_attn.v_proj.bias": bf(kvh * hd),
              p + "self_attn.o_proj.weight": bf(Hd, heads * hd), p + "self_attn.o_proj.bias": bf(Hd),
              p + "self_attn.sinks": bf(heads),
              p + "mlp.router.weight": bf(E, Hd), p + "mlp.router.bias": bf(E),
              p + "mlp.experts.gate_up_proj_blocks": u8(E, 2 * Ix, Hd // 32, 16),
              p + "mlp.experts.gate_up_proj_scales": u8(E, 2 * Ix, Hd // 32),
              p + "mlp.experts.gate_up_proj_bias": bf(E, 2 * Ix),
              p + "mlp.experts.down_proj_blocks": u8(E, Hd, Ix // 32, 16),
              p + "mlp.experts.down_proj_scales": u8(E, Hd, Ix // 32),
              p + "mlp.experts.down_proj_bias": bf(E, Hd)}
    d = write(tmp_path / "oss", cfg, t)
    out = fit_json(str(d), "--gpu", "h100", "--mode", "infer")
    assert out["model"]["checkpoint_bytes"] == nbytes(t) == data_section(d)
    assert out["components"]["weights"] == sum(block(x.numel() * x.element_size()) for x in t.values())
    assert out["model"]["weights_notes"] == [] and not any("checkpoint holds" in w for w in out["warnings"])
    for mode in ("infer", "serve"):
        a = fit_json(str(d), "--gpu", "h100", "--mode", mode)["components"]["weights"]
        b = fit_json(str(d), "--gpu", "h100", "--mode", mode, "--weights-from", "config")["components"]["weights"]
        assert a == b, mode


def test_mixtral_per_expert_names_split_like_the_config(tmp_path):
    """Mixtral's checkpoint names each expert (block_sparse_moe.experts.N.w1/w2/w3) where
    transformers 5 fuses them (mlp.experts.gate_up_proj): the names differ, so the experts are
    placed by their names (w1/w3 column-parallel, w2 row-parallel, the gate replicated, as vLLM's
    FusedMoE and ReplicatedLinear lay them). Every tensor is a multiple of 512 bytes, so the
    per-GPU weights equal the config reading's at tp 1 and tp 2."""
    E = 4
    cfg = config(architectures=["MixtralForCausalLM"], model_type="mixtral", num_local_experts=E,
                 num_experts_per_tok=2)
    bf = lambda *s: torch.zeros(s, dtype=torch.bfloat16)     # noqa: E731
    t = {k: v for k, v in llama_tensors().items() if "mlp" not in k}
    for l in range(LAYERS):
        p = f"model.layers.{l}.block_sparse_moe."
        t[p + "gate.weight"] = bf(E, H)
        for e in range(E):
            t |= {f"{p}experts.{e}.w1.weight": bf(I, H), f"{p}experts.{e}.w3.weight": bf(I, H),
                  f"{p}experts.{e}.w2.weight": bf(H, I)}
    d = write(tmp_path / "mixtral", cfg, t)
    for gpu in ("l40s", "l40s:2"):
        a = fit_json(str(d), "--gpu", gpu)
        b = fit_json(str(d), "--gpu", gpu, "--weights-from", "config")
        assert a["components"]["weights"] == b["components"]["weights"], gpu
        assert not any("checkpoint holds" in w for w in a["warnings"])
    notes = a["model"]["weights_notes"]
    assert any("placed by their names" in n for n in notes) and not any("counted whole" in n for n in notes)


def test_vision_language_checkpoint_names(monkeypatch):
    """Gemma 3's checkpoints (transformers 4.5x) name the text stack language_model.model.* and the
    tower vision_tower.*; transformers 5 reads them as model.language_model.* and
    model.vision_tower.*. Served from a fake Hub under the 4.x names, every tensor is matched."""
    gemma = "google/gemma-3-4b-it"
    spec = load_model(gemma)

    def old_name(n: str) -> str:
        for new, old in (("model.language_model.", "language_model.model."), ("model.vision_tower.", "vision_tower."),
                         ("model.multi_modal_projector.", "multi_modal_projector.")):
            if n.startswith(new):
                return old + n[len(new):]
        return n

    meta = _hub_metadata(spec, files=1)
    files = {f: SafetensorsFileMetadata(metadata={}, tensors={old_name(n): i for n, i in fm.tensors.items()})
             for f, fm in meta.files_metadata.items()}
    renamed = SafetensorsRepoMetadata(metadata={}, sharded=False, weight_map={}, files_metadata=files)
    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata", lambda repo_id, **kw: renamed)
    a = fit_json(gemma, "--gpu", "h100", "--weights-from", "checkpoint", env={"HF_HUB_OFFLINE": ""})
    b = fit_json(gemma, "--gpu", "h100", "--weights-from", "config")
    assert a["model"]["weights_notes"] == []
    assert a["model"]["checkpoint_bytes"] == 2 * spec.params
    assert a["components"]["weights"] == b["components"]["weights"]


@pytest.mark.parametrize("model_type,extra", [
    ("llama", {}), ("qwen2", {"tie_word_embeddings": True}), ("gpt2", None),
    ("mixtral", {"num_local_experts": 4, "num_experts_per_tok": 2}), ("phi", {}), ("biogpt", {}),
])
def test_checkpoints_written_by_transformers(tmp_path, model_type, extra):
    """Tiny models built by transformers and saved with save_pretrained (its own names, tying and
    legacy expert layout): the checkpoint's bytes are the model's parameters' bytes as torch counts
    them (the oracle). Phi is read exactly by the generic reader (its parallel block and plain MLP),
    so the two agree; BioGPT has no layout of its own and is read with llama's (approximate): the
    reading counts it wrong, and the cross-check says so with the transformers count."""
    transformers = pytest.importorskip("transformers")
    kw = (dict(n_embd=64, n_layer=2, n_head=4, vocab_size=V, n_positions=1024) if extra is None else
          dict(hidden_size=H, intermediate_size=I, num_attention_heads=4, num_key_value_heads=2,
               num_hidden_layers=LAYERS, vocab_size=V, max_position_embeddings=2048, **extra))
    cfg = transformers.AutoConfig.for_model(model_type, **kw)
    cfg.dtype = "bfloat16"
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(str(tmp_path / model_type))
    params = sum(p.numel() for p in model.parameters())
    # the analytic reading (--layers-from analytic): with transformers installed, auto would derive
    # BioGPT's layers from transformers itself, exactly (tests/test_derive.py)
    out = fit_json(str(tmp_path / model_type), "--gpu", "l40s", "--layers-from", "analytic")
    assert out["model"]["weights_from"] == "checkpoint"
    assert out["model"]["checkpoint_bytes"] == 2 * params == data_section(tmp_path / model_type)
    assert out["model"]["params"] == params
    mismatch = [w for w in out["warnings"] if "checkpoint holds" in w]
    if model_type == "biogpt":
        config_params = fit_json(str(tmp_path / model_type), "--gpu", "l40s", "--weights-from", "config",
                                 "--layers-from", "analytic")["model"]["params"]
        assert config_params != params
        assert mismatch == [f"the checkpoint holds {params:,} parameters; the config reading gave {config_params:,}: "
                            "the checkpoint's figures are used."]
    else:
        assert mismatch == []


def test_adapter_and_consolidated_files_are_not_the_model(tmp_path):
    """Without an index or model.safetensors, the directory's *.safetensors files are the model,
    less a PEFT adapter_model.safetensors and Mistral's own-format consolidated.safetensors beside
    transformers-format files."""
    t = llama_tensors()
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config()))
    names = sorted(t)
    save_file({n: t[n] for n in names[::2]}, str(d / "part-a.safetensors"))
    save_file({n: t[n] for n in names[1::2]}, str(d / "part-b.safetensors"))
    save_file({"base_model.model.x.lora_A.weight": torch.zeros(8, H)}, str(d / "adapter_model.safetensors"))
    save_file({"layers.0.attention.wq.weight": torch.zeros(H, H)}, str(d / "consolidated.safetensors"))
    out = fit_json(str(d), "--gpu", "l40s")
    assert out["model"]["weights_source"] == "2 safetensors files, headers read"
    assert out["model"]["checkpoint_bytes"] == nbytes(t)


def test_notes_in_the_table(tmp_path):
    t = {**llama_tensors(), "model.layers.0.mystery.weight": torch.zeros(4, 4, dtype=torch.bfloat16)}
    d = write(tmp_path / "m", config(), t)
    r = runner.invoke(app, ["fit", str(d), "--gpu", "l40s"], env={"HF_HUB_OFFLINE": "1"})
    assert ("\n          1 checkpoint tensors of unknown kind are counted whole on every tensor-parallel rank "
            "(first: model.layers.0.mystery)\n") in r.stdout


def test_hf_cache_snapshot(tmp_path, monkeypatch):
    """A config found in the HF cache: auto reads a complete checkpoint cached beside it (blobs
    behind snapshot symlinks, as huggingface_hub lays them out), and plans from the config, with a
    note, when a shard is missing; checkpoint then asks the Hub (offline here: exit 3)."""
    sha = "a" * 40
    repo = tmp_path / "hub" / "models--someorg--cached-llama"
    snap = repo / "snapshots" / sha
    write(tmp_path / "src", config(), llama_tensors(), shards=2)
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in (tmp_path / "src").iterdir():
        (repo / "blobs" / f.name).write_bytes(f.read_bytes())
        (snap / f.name).symlink_to(Path("..", "..", "blobs", f.name))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    env = {"HF_HUB_CACHE": str(tmp_path / "hub")}
    out = fit_json("someorg/cached-llama", "--gpu", "l40s", env=env)
    assert out["model"]["source"] == "hf-cache" and out["model"]["weights_from"] == "checkpoint"
    assert out["model"]["checkpoint_bytes"] == nbytes(llama_tensors())
    (snap / "model-00002-of-00002.safetensors").unlink()
    out = fit_json("someorg/cached-llama", "--gpu", "l40s", env=env)
    assert out["model"]["weights_from"] == "config"
    assert any("could not be read" in n and "model-00002-of-00002.safetensors" in n for n in out["model"]["weights_notes"])
    assert_cli_refuses(["fit", "someorg/cached-llama", "--gpu", "l40s", "--weights-from", "checkpoint"], 3,
                       "HF_HUB_OFFLINE", env=env)


def test_awq_layout(tmp_path):
    """AutoAWQ's layout (vLLM awq.py create_weights): qweight int32 [in, out*bits/32], qzeros int32
    [in/group, out*bits/32], scales fp16 [in/group, out], no g_idx: as stored, and the formula agrees."""
    group, bits = 32, 4
    t = {k: v.to(torch.float16) for k, v in llama_tensors().items() if "proj" not in k}
    for l in range(LAYERS):
        for name, out_f, in_f in (("self_attn.q_proj", H, H), ("self_attn.k_proj", KV, H), ("self_attn.v_proj", KV, H),
                                  ("self_attn.o_proj", H, H), ("mlp.gate_proj", I, H), ("mlp.up_proj", I, H),
                                  ("mlp.down_proj", H, I)):
            p = f"model.layers.{l}.{name}."
            t[p + "qweight"] = torch.zeros(in_f, out_f * bits // 32, dtype=torch.int32)
            t[p + "qzeros"] = torch.zeros(in_f // group, out_f * bits // 32, dtype=torch.int32)
            t[p + "scales"] = torch.zeros(in_f // group, out_f, dtype=torch.float16)
    cfg = config(torch_dtype="float16", quantization_config={"quant_method": "awq", "bits": bits,
                                                             "group_size": group, "zero_point": True, "version": "gemm"})
    d = write(tmp_path / "awq", cfg, t)
    out = fit_json(str(d), "--gpu", "l40s")
    assert out["model"]["checkpoint_bytes"] == nbytes(t) == data_section(d)
    assert out["components"]["weights"] == sum(block(x.numel() * x.element_size()) for x in t.values()) + ROPE
    assert out["components"]["weights"] == fit_json(str(d), "--gpu", "l40s", "--weights-from", "config")["components"]["weights"]
    assert not any("checkpoint holds" in w for w in out["warnings"])


def test_unknown_quantized_module_takes_its_logical_shape(tmp_path):
    """A GPTQ module the config does not name (qweight int32 [in/8, out]): counted as stored, and
    its parameters are out x in (the packed int32 holds eight 4-bit values), so model.params and the
    cross-check count it right."""
    d, t = _gptq(tmp_path)
    extra = {"model.layers.1.mlp.extra_proj.qweight": torch.zeros(I * 4 // 32, H, dtype=torch.int32),
             "model.layers.1.mlp.extra_proj.qzeros": torch.zeros(I // 32, H * 4 // 32, dtype=torch.int32),
             "model.layers.1.mlp.extra_proj.scales": torch.zeros(I // 32, H, dtype=torch.float16)}
    save_file({**t, **extra}, str(d / "model.safetensors"))
    out = fit_json(str(d), "--gpu", "l40s")
    config_params = fit_json(str(d), "--gpu", "l40s", "--weights-from", "config")["model"]["params"]
    assert out["model"]["params"] == config_params + H * I
    assert out["model"]["checkpoint_bytes"] == nbytes(t) + nbytes(extra)
    assert any(f"holds {config_params + H * I:,} parameters" in w for w in out["warnings"])
