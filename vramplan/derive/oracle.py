"""The oracle: transformers' own model of a config, against the analytic tier.

Heavy (torch, transformers). For one config.json (or the defaults of a config class) it builds
the model on the meta device, counts its parameters exactly (`meta.count_parameters`: unique
storages, tied weights once) and reads each layer's cache from a prefill on fake tensors
(`kv.derive_cache`); then it asks the analytic tier (`models.parse`, what `vramplan fit` reads
without torch) for the same figures and says how they compare. Used by benchmarks/coverage.py
(every model type of the installed transformers, docs/coverage.md) and the tests
(tests/test_coverage_popular.py). Never raises for a bad config: each side's failure is recorded
with its error class.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from dataclasses import dataclass, field

from vramplan import models
from vramplan.derive import assemble, extract, meta
from vramplan.derive import kv as kv_mod
from vramplan.errors import VramplanError
from vramplan.spec import Attention, Recurrent

KV_BYTES = 2            # the figures are in bf16, as shared/reference/expected.json's
WITHIN = 0.01           # "within 1 %"


class TimeLimit(Exception):
    """The per-type time limit ran out."""


@dataclass
class Side:
    params: int | None = None
    kv_bytes: int | None = None        # bf16 KV bytes per token, one sequence, all layers
    state_elems: int | None = None     # per-sequence recurrent state, elements, transformers' layout
    cache: dict = field(default_factory=dict)   # oracle: cache layer class -> count
    label: str = ""                    # analytic: its trust label, if it carries one
    error: str = ""                    # "ErrorClass: first line"

    @property
    def ok(self) -> bool:
        return not self.error and self.params is not None


@dataclass
class Row:
    name: str                  # model type, or the config file's name
    model_type: str
    source: str                # "defaults" or the config file
    oracle: Side
    analytic: Side
    seconds: float = 0.0
    derived: Side = field(default_factory=Side)
    explicit: bool = False     # a family module reads this model_type (--layers-from auto keeps it)

    @property
    def params_error(self) -> float | None:
        return _rel(self.analytic.params, self.oracle.params)

    @property
    def kv_error(self) -> float | None:
        return _rel(self.analytic.kv_bytes, self.oracle.kv_bytes)

    @property
    def state_error(self) -> float | None:
        return _rel(self.analytic.state_elems, self.oracle.state_elems)

    @property
    def status(self) -> str:
        """exact | within 1% | approximate-labelled | WRONG | refused | oracle-error."""
        if not self.oracle.ok:
            return "oracle-error"
        if not self.analytic.ok:
            return "refused"
        errs = [self.params_error, self.kv_error, self.state_error]
        if all(e == 0 for e in errs):
            return "exact"
        if all(e is not None and abs(e) <= WITHIN for e in errs):
            return "within 1%"
        if self.analytic.label == "approximate":
            return "approximate-labelled"
        return "WRONG"

    @property
    def auto_status(self) -> str:
        """The status of what `vramplan fit` answers with transformers installed (--layers-from
        auto): the family module where there is one, or the generic reader's reading when it is
        labelled exact; else the derived layers when transformers built them, else the analytic
        reader."""
        kept = self.explicit or (self.analytic.ok and self.analytic.label == "exact")
        if kept or not self.derived.ok:      # a family module, or the generic reader's exact layout
            return self.status
        if not self.oracle.ok:
            return "oracle-error"
        d, o = self.derived, self.oracle
        if (d.params, d.kv_bytes, d.state_elems) == (o.params, o.kv_bytes, o.state_elems):
            return "exact (derived)"
        if (d.params, d.kv_bytes) == (o.params, o.kv_bytes):
            # layers that run attention and a recurrent state side by side: a LayerSpec has one
            # mixer, so their state is not counted, and the derived plan warns so
            return "derived, state not counted (warned)"
        return "WRONG (derived)"

    def to_json(self) -> dict:
        return {"name": self.name, "model_type": self.model_type, "source": self.source,
                "status": self.status, "auto_status": self.auto_status, "explicit": self.explicit,
                "seconds": round(self.seconds, 2), "derived": vars(self.derived),
                "params_error": self.params_error, "kv_error": self.kv_error,
                "oracle": vars(self.oracle), "analytic": vars(self.analytic)}


def row_from_json(d: dict) -> Row:
    """A Row back from `Row.to_json` (the coverage benchmark's worker processes send them)."""
    def side(x: dict) -> Side:
        return Side(**{k: x.get(k) for k in ("params", "kv_bytes", "state_elems")},
                    cache=dict(x.get("cache") or {}), label=x.get("label") or "", error=x.get("error") or "")
    return Row(name=d["name"], model_type=d["model_type"], source=d["source"], oracle=side(d["oracle"]),
               analytic=side(d["analytic"]), seconds=float(d.get("seconds") or 0),
               derived=side(d.get("derived") or {}), explicit=bool(d.get("explicit")))


def _rel(a: int | None, b: int | None) -> float | None:
    if a is None or b is None:
        return None
    if a == b:
        return 0.0
    return (a - b) / b if b else float("inf")


def _error(e: BaseException) -> str:
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    return f"{type(e).__name__}: {first[:160]}"


def oracle(raw: dict, name: str = "", dtype: str = "bf16") -> tuple[Side, dict | None]:
    """transformers' own figures for this config.json: parameters on the meta device, the KV
    bytes per token and the recurrent state from its cache after a fake prefill; and the
    derivation's facts (extract.py) when both ran."""
    side = Side()
    try:
        config, model = meta.build(raw, name, dtype)
        side.params = meta.count_parameters(model)
        params = meta.parameters(model)
        prefix = meta.decoder_layers_prefix(model, config)
        head = extract.output_embeddings(model)
        tied = meta.tied_names(model)
        layers = kv_mod.derive_cache(model, config)
        side.kv_bytes = sum(l.kv_elems_per_token for l in layers) * KV_BYTES
        side.state_elems = sum(l.conv_elems + l.recurrent_elems for l in layers)
        side.cache = dict(Counter(l.cls for l in layers))
        return side, extract.pack(config, model, params, prefix, head, tied, layers, 0.0)
    except TimeLimit:
        raise
    except BaseException as e:      # noqa: BLE001 - recorded, never a traceback
        if isinstance(e, KeyboardInterrupt):
            raise
        side.error = _error(e)
    return side, None


def derived(raw: dict, facts: dict, name: str = "") -> Side:
    """What `--layers-from transformers` plans with: the ModelSpec assembled from the facts
    (assemble.py), in the oracle's terms; it must reproduce the oracle."""
    try:
        return _side_of(assemble.spec(raw, facts, name))
    except TimeLimit:
        raise
    except Exception as e:          # noqa: BLE001 - recorded
        return Side(error=_error(e))


def analytic(raw: dict, name: str = "") -> Side:
    """The analytic tier's figures (models.parse: no torch), in the oracle's terms."""
    side = Side()
    try:
        spec = models.parse(raw, model_id=name)
    except TimeLimit:
        raise
    except VramplanError as e:
        side.error = _error(e)
        return side
    except Exception as e:          # noqa: BLE001 - a crash of the parser is recorded as such
        side.error = "crash " + _error(e)
        return side
    return _side_of(spec)


def _side_of(spec) -> Side:
    side = Side()
    side.params = spec.params
    side.kv_bytes = sum(l.mixer.kv_elems_per_token for l in spec.layers
                        if isinstance(l.mixer, Attention)) * KV_BYTES
    state = 0
    for layer in spec.layers:
        r = layer.mixer
        if isinstance(r, Recurrent):
            conv = r.conv_channels * r.conv_kernel if r.conv_channels else r.conv_state_elems
            state += conv + r.ssm_state_elems
    side.state_elems = state
    for attr in ("trust", "confidence", "label"):
        value = getattr(spec, attr, None)
        if isinstance(value, str) and value:
            side.label = value
            break
    return side


def compare(raw: dict, name: str, source: str, limit_s: float = 0) -> Row:
    """One row: oracle and analytic for this config, within `limit_s` seconds (0: none)."""
    start = time.perf_counter()
    model_type = raw.get("model_type") if isinstance(raw.get("model_type"), str) else ""
    row = Row(name=name, model_type=model_type, source=source, oracle=Side(), analytic=Side())
    previous = None
    if limit_s:
        def _alarm(signum, frame):
            raise TimeLimit(f"over the {limit_s:g} s limit")
        previous = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, limit_s)
    try:
        row.explicit = model_type in models.REGISTRY
        row.analytic = analytic(raw, name)
        row.oracle, facts = oracle(raw, name)
        if facts is not None:
            row.derived = derived(raw, facts, name)
    except TimeLimit as e:
        row.oracle.error = row.oracle.error or f"TimeLimit: {e}"
    finally:
        if limit_s:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    row.seconds = time.perf_counter() - start
    return row


def generation_types() -> list[str]:
    """Every model type of the installed transformers with a causal-LM or image-text-to-text class."""
    from transformers.models.auto import modeling_auto as auto

    return sorted(set(auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) | set(auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES))


def default_config(model_type: str) -> dict:
    """The config class's defaults as a config.json would hold them."""
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        d = AutoConfig.for_model(model_type).to_dict()
    finally:
        hf_logging.set_verbosity(level)
    d["model_type"] = model_type
    d.pop("transformers_version", None)
    return d
