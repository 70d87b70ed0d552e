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


def test_new_tokens_cache_matches_a_real_generate_on_cpu():
    """A tiny Llama (2 layers, 2 KV heads x 16, fp32) generating N tokens after a 17-token
    prompt for 3 sequences, on CPU: generate() leaves a DynamicCache of 17 + N - 1 tokens (the
    last token is never fed back). Measured: N = 5 -> 21 tokens, 2 layers x (K + V) x 3 x 2 x 21
    x 16 x 4 B = 32,256 B. The plan's decode phase is that cache: the step before the last holds
    ctx + N - 2 tokens and the last one copies a layer grown to ctx + N - 1."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=256, max_position_embeddings=512, tie_word_embeddings=False)
    torch.manual_seed(0)
    m = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model("llama", **cfg)).eval()
    ids = torch.randint(0, 256, (3, 17))
    from vramplan.engines.transformers.generate import layer_cache_bytes
    spec = load_model({**_config(cfg), "torch_dtype": "float32"})
    for n in (2, 5, 9):
        out = m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                         do_sample=False, return_dict_in_generate=True, pad_token_id=0)
        cache = out.past_key_values
        measured = sum(t.numel() * t.element_size() for l in cache.layers for t in (l.keys, l.values))
        assert measured == layer_cache_bytes(spec, (0, 1), 4, 4, 3, 17 + n - 1, True)
    # the plan: prefill of 17 tokens, then the cache of 17 + 9 - 2 = 24 tokens before the last step
    p = vramplan.plan(spec, gpu_mem="1GB", mode="infer", batch=3, ctx=17, new_tokens=9)
    s_prefill = layer_cache_bytes(spec, (0, 1), 4, 4, 3, 17, False)
    s_end = layer_cache_bytes(spec, (0, 1), 4, 4, 3, 24, True)
    assert p.components["kv_cache"] in (s_prefill, s_end)
    if p.phase.startswith("decode"):
        assert p.components["kv_cache"] == s_end


def test_new_tokens_grow_the_cache():
    """Llama-3.1-8B, 8k prompt + 24k new tokens on an L40S: the last step holds 8,192 + 24,576 - 2
    tokens x 131,072 B in the cache (4.00 GiB) plus one layer's copy; the prompt alone 1.00 GiB."""
    p = vramplan.plan("meta-llama/Llama-3.1-8B", "l40s", mode="infer", ctx=8192, new_tokens=24_576)
    assert p.phase.startswith("decode")
    assert p.components["kv_cache"] == (8192 + 24_576 - 2) * 131_072
    q = vramplan.plan("meta-llama/Llama-3.1-8B", "l40s", mode="infer", ctx=8192)
    assert q.components["kv_cache"] == 8192 * 131_072


def test_70b_on_two_a100_per_card():
    """Llama-3.1-70B bf16 on a100:2 with device_map="auto": 80 layers of 1,711,276,032 B, embed and
    lm_head 2,101,346,304 B each. get_balanced_memory caps GPU0 at total / 2 + 1.25 x 2.10 GB;
    GPU0 keeps the lm_head's 2.10 GB free while it fills (the largest module still to place):
    each card ends with about half the model, the lm_head and the logits on GPU1."""
    p = vramplan.plan("meta-llama/Llama-3.1-70B", "a100:2", mode="infer", ctx=8192)
    spec = load_model("meta-llama/Llama-3.1-70B")
    fmt = resolve_format(spec, "bf16")
    free = p.capacity_bytes - p.components["cuda_context"]
    pl = auto_device_map(spec, fmt, (free, free))
    assert sum(pl.weights) == sum(u.size for u in units(spec, fmt))
    assert pl.layers[0] and pl.layers[1] and pl.head == 1 and not pl.offloaded
    assert pl.layers[0] + pl.layers[1] == tuple(range(80))
    assert p.components["weights"] == max(pl.weights)
    assert "nccl" not in p.components            # one process, no process group
    assert "GPU0" in p.component_notes["activations"] and "GPU1" in p.component_notes["activations"]
    assert p.fits


def test_new_tokens_refused_outside_infer():
    assert_cli_refuses(["fit", "meta-llama/Llama-3.1-8B", "--new-tokens", "128"], 2, "--mode infer")
    assert_cli_refuses(["fit", "meta-llama/Llama-3.1-8B", "--mode", "lora", "--new-tokens", "128"], 2, "--new-tokens")
    assert_cli_refuses(["fit", "meta-llama/Llama-3.1-8B", "--mode", "infer", "--new-tokens", "0"], 2, "--new-tokens")


def test_trace_refuses_what_it_does_not_replay():
    assert_cli_refuses(["fit", "meta-llama/Llama-3.1-8B", "--mode", "infer", "--new-tokens", "64",
                        "--method", "trace"], 2, "--new-tokens")
    assert_cli_refuses(["fit", "meta-llama/Llama-3.1-8B", "--mode", "lora", "--liger", "--method", "trace"],
                       2, "--liger")
    assert_cli_refuses(["fit", "meta-llama/Llama-3.1-8B", "--engine", "unsloth", "--mode", "qlora",
                        "--method", "trace"], 2, "analytic")
