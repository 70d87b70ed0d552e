"""The user's words at the edge: which modes exist and which engine answers each.

A mode string ("serve", "lora", ...) exists only here and in the CLI/API that read it; from
here on, the workload names its engine and the planner asks that engine.
"""

from __future__ import annotations

ENGINE_OF_MODE = {
    "serve": "vllm",            # a vLLM server
    "infer": "transformers",    # transformers generate()
    "full": "hf_trainer",       # one training step: all weights trained
    "lora": "hf_trainer",       # peft LoRA adapters on a 16-bit base
    "qlora": "hf_trainer",      # peft LoRA adapters on a bitsandbytes 4-bit base
}
MODES = tuple(ENGINE_OF_MODE)
TRAINING_MODES = tuple(m for m, e in ENGINE_OF_MODE.items() if e == "hf_trainer")
