"""Llama 1/2/3.x (transformers models/llama/modeling_llama.py, configuration_llama.py).

attention_bias puts a bias on q/k/v/o, mlp_bias on gate/up/down (both default false);
tie_word_embeddings defaults to false (Llama 3.2 1B/3B set it true in their configs).
Every layer is full attention. The generic fallback for unknown model types is this builder too.
"""

from vramplan.models._base import Cfg, register
from vramplan.models.decoder import DecoderOptions, parse_decoder

LLAMA = DecoderOptions(family="llama", attn_bias="config", mlp_bias="config")
GENERIC = DecoderOptions(family="generic", attn_bias="config", mlp_bias="config")


@register("llama")
def parse(cfg: Cfg):
    return parse_decoder(cfg, LLAMA)


def parse_generic(cfg: Cfg):
    return parse_decoder(cfg, GENERIC)
