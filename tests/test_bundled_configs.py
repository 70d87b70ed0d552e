"""The bundled model configs: every file is JSON with a SOURCES.md row, plans without a traceback,
and, for the families the analytic tier reads today, gives the oracle's exact parameters and KV
bytes per token (tests/data/expected_new.json: transformers 5.25 on the meta device and a CPU
prefill, tests/data/make_expected_new.py). Also configs/models/variants.toml: a fine-tune id is
planned offline with its base's config only where both real configs differ in no architecture key.
"""

import json
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vramplan import api, catalog, derive, sources
from vramplan.cli import app
from vramplan.errors import ModelNotFound
from vramplan.memory import kv_cache

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "configs" / "models"
VARIANT_CONFIGS = ROOT / "tests" / "data" / "variant_configs"
EXPECTED = json.loads((ROOT / "tests" / "data" / "expected_new.json").read_text())["models"]
VARIANTS = tomllib.loads((MODELS / "variants.toml").read_text())
BUNDLED = sorted(p.stem for p in MODELS.glob("*.json"))
runner = CliRunner()

# The keys variants.toml's header allows to differ between a fine-tune and its base: token ids,
# the saved dtype, bookkeeping, and generation-only settings. Nothing a tensor or a cache depends on.
MAY_DIFFER = {
    "bos_token_id", "eos_token_id", "pad_token_id", "torch_dtype", "dtype", "transformers_version",
    "_name_or_path", "use_cache", "generation_config", "temperature", "top_p", "top_k", "do_sample",
    "max_length", "max_new_tokens", "repetition_penalty",
}



def hub_id(stem: str) -> str:
    return stem.replace("--", "/", 1)


def model_type(stem: str) -> str:
    return json.loads((MODELS / f"{stem}.json").read_text())["model_type"]


def architecture_diff(a: dict, b: dict) -> dict:
    """{key: (a's value, b's value)} for every key outside MAY_DIFFER whose values differ."""
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b) - MAY_DIFFER)
            if k not in MAY_DIFFER and a.get(k) != b.get(k)}


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No HF cache, HF_HUB_OFFLINE set: only bundled files (and variants of them) can answer."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# --- every bundled file ------------------------------------------------------------------------


@pytest.mark.parametrize("stem", BUNDLED)
def test_bundled_config_is_json_with_a_model_type(stem):
    config = json.loads((MODELS / f"{stem}.json").read_text(encoding="utf-8"))
    assert isinstance(config, dict) and isinstance(config.get("model_type"), str)


