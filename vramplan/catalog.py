"""The data catalog: GPUs (configs/gpus.toml) and bundled model configs (configs/models/).

The data lives in the repository's top-level `configs/`, which the wheel ships as
`vramplan/configs` (pyproject force-include). Both layouts are reached through
importlib.resources, so an installed package and a source checkout behave the same.

Every load is cached and this module imports only the standard library (difflib only on the
"not found" path): `vramplan fit` reads the catalog on every run and must stay well under 0.25 s.
The meaning and source of every catalog column is in docs/gpus.md.
"""

from __future__ import annotations

import datetime
import functools
import os
import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
    from importlib.resources.abc import Traversable
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib
    from importlib.abc import Traversable

from importlib import resources

from vramplan.errors import BadInput, EnvironmentProblem, ModelNotFound, UnknownGpu
from vramplan.files import CONFIG_LIMIT, TOML_LIMIT, read_resource
from vramplan.pricing import ON_DEMAND_KINDS, default_price, firm_quotes, quote_date  # noqa: F401 (re-exported)
from vramplan.spec import GpuSpec, GpuTarget, Price

MiB = 2**20
GiB = 2**30
MAX_GPU_COUNT = 64

__all__ = [
    "configs_dir", "load_gpus", "find_gpu", "parse_gpu_arg", "driver_reserve_mib",
    "bundled_model_ids", "find_bundled", "find_variant", "nearest_bundled", "load_bundled_text",
    "default_price", "firm_quotes", "quote_date", "today", "is_stale",
]


# ---------------------------------------------------------------------------------------------
# Where the data is


@functools.lru_cache(maxsize=None)
def configs_dir() -> Traversable:
    """The configs/ directory: inside the installed package, else the source checkout's."""
    packaged = resources.files("vramplan") / "configs"
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parent.parent / "configs"
    if checkout.is_dir():
        return checkout
    raise EnvironmentProblem(
        "vramplan's data files (the configs/ directory) are missing from this installation. "
        "Reinstall it with: pip install --force-reinstall vramplan"
    )


_REINSTALL = "Reinstall vramplan: pip install --force-reinstall vramplan"


def _read_toml(*parts: str) -> dict:
    """A data file of the install, read like every file (regular, bounded); broken is exit 3."""
    node = configs_dir()
    for part in parts:
        node = node / part
    raw = read_resource(node, TOML_LIMIT, "vramplan's data file", EnvironmentProblem, _REINSTALL)
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise EnvironmentProblem(f"vramplan's data file {node} is not valid TOML ({e}). {_REINSTALL}") from None


# ---------------------------------------------------------------------------------------------
# GPUs

# TOML keys copied straight into GpuSpec; the others are turned into bytes or tuples below.
_PLAIN_KEYS = {
    "id", "name", "nvml_name", "marketing", "memory_bandwidth_gbs", "bf16_tflops", "fp8_tflops",
    "tdp_w", "interconnect", "nvlink", "mig", "architecture", "fp8", "fp4_tflops", "int8_tops",
    "link_gbs", "vendor",
}
_OTHER_KEYS = {"nvml_total_mib", "cuda_total_gib", "cuda_total_like", "nominal_mib", "aliases", "sources",
               "prices", "notes"}
_PRICE_KEYS = {"usd_per_hour", "provider", "kind", "date", "source"}


def _norm(text: str) -> str:
    """Match key for GPU names: case, spaces, dashes, underscores and a leading 'NVIDIA' ignored."""
    key = re.sub(r"[\s\-_]+", "", text.strip().lower())
    return key[len("nvidia"):] if key.startswith("nvidia") and len(key) > len("nvidia") else key


@functools.lru_cache(maxsize=None)
def driver_reserve_mib() -> int:
    """MiB between the NVML total and the CUDA total, used where only NVML was seen."""
    return int(_read_toml("gpus.toml")["driver_reserve_mib"])


def _cuda_total(entry: dict, by_id: dict, reserve: int, seen: tuple = (), nominal_reserve: int = 0) -> tuple[int, bool, str]:
    """(bytes, measured?, how): measured GiB, else NVML minus reserve, else a sibling's total,
    else the nominal capacity minus the usual reserve (an estimate, labelled)."""
    if "cuda_total_gib" in entry:
        exact = round(entry["cuda_total_gib"] * GiB)
        total = exact - exact % MiB
        return total, True, f"measured {entry['cuda_total_gib']} GiB, rounded down to whole MiB"
    if "nvml_total_mib" in entry:
        total = (entry["nvml_total_mib"] - reserve) * MiB
        return total, False, (f"derived: NVML total {entry['nvml_total_mib']} MiB minus the "
                              f"{reserve} MiB driver reserve (docs/gpus.md)")
    like = entry.get("cuda_total_like")
    if like in by_id and like not in seen:
        total, _, _ = _cuda_total(by_id[like], by_id, reserve, seen + (entry["id"],), nominal_reserve)
        return total, False, f"estimated: taken from '{like}', which has the same memory (docs/gpus.md)"
    if "nominal_mib" in entry:
        total = (entry["nominal_mib"] - nominal_reserve) * MiB
        return total, False, (f"estimated: nominal {entry['nominal_mib']} MiB minus the usual "
                              f"{nominal_reserve} MiB between nominal and CUDA totals (docs/gpus.md); "
                              "no published log of this card's total was found")
    raise ValueError(f"gpus.toml: '{entry['id']}' needs cuda_total_gib, nvml_total_mib or a valid cuda_total_like")


