"""Nemotron-H (transformers models/nemotron_h/modeling_nemotron_h.py, configuration_nemotron_h.py).

A hybrid: hybrid_override_pattern (or the list layers_block_type / layer_types) gives one block per
character, each `norm` [H] (RMSNorm) + one mixer at model.layers.i.mixer:
    M  Mamba2 (NemotronHMamba2Mixer), with d_inner = mamba_num_heads * mamba_head_dim,
       conv_dim = d_inner + 2 * n_groups * ssm_state_size:
         in_proj [2*d_inner + 2*n_groups*ssm_state_size + mamba_num_heads, H] (+bias if use_bias)
         conv1d [conv_dim, 1, conv_kernel] + bias [conv_dim] (use_conv_bias, default true)
         dt_bias, A_log, D [mamba_num_heads]; norm (gated RMSNorm) [d_inner]
         out_proj [H, d_inner] (+bias if use_bias)
       state per sequence: conv_dim * (conv_kernel - 1) + mamba_num_heads * mamba_head_dim * ssm_state_size
    *  attention: q_proj [heads*hd, H], k_proj/v_proj [kv*hd, H], o_proj [H, heads*hd], no biases
       (hd = head_dim, or the Hub files' attention_head_dim; default 128)
    -  MLP, not gated: up_proj [I, H], down_proj [H, I] (relu2), bias if mlp_bias
    E  MoE (NemotronHMoE): gate [E, H] (router; its e_score_correction_bias is a buffer),
       experts.up_proj E x [Im, D], experts.down_proj E x [D, Im] (not gated, D = moe_latent_size or H),
       shared_experts.up_proj/down_proj of moe_shared_expert_intermediate_size,
       fc1_latent_proj [D, H] / fc2_latent_proj [H, D] when moe_latent_size is set
model.embeddings [V, H], model.norm_f [H], lm_head [V, H] (tie_word_embeddings default false).

vLLM's MambaMixer2 (model_executor/layers/mamba/mamba_mixer2.py) splits conv1d, A, D, dt_bias and
the gated norm by head; in_proj is column-, out_proj row-parallel. mamba_ssm's fused training
kernel applies out_proj and the gated norm inside itself (the training planner finds them as the
row-split linear and the head-split norm of a Mamba layer). peft's default LoRA targets are the
attention projections q/k/v/o_proj.
"""

from __future__ import annotations

from dataclasses import replace

from vramplan.errors import BadConfig
from vramplan.spec import Attention, LayerSpec, Mlp, Recurrent
from vramplan.models import rules
from vramplan.models._base import (GENERIC_TRAITS, Cfg, Tensors, embedding_and_head, make_spec, register, show,
                                   torch_dtype)
from vramplan.models.bounds import LAYERS, describe
from vramplan.models.quant import parse_quantization

_CHARS = {"M": "mamba", "*": "attention", "-": "mlp", "E": "moe"}
_NAMES = {"mamba": "mamba", "linear_attention": "mamba", "attention": "attention",
          "full_attention": "attention", "mlp": "mlp", "moe": "moe"}


def _block_types(cfg: Cfg) -> list[str]:
    """One block kind per layer; the list's length is the layer count, bounded like num_hidden_layers."""
    pattern = cfg.raw("hybrid_override_pattern")
    if pattern is not None:
        if isinstance(pattern, str):
            _bounded(cfg, "hybrid_override_pattern", len(pattern))
        if not isinstance(pattern, str) or not pattern or any(c not in _CHARS for c in pattern):
            raise cfg.bad("hybrid_override_pattern", f"must be a string of M (Mamba2), * (attention), "
                          f"- (MLP) and E (MoE), got {show(pattern)}.")
        return [_CHARS[c] for c in pattern]
    key = cfg.key("layers_block_type", "layer_types")
    lst = cfg.raw("layers_block_type", "layer_types")
    if lst is None:
        raise BadConfig(f"config.json of {cfg.who} has no 'hybrid_override_pattern' (or "
                        f"'layers_block_type'), which says which blocks are Mamba, attention or MLP.")
    if isinstance(lst, list):
        _bounded(cfg, key, len(lst))
    if not isinstance(lst, list) or not lst or any(not isinstance(x, str) or x not in _NAMES for x in lst):
        raise cfg.bad(key, f"must list mamba, attention, mlp or moe blocks, got {show(lst)}.")
    return [_NAMES[x] for x in lst]


def _bounded(cfg: Cfg, key: str, n: int) -> None:
    if n > LAYERS.limit:
        raise cfg.bad(key, f"has {n:,} blocks; vramplan refuses {describe(LAYERS)}.")


