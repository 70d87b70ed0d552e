"""Mixtral (transformers models/mixtral/modeling_mixtral.py).

Mistral attention + a sparse MoE block in every layer: router mlp.gate [E, H] (no bias) and
num_local_experts SwiGLU experts of width intermediate_size, top num_experts_per_tok."""

from vramplan.models._base import Cfg, register
from vramplan.models.decoder import DecoderOptions, all_sliding_if_window, parse_decoder

MIXTRAL = DecoderOptions(family="mixtral", attn_bias="none", moe="mixtral", layer_rule=all_sliding_if_window)


@register("mixtral")
def parse(cfg: Cfg):
    return parse_decoder(cfg, MIXTRAL)
