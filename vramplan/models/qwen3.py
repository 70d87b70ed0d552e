"""Qwen3 (transformers models/qwen3/modeling_qwen3.py).

Llama + RMSNorm over each head of q and k (self_attn.q_norm / k_norm, [head_dim]); explicit
head_dim (128) that is not hidden/heads; attention_bias on q/k/v/o (default false)."""

from dataclasses import replace

from vramplan.models._base import GENERIC_TRAITS, PEFT_Q_V, Cfg, register
from vramplan.models.decoder import DecoderOptions, parse_decoder, qwen_window_layers

QWEN3 = DecoderOptions(family="qwen3", attn_bias="config", qk_norm=True, layer_rule=qwen_window_layers,
                      window_flag="use_sliding_window", traits=replace(GENERIC_TRAITS, lora_targets=PEFT_Q_V))


@register("qwen3")
def parse(cfg: Cfg):
    return parse_decoder(cfg, QWEN3)
