"""transformers generate() on several GPUs with device_map="auto" (issue #14 item 7), and the
prompt / new-tokens split of `--mode infer`.

The placement is held to transformers' own get_balanced_memory and infer_auto_device_map
(transformers 5.25 integrations/accelerate.py) run on the same config on the meta device: no GPU
needed, the functions only read module sizes and the max_memory given."""

from __future__ import annotations

import pytest

import vramplan
from tests.bad_input.contract import assert_cli_refuses
from vramplan.engines.transformers.device_map import auto_device_map, balanced_caps, units
from vramplan.loading import load_model
from vramplan.memory.weights import resolve_format

CONFIGS = {
    "untied_big_vocab": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=12, num_attention_heads=8,
                             num_key_value_heads=2, vocab_size=32000, tie_word_embeddings=False),
    "layers_dominate": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=16, num_attention_heads=8,
                            num_key_value_heads=8, vocab_size=4096, tie_word_embeddings=False),
    "tied": dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=10, num_attention_heads=6,
                 num_key_value_heads=2, vocab_size=8192, tie_word_embeddings=True),
}


def _config(kw: dict) -> dict:
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "torch_dtype": "bfloat16",
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, **kw}


def _reference(kw: dict, n: int, free: int):
    """transformers' own placement: {module name: card} and the caps."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.integrations.accelerate import get_balanced_memory, infer_auto_device_map

    cfg = transformers.AutoConfig.for_model(**{k: v for k, v in _config(kw).items() if k != "architectures"})
    with torch.device("meta"):
        m = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    mm = {i: free for i in range(n)}
    mm["cpu"] = 10**13
    caps = get_balanced_memory(m, max_memory=dict(mm), no_split_module_classes=m._no_split_modules)
    dm = infer_auto_device_map(m, max_memory=caps, no_split_module_classes=m._no_split_modules)
    return dm, caps


def _layers_by_card(dm: dict, n_layers: int, n: int):
    out = [[] for _ in range(n)]
    for name, dev in dm.items():
        if name == "model.layers":
            out[dev] += list(range(n_layers))
        elif name.startswith("model.layers."):
            out[dev].append(int(name.split(".")[2]))
    return tuple(tuple(sorted(x)) for x in out)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("n", [2, 3, 4])
def test_placement_matches_transformers(name, n):
    kw = CONFIGS[name]
    spec = load_model(_config(kw))
    fmt = resolve_format(spec, "bf16")
    total = sum(u.size for u in units(spec, fmt))
    free = total            # each card could hold the model: the balance decides
    dm, caps = _reference(kw, n, free)
    p = auto_device_map(spec, fmt, (free,) * n)
    assert p.layers == _layers_by_card(dm, kw["num_hidden_layers"], n), (dm, p)
    head = dm.get("lm_head", dm.get("model.embed_tokens"))
    assert p.head == head
    ours = balanced_caps(units(spec, fmt), (free,) * n, fmt)
    # ours rounds each tensor to 512-B allocator blocks; transformers also counts the rotary
    # inv_freq buffer (head_dim / 2 fp32 values): a few KiB either way
    assert all(abs(ours[i] - caps[i]) <= 64 * 1024 for i in range(n)), (ours, caps)
