"""Mistral (transformers models/mistral/modeling_mistral.py).

Llama without biases. `sliding_window` (v0.1: 4096; v0.2+: null) makes every layer slide."""

from dataclasses import replace

from vramplan.models._base import GENERIC_TRAITS, PEFT_Q_V, Cfg, register
from vramplan.models.decoder import DecoderOptions, all_sliding_if_window, parse_decoder

MISTRAL = DecoderOptions(family="mistral", attn_bias="none", layer_rule=all_sliding_if_window,
                         traits=replace(GENERIC_TRAITS, lora_targets=PEFT_Q_V))


@register("mistral")
def parse(cfg: Cfg):
    return parse_decoder(cfg, MISTRAL)
