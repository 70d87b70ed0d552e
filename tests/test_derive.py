"""vramplan/derive/: the layers of a model derived from transformers itself.

The oracle these tests hold the derivation to is transformers, called here directly (not through
vramplan/derive): `AutoModelForCausalLM.from_config` on the meta device counts the parameters
(`sum(p.numel() for p in model.parameters())`: unique tensors, tied once), and a real CPU prefill
of the tiny model gives the cache tensors' shapes. The tiny configs are tests/data/tiny_*.json and
a few inline ones of families vramplan has no module for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bad_input.contract import assert_api_refuses, assert_cli_refuses
from vramplan import api, derive, loading, models
from vramplan.errors import BadInput, MissingExtra
from vramplan.memory import kv_cache
from vramplan.spec import Attention, Recurrent

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.trace

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"

# StarCoder2 (no vramplan module): plain (ungated) MLP c_fc/c_proj with biases, LayerNorm with
# biases, untied head, 4 layers of GQA.
STARCODER2 = {"model_type": "starcoder2", "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 4,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512, "use_bias": True,
              "max_position_embeddings": 2048, "sliding_window": 1024, "torch_dtype": "bfloat16",
              "tie_word_embeddings": False}
# Phi (no vramplan module): parallel attention + MLP, partial rotary, dense with bias, tied false.
PHI = {"model_type": "phi", "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 3,
       "num_attention_heads": 4, "vocab_size": 512, "partial_rotary_factor": 0.5, "torch_dtype": "bfloat16"}
# BioGPT: no family module and no verified generic layout, so the generic reader's answer is labelled
# approximate (it reads it as Llama: gated MLP, RMSNorm); --layers-from auto derives it instead.
BIOGPT = {"model_type": "biogpt", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
          "num_hidden_layers": 2, "vocab_size": 512, "max_position_embeddings": 256, "torch_dtype": "bfloat16"}
# Mamba (refused by the analytic reader: no attention keys): a recurrent state per layer.
MAMBA = {"model_type": "mamba", "hidden_size": 64, "state_size": 8, "num_hidden_layers": 2, "vocab_size": 256,
         "expand": 2, "conv_kernel": 4, "torch_dtype": "bfloat16", "tie_word_embeddings": True}


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def tiny(name: str) -> dict:
    return json.loads((DATA / f"tiny_{name}.json").read_text())


def hf_params(raw: dict) -> int:
    """transformers' own count, on the meta device."""
    from transformers import AutoConfig, AutoModelForCausalLM

    d = {k: v for k, v in raw.items() if k != "model_type"}
    config = AutoConfig.for_model(raw["model_type"], **d)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def hf_cache(raw: dict, tokens: int = 6):
    """A real prefill of the tiny model on CPU: its cache layers (keys, values, states)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    d = {k: v for k, v in raw.items() if k != "model_type"}
    config = AutoConfig.for_model(raw["model_type"], **d)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        out = model(input_ids=torch.zeros((1, tokens), dtype=torch.long), use_cache=True)
    return out.past_key_values.layers


@pytest.mark.parametrize("name", ["llama", "qwen3", "gemma3", "mixtral", "deepseek_v3", "nemotron_h"])
def test_derived_equals_transformers_and_the_family_module(name):
    raw = tiny(name)
    derived = derive.spec(raw, f"tiny-{name}")
    analytic = models.parse(raw, model_id=f"tiny-{name}")
    assert derived.params == hf_params(raw)
    assert derived.params == analytic.params        # the family modules are exact for these
    assert kv_cache.kv_bytes_per_token(derived, 2) == kv_cache.kv_bytes_per_token(analytic, 2)
    assert [type(l.mixer).__name__ for l in derived.layers] == [type(l.mixer).__name__ for l in analytic.layers]
    assert derived.derived_from == f"transformers {transformers.__version__}"
    assert derived.family == "derived"


def test_kv_per_layer_matches_a_real_cpu_prefill():
    """Starcoder2: K and V of 2 heads x 16 dims per token in each of 4 layers (head_dim = 64 / 4)."""
    layers = hf_cache(STARCODER2)
    derived = derive.spec(STARCODER2, "tiny-starcoder2")
    for real, mine in zip(layers, derived.layers):
        k, v = real.keys, real.values
        assert mine.mixer.num_kv_heads == k.shape[1] == 2
        assert mine.mixer.kv_elems_per_token == k.shape[1] * k.shape[3] + v.shape[1] * v.shape[3] == 64
        assert mine.mixer.kind == "sliding" and mine.mixer.window == 1024
    assert kv_cache.kv_bytes_per_token(derived, 2) == 4 * 64 * 2


def test_a_family_without_module_is_counted_exactly():
    """StarCoder2 and Phi (generic layouts verified by the generic reader) and BioGPT (read as Llama,
    labelled approximate): the derived spec is transformers' own count for all three."""
    for raw in (STARCODER2, PHI, BIOGPT):
        assert derive.spec(raw, "tiny").params == hf_params(raw)
    analytic = models.parse(BIOGPT, model_id="tiny")
    assert analytic.confidence == "approximate" and analytic.params != hf_params(BIOGPT)


