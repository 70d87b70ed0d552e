"""Phi-3 (transformers models/phi3/modeling_phi3.py).

Fused self_attn.qkv_proj [(heads + 2*kv)*hd, H] and mlp.gate_up_proj [2I, H], no biases.
`sliding_window` (Phi-3-mini-4k: 2047) applies to every layer. Its rotary embedding makes new q
and k tensors while v stays a view of qkv_proj's output (`fused_qkv_saved_whole`, trace tier).
peft has no default LoRA targets for it."""

from dataclasses import replace

from vramplan.models._base import GENERIC_TRAITS, Cfg, register
from vramplan.models.decoder import DecoderOptions, all_sliding_if_window, parse_decoder

PHI3 = DecoderOptions(family="phi3", attn_bias="none", fused_qkv=True, fused_gate_up=True,
                      layer_rule=all_sliding_if_window, traits=replace(GENERIC_TRAITS, fused_qkv_saved_whole=True))


@register("phi3")
def parse(cfg: Cfg):
    return parse_decoder(cfg, PHI3)
