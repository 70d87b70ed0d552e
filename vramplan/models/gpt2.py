"""GPT-2 (transformers models/gpt2/modeling_gpt2.py, configuration_gpt2.py).

Keys n_embd, n_layer, n_head, n_inner (default 4*n_embd), n_positions, vocab_size.
Per layer (transformer.h.i), every matmul a Conv1D with a bias (listed here as (out, in) like any
linear; the checkpoint stores Conv1D weights transposed, (in, out)):
    ln_1 (weight + bias), attn.c_attn [3H, H] + bias, attn.c_proj [H, H] + bias,
    ln_2 (weight + bias), mlp.c_fc [I, H] + bias, mlp.c_proj [H, I] + bias
transformer.wte [V, H], transformer.wpe [n_positions, H], transformer.ln_f; lm_head tied to wte.

Memory facts of transformers' implementation (measured by the trace tier, docs/trace.md):
the token and position embeddings stay referenced through the forward and each block keeps its
attention output until it returns, so 6 hidden-size tensors are alive across a layer, not 4
(`residual_tensors`); `activation_function` gelu_new is Python (memory/activations.py); in
training, resid_pdrop and embd_pdrop dropouts keep a 1-byte mask per element (`dropout_*`).
vLLM (model_executor/models/gpt2.py): c_attn is one QKVParallelLinear, the two c_proj are
RowParallelLinear, c_fc column-parallel, wte vocab-parallel and wpe a replicated nn.Embedding.
peft's default LoRA target is c_attn.
"""

from __future__ import annotations

from dataclasses import replace

from vramplan.spec import Attention, LayerSpec, Mlp, Tensor
from vramplan.models import rules
from vramplan.models._base import GENERIC_TRAITS, Cfg, Tensors, make_spec, register, torch_dtype
from vramplan.models.quant import parse_quantization


@register("gpt2")
def parse(cfg: Cfg):
    H = cfg.int("n_embd", "hidden_size")
    L = cfg.int("n_layer", "num_hidden_layers")
    heads = cfg.int("n_head", "num_attention_heads")
    vocab = cfg.int("vocab_size")
    n_pos = cfg.int("n_positions", "max_position_embeddings")
    I = cfg.int("n_inner", default=None) or 4 * H
    # GPT2Attention raises unless n_embd is a multiple of n_head
    rules.hidden_per_head(cfg, H, heads, "transformers' GPT2Attention", ("n_embd", "hidden_size"),
                          ("n_head", "num_attention_heads"))
    hd = H // heads
    mixer = Attention(kind="full", num_heads=heads, num_kv_heads=heads, head_dim=hd, v_head_dim=hd)
    mlp = Mlp(kind="dense", intermediate=I, gated=False,
              act=cfg.str("activation_function", default="gelu_new"))
    layers = []
    for i in range(L):
        t = Tensors(f"transformer.h.{i}")
        t.norm("ln_1", H, bias=True)
        t.linear("attn.c_attn", 3 * H, H, bias=True, split="qkv")
        t.linear("attn.c_proj", H, H, bias=True, split="row")
        t.norm("ln_2", H, bias=True)
        t.linear("mlp.c_fc", I, H, bias=True)
        t.linear("mlp.c_proj", H, I, bias=True, split="row")
        layers.append(LayerSpec(i, mixer, mlp, t.tuple()))
    tied = cfg.bool("tie_word_embeddings", default=True)
    out = Tensors("transformer")
    out.add("wte", (vocab, H), "embedding")
    out.add("wpe", (n_pos, H), "embedding", split="replicated")
    out.norm("ln_f", H, bias=True)
    if not tied:
        out.items.append(Tensor(name="lm_head", shape=(vocab, H), role="lm_head", split="vocab"))
    return make_spec(
        cfg, family="gpt2", hidden=H, vocab=vocab, layers=layers, tensors=out.items, tied=tied,
        dtype=torch_dtype(cfg), quant=parse_quantization(cfg), max_pos=n_pos,
        traits=replace(GENERIC_TRAITS, residual_tensors=6,
                       dropout_residual=cfg.prob("resid_pdrop", default=0.1),
                       dropout_embedding=cfg.prob("embd_pdrop", default=0.1),
                       attention_module="attn", lora_targets=("c_attn",)),
    )
