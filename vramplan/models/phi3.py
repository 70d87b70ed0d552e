"""Phi-3 (transformers models/phi3/modeling_phi3.py).

Fused self_attn.qkv_proj [(heads + 2*kv)*hd, H] and mlp.gate_up_proj [2I, H], no biases.
`sliding_window` (Phi-3-mini-4k: 2047) applies to every layer."""

from vramplan.models._base import Cfg, register
from vramplan.models.decoder import DecoderOptions, all_sliding_if_window, parse_decoder

PHI3 = DecoderOptions(family="phi3", attn_bias="none", fused_qkv=True, fused_gate_up=True,
                      layer_rule=all_sliding_if_window)


@register("phi3")
def parse(cfg: Cfg):
    return parse_decoder(cfg, PHI3)
