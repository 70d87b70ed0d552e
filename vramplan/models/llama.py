"""Llama 1/2/3.x (transformers models/llama/modeling_llama.py, configuration_llama.py).

attention_bias puts a bias on q/k/v/o, mlp_bias on gate/up/down (both default false);
tie_word_embeddings defaults to false (Llama 3.2 1B/3B set it true in their configs).
Every layer is full attention. The generic fallback for unknown model types is this builder too.
"""

from dataclasses import replace

from vramplan.models._base import GENERIC_TRAITS, PEFT_MOE_QWEN2, PEFT_Q_V, Cfg, register
from vramplan.models.decoder import DecoderOptions, parse_decoder

LLAMA = DecoderOptions(family="llama", attn_bias="config", mlp_bias="config",
                       traits=replace(GENERIC_TRAITS, lora_targets=PEFT_Q_V),
                       hidden_per_head="transformers' LlamaConfig.validate_architecture")
# An unknown family: only what any decoder needs (whole heads, kv dividing heads); whether it
# uses rotary embeddings is not known.
GENERIC = DecoderOptions(family="generic", attn_bias="config", mlp_bias="config", rope=False)

# peft's defaults for model types vramplan reads as a generic decoder (peft/utils/constants.py
# TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING; peft raises for the others) and its MoE
# renaming for transformers 5 (PEFT_MOE_QWEN2).
PEFT_TARGETS_OF_GENERIC: dict[str, tuple[str, ...]] = {
    "llama4": PEFT_Q_V, "gemma": PEFT_Q_V, "phi": ("q_proj", "v_proj", "fc1", "fc2"), "opt": PEFT_Q_V,
    "gptj": PEFT_Q_V, "gpt_neox": ("query_key_value",), "stablelm": PEFT_Q_V, "bloom": ("query_key_value",),
}
PEFT_MOE_OF_GENERIC = {"qwen2_moe": PEFT_MOE_QWEN2}


@register("llama")
def parse(cfg: Cfg):
    return parse_decoder(cfg, LLAMA)


def parse_generic(cfg: Cfg):
    traits = replace(GENERIC_TRAITS, lora_targets=PEFT_TARGETS_OF_GENERIC.get(cfg.model_type),
                     lora_moe=PEFT_MOE_OF_GENERIC.get(cfg.model_type, ()))
    return parse_decoder(cfg, replace(GENERIC, traits=traits))
