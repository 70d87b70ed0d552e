"""Gemma 3 (transformers models/gemma3/modeling_gemma3.py, configuration_gemma3.py) and its SigLIP
vision tower (models/siglip/modeling_siglip.py, configuration_siglip.py).

Text (Gemma3TextModel): Gemma 2's layer (4 RMSNorms, tied embeddings) + q_norm/k_norm [head_dim].
Layer i is full when (i+1) % sliding_window_pattern == 0 (default 6: five sliding, one full),
unless the config lists layer_types. Hub files of the multimodal checkpoints leave most text keys
out, so Gemma3TextConfig's defaults are filled in: vocab_size 262208, heads 8, kv heads 4,
head_dim 256, sliding_window 4096, max_position_embeddings 131072, tied embeddings.

model_type "gemma3" is Gemma3ForConditionalGeneration, parameters named
    model.language_model.*                      the text decoder above
    model.vision_tower.vision_model.*           SiglipVisionModel
    model.multi_modal_projector.*               mm_input_projection_weight [Hv, H], mm_soft_emb_norm [Hv]
    lm_head                                     tied to model.language_model.embed_tokens
model_type "gemma3_text" is Gemma3ForCausalLM (model.*, lm_head).

SigLIP vision transformer (SiglipVisionConfig defaults: hidden 768, intermediate 3072, 12 layers,
12 heads, 3 channels, image 224, patch 16; Gemma 3 ships 1152 / 4304 / 27 / 16 / 896 / 14):
    embeddings.patch_embedding   Conv2d [Hv, C, p, p] + bias [Hv]
    embeddings.position_embedding [(image/patch)^2, Hv]
    encoder.layers.j: layer_norm1, layer_norm2 (LayerNorm: weight + bias),
                      self_attn.{q,k,v,out}_proj [Hv, Hv] + bias, mlp.fc1 [Iv, Hv] + bias, mlp.fc2 [Hv, Iv] + bias
    post_layernorm (weight + bias)
    head (only when vision_use_head is not false): probe [1, 1, Hv], attention (nn.MultiheadAttention:
        in_proj_weight [3Hv, Hv] + in_proj_bias, out_proj [Hv, Hv] + bias), layernorm, mlp fc1/fc2
"""

from __future__ import annotations

from dataclasses import replace

from vramplan.spec import Tensor, VisionTower
from vramplan.errors import BadConfig
from vramplan.models import rules
from vramplan.models._base import GENERIC_TRAITS, PEFT_Q_V, Cfg, Tensors, make_spec, register, torch_dtype
from vramplan.models.decoder import DecoderOptions, build_decoder, every_nth_full, parse_decoder
from vramplan.models.quant import parse_quantization

TEXT_DEFAULTS = (
    ("vocab_size", 262208), ("num_attention_heads", 8), ("num_key_value_heads", 4), ("head_dim", 256),
    ("sliding_window", 4096), ("sliding_window_pattern", 6), ("max_position_embeddings", 131072),
    ("rope_theta", 1_000_000.0), ("rope_local_base_freq", 10_000.0), ("query_pre_attn_scalar", 256),
    ("attention_bias", False), ("tie_word_embeddings", True),
)
# The three that fix the model's size are never defaulted: a file without them is not a Gemma 3.
TEXT_KEYS = ("hidden_size", "num_hidden_layers", "intermediate_size")

SIGLIP_DEFAULTS = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "num_channels": 3, "image_size": 224, "patch_size": 16, "layer_norm_eps": 1e-6,
}


# Gemma3RMSNorm computes x * (1 + weight) in fp32 and casts only its result. peft's default LoRA
# targets cover gemma3_text (q_proj, v_proj) but not the multimodal gemma3.
TEXT_TRAITS = replace(GENERIC_TRAITS, norm_fp32=True, lora_targets=PEFT_Q_V)
MULTIMODAL_TRAITS = replace(GENERIC_TRAITS, norm_fp32=True,
                            towers=("model.vision_tower", "model.multi_modal_projector"))


def _opts(prefix: str, traits) -> DecoderOptions:
    return DecoderOptions(family="gemma3", tie_default=True, attn_bias="config", qk_norm=True,
                          sandwich_norms=True, layer_rule=every_nth_full(6), prefix=prefix,
                          defaults=TEXT_DEFAULTS, traits=traits,
                          hidden_per_head="transformers' Gemma3TextConfig.validate_architecture")


