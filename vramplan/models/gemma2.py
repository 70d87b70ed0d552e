"""Gemma 2 (transformers models/gemma2/modeling_gemma2.py, configuration_gemma2.py).

Llama + pre/post feed-forward RMSNorms (4 norms a layer), tied embeddings by default, head_dim
256 by default (not hidden/heads). Layers alternate: even indices slide (window sliding_window,
default 4096), odd ones are full. Gemma2RMSNorm computes x * (1 + weight) in fp32 and casts only
its result (`norm_fp32`)."""

from dataclasses import replace

from vramplan.models._base import GENERIC_TRAITS, PEFT_Q_V, Cfg, register
from vramplan.models.decoder import DecoderOptions, every_nth_full, parse_decoder

GEMMA2 = DecoderOptions(
    family="gemma2", tie_default=True, attn_bias="config", sandwich_norms=True,
    layer_rule=every_nth_full(2),
    defaults=(("head_dim", 256), ("sliding_window", 4096), ("vocab_size", 256000),
              ("max_position_embeddings", 8192)),
    traits=replace(GENERIC_TRAITS, norm_fp32=True, lora_targets=PEFT_Q_V),
    hidden_per_head="transformers' Gemma2Config.validate_architecture",
)


@register("gemma2")
def parse(cfg: Cfg):
    return parse_decoder(cfg, GEMMA2)
