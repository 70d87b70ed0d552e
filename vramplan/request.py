"""The user's words at the edge: which modes exist and which engine answers each.

A mode string ("serve", "lora", ...) exists only here and in the CLI/API that read it; from
here on, the workload names its engine and the planner asks that engine.
"""

from __future__ import annotations

from vramplan.errors import BadInput

ENGINE_OF_MODE = {
    "serve": "vllm",            # a vLLM server
    "infer": "transformers",    # transformers generate()
    "full": "hf_trainer",       # one training step: all weights trained
    "lora": "hf_trainer",       # peft LoRA adapters on a 16-bit base
    "qlora": "hf_trainer",      # peft LoRA adapters on a bitsandbytes 4-bit base
}
MODES = tuple(ENGINE_OF_MODE)
TRAINING_MODES = tuple(m for m, e in ENGINE_OF_MODE.items() if e == "hf_trainer")


TRANSFORMERS_MAJORS = (4, 5)


def transformers_major(value: int | str | None = None) -> int:
    """--transformers 4|5; None: the installed transformers' major version (read from package
    metadata, no import), else the newest we model. Infer and training plans depend on it."""
    if value is None:
        from importlib import metadata

        try:
            installed = metadata.version("transformers").split(".")[0]
        except metadata.PackageNotFoundError:
            installed = ""
        if not installed.isdigit():
            return TRANSFORMERS_MAJORS[-1]
        return min(max(int(installed), TRANSFORMERS_MAJORS[0]), TRANSFORMERS_MAJORS[-1])
    major = str(value).strip().split(".")[0]
    if not major.isdigit() or int(major) not in TRANSFORMERS_MAJORS:
        raise BadInput(f"--transformers {value!r}: give the major version to plan for, 4 or 5.")
    return int(major)
