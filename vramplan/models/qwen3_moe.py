"""Qwen3-MoE (transformers models/qwen3_moe/modeling_qwen3_moe.py).

Qwen3 attention; a layer is sparse when it is not in mlp_only_layers and (i+1) % decoder_sparse_step
== 0: router mlp.gate [num_experts, H] and num_experts SwiGLU experts of moe_intermediate_size,
no shared expert. Dense layers use intermediate_size. peft has no default LoRA targets for it.
"""

from dataclasses import replace

from vramplan.models._base import GENERIC_TRAITS, PEFT_MOE_QWEN2, Cfg, register
from vramplan.models.decoder import DecoderOptions, parse_decoder, qwen_window_layers

QWEN3_MOE = DecoderOptions(family="qwen3_moe", attn_bias="config", qk_norm=True, moe="qwen3_moe",
                           layer_rule=qwen_window_layers,
                           window_flag="use_sliding_window", traits=replace(GENERIC_TRAITS, lora_moe=PEFT_MOE_QWEN2))
# num_experts (transformers 4 files) or num_local_experts (what transformers 5 writes): _moe_plan
KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "moe_intermediate_size")


@register("qwen3_moe")
def parse(cfg: Cfg):
    return parse_decoder(cfg, QWEN3_MOE, required=KEYS)