@register("gemma3_text")
def parse_text(cfg: Cfg):
    return parse_decoder(cfg, _opts("model", TEXT_TRAITS), required=TEXT_KEYS)


@register("gemma3")
def parse(cfg: Cfg):
    text = cfg.sub("text_config")
    layers, outside, info = build_decoder(text, _opts("model.language_model", MULTIMODAL_TRAITS),
                                          required=TEXT_KEYS)
    if cfg.raw("vision_config") is None:
        cfg.warn("config.json has no vision_config; SiglipVisionConfig's defaults (a 224-pixel, "
                 "12-layer SigLIP) are assumed, as transformers does.")
    vision = cfg.sub("vision_config", SIGLIP_DEFAULTS)
    tower = siglip_vision_tensors(vision, "model.vision_tower.vision_model")
    Hv, H = vision.int("hidden_size"), info["hidden"]
    proj = Tensors("model.multi_modal_projector")
    proj.param("mm_input_projection_weight", (Hv, H), "other")
    proj.norm("mm_soft_emb_norm", Hv)

    # Order as transformers lists them: language model, vision tower, projector, (lm_head).
    head = [t for t in outside if t.role == "lm_head"]
    body = [t for t in outside if t.role != "lm_head"]
    tensors = body + tower + proj.items + head
    patches = (vision.int("image_size") // vision.int("patch_size")) ** 2      # checked in siglip_vision_tensors
    return make_spec(
        cfg, family="gemma3", hidden=H, vocab=info["vocab"], layers=layers, tensors=tensors,
        tied=info["tied"], dtype=torch_dtype(cfg, text), quant=parse_quantization(cfg),
        max_pos=text.int("max_position_embeddings", default=131072),
        traits=MULTIMODAL_TRAITS,
        vision=VisionTower(
            hidden_size=Hv, num_layers=vision.int("num_hidden_layers"), patches_per_image=patches,
            tokens_per_image=cfg.int("mm_tokens_per_image", default=256),
            params=sum(t.numel for t in tower) + sum(t.numel for t in proj.items),
            intermediate_size=vision.int("intermediate_size"),
            patch_input=vision.int("num_channels") * vision.int("patch_size") ** 2,
        ),
    )


def siglip_vision_tensors(v: Cfg, prefix: str) -> list[Tensor]:
    Hv = v.int("hidden_size")
    Iv = v.int("intermediate_size")
    Lv = v.int("num_hidden_layers")
    C = v.int("num_channels")
    p = v.int("patch_size")
    image = v.int("image_size")
    # SiglipAttention raises unless the hidden size is a multiple of the heads
    rules.hidden_per_head(v, Hv, v.int("num_attention_heads"), "transformers' SiglipAttention")
    if p > image:
        raise BadConfig(f"'{v.key('patch_size')}' ({p:,}) in config.json of {v.who} is larger than "
                        f"'{v.key('image_size')}' ({image:,}); an image must hold at least one patch.")
    n_pos = (image // p) ** 2
    t = Tensors(prefix)
    t.add("embeddings.patch_embedding", (Hv, C, p, p), "conv")
    t.add("embeddings.patch_embedding.bias", (Hv,), "bias")
    t.add("embeddings.position_embedding", (n_pos, Hv), "embedding")
    for j in range(Lv):
        e = f"encoder.layers.{j}"
        t.norm(f"{e}.layer_norm1", Hv, bias=True)
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            t.linear(f"{e}.self_attn.{name}", Hv, Hv, bias=True)
        t.norm(f"{e}.layer_norm2", Hv, bias=True)
        t.linear(f"{e}.mlp.fc1", Iv, Hv, bias=True)
        t.linear(f"{e}.mlp.fc2", Hv, Iv, bias=True)
    t.norm("post_layernorm", Hv, bias=True)
    if v.bool("vision_use_head", default=True):
        t.param("head.probe", (1, 1, Hv), "other")
        t.param("head.attention.in_proj_weight", (3 * Hv, Hv), "linear")
        t.param("head.attention.in_proj_bias", (3 * Hv,), "bias")
        t.linear("head.attention.out_proj", Hv, Hv, bias=True)
        t.norm("head.layernorm", Hv, bias=True)
        t.linear("head.mlp.fc1", Iv, Hv, bias=True)
        t.linear("head.mlp.fc2", Hv, Iv, bias=True)
    return t.items
