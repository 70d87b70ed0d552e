"""The catalog questions beside a plan: what a model's KV cache costs by layer kind
(`vramplan kv`) and which model configs ship with vramplan (`vramplan models`)."""

from __future__ import annotations

import json

from vramplan import catalog
from vramplan.errors import BadInput
from vramplan.loading import load_model
from vramplan.memory import kv_cache
from vramplan.memory.dtypes import FLOAT_BYTES
from vramplan.spec import ModelSpec
from vramplan.spec.reports import BundledModel, KvReport

# `vramplan models` rows for bundled configs the analytic reader refuses (issue #12); an
# approximate reading is noted with its first assumption.
NOT_READ = "refused by the analytic reader: `vramplan fit` says why"

KV_DTYPES_SHOWN = ("bf16", "fp8", "fp32")       # `vramplan kv`: bytes per token in each cache dtype


def kv_report(model: str | ModelSpec) -> KvReport:
    """KV cache bytes per token in each cache dtype, and per layer kind at the checkpoint's
    16-bit width, with the fixed state of recurrent layers in the checkpoint's dtype."""
    m = load_model(model)
    state = FLOAT_BYTES["fp32" if m.torch_dtype == "fp32" else m.torch_dtype]
    per_token = {d: kv_cache.kv_bytes_per_token(m, FLOAT_BYTES[d]) for d in KV_DTYPES_SHOWN}
    return KvReport(model=m, kv_bytes_per_token=per_token,
                    recurrent_state_bytes_per_sequence=kv_cache.recurrent_bytes_per_sequence(m, state),
                    kinds=tuple(kv_cache.kv_kinds(m, 2, state)))


def bundled_models(query: str | None = None) -> tuple[BundledModel, ...]:
    """The model configs shipped with vramplan (no network), those whose id contains `query`."""
    ids = [i for i in catalog.bundled_model_ids() if not query or query.lower() in i.lower()]
    rows = []
    for i in ids:
        try:
            m = load_model(i, layers_from="analytic")   # the listing is the analytic tier's: fast, no torch
        except BadInput:        # a family the analytic tier refuses today: listed, without figures
            kind = json.loads(catalog.load_bundled_text(i)).get("model_type", "")
            rows.append(BundledModel(i, str(kind), None, None, note=NOT_READ))
            continue
        note = f"approximate: {m.assumptions[0]}" if m.confidence == "approximate" and m.assumptions else (
            "approximate" if m.confidence == "approximate" else "")
        rows.append(BundledModel(i, m.model_type, m.params, kv_cache.kv_bytes_per_token(m, 2), note=note))
    return tuple(rows)
