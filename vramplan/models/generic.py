"""The generic config reader: a decoder read from transformers' own config conventions, for the
model types no family module reads.

What a config.json says (sizes, heads, `head_dim`, `num_key_value_heads`, `layer_types`,
`sliding_window`, `attention_chunk_size`, bias flags, MoE keys, `text_config`) is read the same
way for every model type. What it does not say (module names, whether the MLP is gated, which
norms a layer has and whether they carry a bias, whether attention and MLP run in parallel) is
the model code's, and is written down per model type in LAYOUTS from reading transformers 5's
modeling_<type>.py. A model type in LAYOUTS is verified against transformers on the meta device
(tests/test_generic_reader.py) and its spec is `exact`; any other model type is read with the
llama-like GENERIC layout and its spec is `approximate`, listing what it assumed.

What the reader cannot size it refuses (exit 2) rather than guess: encoder-only and
encoder-decoder models, state-space and linear-attention hybrids, multi-head latent attention
outside the DeepSeek module (models/deepseek.py), and a config missing the keys a layer needs.
docs/models.md lists the keys, the layouts and the refusals.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from vramplan.errors import BadConfig
from vramplan.spec import LayerSpec, Mlp, ModelSpec, Tensor
from vramplan.models import rules
from vramplan.models._base import (FULL, GENERIC_TRAITS, PEFT_MOE_QWEN2, PEFT_Q_V, SLIDING, Cfg, Tensors,
                                   _clip, attention, explicit_layer_types, make_spec, torch_dtype)
from vramplan.models.quant import parse_quantization
from vramplan.models.towers import TOWERS, generic_vit

# A bias: a constant, or the config key that switches it (read as a boolean) and its default.
Bias = bool | tuple[str, bool]
ATTENTION_BIAS: Bias = ("attention_bias", False)
MLP_BIAS: Bias = ("mlp_bias", False)


@dataclass(frozen=True, kw_only=True)
class Layout:
    """What the model code of one model type builds that its config does not say. Names are the
    module paths `model.named_parameters()` prints."""

    body: str = "model"                 # the decoder's module path (multimodal: model.language_model)
    embed: str = "embed_tokens"
    final_norm: str = "norm"            # "" : no final norm parameters
    layers: str = "layers"
    attn: str = "self_attn"
    qkv: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")   # one name: a fused QKV projection
    o: str = "o_proj"
    qkv_bias: Bias = ATTENTION_BIAS
    o_bias: Bias = ATTENTION_BIAS
    qk_norm: str = ""                   # "head": q_norm, k_norm [head_dim]; "width": [heads*hd], [kv*hd]
    qk_norm_names: tuple[str, str] = ("q_norm", "k_norm")
    qk_norm_key: str = ""               # the config flag that turns them on ("": always)
    mlp: str = "mlp"
    gated: bool = True                  # SwiGLU-style gate and up projections; False: fc1 -> act -> fc2
    mlp_names: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")   # ("gate_up_proj", "down_proj"): fused
    mlp_bias: Bias = MLP_BIAS
    norm: str = "rms"                   # "rms": weight; "ln": LayerNorm weight + bias; "none": no parameters
    layer_norms: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")
    lm_head_bias: Bias = False
    tie_default: bool = False
    windows: str = "all"                # which layers `sliding_window` applies to without `layer_types`:
                                        # "all", "qwen" (use_sliding_window, max_window_layers), "none"
    mlp_extra: tuple[tuple[str, int], ...] = ()   # parameters of the MLP besides its projections
                                        # (Apertus' xIELU alpha_p, alpha_n [1])
    dense_width: str = "intermediate_size"   # the dense MLP's width key (Llama 4: intermediate_size_mlp)
    moe_block: str = "mlp"
    router: str = "gate"
    shared: str = ""                    # "qwen2": shared_expert + shared_expert_gate [1, H];
                                        # "deepseek": shared_experts of n_shared_experts x moe width;
                                        # "llama4": shared_expert of intermediate_size, no gate
    o_from_hidden: bool = False         # o_proj is [H, H] whatever head_dim (Helium's HeliumAttention)
    gqa: bool = True                    # reads num_key_value_heads (False: one KV head per query head)
    parallel: bool = False              # attention and MLP read the same normed input (documentation:
                                        # the parameters are the same)
    traits: object = GENERIC_TRAITS
    source: str = ""                    # the transformers file this layout was read from


_LN = dict(norm="ln")
_QWEN_MOE_TRAITS = replace(GENERIC_TRAITS, lora_moe=PEFT_MOE_QWEN2)

# Verified against transformers 5 on the meta device (tests/test_generic_reader.py, LAYOUT_CASES).
LAYOUTS: dict[str, Layout] = {
    # llama-like text decoders of multimodal checkpoints and families without a module of their own
    "llama": Layout(traits=replace(GENERIC_TRAITS, lora_targets=PEFT_Q_V), source="llama/modeling_llama.py"),
    "mistral": Layout(qkv_bias=False, o_bias=False, mlp_bias=False, traits=replace(GENERIC_TRAITS, lora_targets=PEFT_Q_V),
                      source="mistral/modeling_mistral.py"),
    "qwen2": Layout(qkv_bias=True, o_bias=False, mlp_bias=False, windows="qwen",
                    traits=replace(GENERIC_TRAITS, lora_targets=PEFT_Q_V), source="qwen2/modeling_qwen2.py"),
    "qwen2_vl_text": Layout(qkv_bias=True, o_bias=False, mlp_bias=False, windows="qwen",
                            source="qwen2_vl/modeling_qwen2_vl.py"),
    "qwen2_5_vl_text": Layout(qkv_bias=True, o_bias=False, mlp_bias=False, windows="qwen",
                              source="qwen2_5_vl/modeling_qwen2_5_vl.py"),
    "qwen3": Layout(qk_norm="head", mlp_bias=False, windows="qwen",
                    traits=replace(GENERIC_TRAITS, lora_targets=PEFT_Q_V), source="qwen3/modeling_qwen3.py"),
    "qwen3_vl_text": Layout(qk_norm="head", mlp_bias=False, windows="none", source="qwen3_vl/modeling_qwen3_vl.py"),
    "qwen3_vl_moe_text": Layout(qk_norm="head", mlp_bias=False, windows="none",
                                source="qwen3_vl_moe/modeling_qwen3_vl_moe.py"),
    "granite": Layout(source="granite/modeling_granite.py"),
    "smollm3": Layout(tie_default=True, source="smollm3/modeling_smollm3.py"),
    "helium": Layout(o_from_hidden=True, source="helium/modeling_helium.py (o_proj: nn.Linear(hidden, hidden))"),
    "gemma": Layout(tie_default=True, mlp_bias=False, traits=replace(GENERIC_TRAITS, norm_fp32=True, lora_targets=PEFT_Q_V),
                    source="gemma/modeling_gemma.py"),
    "olmo": Layout(norm="none", final_norm="", layer_norms=("input_layernorm", "post_attention_layernorm"),
                   mlp_bias=False, source="olmo/modeling_olmo.py (OlmoLayerNorm has no parameters)"),
    "olmo2": Layout(qk_norm="width", layer_norms=("post_attention_layernorm", "post_feedforward_layernorm"),
                    mlp_bias=False, source="olmo2/modeling_olmo2.py"),
    "olmo3": Layout(qk_norm="width", layer_norms=("post_attention_layernorm", "post_feedforward_layernorm"),
                    mlp_bias=False, windows="none", source="olmo3/modeling_olmo3.py"),
    "exaone4": Layout(qk_norm="head", layer_norms=("post_attention_layernorm", "post_feedforward_layernorm"),
                      qkv_bias=False, o_bias=False, mlp_bias=False, windows="none",
                      source="exaone4/modeling_exaone4.py"),
    "glm": Layout(o_bias=False, mlp_names=("gate_up_proj", "down_proj"), mlp_bias=False, source="glm/modeling_glm.py"),
    "glm4": Layout(o_bias=False, mlp_names=("gate_up_proj", "down_proj"), mlp_bias=False,
                   layer_norms=("input_layernorm", "post_attention_layernorm", "post_self_attn_layernorm",
                                "post_mlp_layernorm"), source="glm4/modeling_glm4.py"),
    "stablelm": Layout(qkv_bias=("use_qkv_bias", False), o_bias=False, mlp_bias=False, **_LN,
                       traits=replace(GENERIC_TRAITS, lora_targets=PEFT_Q_V),
                       source="stablelm/modeling_stablelm.py"),
    "ernie4_5": Layout(qkv_bias=("use_bias", False), o_bias=("use_bias", False), mlp_bias=("use_bias", False),
                       tie_default=True, source="ernie4_5/modeling_ernie4_5.py"),
    "seed_oss": Layout(o_bias=("attention_out_bias", False), source="seed_oss/modeling_seed_oss.py"),
    "cwm": Layout(qkv_bias=False, o_bias=False, windows="none", source="cwm/modeling_cwm.py"),
    "ministral3": Layout(qkv_bias=False, o_bias=False, mlp_bias=False, source="ministral3/modeling_ministral3.py"),
    "vaultgemma": Layout(mlp_bias=False, tie_default=True, windows="none",
                         layer_norms=("input_layernorm", "pre_feedforward_layernorm"),
                         traits=replace(GENERIC_TRAITS, norm_fp32=True), source="vaultgemma/modeling_vaultgemma.py"),
    # parallel attention + MLP, one input norm, no post-attention norm (CohereDecoderLayer)
    "cohere": Layout(qk_norm="width", qk_norm_key="use_qk_norm", layer_norms=("input_layernorm",),
                     mlp_bias=False, tie_default=True, parallel=True, source="cohere/modeling_cohere.py"),
    "cohere2": Layout(layer_norms=("input_layernorm",), mlp_bias=False, tie_default=True, parallel=True,
                      windows="none", source="cohere2/modeling_cohere2.py"),
    # non-gated MLPs
    "starcoder2": Layout(qkv_bias=("use_bias", True), o_bias=("use_bias", True), gated=False,
                         mlp_names=("c_fc", "c_proj"), mlp_bias=("use_bias", True), tie_default=True, **_LN,
                         source="starcoder2/modeling_starcoder2.py"),
    "phi": Layout(o="dense", qkv_bias=True, o_bias=True, qk_norm="head_ln", qk_norm_key="qk_layernorm",
                  qk_norm_names=("q_layernorm", "k_layernorm"), gated=False, mlp_names=("fc1", "fc2"),
                  mlp_bias=True, layer_norms=("input_layernorm",), final_norm="final_layernorm",
                  lm_head_bias=True, parallel=True, **_LN,
                  traits=replace(GENERIC_TRAITS, lora_targets=("q_proj", "v_proj", "fc1", "fc2")),
                  source="phi/modeling_phi.py"),
    "gpt_neox": Layout(body="gpt_neox", embed="embed_in", attn="attention", qkv=("query_key_value",), o="dense",
                       gated=False, mlp_names=("dense_h_to_4h", "dense_4h_to_h"), mlp_bias=True,
                       final_norm="final_layer_norm", parallel=True, gqa=False, **_LN,
                       traits=replace(GENERIC_TRAITS, lora_targets=("query_key_value",)),
                       source="gpt_neox/modeling_gpt_neox.py (use_parallel_residual)"),
    "persimmon": Layout(qkv=("query_key_value",), o="dense", qkv_bias=True, o_bias=True, qk_norm="head_ln",
                        qk_norm_key="qk_layernorm", qk_norm_names=("q_layernorm", "k_layernorm"), gated=False,
                        mlp_names=("dense_h_to_4h", "dense_4h_to_h"), mlp_bias=True, final_norm="final_layernorm",
                        gqa=False, **_LN, source="persimmon/modeling_persimmon.py"),
    # non-gated up -> act -> down
    "arcee": Layout(gated=False, mlp_names=("up_proj", "down_proj"), source="arcee/modeling_arcee.py (ReLU^2 MLP)"),
    "apertus": Layout(qk_norm="head", gated=False, mlp_names=("up_proj", "down_proj"), mlp_bias=False,
                      mlp_extra=(("act_fn.alpha_p", 1), ("act_fn.alpha_n", 1)),
                      layer_norms=("attention_layernorm", "feedforward_layernorm"),
                      source="apertus/modeling_apertus.py (xIELU activation with two parameters)"),
    "jais2": Layout(gated=False, mlp_names=("up_proj", "down_proj"), **_LN, source="jais2/modeling_jais2.py"),
    "nanochat": Layout(norm="none", final_norm="", gated=False, mlp_names=("fc1", "fc2"), mlp_bias=False,
                       qkv_bias=False, o_bias=False, source="nanochat/modeling_nanochat.py (parameter-free RMSNorm)"),
    # mixture of experts (transformers 5 stores the routed experts fused: gate_up_proj, down_proj)
    "qwen2_moe": Layout(qkv_bias=("qkv_bias", True), o_bias=False, mlp_bias=False, shared="qwen2", windows="qwen",
                        traits=_QWEN_MOE_TRAITS, source="qwen2_moe/modeling_qwen2_moe.py"),
    "olmoe": Layout(qk_norm="width", mlp_bias=False, source="olmoe/modeling_olmoe.py"),
    "granitemoe": Layout(mlp_bias=False, moe_block="block_sparse_moe", router="router",
                         source="granitemoe/modeling_granitemoe.py"),
    "phimoe": Layout(router="router", mlp_bias=False, lm_head_bias=("lm_head_bias", False), **_LN,
                     source="phimoe/modeling_phimoe.py"),
    # Llama 4 text: MoE in moe_layers (experts intermediate_size wide, one shared expert of that
    # width), dense layers intermediate_size_mlp wide; its q/k L2 norm has no parameters
    "llama4_text": Layout(moe_block="feed_forward", mlp="feed_forward", router="router", shared="llama4",
                          dense_width="intermediate_size_mlp", mlp_bias=False, qkv_bias=False, o_bias=False,
                          windows="none", source="llama4/modeling_llama4.py"),
    "minimax_m2": Layout(qk_norm="width", qkv_bias=False, o_bias=False, mlp_bias=False,
                         source="minimax_m2/modeling_minimax_m2.py (q/k RMSNorm over all heads)"),
    "solar_open": Layout(shared="deepseek", mlp_bias=False, source="solar_open/modeling_solar_open.py"),
    "sarvam_moe": Layout(qk_norm="head", qk_norm_key="use_qk_norm", shared="deepseek", mlp_bias=False,
                         source="sarvam_moe/modeling_sarvam_moe.py"),
    "param2moe": Layout(qk_norm="head", qk_norm_key="use_qk_norm", shared="deepseek", mlp_bias=False, tie_default=True,
                        source="param2moe/modeling_param2moe.py"),
    "granitemoeshared": Layout(mlp_bias=False, moe_block="block_sparse_moe", router="router", shared="granite",
                               source="granitemoeshared/modeling_granitemoeshared.py (shared_mlp: input_linear, "
                                      "output_linear)"),
    "glm4_moe": Layout(qk_norm="head", qk_norm_key="use_qk_norm", o_bias=False, mlp_bias=False, shared="deepseek",
                       source="glm4_moe/modeling_glm4_moe.py"),
}

# peft's default LoRA targets for model types read with the GENERIC layout (peft/utils/constants.py
# TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING; peft raises for the others).
PEFT_TARGETS_OF_GENERIC: dict[str, tuple[str, ...]] = {
    "llama4": PEFT_Q_V, "opt": PEFT_Q_V, "gptj": PEFT_Q_V, "bloom": ("query_key_value",),
}

# The text model type of a multimodal model_type whose file keeps its text keys at the top level.
TEXT_OF = {"qwen2_vl": "qwen2_vl_text", "qwen2_5_vl": "qwen2_5_vl_text", "llava": "llama", "mistral3": "mistral",
           "llama4": "llama4_text", "qwen3_vl": "qwen3_vl_text",
           "qwen3_vl_moe": "qwen3_vl_moe_text", "llava_next": "llama", "llava_onevision": "qwen2", "paligemma": "gemma"}

# llama's layout, with every fact it assumes named (an unknown model type).
GENERIC = Layout()
GENERIC_ASSUMPTIONS = (
    "separate q/k/v/o projections with biases only where attention_bias says",
    "a gated MLP (gate, up, down projections) with biases only where mlp_bias says",
    "two RMSNorms per layer and a final one, without biases",
    "attention and MLP in sequence (no parallel block, no extra norms)",
)

# Model types whose modules transformers builds as encoders (bidirectional, no KV cache) or as
# encoder-decoders: vramplan does not plan them (docs/models.md).
ENCODERS = frozenset({
    "bert", "roberta", "xlm-roberta", "xlm-roberta-xl", "modernbert", "distilbert", "albert", "electra",
    "deberta", "deberta-v2", "camembert", "mpnet", "nomic_bert", "new", "ernie", "esm", "megatron-bert",
    "rembert", "roformer", "xlm", "flaubert", "funnel", "layoutlm", "mobilebert", "squeezebert", "ibert",
    "luke", "canine", "data2vec-text", "nystromformer", "yoso", "mra", "big_bird", "longformer",
    "jina_bert", "gte", "eurobert", "modernbert-decoder", "bert-generation", "roc_bert", "xmod",
    "roberta-prelayernorm", "data2vec-text",
})
ENCODER_DECODERS = frozenset({
    "t5", "mt5", "umt5", "bart", "mbart", "whisper", "pegasus", "pegasus_x", "marian", "m2m_100", "nllb-moe",
    "longt5", "switch_transformers", "led", "blenderbot", "blenderbot-small", "prophetnet", "fsmt",
    "plbart", "bigbird_pegasus", "seamless_m4t", "seamless_m4t_v2", "speech_to_text", "t5gemma", "t5gemma2",
    "encoder-decoder", "moonshine", "kyutai_speech_to_text", "pop2piano", "mvp", "xlm-prophetnet",
})
# Keys that belong to recurrent (Mamba / SSM / linear-attention) layers: their state is not a KV
# cache and the llama-like layout does not hold their tensors.
SSM_KEYS = ("mamba_d_state", "mamba_expand", "mamba_d_conv", "ssm_state_size", "state_size", "mamba_n_heads",
            "linear_num_value_heads", "linear_key_head_dim", "layers_block_type", "hybrid_override_pattern",
            "attn_layer_period", "mamba_d_ssm", "conv_kernel", "time_step_rank", "linear_conv_kernel_dim",
            "full_attention_interval", "block_types", "layer_block_types")
MLA_KEYS = ("kv_lora_rank", "q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim")
EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")
# Keys (read from transformers 5's config classes) that change a layer's structure in a way the
# llama-like GENERIC layout does not hold: per-layer inputs and shared KV layers (Gemma 3n/4),
# cross-attention layers (Mllama, Idefics), convolution blocks (LFM2), nested or looped stacks
# (HRM), per-layer MLP kinds and MoE keys under other names (ERNIE 4.5, Aria, JetMoE, Ergo, Step).
STRUCTURE_KEYS = ("hidden_size_per_layer_input", "num_kv_shared_layers", "altup_num_inputs", "laurel_rank",
                  "enable_moe_block", "cross_attention_layers", "cross_layer_interval", "perceiver_config",
                  "conv_L_cache", "full_attn_idxs", "num_layers_per_stack", "H_cycles", "mlp_layer_types",
                  "per_layer_config", "moe_num_experts", "moe_layer_interval", "kv_channels",
                  "num_dense_blocks", "interleave_moe_layer_step", "moe_layers", "intermediate_size_mlp",
                  "share_expert_dim", "num_sliding_attention_heads", "type_vocab_size")


def _architectures(cfg: Cfg) -> list[str]:
    a = cfg.root.d.get("architectures")
    return [x for x in a if isinstance(x, str)] if isinstance(a, list) else []


def refuse_unsupported(cfg: Cfg, text: Cfg, known: bool) -> None:
    """BadConfig, saying why, for what the generic reader cannot size."""
    mt = cfg.model_type
    who = cfg.who
    arch = _architectures(cfg)
    if mt in ENCODER_DECODERS or cfg.root.d.get("is_encoder_decoder") is True:
        raise BadConfig(f"{who} is an encoder-decoder model (T5, BART, Whisper ...); vramplan plans "
                        f"decoder-only language models and does not model its encoder and cross-attention "
                        f"caches.")
    masked = any(a.endswith(("ForMaskedLM", "ForSequenceClassification", "ForTokenClassification")) or a.endswith("Model")
                 and not a.endswith("LMHeadModel") for a in arch) and not any(a.endswith(("ForCausalLM", "ForConditionalGeneration")) for a in arch)
    if mt in ENCODERS or (masked and mt not in LAYOUTS):
        raise BadConfig(f"{who} is an encoder-only (embedding) model (BERT, XLM-R, ModernBERT, bge, e5, gte ...): "
                        f"it has no KV cache and vLLM serves it as a pooling model, which vramplan does not "
                        f"plan yet.")
    ssm = [k for k in SSM_KEYS if text.has(k)]
    if ssm:
        raise BadConfig(f"{who} has recurrent (Mamba / SSM / linear-attention) layers ({text.key(ssm[0])}); "
                        f"the generic reader cannot size their state and tensors. Families vramplan reads "
                        f"with such layers: nemotron_h.")
    if known:
        pass
    elif text.has("type_vocab_size"):
        raise BadConfig(f"{who} looks like a BERT-style encoder (it has {text.key('type_vocab_size')}): it has no "
                        f"KV cache and vLLM serves it as a pooling model, which vramplan does not plan yet.")
    else:
        odd = [k for k in STRUCTURE_KEYS if text.has(k)]
        if odd:
            raise BadConfig(f"{who} has {text.key(odd[0])}, a layer structure the generic reader does not "
                            f"model (docs/models.md); vramplan would misjudge its size, so it refuses it.")
    mla = [k for k in MLA_KEYS if text.has(k)]
    if mla:
        raise BadConfig(f"{who} uses multi-head latent attention ({text.key(mla[0])}); the generic reader "
                        f"reads it only through the DeepSeek family (model_type deepseek_v2 / deepseek_v3).")


# --- the decoder ------------------------------------------------------------------------------

def _bias(cfg: Cfg, b: Bias) -> bool:
    if isinstance(b, bool):
        return b
    key, default = b
    return cfg.bool(key, default=default)


def _window_types(cfg: Cfg, lay: Layout, n: int, assumptions: list[str], exact: bool) -> list[str]:
    types = explicit_layer_types(cfg, n)
    if types is not None:
        return types
    window = cfg.int("sliding_window", default=0, positive=False)
    if not window or lay.windows == "none":
        return [FULL] * n
    if lay.windows == "qwen" or cfg.has("use_sliding_window"):
        if not cfg.bool("use_sliding_window", default=False):
            return [FULL] * n
        first = cfg.int("max_window_layers", default=n, positive=False)
        return [SLIDING if i >= first else FULL for i in range(n)]
    if not exact:
        assumptions.append(f"'{cfg.key('sliding_window')}' ({window:,}) applies to every layer (there is no layer_types)")
    return [SLIDING] * n


def _experts_named(cfg: Cfg) -> bool:
    return any(cfg.has(k) for k in EXPERT_KEYS)


def _experts(cfg: Cfg) -> tuple[int, str]:
    for k in EXPERT_KEYS:
        v = cfg.int(k, default=0, positive=False)
        if v:
            return v, k
    return 0, ""


def _moe_plan(cfg: Cfg, lay: Layout, L: int, assumptions: list[str], exact: bool) -> list[tuple[int, int, int]]:
    """Per layer (experts, width, top_k): experts 0 is a dense MLP of intermediate_size."""
    E, e_key = _experts(cfg)
    dense = lay.dense_width
    if not E or cfg.raw("is_moe") is False:
        return [(0, cfg.int(dense), 0)] * L
    k = cfg.int("num_experts_per_tok", "top_k", "moe_topk", "num_experts_per_token")
    rules.top_k(cfg, k, E, ("num_experts_per_tok",), (e_key,))
    width = cfg.int("moe_intermediate_size", "expert_intermediate_size", default=None)
    if width is None:
        width = cfg.int("intermediate_size")
        if not exact:
            assumptions.append("each expert is intermediate_size wide (no moe_intermediate_size)")
    first_dense = cfg.int("first_k_dense_replace", default=0, positive=False)
    step = cfg.int("decoder_sparse_step", default=1)
    only = set(cfg.int_list("mlp_only_layers", L))
    sparse = set(cfg.int_list("moe_layers", L)) if cfg.raw("moe_layers") is not None else set(range(L))
    plan = []
    for i in range(L):
        if i < first_dense or i in only or (i + 1) % step or i not in sparse:
            plan.append((0, cfg.int(dense), 0))
        else:
            plan.append((E, width, k))
    if not exact:
        assumptions.append(f"{E} routed experts stored fused (gate_up_proj, down_proj) with a bias-free router")
    return plan


def _norms(t: Tensors, lay: Layout, names, dim: int) -> None:
    if lay.norm == "none":
        return
    for n in names:
        t.norm(n, dim, bias=lay.norm == "ln")


def build_layers(cfg: Cfg, lay: Layout, assumptions: list[str], exact: bool):
    """The decoder layers and the tensors outside them (embedding, final norm, lm_head)."""
    needed = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    if not (_experts_named(cfg) and cfg.has("moe_intermediate_size")):
        needed += ("intermediate_size",)     # the dense MLP's width
    cfg.require_all(needed)
    H = cfg.int("hidden_size")
    L = cfg.int("num_hidden_layers")
    vocab = cfg.int("vocab_size")
    heads, kv, hd = rules.attention_heads(cfg, H, rope=False)
    if not lay.gqa:
        kv = heads          # the fused QKV projection holds every head's K and V
    types = _window_types(cfg, lay, L, assumptions, exact)
    window = cfg.int("sliding_window", default=0, positive=False) or None
    chunk = cfg.int("attention_chunk_size", default=0, positive=False) or None
    qkv_bias, o_bias, mlp_bias = _bias(cfg, lay.qkv_bias), _bias(cfg, lay.o_bias), _bias(cfg, lay.mlp_bias)
    qk_norm = lay.qk_norm if lay.qk_norm and (not lay.qk_norm_key or cfg.bool(lay.qk_norm_key)) else ""
    if not exact and not lay.qk_norm and cfg.bool("use_qk_norm", "qk_layernorm", "qk_norm", default=False):
        qk_norm = "head"
        assumptions.append("q and k normed per head (RMSNorm [head_dim])")
    plan = _moe_plan(cfg, lay, L, assumptions, exact)
    if not exact and lay.shared == "" and (cfg.has("shared_expert_intermediate_size") or cfg.int("n_shared_experts", default=0, positive=False)):
        lay = replace(lay, shared="qwen2" if cfg.has("shared_expert_intermediate_size") else "deepseek")
        assumptions.append("shared experts laid out as in " + ("Qwen2-MoE" if lay.shared == "qwen2" else "DeepSeek"))
    prefix = f"{lay.body}.{lay.layers}"
    layers = []
    for i in range(L):
        t = Tensors(f"{prefix}.{i}")
        a = lay.attn
        if len(lay.qkv) == 1:
            t.linear(f"{a}.{lay.qkv[0]}", (heads + 2 * kv) * hd, H, qkv_bias, split="qkv")
        else:
            q, k_, v = lay.qkv
            t.linear(f"{a}.{q}", heads * hd, H, qkv_bias, split="column")
            t.linear(f"{a}.{k_}", kv * hd, H, qkv_bias, split="kv_heads")
            t.linear(f"{a}.{v}", kv * hd, H, qkv_bias, split="kv_heads")
        t.linear(f"{a}.{lay.o}", H, H if lay.o_from_hidden else heads * hd, o_bias, split="row")
        qn, kn = lay.qk_norm_names
        if qk_norm == "head":
            t.norm(f"{a}.{qn}", hd, per_head="q")
            t.norm(f"{a}.{kn}", hd, per_head="kv")
        elif qk_norm == "head_ln":       # one LayerNorm [head_dim] shared by the heads (Phi, Persimmon)
            t.norm(f"{a}.{qn}", hd, bias=True, per_head="q")
            t.norm(f"{a}.{kn}", hd, bias=True, per_head="kv")
        elif qk_norm == "width":         # over all heads at once (OLMo 2, OLMoE; Cohere: [heads, hd])
            t.norm(f"{a}.{qn}", heads * hd)
            t.norm(f"{a}.{kn}", kv * hd)
        experts, width, top_k = plan[i]
        if experts:
            mlp = _moe(t, cfg, lay, H, experts, width, top_k)
        else:
            mlp = _dense(t, lay, H, width, mlp_bias)
        _norms(t, lay, lay.layer_norms, H)
        layers.append(LayerSpec(i, attention(types[i], heads, kv, hd, window, chunk), mlp, t.tuple()))

    out = Tensors()
    out.add(f"{lay.body}.{lay.embed}", (vocab, H), "embedding")
    if lay.final_norm:
        _norms(out, lay, (f"{lay.body}.{lay.final_norm}",), H)
    return layers, out.items, {"hidden": H, "vocab": vocab}


def _dense(t: Tensors, lay: Layout, H: int, I: int, bias: bool) -> Mlp:
    m = lay.mlp
    for name, n in lay.mlp_extra:
        t.param(f"{m}.{name}", (n,), "other", split="replicated")
    if not lay.gated:
        up, down = lay.mlp_names
        t.linear(f"{m}.{up}", I, H, bias, split="column")
        t.linear(f"{m}.{down}", H, I, bias, split="row")
        return Mlp(kind="dense", intermediate=I, gated=False)
    if len(lay.mlp_names) == 2:
        gate_up, down = lay.mlp_names
        t.linear(f"{m}.{gate_up}", 2 * I, H, bias, split="column")
        t.linear(f"{m}.{down}", H, I, bias, split="row")
        return Mlp(kind="dense", intermediate=I, gated=True, fused_gate_up=True)
    gate, up, down = lay.mlp_names
    t.linear(f"{m}.{gate}", I, H, bias, split="column")
    t.linear(f"{m}.{up}", I, H, bias, split="column")
    t.linear(f"{m}.{down}", H, I, bias, split="row")
    return Mlp(kind="dense", intermediate=I, gated=True)


def _moe(t: Tensors, cfg: Cfg, lay: Layout, H: int, E: int, width: int, top_k: int) -> Mlp:
    b = lay.moe_block
    t.linear(f"{b}.{lay.router}", E, H, role="router", split="replicated")
    t.add(f"{b}.experts.gate_up_proj", (2 * width, H), "expert", count=E, split="column")
    t.add(f"{b}.experts.down_proj", (H, width), "expert", count=E, split="row")
    shared = 0
    if lay.shared == "qwen2":
        shared = cfg.int("shared_expert_intermediate_size", default=0, positive=False)
        if shared:
            for n in ("gate_proj", "up_proj"):
                t.linear(f"{b}.shared_expert.{n}", shared, H, split="column")
            t.linear(f"{b}.shared_expert.down_proj", H, shared, split="row")
            t.linear(f"{b}.shared_expert_gate", 1, H, split="replicated")
    elif lay.shared == "granite":
        shared = cfg.int("shared_intermediate_size", default=0, positive=False)
        if shared:
            t.linear("shared_mlp.input_linear", 2 * shared, H, split="column")
            t.linear("shared_mlp.output_linear", H, shared, split="row")
    elif lay.shared == "llama4":
        shared = cfg.int("intermediate_size")
        for n in ("gate_proj", "up_proj"):
            t.linear(f"{b}.shared_expert.{n}", shared, H, split="column")
        t.linear(f"{b}.shared_expert.down_proj", H, shared, split="row")
    elif lay.shared == "deepseek":
        n = cfg.int("n_shared_experts", default=0, positive=False)
        shared = n * width
        if shared:
            for name in ("gate_proj", "up_proj"):
                t.linear(f"{b}.shared_experts.{name}", shared, H, split="column")
            t.linear(f"{b}.shared_experts.down_proj", H, shared, split="row")
    return Mlp(kind="moe", intermediate=width, gated=True, num_experts=E, top_k=top_k, shared_intermediate=shared)


# --- the whole model --------------------------------------------------------------------------

def parse_generic(cfg: Cfg) -> ModelSpec:
    """A causal LM (or the language model of a multimodal checkpoint) of a model type no family
    module reads."""
    multimodal = cfg.has("text_config", "vision_config", "audio_config")
    # transformers 4 files keep the text keys at the top level; 5 moves them into text_config
    text = cfg.sub("text_config") if cfg.has("text_config") else cfg
    text_type = cfg.model_type
    if multimodal:
        own = text.str("model_type", default="") if text is not cfg else ""
        text_type = own or TEXT_OF.get(cfg.model_type, cfg.model_type)
    lay = LAYOUTS.get(text_type) or LAYOUTS.get(cfg.model_type)
    refuse_unsupported(cfg, text, known=lay is not None)
    exact = lay is not None
    assumptions: list[str] = []
    if lay is None:
        lay = replace(GENERIC, traits=replace(GENERIC_TRAITS, lora_targets=PEFT_TARGETS_OF_GENERIC.get(cfg.model_type)))
        assumptions.extend(GENERIC_ASSUMPTIONS)
    if multimodal:
        lay = replace(lay, body="model.language_model")
    layers, outside, info = build_layers(text, lay, assumptions, exact)
    H, vocab = info["hidden"], info["vocab"]
    # transformers 5 reads tie_word_embeddings from the top-level config of a multimodal model
    tied = next((c.bool("tie_word_embeddings") for c in (cfg, text) if c.has("tie_word_embeddings")),
                lay.tie_default)
    tensors = list(outside)
    vision = None
    traits = lay.traits
    if multimodal:
        tower, vision, tower_exact, towers = _towers(cfg, H, assumptions)
        exact = exact and tower_exact
        tensors += tower
        # peft keys its default targets by the checkpoint's model_type (llama4: q_proj, v_proj)
        traits = replace(traits, towers=towers, lora_targets=PEFT_TARGETS_OF_GENERIC.get(cfg.model_type))
    if not tied:
        t = Tensors()
        t.linear("lm_head", vocab, H, _bias(text, lay.lm_head_bias), role="lm_head", split="vocab")
        tensors += t.items
    family = text_type if exact else "generic"
    spec = make_spec(cfg, family=family, hidden=H, vocab=vocab, layers=layers, tensors=tensors, tied=tied,
                     dtype=torch_dtype(cfg, text), quant=parse_quantization(cfg),
                     max_pos=text.int("max_position_embeddings", default=None), traits=traits, vision=vision)
    return replace(spec, confidence="exact" if exact else "approximate", assumptions=tuple(assumptions))


def _towers(cfg: Cfg, H: int, assumptions: list[str]):
    """The vision (and audio) towers and projectors of a multimodal checkpoint."""
    tensors: list[Tensor] = []
    exact = True
    prefixes: list[str] = []
    vision = None
    if cfg.raw("vision_config") is None and cfg.raw("audio_config") is None:
        exact = False
        assumptions.append("there is no vision_config: the tower transformers would build from its "
                           "defaults is not counted")
    for key in ("vision_config", "audio_config"):
        if cfg.raw(key) is None:
            continue
        reader, kinds = TOWERS.get((cfg.model_type, key), (None, {}))
        kind = cfg.sub(key).str("model_type", default="") or next(iter(kinds), "")
        if kind not in kinds:
            reader = None
        sub = cfg.sub(key, {"model_type": kind, **kinds[kind]} if reader else None)
        if reader is not None:
            items, prefix, summary = reader(cfg, sub, H)
        else:
            items, prefix, summary = generic_vit(sub, H, key)
            exact = False
            assumptions.append(f"the {key.split('_')[0]} tower ({_clip(kind) or 'unknown model_type'}) is sized as a plain "
                               f"ViT (q/k/v/o and fc1/fc2 with biases, two LayerNorms per layer, one linear "
                               f"projector); its exact tensors are not modelled")
        tensors += items
        prefixes.extend(prefix)
        if key == "vision_config" and summary is not None:
            vision = summary
    return tensors, vision, exact, tuple(prefixes)


__all__ = ["Layout", "LAYOUTS", "GENERIC", "parse_generic", "refuse_unsupported", "ENCODERS", "ENCODER_DECODERS"]