def _price(raw: dict, gpu_id: str) -> Price:
    unknown = set(raw) - _PRICE_KEYS
    if unknown:
        raise ValueError(f"gpus.toml: unknown price keys {sorted(unknown)} for '{gpu_id}'")
    return Price(usd_per_hour=float(raw["usd_per_hour"]), provider=raw["provider"],
                 kind=raw.get("kind", "on-demand"), date=raw.get("date", ""), source=raw.get("source", ""))


@functools.lru_cache(maxsize=None)
def load_gpus() -> tuple[GpuSpec, ...]:
    """Every catalog GPU, in file order, with an integer CUDA total each."""
    data = _read_toml("gpus.toml")
    reserve = int(data["driver_reserve_mib"])
    nominal_reserve = int(data.get("nominal_reserve_mib", 0))
    entries = data["gpu"]
    by_id: dict[str, dict] = {}
    for entry in entries:
        if entry["id"] in by_id:
            raise ValueError(f"gpus.toml: duplicate id '{entry['id']}'")
        unknown = set(entry) - _PLAIN_KEYS - _OTHER_KEYS
        if unknown:
            raise ValueError(f"gpus.toml: unknown keys {sorted(unknown)} for '{entry['id']}'")
        by_id[entry["id"]] = entry

    gpus = []
    for entry in entries:
        total, measured, how = _cuda_total(entry, by_id, reserve, (), nominal_reserve)
        nvml = entry.get("nvml_total_mib")
        plain = {k: v for k, v in entry.items() if k in _PLAIN_KEYS}
        gpus.append(GpuSpec(
            **plain,
            cuda_total_bytes=total,
            cuda_total_measured=measured,
            nvml_total_bytes=nvml * MiB if nvml is not None else None,
            aliases=tuple(entry.get("aliases", ())),
            prices=tuple(_price(p, entry["id"]) for p in entry.get("prices", ())),
            sources=tuple(entry.get("sources", ())) + (f"cuda_total_bytes {total}: {how}",),
            notes=tuple(entry.get("notes", ())),
        ))
    return tuple(gpus)


@functools.lru_cache(maxsize=None)
def _gpu_index() -> dict[str, GpuSpec]:
    """Normalised id / name / NVML name / alias -> GPU; a key naming two GPUs is a data bug."""
    index: dict[str, GpuSpec] = {}
    for gpu in load_gpus():
        for text in (gpu.id, gpu.name, gpu.nvml_name, *gpu.aliases):
            key = _norm(text)
            if key in index and index[key].id != gpu.id:
                raise ValueError(f"gpus.toml: '{text}' names both '{index[key].id}' and '{gpu.id}'")
            index[key] = gpu
    return index


def find_gpu(text: str) -> GpuSpec:
    """The catalog GPU called `text` (id, name, NVML name or alias; "H100 SXM" == "h100-sxm")."""
    gpu = _gpu_index().get(_norm(text))
    if gpu is not None:
        return gpu
    import difflib

    index = _gpu_index()
    close = difflib.get_close_matches(_norm(text), list(index), n=1, cutoff=0.6)
    hint = f" (did you mean '{index[close[0]].id}'?)" if close else ""
    ids = ", ".join(g.id for g in load_gpus())
    raise UnknownGpu(
        f"Unknown GPU '{text.strip()}'{hint}; the catalog has: {ids}. "
        "For another card, give its memory instead, e.g. {gpu_mem} 48GB."
    )


def parse_gpu_arg(text: str) -> GpuTarget:
    """`--gpu` value: "l40s", "l40s:2", "NVIDIA L40S:4" -> GpuTarget (count 1..64)."""
    name, sep, count_text = text.strip().rpartition(":")
    if not sep:
        name, count_text = count_text, "1"
    name, count_text = name.strip(), count_text.strip()
    if not name:
        raise BadInput(f"{{gpu}} '{text}' names no GPU; use an id and an optional count, e.g. {{gpu}} h100:8.")
    if not (count_text.isascii() and count_text.isdigit()) or len(count_text) > 3 or not 1 <= int(count_text) <= MAX_GPU_COUNT:
        raise BadInput(
            f"The GPU count in {{gpu}} '{text.strip()}' must be a whole number from 1 to "
            f"{MAX_GPU_COUNT}, e.g. {{gpu}} {name}:2."
        )
    return GpuTarget(gpu=find_gpu(name), count=int(count_text))


# ---------------------------------------------------------------------------------------------
# Prices: which quote a buyer would recognise (docs/compare.md, "Prices")

STALE_DAYS = 365          # a quote older than this is flagged: cloud prices move within months
TODAY_ENV = "VRAMPLAN_TODAY"   # YYYY-MM-DD: pins "today" (tests, reproducible reports)


