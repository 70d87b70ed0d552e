"""The generic config reader against transformers over every model type with a causal-LM or
image-text-to-text class: for each type no family module registers, build the config class's
defaults, count the model's unique parameters on the meta device, and compare with what
vramplan reads from the same config dict. Prints one line per type and the counts per outcome
(docs/models.md, "Measured coverage"). Needs torch and transformers; about 5 minutes on 2 cores.

    python benchmarks/generic_reader_sweep.py [MODEL_TYPE ...]
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def meta_params(config) -> int:
    import torch
    import transformers as tr
    with torch.device("meta"):
        for cls in (tr.AutoModelForCausalLM, tr.AutoModelForImageTextToText):
            try:
                return sum(p.numel() for p in cls.from_config(config).parameters())
            except ValueError:
                continue
    raise ValueError("no causal-LM or image-text-to-text class")


def classify(model_type: str) -> tuple[str, str]:
    import transformers as tr
    from vramplan.errors import BadConfig
    from vramplan.models import parse
    try:
        config = tr.AutoConfig.for_model(model_type)
        want = meta_params(config)
    except Exception as e:          # transformers cannot build its own defaults
        return "transformers fails", f"{type(e).__name__}"
    try:
        spec = parse(config.to_dict(), model_id=model_type)
    except BadConfig as e:
        return "refused", str(e)[:100]
    err = (spec.params - want) / want
    if spec.confidence == "exact":
        return ("exact" if spec.params == want else "EXACT BUT WRONG"), f"{want:,}"
    band = ("equal" if spec.params == want else "<= 1 %" if abs(err) <= 0.01 else "<= 5 %" if abs(err) <= 0.05
            else "<= 40 %" if abs(err) <= 0.4 else "OVER 40 %")
    return f"approximate {band}", f"{err:+.3%}"


def main(argv: list[str]) -> None:
    warnings.filterwarnings("ignore")
    import transformers as tr
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)
    from vramplan.models import REGISTRY
    tr.logging.set_verbosity_error()
    types = argv or sorted((set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) | set(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES))
                           - set(REGISTRY))
    counts: dict[str, int] = {}
    for mt in types:
        outcome, detail = classify(mt)
        counts[outcome] = counts.get(outcome, 0) + 1
        print(f"{mt:28s} {outcome:22s} {detail}", flush=True)
    print()
    for outcome, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"{n:4d}  {outcome}")


if __name__ == "__main__":
    main(sys.argv[1:])