def test_tied_embeddings_are_counted_once():
    raw = dict(tiny("llama"), tie_word_embeddings=True)
    derived = derive.spec(raw, "tiny-tied")
    assert derived.params == hf_params(raw) == models.parse(raw).params
    assert derived.tie_word_embeddings
    assert not any(t.role == "lm_head" for t in derived.all_tensors())
    assert sum(t.role == "embedding" for t in derived.all_tensors()) == 1


def test_mla_is_cached_as_its_latent():
    """DeepSeek-V3: transformers 5 caches the compressed latent (kv_lora_rank) and the rope key."""
    raw = tiny("deepseek_v3")
    derived = derive.spec(raw, "tiny-dsv3")
    mla = [l.mixer for l in derived.layers]
    assert all(m.kind == "mla" for m in mla)
    assert mla[0].kv_elems_per_token == raw["kv_lora_rank"] + raw["qk_rope_head_dim"]


def test_recurrent_state_matches_a_real_cpu_prefill():
    """Mamba: the analytic reader refuses it; the derived spec carries each layer's conv and SSM
    state as transformers allocates them (conv: channels x kernel, SSM: d_inner x state in fp32)."""
    from vramplan.errors import BadConfig

    with pytest.raises(BadConfig):
        models.parse(MAMBA)
    layers = hf_cache(MAMBA)
    derived = derive.spec(MAMBA, "tiny-mamba")
    assert derived.params == hf_params(MAMBA)
    d_inner = 2 * 64
    for real, mine in zip(layers, derived.layers):
        r = mine.mixer
        assert isinstance(r, Recurrent)
        assert tuple(real.conv_states[0].shape[1:]) == (d_inner, 4) == (r.conv_channels, r.conv_kernel)
        assert real.recurrent_states[0].shape[1:].numel() == r.ssm_state_elems == d_inner * 8
        assert r.conv_state_elems == d_inner * 3      # vLLM's layout: kernel - 1 columns
    assert kv_cache.kv_bytes_per_token(derived, 2) == 0


def test_tensor_parallel_splits_are_named_or_conservative():
    derived = derive.spec(STARCODER2, "tiny-starcoder2")
    split = {t.name: t.split for t in derived.all_tensors()}
    assert split["model.layers.0.self_attn.q_proj"] == "column"
    assert split["model.layers.0.self_attn.k_proj"] == "kv_heads"
    assert split["model.layers.0.self_attn.o_proj"] == "row"
    assert split["model.layers.0.mlp.c_fc"] == "column"
    assert split["model.layers.0.mlp.c_proj"] == "row"
    assert split["model.embed_tokens"] == "vocab" and split["lm_head"] == "vocab"
    assert not any("split vramplan cannot name" in w for w in derived.warnings)


