"""Vision towers and projectors of multimodal checkpoints, read from their `vision_config`.

Each reader lists the tensors transformers 5 builds (names as `named_parameters()` prints them):

Qwen2-VL (qwen2_vl/modeling_qwen2_vl.py, Qwen2VisionTransformerPretrainedModel), at model.visual:
    patch_embed.proj   Conv3d [E, C, temporal_patch, p, p], no bias      (E = embed_dim)
    blocks.j: norm1, norm2 LayerNorm [E] (+bias); attn.qkv [3E, E] + bias, attn.proj [E, E] + bias;
              mlp.fc1 [E*mlp_ratio, E] + bias, mlp.fc2 [E, E*mlp_ratio] + bias
    merger: ln_q LayerNorm [E] (+bias), mlp.0 [E*m^2, E*m^2] + bias, mlp.2 [hidden_size, E*m^2] + bias
            (m = spatial_merge_size)
Qwen2.5-VL (qwen2_5_vl/modeling_qwen2_5_vl.py): E = hidden_size, RMSNorms (weight only), a gated
    MLP (gate_proj, up_proj [I, E] + bias, down_proj [E, I] + bias), merger.ln_q RMSNorm, merger
    output out_hidden_size.
CLIP for Llava, Llava-NeXT (clip/modeling_clip.py CLIPVisionTransformer, llava/modeling_llava.py;
SigLIP towers as in models/gemma3.py; NeXT and OneVision add model.image_newline [H]):
    embeddings.class_embedding [E], patch_embedding [E, C, p, p] (no bias), position_embedding
    [(image/p)^2 + 1, E]; pre_layrnorm; encoder.layers.j: q/k/v/out_proj [E, E] + bias,
    layer_norm1/2, mlp.fc1 [I, E] + bias, fc2 [E, I] + bias; post_layernorm (LayerNorms with bias).
    Projector: linear_1 [H, E * n_feature_layers] (+bias), linear_2 [H, H] (+bias)
    (multimodal_projector_bias, default true).
Pixtral for Mistral 3 (pixtral/modeling_pixtral.py, mistral3/modeling_mistral3.py):
    patch_conv [E, C, p, p], ln_pre RMSNorm; transformer.layers.j: attention_norm, ffn_norm,
    feed_forward gate/up [I, E], down [E, I], attention q/k/v/o [E, E] (no biases).
    Projector: norm RMSNorm [E], patch_merger.merging_layer [E, E*m^2], linear_1 [H, E],
    linear_2 [H, H] (+bias when multimodal_projector_bias).
"""

from __future__ import annotations

from typing import Callable

from vramplan.spec import Tensor, VisionTower
from vramplan.models._base import Cfg, Tensors
from vramplan.models.gemma3 import SIGLIP_DEFAULTS, siglip_vision_tensors


def _summary(hidden: int, layers: int, patches: int, tokens: int, items: list[Tensor]) -> VisionTower:
    return VisionTower(hidden_size=hidden, num_layers=layers, patches_per_image=patches, tokens_per_image=tokens,
                       params=sum(t.numel for t in items))


def qwen2_vl(cfg: Cfg, v: Cfg, H: int, v25: bool = False):
    E = v.int("hidden_size") if v25 else v.int("embed_dim")
    depth = v.int("depth")
    C, p, tp = v.int("in_channels"), v.int("patch_size"), v.int("temporal_patch_size")
    m = v.int("spatial_merge_size")
    t = Tensors("model.visual")
    t.add("patch_embed.proj", (E, C, tp, p, p), "conv")
    ln = not v25
    I = v.int("intermediate_size") if v25 else E * v.int("mlp_ratio")
    for j in range(depth):
        b = f"blocks.{j}"
        t.norm(f"{b}.norm1", E, bias=ln)
        t.norm(f"{b}.norm2", E, bias=ln)
        t.linear(f"{b}.attn.qkv", 3 * E, E, bias=True, split="column")
        t.linear(f"{b}.attn.proj", E, E, bias=True, split="row")
        if v25:
            t.linear(f"{b}.mlp.gate_proj", I, E, bias=True)
            t.linear(f"{b}.mlp.up_proj", I, E, bias=True)
            t.linear(f"{b}.mlp.down_proj", E, I, bias=True)
        else:
            t.linear(f"{b}.mlp.fc1", I, E, bias=True)
            t.linear(f"{b}.mlp.fc2", E, I, bias=True)
    merged = E * m * m
    out = v.int("out_hidden_size") if v25 else v.int("hidden_size")
    t.norm("merger.ln_q", E, bias=ln)
    t.linear("merger.mlp.0", merged, merged, bias=True, split="column")
    t.linear("merger.mlp.2", out, merged, bias=True, split="row")
    # dynamic resolution: patches per image depend on the image; 0 says "not fixed"
    return t.items, ["model.visual"], _summary(E, depth, 0, 0, t.items)


