"""The largest value each config.json size may hold, and why (docs/validation.md, "Model configs").

Every bound is a generous multiple of the largest released model, so that no real config comes
near one, while a mistaken or hostile file (1e308 layers, a 2**63 vocabulary, a 5,000-digit
integer) is refused before any loop or product runs on it (10**5 layers took 37 s to plan and
10**9 ran out of memory). The reference points, from configs/models/ and the Hub configs:

    Llama-3.1-405B   126 layers, hidden 16,384, intermediate 53,248, 128 attention heads
    DeepSeek-V3      61 layers, 256 routed experts, kv_lora_rank 512, q_lora_rank 1,536
    Kimi-K2          61 layers, 384 routed experts, 1.04 trillion parameters
    Qwen3-Next       512 routed experts
    Gemma 3          vocabulary 262,208, head_dim 256, a 896-pixel SigLIP with 14-pixel patches
    Llama 4 Scout    10,485,760 positions
    Nemotron-H-56B   118 blocks, 256 Mamba heads, ssm_state_size 256, conv_kernel 4

The Cfg readers (models/_base.py) look every integer key up here, so every family gets them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bound:
    limit: int       # the largest value accepted
    what: str        # what is counted, for the message: "layers"
    reason: str      # why this limit: the real model it is a multiple of


LAYERS = Bound(1_000, "layers", "8x the deepest released model, Llama-3.1-405B's 126")
WIDTH = Bound(2**20, "dimensions", "64x the widest released model, Llama-3.1-405B's hidden size 16,384")
FFN = Bound(2**22, "dimensions", "about 80x the widest MLP released, Llama-3.1-405B's 53,248")
HEADS = Bound(2**14, "heads", "128x the most attention heads released, Llama-3.1-405B's 128")
HEAD_DIM = Bound(2**14, "dimensions", "64x the largest head released, Gemma's 256")
STATE = Bound(2**14, "dimensions", "64x the largest Mamba state released, Nemotron-H's 256")
VOCAB = Bound(2**24, "tokens", "64x the largest vocabulary released, Gemma 3's 262,208")
EXPERTS = Bound(2**14, "experts", "32x the most experts released, Qwen3-Next's 512")
POSITIONS = Bound(2**30, "positions", "about 100x the longest context released, Llama 4 Scout's 10,485,760")
PIXELS = Bound(2**16, "pixels", "about 70x Gemma 3's 896-pixel images")
SMALL = Bound(2**10, "", "256x the usual value (a convolution of 4, 3 image channels)")
# Any other integer a parser reads: the largest signed 32-bit integer, far above every count or
# size in a config, and small enough that products of them stay exact and fast.
OTHER = Bound(2**31 - 1, "", "the largest signed 32-bit integer; no count or size in a model comes near it")

# The whole model: about 1,000x the largest released model (Kimi-K2, 1.04 trillion parameters).
# Each key above can be in bounds while their product is not (1,000 layers of width 2**20).
PARAMS = Bound(10**15, "parameters", "about 1,000x the largest released model, Kimi-K2's 1.04 trillion")

_GROUPS: dict[Bound, tuple[str, ...]] = {
    LAYERS: ("num_hidden_layers", "n_layer", "max_window_layers", "first_k_dense_replace",
             "num_nextn_predict_layers", "sliding_window_pattern", "_sliding_window_pattern",
             "decoder_sparse_step", "moe_layer_freq"),
    WIDTH: ("hidden_size", "n_embd", "n_embed", "q_lora_rank", "kv_lora_rank", "moe_latent_size"),
    FFN: ("intermediate_size", "n_inner", "ffn_hidden_size", "moe_intermediate_size",
          "moe_shared_expert_intermediate_size"),
    HEADS: ("num_attention_heads", "n_head", "num_key_value_heads", "num_kv_heads", "n_head_kv",
            "mamba_num_heads", "n_groups", "mamba_n_groups"),
    HEAD_DIM: ("head_dim", "attention_head_dim", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
               "mamba_head_dim"),
    STATE: ("ssm_state_size",),
    VOCAB: ("vocab_size",),
    EXPERTS: ("num_local_experts", "num_experts", "n_routed_experts", "num_experts_per_tok",
              "experts_per_token", "n_shared_experts", "n_group", "topk_group"),
    POSITIONS: ("max_position_embeddings", "n_positions", "sliding_window", "attention_chunk_size",
                "chunk_size", "mamba_chunk_size", "mm_tokens_per_image"),
    PIXELS: ("image_size", "patch_size"),
    SMALL: ("conv_kernel", "mamba_d_conv", "num_channels", "num_ln_in_parallel_attn"),
}

BOUNDS: dict[str, Bound] = {key: bound for bound, keys in _GROUPS.items() for key in keys}


def bound_of(key: str) -> Bound:
    """The bound of config key `key` (its last component: text_config.hidden_size -> hidden_size)."""
    return BOUNDS.get(key.rsplit(".", 1)[-1], OTHER)


def describe(bound: Bound) -> str:
    """'more than 1,000 layers (8x ...)', the tail of a refusal."""
    what = f" {bound.what}" if bound.what else ""
    return f"more than {bound.limit:,}{what} ({bound.reason})"


__all__ = ["Bound", "BOUNDS", "PARAMS", "bound_of", "describe"]
