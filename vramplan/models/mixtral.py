"""Mixtral (transformers models/mixtral/modeling_mixtral.py).

Mistral attention + a sparse MoE block in every layer: router mlp.gate [E, H] (no bias) and
num_local_experts SwiGLU experts of width intermediate_size, top num_experts_per_tok."""

from dataclasses import replace

from vramplan.models._base import GENERIC_TRAITS, PEFT_Q_V, Cfg, register
from vramplan.models.decoder import DecoderOptions, all_sliding_if_window, parse_decoder

# peft 0.21's renaming of Mixtral's v4 MoE names (block_sparse_moe.gate, experts.N.w1/w3/w2) to
# transformers 5's fused parameters (_MOE_TARGET_MODULE_MAPPING["mixtral"]).
PEFT_MOE_MIXTRAL = (("gate", "router"), ("w1", "gate_up"), ("w3", "gate_up"), ("w2", "down"))

MIXTRAL = DecoderOptions(family="mixtral", attn_bias="none", moe="mixtral", layer_rule=all_sliding_if_window,
                         traits=replace(GENERIC_TRAITS, lora_targets=PEFT_Q_V, lora_moe=PEFT_MOE_MIXTRAL))


@register("mixtral")
def parse(cfg: Cfg):
    return parse_decoder(cfg, MIXTRAL)
