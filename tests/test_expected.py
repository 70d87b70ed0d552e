"""Every reference model: params, bf16 weights (2 B per param, each tensor in 512-B allocator
blocks) and KV bytes per token, to the byte.

Ground truth: ../shared/reference/expected.json (transformers 5.23 on the meta device). A copy of
the figures we test lives in tests/data/expected.json so the suite runs without shared/.
"""

import json
import os

import pytest
from typer.testing import CliRunner

from vramplan import api
from vramplan.cli import app
from vramplan.engines.vllm.serving import rope_cache_bytes

HERE = os.path.dirname(__file__)
EXPECTED = json.load(open(os.path.join(HERE, "data", "expected.json")))["models"]
runner = CliRunner()

# expected.json gives falcon-40b (old RefinedWeb config) params only; its KV, by hand:
# 60 layers x (K+V) 2 x n_head_kv 8 x head_dim 64 (8192 / 128 heads) x 2 B = 122,880 B/token.
KV_BY_HAND = {"tiiuae--falcon-40b": 122_880}


# expected.json takes falcon-40b's params from its checkpoint index (total_size / 2), which stores
# the tied lm_head a second time. transformers' FalconForCausalLM ties lm_head to the word
# embeddings (the RefinedWeb config sets no tie_word_embeddings, so the default True applies;
# Falcon-7B's tied count 6,921,720,704 confirms it, tests/test_families.py), so memory holds one
# copy: 65,024 vocab x 8,192 hidden = 532,676,608 fewer parameters than the index.
ON_DISK_DUPLICATES = {"tiiuae--falcon-40b": 65_024 * 8_192}


def expected_kv(name: str) -> int:
    return EXPECTED[name].get("kv_bytes_per_token_bf16", KV_BY_HAND.get(name))


def expected_params(name: str) -> int:
    return EXPECTED[name]["params"] - ON_DISK_DUPLICATES.get(name, 0)


def hub_id(name: str) -> str:
    return name.replace("--", "/", 1)


def vllm_buffers(name: str) -> int:
    """What vLLM's serve plan adds to the parameters: its rotary cos_sin_cache buffer (bf16),
    docs/sources/vllm-accounting.md A.9; the parameters themselves are the oracle's."""
    return rope_cache_bytes(api.load_model(hub_id(name)), 2)


def bf16_allocated(name: str) -> int:
    """2 B per param, each tensor rounded up to the caching allocator's 512-B block. The shapes
    are ours, but their sum is the exact reference count (asserted beside), and the rounding can
    only add less than one block per tensor."""
    spec = api.load_model(hub_id(name))
    tensors = list(spec.all_tensors())
    total = sum(-(-2 * t.numel // 512) * 512 for t in tensors)
    assert 0 <= total - 2 * expected_params(name) < 512 * len(tensors)
    return total


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bundled_id_bf16(name):
    result = runner.invoke(app, ["fit", hub_id(name), "--dtype", "bf16", "--json"])
    assert result.exit_code in (0, 1), result.stderr
    p = json.loads(result.stdout)
    assert p["model"]["params"] == expected_params(name)
    assert p["components"]["weights"] == bf16_allocated(name) + vllm_buffers(name)
    assert p["kv_bytes_per_token"] == expected_kv(name)


def test_rounding_shows_only_on_small_tensors():
    # Llama-3.1-8B: every tensor's bf16 size is a multiple of 512 B (norms 4,096 x 2 B), so the
    # weights are exactly 2 x 8,030,261,248 params. Qwen3-8B: 72 q_norm/k_norm weights of
    # 128 x 2 = 256 B each take 512: 72 x 256 = 18,432 B over 2 x params.
    assert bf16_allocated("meta-llama--Llama-3.1-8B") == 2 * 8_030_261_248
    assert bf16_allocated("Qwen--Qwen3-8B") == 2 * expected_params("Qwen--Qwen3-8B") + 18_432


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_local_config_path_bf16(name):
    path = os.path.join(HERE, "..", "configs", "models", f"{name}.json")
    result = runner.invoke(app, ["fit", path, "--dtype", "bf16", "--json"])
    assert result.exit_code in (0, 1), result.stderr
    p = json.loads(result.stdout)
    assert p["model"]["source"] == "path"
    assert p["components"]["weights"] == bf16_allocated(name) + vllm_buffers(name)
    assert p["kv_bytes_per_token"] == expected_kv(name)


def test_reference_copy_is_current():
    """When shared/ is beside the checkout, our copy must equal it."""
    ref = os.path.join(HERE, "..", "..", "shared", "reference", "expected.json")
    if not os.path.exists(ref):
        pytest.skip("shared/reference not beside this checkout")
    assert json.load(open(ref))["models"] == EXPECTED