def _source_rows() -> dict[str, list[str]]:
    rows = {}
    for line in (MODELS / "SOURCES.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) >= 3 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells
    return rows


def test_every_bundled_file_has_one_sources_row_and_every_row_a_file():
    rows = _source_rows()
    bundled_ids = {hub_id(s) for s in BUNDLED}
    variant_ids = set(VARIANTS)
    assert bundled_ids - set(rows) == set(), "bundled configs without a SOURCES.md row"
    assert set(rows) - bundled_ids - variant_ids == set(), "SOURCES.md rows for files that are not here"
    for model_id in bundled_ids:
        assert rows[model_id][2], f"{model_id}: empty source"


def test_expected_new_covers_exactly_the_rows_added_for_issue_12():
    added = {model_id for model_id, cells in _source_rows().items() if cells[1] == "#12"}
    assert added == {hub_id(k) for k in EXPECTED}
    assert len(added) == 27


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_added_config_plans_without_a_traceback(stem):
    """Exit 0/1 with a plan, or 2 with a sentence (families refused today); never a traceback."""
    result = runner.invoke(app, ["fit", hub_id(stem), "--gpu", "h100", "--json"])
    assert result.exit_code in (0, 1, 2), result.exception
    assert "Traceback" not in result.output + result.stderr
    if result.exit_code == 2:
        assert result.stderr.strip(), "a refusal says why"
    else:
        assert json.loads(result.stdout)["model"]["id"] == hub_id(stem)


# Refused by the analytic reader, with its reason (Gated DeltaNet and DeepSeek's sparse-attention
# indexer, which it does not model; Gemma 4's per-layer embeddings): the transformers-derived path
# (issue #12 item 2) answers them where transformers is installed. bge-m3 is read as an encoder
# (models/encoder.py): a pooling model with no KV cache.
REFUSED_ANALYTIC = {"Qwen--Qwen3-Next-80B-A3B-Thinking", "Qwen--Qwen3.5-27B", "Qwen--Qwen3.5-35B-A3B",
                    "deepseek-ai--DeepSeek-V3.2", "google--gemma-4-26B-A4B"}
# Mistral-Small-3.2: transformers 5.25 ties lm_head to the embeddings (no top-level
# tie_word_embeddings; Mistral3Config defaults it to True) although text_config says False and the
# checkpoint stores lm_head; vramplan reads it untied, as vLLM loads it: 131,072 x 5,120 more.
UNTIED_LM_HEAD = {"mistralai--Mistral-Small-3.2-24B-Instruct-2506": 131_072 * 5_120}


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_params_and_kv_match_transformers(stem):
    if stem in REFUSED_ANALYTIC:
        with pytest.raises(api.BadInput):
            api.load_model(hub_id(stem), layers_from="analytic")
        if "encoder" in EXPECTED[stem].get("notes", ""):     # no generation to plan: refused either way
            with pytest.raises(api.BadInput):
                api.load_model(hub_id(stem))
        elif derive.available():    # --layers-from auto: the layers derived from transformers answer
            spec = api.load_model(hub_id(stem))
            assert spec.derived_from and spec.params == EXPECTED[stem]["params"]
            assert kv_cache.kv_bytes_per_token(spec, 2) == EXPECTED[stem]["kv_bytes_per_token_bf16"]
        return
    expected = EXPECTED[stem]
    spec = api.load_model(hub_id(stem))
    assert spec.confidence == "exact"
    assert spec.params == expected["params"] + UNTIED_LM_HEAD.get(stem, 0)
    result = runner.invoke(app, ["fit", hub_id(stem), "--dtype", "bf16", "--json"])
    assert result.exit_code in (0, 1), result.stderr
    assert json.loads(result.stdout)["kv_bytes_per_token"] == expected["kv_bytes_per_token_bf16"]


def test_oracle_figures_agree_with_hand_derivations():
    """A few oracle figures by hand, so a broken generator cannot pass unseen (bf16 = 2 B)."""
    kv = {k: v["kv_bytes_per_token_bf16"] for k, v in EXPECTED.items()}
    # K and V x layers x KV heads x head_dim x 2 B
    assert kv["Qwen--Qwen3-30B-A3B"] == 2 * 48 * 4 * 128 * 2
    assert kv["google--gemma-2-9b"] == 2 * 42 * 8 * 256 * 2     # below the 4,096-token window
    assert kv["microsoft--phi-4"] == 2 * 40 * 10 * (5120 // 40) * 2
    assert kv["mistralai--Mistral-Nemo-Base-2407"] == 2 * 40 * 8 * 128 * 2   # head_dim 128, not 5120/32
    assert kv["Qwen--Qwen2.5-7B-Instruct"] == 2 * 28 * 4 * 128 * 2
    assert kv["allenai--OLMo-2-1124-7B-Instruct"] == 2 * 32 * 32 * 128 * 2
    assert kv["bigcode--starcoder2-15b"] == 2 * 40 * 4 * (6144 // 48) * 2
    assert kv["microsoft--phi-2"] == 2 * 32 * 32 * (2560 // 32) * 2
    # Qwen3-Next: only its 12 full-attention layers (every 4th of 48) grow with the context
    assert kv["Qwen--Qwen3-Next-80B-A3B-Thinking"] == 2 * 12 * 2 * 256 * 2
    # DeepSeek MLA as transformers caches it: 61 layers x (kv_lora_rank 512 + rope 64) x 2 B, as
    # shared/reference/expected.json gives for DeepSeek-V3
    assert kv["deepseek-ai--DeepSeek-R1"] == 61 * (512 + 64) * 2
    # an encoder holds no KV cache
    assert kv["BAAI--bge-m3"] == 0
    # R1 and V3.1 share DeepSeek-V3's architecture: the reference's 671,026,404,352 parameters
    assert EXPECTED["deepseek-ai--DeepSeek-R1"]["params"] == 671_026_404_352
    assert EXPECTED["deepseek-ai--DeepSeek-V3.1"]["params"] == 671_026_404_352
    # Qwen3-VL-8B-Instruct: the checkpoint's own tensor total, quoted beside its config (SOURCES.md)
    assert EXPECTED["Qwen--Qwen3-VL-8B-Instruct"]["params"] == 8_767_123_696


# --- variants.toml ------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_differs_from_its_base_in_no_architecture_key(variant):
    """The header rule, checked on the two real configs every run."""
    entry = VARIANTS[variant]
    fine_tune = json.loads((VARIANT_CONFIGS / entry["evidence"]).read_text())
    base = json.loads((MODELS / f"{entry['base'].replace('/', '--', 1)}.json").read_text())
    assert architecture_diff(fine_tune, base) == {}
    assert variant.replace("/", "--", 1) not in BUNDLED, "a bundled id needs no variant entry"


def test_variant_evidence_files_all_have_an_entry():
    assert {e["evidence"] for e in VARIANTS.values()} == {p.name for p in VARIANT_CONFIGS.glob("*.json")}


def test_the_rule_rejects_qwen25_7b_instruct_so_it_is_bundled_itself():
    """The documented counter-example: same widths, but a 32,768 context where the base has
    131,072 (and sliding_window unchanged), so the instruct config is bundled, not a variant."""
    instruct = json.loads((MODELS / "Qwen--Qwen2.5-7B-Instruct.json").read_text())
    base = json.loads((MODELS / "Qwen--Qwen2.5-7B.json").read_text())
    diff = architecture_diff(instruct, base)
    assert diff["max_position_embeddings"] == (32768, 131072)
    assert "Qwen/Qwen2.5-7B-Instruct" not in VARIANTS
    # use_mrope false is written only in the base; it is the class default, yet the rule counts it
    assert set(diff) == {"max_position_embeddings", "use_mrope"}


def test_r1_distill_qwen_15b_is_not_a_variant_of_qwen25_15b():
    """The distill ties no embeddings and uses rope_theta 1e4 where Qwen2.5-1.5B ties them and
    uses 1e6: a different architecture, so it is bundled itself."""
    distill = json.loads((MODELS / "deepseek-ai--DeepSeek-R1-Distill-Qwen-1.5B.json").read_text())
    base = json.loads((MODELS / "Qwen--Qwen2.5-1.5B.json").read_text())
    diff = architecture_diff(distill, base)
    assert diff["tie_word_embeddings"] == (False, True) and diff["rope_theta"] == (10000, 1000000.0)


def test_llama_32_3b_pair_shows_the_rule_passing_on_an_instruct_config():
    """Both real configs bundled before #12: they differ only in eos_token_id."""
    instruct = json.loads((MODELS / "meta-llama--Llama-3.2-3B-Instruct.json").read_text())
    base = json.loads((MODELS / "meta-llama--Llama-3.2-3B.json").read_text())
    assert architecture_diff(instruct, base) == {}
    assert instruct["eos_token_id"] != base["eos_token_id"]


def test_variant_resolves_offline_to_its_base_config_and_says_so(offline):
    loaded = sources.load_config("deepseek-ai/DeepSeek-R1-Distill-Qwen-32B")
    base = sources.load_config("Qwen/Qwen2.5-32B")
    assert loaded.id == "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B"
    assert loaded.source == "bundled variant of Qwen/Qwen2.5-32B"
    assert loaded.config == base.config and loaded.sha256 == base.sha256
    assert loaded.location.endswith("Qwen--Qwen2.5-32B.json")


def test_variant_lookup_ignores_case(offline):
    assert catalog.find_variant("META-LLAMA/llama-3.1-8b-instruct")[:2] == (
        "meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B")


def test_variant_plan_names_its_source_line(offline):
    result = runner.invoke(app, ["fit", "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", "--gpu", "h100"])
    assert result.exit_code in (0, 1), result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("model     deepseek-ai/DeepSeek-R1-Distill-Qwen-32B  [bundled variant of Qwen/Qwen2.5-32B]")
    data = json.loads(runner.invoke(app, ["fit", "meta-llama/Llama-3.1-8B-Instruct", "--gpu", "h100",
                                          "--json"]).stdout)
    assert data["model"]["source"] == "bundled variant of meta-llama/Llama-3.1-8B"
    # shared/reference/expected.json: Llama-3.1-8B has 8,030,261,248 parameters
    assert data["model"]["params"] == 8_030_261_248


def test_an_unlisted_fine_tune_is_still_not_found_offline(offline):
    with pytest.raises(ModelNotFound):
        sources.load_config("meta-llama/Llama-3.1-70B-Instruct")


def _with_variants(monkeypatch, text: str):
    real = catalog._read_toml

    def fake(*parts):
        return tomllib.loads(text) if parts == ("models", "variants.toml") else real(*parts)

    monkeypatch.setattr(catalog, "_read_toml", fake)
    catalog._variants.cache_clear()


def test_a_variant_of_an_unbundled_base_is_a_data_bug(monkeypatch):
    _with_variants(monkeypatch, '["org/X-Instruct"]\nbase = "org/X"\nevidence = "x.json"\n')
    try:
        with pytest.raises(ValueError, match="not bundled"):
            catalog.find_variant("org/X-Instruct")
    finally:
        catalog._variants.cache_clear()


def test_a_bundled_id_listed_as_a_variant_is_a_data_bug(monkeypatch):
    _with_variants(monkeypatch, '["meta-llama/Llama-3.2-3B-Instruct"]\nbase = "meta-llama/Llama-3.2-3B"\n'
                                'evidence = "x.json"\n')
    try:
        with pytest.raises(ValueError, match="bundled itself"):
            catalog.find_variant("meta-llama/Llama-3.2-3B-Instruct")
    finally:
        catalog._variants.cache_clear()
