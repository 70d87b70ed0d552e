"""vLLM's start-up profile of a multimodal model's vision encoder, which it runs before the text
dummy forward and whose activations and cached outputs count in the profiled torch peak, so they
come out of "Available KV cache memory".

What vLLM V1 does (gpu_model_runner.py `profile_run` and `_get_mm_dummy_batch`, every release
this engine models; multimodal/encoder_budget.py `MultiModalBudget`; v1/core/
encoder_cache_manager.py `compute_mm_encoder_budget`; profiling introduced by vllm PR #11210,
the budget autotuned by PR #11895):
  - T = the most tokens one item can give: the largest image the processor allows (a fixed-size
    tower: its tokens per image; Qwen's dynamic resolution: max_pixels, towers.QWEN_MAX_PIXELS);
  - budget = min(compute, cache) with compute = cache = max(max_num_batched_tokens, T);
  - items = max(1, min(budget // T, max_num_seqs x max(1, min(limit, max_model_len // T))))
    (`_get_max_items`), limit being --limit-mm-per-prompt for the modality (the max_model_len
    term is left out here: it binds only when max_num_seqs x images per prompt < budget // T);
  - it logs "Encoder cache will be initialized with a budget of {budget} tokens, and profiled with
    {items} image items of the maximum feature size.", runs the encoder on `items` dummy images
    of that size at once, and keeps the outputs (items x T x the text hidden size) in the encoder
    cache while the text dummy forward and the sampler run;
  - when every modality's limit is 0 the budget is 0 and nothing is profiled (the encoder cache
    is not initialized: the "explicitly disabled via limit_mm_per_prompt" warning).

Modelled (ours, not vLLM's code): the encoder's transient peak is that of its widest layer over
items x patches tokens, with the block's input and its norm alive: an fc1 -> act -> fc2 MLP holds
2E + 2I values per token at the activation (the fc1 output is rebound away before fc2, 3E + I),
a gated MLP 3E + 3I (vLLM's Qwen2_5_VisionMLP keeps gate_up alive through down_proj), attention
runs in a memory-efficient kernel (no [N, N] scores); plus the dummy pixel_values in the model
dtype. Images only: the video modality of Qwen's models is not profiled here. Checked on a
Qwen2.5-VL-7B start-up log on an L4 (docs/serving.md section 9).
"""

from __future__ import annotations

from dataclasses import dataclass

from vramplan.spec import ModelSpec, VisionTower
from vramplan.units import ceil_div

DEFAULT_MM_LIMIT = 999     # vLLM's default items per prompt for each modality (MultiModalConfig)


@dataclass(frozen=True)
class EncoderProfile:
    """What the encoder profile adds to the first pipeline stage's torch peak."""

    budget: int            # encoder budget in tokens, as vLLM logs it
    items: int             # dummy images profiled at once
    tokens_per_item: int   # T
    forward: int           # the encoder's transient peak, bytes on one rank
    cache: int             # the cached encoder outputs, bytes, alive through the text dummy forward

    @property
    def log(self) -> str:
        return (f"Encoder cache will be initialized with a budget of {self.budget} tokens, and profiled "
                f"with {self.items} image items of the maximum feature size.")


def image_limit(limits: tuple) -> int:
    """--limit-mm-per-prompt's image count, vLLM's default when not given."""
    return dict(limits).get("image", DEFAULT_MM_LIMIT)


def profiled(vision: VisionTower | None) -> bool:
    """Whether this tower carries the sizes the profile needs."""
    return bool(vision and vision.tokens_per_image and vision.patches_per_image and vision.intermediate_size)


def encoder_profile(model: ModelSpec, batched_tokens: int, max_seqs: int, limits: tuple, act_elem: int,
                    tp: int = 1) -> EncoderProfile | None:
    """The encoder profile vLLM runs at start-up for `model`, or None when it runs none (no
    vision tower, or --limit-mm-per-prompt image=0) or this tower is not sized (profiled)."""
    v = model.vision
    limit = image_limit(limits)
    if not profiled(v) or limit == 0:
        return None
    per_item = v.tokens_per_image
    budget = max(batched_tokens, per_item)
    items = max(1, min(budget // per_item, max_seqs * max(1, limit)))
    n = items * v.patches_per_image
    E, I = v.hidden_size, v.intermediate_size
    # tensor-parallel ranks shard the MLP's width, not the residual stream
    wide = ceil_div(I, tp)
    per_token = 3 * E + 3 * wide if v.gated_mlp else max(2 * E + 2 * wide, 3 * E + wide)
    forward = n * per_token * act_elem + n * v.patch_input * act_elem
    cache = items * per_item * model.hidden_size * act_elem
    return EncoderProfile(budget=budget, items=items, tokens_per_item=per_item, forward=forward, cache=cache)
