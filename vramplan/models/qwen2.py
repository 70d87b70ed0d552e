"""Qwen2 / Qwen2.5 (transformers models/qwen2/modeling_qwen2.py).

Llama with a bias on q/k/v (not o). Sliding window only when use_sliding_window is true, and
then for layers >= max_window_layers; released Qwen2.5 configs set it false (all layers full)."""

from dataclasses import replace

from vramplan.models._base import GENERIC_TRAITS, PEFT_Q_V, Cfg, register
from vramplan.models.decoder import DecoderOptions, parse_decoder, qwen_window_layers

QWEN2 = DecoderOptions(family="qwen2", attn_bias="qkv", layer_rule=qwen_window_layers,
                      window_flag="use_sliding_window", traits=replace(GENERIC_TRAITS, lora_targets=PEFT_Q_V))


@register("qwen2")
def parse(cfg: Cfg):
    return parse_decoder(cfg, QWEN2)
