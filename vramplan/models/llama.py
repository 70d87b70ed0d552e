"""Llama 1/2/3.x (transformers models/llama/modeling_llama.py, configuration_llama.py).

attention_bias puts a bias on q/k/v/o, mlp_bias on gate/up/down (both default false);
tie_word_embeddings defaults to false (Llama 3.2 1B/3B set it true in their configs).
Every layer is full attention.
"""

from dataclasses import replace

from vramplan.models._base import GENERIC_TRAITS, PEFT_Q_V, Cfg, register
from vramplan.models.decoder import DecoderOptions, parse_decoder

LLAMA = DecoderOptions(family="llama", attn_bias="config", mlp_bias="config",
                       traits=replace(GENERIC_TRAITS, lora_targets=PEFT_Q_V),
                       hidden_per_head="transformers' LlamaConfig.validate_architecture")


@register("llama")
def parse(cfg: Cfg):
    return parse_decoder(cfg, LLAMA)