def today() -> datetime.date:
    """The date prices are judged against: $VRAMPLAN_TODAY when set (YYYY-MM-DD), else today."""
    pinned = os.environ.get(TODAY_ENV, "").strip()
    if pinned:
        try:
            return datetime.datetime.strptime(pinned, "%Y-%m-%d").date()
        except ValueError:
            raise BadInput(f"${TODAY_ENV} {pinned!r} is not a date; write YYYY-MM-DD.") from None
    return datetime.date.today()


def is_stale(p: Price, on: datetime.date | None = None) -> bool:
    """Older than STALE_DAYS (an undated quote is not stale: it is never a default)."""
    d = quote_date(p)
    return d is not None and ((on or today()) - d).days > STALE_DAYS


# ---------------------------------------------------------------------------------------------
# Bundled model configs: configs/models/<org>--<name>.json is the Hub id "<org>/<name>".


@functools.lru_cache(maxsize=None)
def _bundled() -> dict[str, Traversable]:
    found = {}
    for item in (configs_dir() / "models").iterdir():
        stem, dot, ext = item.name.rpartition(".")
        org, sep, name = stem.partition("--")
        if dot and ext == "json" and sep and org and name:
            found[f"{org}/{name}"] = item
    return dict(sorted(found.items(), key=lambda kv: kv[0].lower()))


@functools.lru_cache(maxsize=None)
def _model_index() -> dict[str, str]:
    """Lower-case lookup key -> bundled id: full ids, then aliases.toml, then unique bare names."""
    ids = list(_bundled())
    index = {i.lower(): i for i in ids}
    aliases = _read_toml("models", "aliases.toml")
    for alias, target in aliases.items():
        if target not in _bundled():
            raise ValueError(f"models/aliases.toml: '{alias}' points to '{target}', which is not bundled")
        index.setdefault(alias.lower(), target)
    bare: dict[str, list[str]] = {}
    for i in ids:
        bare.setdefault(i.rsplit("/", 1)[-1].lower(), []).append(i)
    for name, owners in bare.items():
        if len(owners) == 1:
            index.setdefault(name, owners[0])
    return index


def bundled_model_ids() -> list[str]:
    """Hub ids of the bundled configs ("meta-llama/Llama-3.1-8B"), sorted case-insensitively."""
    return list(_bundled())


def find_bundled(model_id: str) -> tuple[str, Traversable] | None:
    """(bundled Hub id, its config.json resource) for an id, alias or unique bare name; else None."""
    canonical = _model_index().get(model_id.strip().lower())
    return (canonical, _bundled()[canonical]) if canonical else None


@functools.lru_cache(maxsize=None)
def _variants() -> dict[str, tuple[str, str]]:
    """Lower-case fine-tune id -> (that id, bundled base id), from models/variants.toml. An entry
    whose base is not bundled, or whose id is itself bundled, is a data bug."""
    found = {}
    for variant, entry in _read_toml("models", "variants.toml").items():
        base = entry.get("base") if isinstance(entry, dict) else None
        if base not in _bundled():
            raise ValueError(f"models/variants.toml: '{variant}' names base '{base}', which is not bundled")
        if variant.lower() in _model_index():
            raise ValueError(f"models/variants.toml: '{variant}' is bundled itself; drop its entry")
        found[variant.lower()] = (variant, base)
    return found


def find_variant(model_id: str) -> tuple[str, str, Traversable] | None:
    """(fine-tune id, bundled base id, the base's config.json) for an id listed in variants.toml
    (same architecture as the base, both configs checked); else None."""
    hit = _variants().get(model_id.strip().lower())
    return (hit[0], hit[1], _bundled()[hit[1]]) if hit else None


def nearest_bundled(model_id: str, n: int = 3) -> list[str]:
    """The bundled ids closest to `model_id`, for "not found" messages.

    Scores each id by the better of two difflib ratios, on the whole lower-cased id and on the
    name part alone, so "Llama-3.1-13B" finds "meta-llama/Llama-3.1-8B" with or without an org.
    """
    import difflib

    query = model_id.strip().lower()
    query_name = query.rsplit("/", 1)[-1]
    scored = []
    for cid in _bundled():
        low = cid.lower()
        score = max(difflib.SequenceMatcher(None, query, low).ratio(),
                    difflib.SequenceMatcher(None, query_name, low.rsplit("/", 1)[-1]).ratio())
        scored.append((-score, cid))
    scored.sort()
    return [cid for neg, cid in scored[:n] if -neg >= 0.5]


def load_bundled_text(model_id: str) -> str:
    """The bundled config.json text for `model_id`; ModelNotFound names the nearest ids."""
    hit = find_bundled(model_id)
    if hit is None:
        near = nearest_bundled(model_id)
        hint = f" Nearest bundled ids: {', '.join(near)}." if near else " Run `vramplan models` to list them."
        raise ModelNotFound(f"No bundled config for '{model_id.strip()}'.{hint}")
    raw = read_resource(hit[1], CONFIG_LIMIT, "the bundled config", EnvironmentProblem, _REINSTALL)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise EnvironmentProblem(f"The bundled config {hit[1]} is not UTF-8 text. {_REINSTALL}") from None