def qwen2_5_vl(cfg: Cfg, v: Cfg, H: int):
    return qwen2_vl(cfg, v, H, v25=True)


def qwen3_vl(cfg: Cfg, v: Cfg, H: int):
    """Qwen3-VL (qwen3_vl/modeling_qwen3_vl.py, Qwen3VLVisionModel), at model.visual: Conv3d patch
    embedding with bias, a learned pos_embed [num_position_embeddings, E], blocks with LayerNorms,
    qkv/proj and a plain linear_fc1/linear_fc2 MLP (all with biases), the merger (LayerNorm [E],
    linear_fc1 [E*m^2, E*m^2], linear_fc2 [out, E*m^2]) and one deepstack merger per
    deepstack_visual_indexes entry (the same, its LayerNorm over E*m^2)."""
    E, I, depth = v.int("hidden_size"), v.int("intermediate_size"), v.int("depth")
    C, p, tp, m = v.int("in_channels"), v.int("patch_size"), v.int("temporal_patch_size"), v.int("spatial_merge_size")
    out = v.int("out_hidden_size")
    t = Tensors("model.visual")
    t.add("patch_embed.proj", (E, C, tp, p, p), "conv")
    t.add("patch_embed.proj.bias", (E,), "bias")
    t.add("pos_embed", (v.int("num_position_embeddings"), E), "embedding", split="replicated")
    for j in range(depth):
        b = f"blocks.{j}"
        t.norm(f"{b}.norm1", E, bias=True)
        t.norm(f"{b}.norm2", E, bias=True)
        t.linear(f"{b}.attn.qkv", 3 * E, E, bias=True, split="column")
        t.linear(f"{b}.attn.proj", E, E, bias=True, split="row")
        t.linear(f"{b}.mlp.linear_fc1", I, E, bias=True, split="column")
        t.linear(f"{b}.mlp.linear_fc2", E, I, bias=True, split="row")
    merged = E * m * m
    deep = v.raw("deepstack_visual_indexes", default=[8, 16, 24])
    n_deep = len(deep) if isinstance(deep, list) else 0
    for name, norm in [("merger", E)] + [(f"deepstack_merger_list.{k}", merged) for k in range(n_deep)]:
        t.norm(f"{name}.norm", norm, bias=True)
        t.linear(f"{name}.linear_fc1", merged, merged, bias=True, split="column")
        t.linear(f"{name}.linear_fc2", out, merged, bias=True, split="row")
    return t.items, ["model.visual"], _summary(E, depth, 0, 0, t.items)