def test_a_cached_derivation_imports_nothing_heavy(tmp_path):
    """The second plan of the same config reads the facts from disk: no torch, no transformers."""
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(BIOGPT))
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "xdg"), PYTHONPATH=str(ROOT))
    code = ("import sys, json; from vramplan import loading; "
            f"s = loading.load({str(cfg)!r}).spec; "
            "print(json.dumps([s.params, s.derived_from, 'torch' in sys.modules, 'transformers' in sys.modules]))")
    first = json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                      check=True).stdout)
    second = json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                       check=True).stdout)
    assert first[:2] == second[:2] == [hf_params(BIOGPT), f"transformers {transformers.__version__}"]
    assert first[2] is True                      # derived: torch was imported
    assert second[2:] == [False, False]          # cached: neither was


def test_layers_from_selects_the_reader(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(BIOGPT))
    assert loading.load(str(cfg)).spec.derived_from                      # auto: approximate -> derived
    assert not loading.load(str(cfg), layers_from="analytic").spec.derived_from
    llama = tmp_path / "llama.json"
    llama.write_text(json.dumps(tiny("llama")))
    assert not loading.load(str(llama)).spec.derived_from                # auto: the family module
    assert loading.load(str(llama), layers_from="transformers").spec.derived_from    # asked for
    starcoder2 = tmp_path / "starcoder2.json"
    starcoder2.write_text(json.dumps(STARCODER2))
    spec = loading.load(str(starcoder2)).spec                            # auto: the generic reader is
    assert not spec.derived_from and spec.confidence == "exact"          # exact for this layout
    assert spec.params == hf_params(STARCODER2)


def test_plan_says_which_reader_answered(tmp_path, capsys):
    from vramplan.cli import app
    from typer.testing import CliRunner

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(BIOGPT))
    runner = CliRunner()
    out = runner.invoke(app, ["fit", str(cfg), "--gpu", "l40s", "--json"])
    assert json.loads(out.stdout)["model"]["layers_from"] == "transformers"
    assert json.loads(out.stdout)["model"]["params"] == hf_params(BIOGPT)
    out = runner.invoke(app, ["fit", str(cfg), "--gpu", "l40s", "--layers-from", "analytic", "--json"])
    assert json.loads(out.stdout)["model"]["layers_from"] == "analytic"
    out = runner.invoke(app, ["fit", str(cfg), "--gpu", "l40s"])
    assert f"layers    derived from transformers {transformers.__version__}" in out.stdout


def test_bad_layers_from_is_refused():
    assert_cli_refuses(["fit", "meta-llama/Llama-3.1-8B", "--layers-from", "magic"], 2, "--layers-from")
    assert_api_refuses(api.plan, "meta-llama/Llama-3.1-8B", "l40s", layers_from="magic", exc=BadInput,
                       needle="layers_from")


def test_without_torch_auto_is_analytic_and_transformers_is_an_environment_problem(tmp_path, monkeypatch):
    monkeypatch.setattr(derive, "missing", lambda: "torch")
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(BIOGPT))
    assert not loading.load(str(cfg)).spec.derived_from
    with pytest.raises(MissingExtra):
        loading.load(str(cfg), layers_from="transformers")


def test_transformers_refusal_falls_back_to_the_analytic_reader():
    """A model_type transformers does not know (custom code, never run): auto answers with the
    analytic generic reader; asking for transformers is one sentence, exit 2."""
    raw = dict(tiny("llama"), model_type="not_in_transformers")
    spec = loading.load(raw).spec
    assert not spec.derived_from and spec.params == models.parse(tiny("llama")).params
    with pytest.raises(BadInput, match="not part of the installed transformers"):
        loading.load(raw, layers_from="transformers")


def test_trace_builds_what_the_analytic_reader_refuses():
    from vramplan import trace

    loaded = trace.load(MAMBA)
    assert loaded.spec.derived_from and loaded.spec.params == hf_params(MAMBA)
