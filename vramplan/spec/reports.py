"""What the catalog commands answer, as data for the renderers: a model's KV cache by layer kind
(`vramplan kv`) and one row per bundled model (`vramplan models`)."""

from __future__ import annotations

from dataclasses import dataclass

from vramplan.spec.model import ModelSpec


@dataclass(frozen=True)
class KvReport:
    model: ModelSpec
    kv_bytes_per_token: dict[str, int]      # cache dtype -> bytes per token, all layers, one sequence
    recurrent_state_bytes_per_sequence: int
    kinds: tuple                            # memory.kv_cache.KvKind rows, one per layer kind


@dataclass(frozen=True)
class BundledModel:
    id: str
    model_type: str
    params: int | None                  # None: the analytic tier does not read this family yet
    kv_bytes_per_token_bf16: int | None
    note: str = ""                      # why a row is approximate or has no figures