def llava(cfg: Cfg, v: Cfg, H: int):
    """Llava, Llava-NeXT, Llava-OneVision: a CLIP or SigLIP tower, a two-layer projector
    (linear_1 [H, E x feature layers], linear_2 [H, H]) and, for NeXT and OneVision, the
    image_newline [H] parameter."""
    if v.str("model_type", default="clip_vision_model") == "siglip_vision_model":
        tower = siglip_vision_tensors(v, "model.vision_tower")
        E = v.int("hidden_size")
        L = v.int("num_hidden_layers")
        tokens = (v.int("image_size") // v.int("patch_size")) ** 2
    else:
        tower, E, L, tokens = _clip(v)
    layer = cfg.raw("vision_feature_layer", default=-2)
    n_feat = len(layer) if isinstance(layer, list) else 1
    bias = cfg.bool("multimodal_projector_bias", default=True)
    proj = Tensors("model")
    if cfg.model_type in ("llava_next", "llava_onevision"):
        proj.param("image_newline", (H,), "other", split="replicated")
    proj.linear("multi_modal_projector.linear_1", H, E * n_feat, bias=bias, split="column")
    proj.linear("multi_modal_projector.linear_2", H, H, bias=bias, split="row")
    items = tower + proj.items
    prefixes = ["model.vision_tower", "model.multi_modal_projector", "model.image_newline"]
    return items, prefixes, _summary(E, L, tokens, tokens, items)


def paligemma(cfg: Cfg, v: Cfg, H: int):
    """PaliGemma: SigLIP (no head) and one linear [projection_dim, E] + bias."""
    tower = siglip_vision_tensors(v, "model.vision_tower")
    E = v.int("hidden_size")
    proj = Tensors("model.multi_modal_projector")
    proj.linear("linear", v.int("projection_dim"), E, bias=True, split="column")
    items = tower + proj.items
    patches = (v.int("image_size") // v.int("patch_size")) ** 2
    return items, ["model.vision_tower", "model.multi_modal_projector"], \
        _summary(E, v.int("num_hidden_layers"), patches, patches, items)


def _clip(v: Cfg):
    E, I, L = v.int("hidden_size"), v.int("intermediate_size"), v.int("num_hidden_layers")
    C, p, image = v.int("num_channels"), v.int("patch_size"), v.int("image_size")
    n_pos = (image // p) ** 2 + 1
    t = Tensors("model.vision_tower")
    t.param("embeddings.class_embedding", (E,), "other")
    t.add("embeddings.patch_embedding", (E, C, p, p), "conv")
    t.add("embeddings.position_embedding", (n_pos, E), "embedding", split="replicated")
    t.norm("pre_layrnorm", E, bias=True)
    for j in range(L):
        e = f"encoder.layers.{j}"
        for n in ("k_proj", "v_proj", "q_proj", "out_proj"):
            t.linear(f"{e}.self_attn.{n}", E, E, bias=True)
        t.norm(f"{e}.layer_norm1", E, bias=True)
        t.linear(f"{e}.mlp.fc1", I, E, bias=True)
        t.linear(f"{e}.mlp.fc2", E, I, bias=True)
        t.norm(f"{e}.layer_norm2", E, bias=True)
    t.norm("post_layernorm", E, bias=True)
    return t.items, E, L, (image // p) ** 2


def mistral3_pixtral(cfg: Cfg, v: Cfg, H: int):
    E, I, L = v.int("hidden_size"), v.int("intermediate_size"), v.int("num_hidden_layers")
    C, p, image = v.int("num_channels"), v.int("patch_size"), v.int("image_size")
    t = Tensors("model.vision_tower")
    t.add("patch_conv", (E, C, p, p), "conv")
    t.norm("ln_pre", E)
    for j in range(L):
        e = f"transformer.layers.{j}"
        t.norm(f"{e}.attention_norm", E)
        t.linear(f"{e}.feed_forward.gate_proj", I, E)
        t.linear(f"{e}.feed_forward.up_proj", I, E)
        t.linear(f"{e}.feed_forward.down_proj", E, I, split="row")
        for n in ("k_proj", "v_proj", "q_proj"):
            t.linear(f"{e}.attention.{n}", E, E, split="column")
        t.linear(f"{e}.attention.o_proj", E, E, split="row")
        t.norm(f"{e}.ffn_norm", E)
    m = cfg.int("spatial_merge_size", default=2)
    bias = cfg.bool("multimodal_projector_bias", default=False)
    layer = cfg.raw("vision_feature_layer", default=-1)
    n_feat = len(layer) if isinstance(layer, list) else 1
    proj = Tensors("model.multi_modal_projector")
    proj.norm("norm", E * n_feat)
    proj.linear("patch_merger.merging_layer", E * n_feat, E * n_feat * m * m, split="replicated")
    proj.linear("linear_1", H, E * n_feat, bias=bias, split="column")
    proj.linear("linear_2", H, H, bias=bias, split="row")
    patches = (image // p) ** 2
    return t.items + proj.items, ["model.vision_tower", "model.multi_modal_projector"], \
        _summary(E, L, patches, patches // (m * m), t.items + proj.items)


def generic_vit(v: Cfg, H: int, key: str):
    """An approximation for a tower no reader here models: a plain ViT of the config's sizes
    (the caller labels the spec approximate and says so)."""
    v.require_all(tuple(k for k in ("hidden_size",) if not v.has("hidden_size", "embed_dim", "d_model")))
    E = v.int("hidden_size", "embed_dim", "d_model")
    L = v.int("num_hidden_layers", "depth", "num_layers", "encoder_layers")
    I = v.int("intermediate_size", "encoder_ffn_dim", default=4 * E)
    C = v.int("num_channels", "in_channels", default=3)
    p = v.int("patch_size", default=14)
    prefix = "model.vision_tower" if key == "vision_config" else "model.audio_tower"
    t = Tensors(prefix)
    t.add("patch_embedding", (E, C, p, p), "conv")
    for j in range(L):
        e = f"layers.{j}"
        for n in ("q_proj", "k_proj", "v_proj"):
            t.linear(f"{e}.{n}", E, E, bias=True)
        t.linear(f"{e}.out_proj", E, E, bias=True)
        t.norm(f"{e}.layer_norm1", E, bias=True)
        t.norm(f"{e}.layer_norm2", E, bias=True)
        t.linear(f"{e}.fc1", I, E, bias=True)
        t.linear(f"{e}.fc2", E, I, bias=True)
    proj = Tensors("model.multi_modal_projector")
    proj.linear("linear", H, E, bias=True)
    items = t.items + proj.items
    summary = _summary(E, L, 0, 0, items) if key == "vision_config" else None
    return items, [prefix, "model.multi_modal_projector"], summary


# The tower config classes' defaults, for the keys a file leaves out (transformers 5.25:
# Qwen2VLVisionConfig, Qwen2_5_VLVisionConfig, CLIPVisionConfig, PixtralVisionConfig). Llava and
# Mistral 3 without any vision_config build CLIP ViT-L/14-336 and Pixtral with their defaults.
QWEN2_VL_VISION = {"depth": 32, "embed_dim": 1280, "hidden_size": 3584, "mlp_ratio": 4, "num_heads": 16,
                   "in_channels": 3, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}
QWEN2_5_VL_VISION = {"depth": 32, "hidden_size": 3584, "intermediate_size": 3420, "num_heads": 16,
                     "in_channels": 3, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
                     "out_hidden_size": 3584}
CLIP_VISION = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
               "num_channels": 3, "image_size": 224, "patch_size": 32}
PIXTRAL_VISION = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                  "num_channels": 3, "image_size": 1024, "patch_size": 16}

QWEN3_VL_VISION = {"depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16, "in_channels": 3,
                   "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 3584,
                   "num_position_embeddings": 2304, "deepstack_visual_indexes": [8, 16, 24]}
SIGLIP_VISION = dict(SIGLIP_DEFAULTS, projection_dim=2048)
_CLIP_OR_SIGLIP = {"clip_vision_model": CLIP_VISION, "siglip_vision_model": SIGLIP_VISION}

# (model_type of the whole checkpoint, its tower's config key) -> (reader(cfg, tower cfg, text
# hidden), {tower model_type it reads: that config class's defaults}; the first is what the
# checkpoint's config class builds when the file names none, another one is not this reader's)
TOWERS: dict[tuple[str, str], tuple[Callable, dict[str, dict]]] = {
    # Qwen's published files (written by transformers 4.x) name the tower by the checkpoint's own
    # model_type ("qwen2_5_vl"); transformers 5 writes "qwen2_5_vl_vision". Both are this tower.
    ("qwen2_vl", "vision_config"): (qwen2_vl, {"qwen2_vl_vision": QWEN2_VL_VISION, "qwen2_vl": QWEN2_VL_VISION}),
    ("qwen2_5_vl", "vision_config"): (qwen2_5_vl, {"qwen2_5_vl_vision": QWEN2_5_VL_VISION,
                                                   "qwen2_5_vl": QWEN2_5_VL_VISION}),
    ("qwen3_vl", "vision_config"): (qwen3_vl, {"qwen3_vl_vision": QWEN3_VL_VISION, "qwen3_vl": QWEN3_VL_VISION}),
    ("qwen3_vl_moe", "vision_config"): (qwen3_vl, {"qwen3_vl_moe_vision": QWEN3_VL_VISION,
                                                   "qwen3_vl_moe": QWEN3_VL_VISION}),
    ("llava", "vision_config"): (llava, _CLIP_OR_SIGLIP),
    ("llava_next", "vision_config"): (llava, _CLIP_OR_SIGLIP),
    ("llava_onevision", "vision_config"): (llava, {"siglip_vision_model": SIGLIP_VISION, **_CLIP_OR_SIGLIP}),
    ("paligemma", "vision_config"): (paligemma, {"siglip_vision_model": SIGLIP_VISION}),
    ("mistral3", "vision_config"): (mistral3_pixtral, {"pixtral": PIXTRAL_VISION}),
}

__all__ = ["TOWERS", "generic_vit"]