@register("nemotron_h")
def parse(cfg: Cfg):
    H = cfg.int("hidden_size")
    vocab = cfg.int("vocab_size")
    kinds = _block_types(cfg)
    L = len(kinds)
    n_cfg = cfg.int("num_hidden_layers", default=None)
    if n_cfg is not None and n_cfg != L:
        cfg.warn(f"num_hidden_layers is {n_cfg} but the block pattern has {L} blocks; the pattern is "
                 f"used, as transformers does.")

    if "attention" in kinds:
        heads = cfg.int("num_attention_heads")
        kv = cfg.int("num_key_value_heads", default=heads)
        hd = cfg.int("head_dim", "attention_head_dim", default=128)
        rules.kv_heads(cfg, heads, kv)          # no rotary embeddings in Nemotron-H's attention
        window = cfg.int("sliding_window", default=0, positive=False) or None
        attn = Attention(kind="sliding" if window else "full", num_heads=heads, num_kv_heads=kv, head_dim=hd,
                         v_head_dim=hd, window=window)
    if "mamba" in kinds:
        nh = cfg.int("mamba_num_heads")
        mhd = cfg.int("mamba_head_dim")
        ss = cfg.int("ssm_state_size")
        ng = cfg.int("n_groups", "mamba_n_groups", default=8)
        k = cfg.int("conv_kernel", "mamba_d_conv", default=4)
        if nh % ng:     # each group's B and C serve mamba_num_heads / n_groups heads (repeat_interleave)
            raise BadConfig(f"'{cfg.key('mamba_num_heads')}' ({nh:,}) in config.json of {cfg.who} is not a "
                            f"multiple of '{cfg.key('n_groups', 'mamba_n_groups')}' ({ng:,}); every group of the "
                            f"Mamba2 state serves the same number of heads.")
        conv_bias = cfg.bool("use_conv_bias", "mamba_conv_bias", default=True)
        d_inner = nh * mhd
        conv_dim = d_inner + 2 * ng * ss
        rec = Recurrent(kind="mamba2", conv_state_elems=conv_dim * (k - 1), ssm_state_elems=nh * mhd * ss,
                        num_heads=nh, head_dim=mhd, state_size=ss, conv_channels=conv_dim, conv_kernel=k,
                        chunk_size=cfg.int("chunk_size", "mamba_chunk_size", default=128))
    use_bias = cfg.bool("use_bias", default=False)
    mlp_bias = cfg.bool("mlp_bias", default=False)
    if "mlp" in kinds:
        I = cfg.int("intermediate_size")
        dense = Mlp(kind="dense", intermediate=I, gated=False)
    if "moe" in kinds:
        E = cfg.int("n_routed_experts", "num_local_experts")
        Im = cfg.int("moe_intermediate_size")
        Is = cfg.int("moe_shared_expert_intermediate_size", default=0, positive=False)
        top_k = cfg.int("num_experts_per_tok")
        rules.top_k(cfg, top_k, E, ("num_experts_per_tok",), ("n_routed_experts", "num_local_experts"))
        latent = cfg.int("moe_latent_size", default=None)
        D = latent or H
        moe = Mlp(kind="moe", intermediate=Im, gated=False, num_experts=E, top_k=top_k,
                  shared_intermediate=Is)

    layers = []
    for i, kind in enumerate(kinds):
        t = Tensors(f"model.layers.{i}")
        t.norm("norm", H)
        mixer = mlp = None
        if kind == "mamba":
            t.linear("mixer.in_proj", 2 * d_inner + 2 * ng * ss + nh, H, use_bias)
            t.add("mixer.conv1d", (conv_dim, 1, k), "conv", split="heads")
            if conv_bias:
                t.add("mixer.conv1d.bias", (conv_dim,), "bias", split="heads")
            t.param("mixer.dt_bias", (nh,), "other", split="heads")
            t.param("mixer.A_log", (nh,), "other", split="heads")
            t.param("mixer.D", (nh,), "other", split="heads")
            t.norm("mixer.norm", d_inner, split="heads")
            t.linear("mixer.out_proj", H, d_inner, use_bias)
            mixer = rec
        elif kind == "attention":
            t.linear("mixer.q_proj", heads * hd, H)
            t.linear("mixer.k_proj", kv * hd, H)
            t.linear("mixer.v_proj", kv * hd, H)
            t.linear("mixer.o_proj", H, heads * hd)
            mixer = attn
        elif kind == "mlp":
            t.linear("mixer.up_proj", I, H, mlp_bias)
            t.linear("mixer.down_proj", H, I, mlp_bias)
            mlp = dense
        else:
            t.linear("mixer.gate", E, H, role="router")
            t.add("mixer.experts.up_proj", (Im, D), "expert", count=E)
            t.add("mixer.experts.down_proj", (D, Im), "expert", count=E)
            if Is:
                t.linear("mixer.shared_experts.up_proj", Is, H, mlp_bias)
                t.linear("mixer.shared_experts.down_proj", H, Is, mlp_bias)
            if latent:
                t.linear("mixer.fc1_latent_proj", latent, H, mlp_bias)
                t.linear("mixer.fc2_latent_proj", H, latent, mlp_bias)
            mlp = moe
        layers.append(LayerSpec(i, mixer, mlp, t.tuple()))

    tied = cfg.bool("tie_word_embeddings", default=False)
    outside = embedding_and_head(vocab, H, "model.embeddings", "model.norm_f", tied)
    return make_spec(
        cfg, family="nemotron_h", hidden=H, vocab=vocab, layers=layers, tensors=outside, tied=tied,
        dtype=torch_dtype(cfg), quant=parse_quantization(cfg),
        max_pos=cfg.int("max_position_embeddings", default=None),
        traits=replace(
            GENERIC_TRAITS,
            # vLLM's NemotronHForCausalLMConfig keeps the SSM state in float32 when the config names
            # no dtype (PR #39032)
            mamba_ssm_cache_dtype=cfg.str("mamba_ssm_cache_dtype", default="float32"),
            # its attention's o_proj (under "mixer") is planned as reading a tensor of its own, not
            # the attention kernel's output, as vramplan always has
            attention_module="",
            lora_targets=("q_proj", "k_proj", "v_proj", "o_proj")),
    )
