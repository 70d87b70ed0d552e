"""`vramplan calibrate RECORDS.jsonl`: what verify records say about the plan, and which of the
constants it rests on they would move.

Why a command: a record is one run; a constant (the CUDA context, the driver reserve, the cuBLAS
workspace, the allocator's slack) wants many, from the card models and versions it covers. This
reads every `vramplan.verify/1` line of a file and answers three questions:

* per case: predicted vs measured peak (`predicted.peak_allocated_bytes` vs
  `measured.max_allocated_bytes`);
* per GPU and component: the planned and measured bytes summed, the median and worst error
  (`components[]`; a sign that holds across cases is a missing term, not noise);
* per constant: its value today, what the records measure (the median, and how many records),
  and whether that would move it (more than MOVE_AT apart). The fields each constant is read
  from are the ones docs/verify.md "How records feed the overhead constants" names.

Records marked `emulated` (bitsandbytes emulated, issue 16 problem 6) and records from
`--device cpu` never calibrate a GPU constant; they are counted and listed, and cpu records
still show per component (the trace tracker's figures).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from statistics import median

from vramplan import catalog
from vramplan.engines.hf_trainer.step import ALLOCATOR_SLACK_TRAIN
from vramplan.errors import BadInput
from vramplan.memory import overhead
from vramplan.request import TRAINING_MODES
from vramplan.verify.record import SCHEMA

MiB = 2**20
MOVE_AT = 0.05           # a constant "would move" when the records' median is this far from it
TRANSIENT = ("activations", "logits_and_loss")
# The allocator's slack is a fraction of the transient working set only when that set is large
# next to its segments (2 MiB, 20 MiB, 2 MiB rounding): smaller runs do not calibrate it.
SLACK_MIN_TRANSIENT = 256 * MiB


@dataclass(frozen=True, kw_only=True)
class Case:
    gpu: str
    case: str                    # "Qwen/Qwen2.5-0.5B infer 1x1,024 run"
    status: str                  # completed | oom | emulated
    predicted: int | None
    measured: int | None

    @property
    def error(self) -> float | None:
        return None if not self.predicted or self.measured is None else (self.measured - self.predicted) / self.predicted


@dataclass(frozen=True, kw_only=True)
class Component:
    gpu: str
    name: str
    records: int
    planned: int                 # summed over the records (cases of different sizes: the
    measured: int                # per-record errors are what compare, the sums weigh them)
    error: float                 # median (measured - planned) / planned
    worst: float                 # the error furthest from 0


@dataclass(frozen=True, kw_only=True)
class Constant:
    name: str
    where: str                   # the file that defines it
    scope: str                   # "all", a GPU name or an architecture
    current: float
    measured: float | None       # the records' median
    records: int
    unit: str                    # "bytes" | "MiB" | "fraction"
    basis: str                   # the record fields it is read from

    @property
    def verdict(self) -> str:
        if self.measured is None:
            return "no records"
        if self.current and abs(self.measured - self.current) / self.current <= MOVE_AT:
            return "agrees"
        return "would move"


@dataclass(frozen=True, kw_only=True)
class Calibration:
    path: str
    records: int
    skipped: dict                # reason -> count
    cases: tuple[Case, ...]
    components: tuple[Component, ...]
    constants: tuple[Constant, ...]

    def to_json(self) -> dict:
        return {"records": self.records, "skipped": dict(self.skipped),
                "cases": [{**_fields(c), "error": c.error} for c in self.cases],
                "components": [_fields(c) for c in self.components],
                "constants": [{**_fields(c), "verdict": c.verdict} for c in self.constants]}


def _fields(obj) -> dict:
    return dict(vars(obj))


def read_records(path: str | Path) -> list[dict]:
    """The verify records in a file; BadInput (exit 2) for a file that is not one."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise BadInput(f"The records file {path} cannot be read: {e.strerror or e}.") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            raise BadInput(f"The records file {path} is not JSON lines (line {n}); give it the file "
                           "`vramplan verify --record` writes.") from None
        if isinstance(rec, dict) and rec.get("schema") == SCHEMA:
            out.append(rec)
    if not out:
        raise BadInput(f"The records file {path} holds no {SCHEMA} records; write some with "
                       "`vramplan verify --record FILE`.")
    return out


def _gpu(rec: dict) -> str:
    g = rec.get("gpu") or {}
    return g.get("name") or rec.get("device") or "?"


def _case(rec: dict) -> Case:
    w = (rec.get("plan") or {}).get("workload") or {}
    model = ((rec.get("plan") or {}).get("model") or {}).get("id", "?")
    label = f"{model} {w.get('mode', '?')} {w.get('batch', '?')}x{w.get('ctx', 0):,} {rec.get('level', '?')}"
    status = "emulated" if rec.get("emulated") else ("completed" if rec.get("completed") else "oom")
    return Case(gpu=_gpu(rec), case=label, status=status,
                predicted=(rec.get("predicted") or {}).get("peak_allocated_bytes"),
                measured=(rec.get("measured") or {}).get("max_allocated_bytes"))


def _components(recs: list[dict]) -> tuple[Component, ...]:
    groups: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for rec in recs:
        for c in rec.get("components") or []:
            if c.get("planned_bytes") and c.get("measured_bytes") is not None:
                groups.setdefault((_gpu(rec), c["name"]), []).append((c["planned_bytes"], c["measured_bytes"]))
    out = []
    for (gpu, name), pairs in groups.items():
        errors = [(m - p) / p for p, m in pairs]
        out.append(Component(gpu=gpu, name=name, records=len(pairs),
                             planned=sum(p for p, _ in pairs), measured=sum(m for _, m in pairs),
                             error=median(errors), worst=max(errors, key=abs)))
    return tuple(sorted(out, key=lambda c: (c.gpu, c.name)))


def _context(gpu_recs: list[dict]) -> Constant:
    """The planned context covers what the process holds outside torch at the end of a run
    (modules load at the first kernels); alloc records only see it before."""
    values = []
    for r in gpu_recs:
        c = r.get("context") or {}
        if c.get("source") != "nvml process":
            continue
        end = c.get("end_non_torch_bytes") if r.get("level") == "run" else None
        v = end if end is not None else c.get("measured_bytes")
        if v is not None:
            values.append(v)
    return Constant(name="CUDA_CONTEXT_BYTES", where="vramplan/memory/overhead.py", scope="all",
                    current=overhead.CUDA_CONTEXT_BYTES, measured=_median(values), records=len(values),
                    unit="bytes", basis="context.end_non_torch_bytes of run records (else "
                    "context.measured_bytes), source 'nvml process' only")


def _reserve(gpu_recs: list[dict]) -> Constant:
    values = [(g["nvml_total_bytes"] - g["cuda_total_bytes"]) / MiB for g in (r.get("gpu") or {} for r in gpu_recs)
              if g.get("nvml_total_bytes") and g.get("cuda_total_bytes")]
    return Constant(name="driver_reserve_mib", where="configs/gpus.toml", scope="all",
                    current=catalog.driver_reserve_mib(), measured=_median(values), records=len(values),
                    unit="MiB", basis="gpu.nvml_total_bytes - gpu.cuda_total_bytes")


def _cuda_totals(gpu_recs: list[dict]) -> list[Constant]:
    by_id: dict[str, list[int]] = {}
    for r in gpu_recs:
        g = r.get("gpu") or {}
        if g.get("catalog_id") and g.get("cuda_total_bytes") and not str(g.get("uuid", "")).upper().startswith("MIG-"):
            by_id.setdefault(g["catalog_id"], []).append(g["cuda_total_bytes"])
    out = []
    for gid, values in sorted(by_id.items()):
        out.append(Constant(name="cuda_total_bytes", where="configs/gpus.toml", scope=gid,
                            current=catalog.find_gpu(gid).cuda_total_bytes, measured=_median(values),
                            records=len(values), unit="bytes", basis="gpu.cuda_total_bytes (cudaMemGetInfo)"))
    return out


def _workspace(run_recs: list[dict]) -> list[Constant]:
    """The allocator's peak beyond the program's device tensors: the cuBLAS workspace. The
    tracker's peak counts host tensors too (AdamW's step counters), added back."""
    by_arch: dict[str, list[int]] = {}
    for r in run_recs:
        m = r.get("measured") or {}
        if m.get("outside_tracker_bytes") is None:
            continue
        host = next((c.get("measured_bytes") or 0 for c in r.get("components") or [] if c["name"] == "host"), 0)
        gid = (r.get("gpu") or {}).get("catalog_id")
        arch = catalog.find_gpu(gid).architecture if gid else "unknown"
        by_arch.setdefault(arch, []).append(m["outside_tracker_bytes"] + host)
    out = []
    for arch, values in sorted(by_arch.items()):
        gpu = next((g for g in catalog.load_gpus() if g.architecture == arch), None)
        name = ("CUBLAS_WORKSPACE_HOPPER_BYTES" if arch.lower() in ("hopper", "blackwell")
                else "CUBLAS_WORKSPACE_BYTES")
        out.append(Constant(name=name, where="vramplan/memory/overhead.py", scope=arch,
                            current=overhead.cublas_workspace_bytes(gpu), measured=_median(values),
                            records=len(values), unit="bytes",
                            basis="measured.outside_tracker_bytes + the host component of run records"))
    return out


def _slack(gpu_recs: list[dict]) -> list[Constant]:
    out = []
    for mode_kind, name, current, where in (
            ("infer", "ALLOCATOR_SLACK_INFER", overhead.ALLOCATOR_SLACK_INFER, "vramplan/memory/overhead.py"),
            ("train", "ALLOCATOR_SLACK_TRAIN", ALLOCATOR_SLACK_TRAIN, "vramplan/engines/hf_trainer/step.py")):
        values = []
        for r in gpu_recs:
            mode = ((r.get("plan") or {}).get("workload") or {}).get("mode")
            if (mode in TRAINING_MODES) != (mode_kind == "train") or r.get("level") != "run":
                continue
            m = r.get("measured") or {}
            transient = sum(c.get("planned_bytes") or 0 for c in r.get("components") or [] if c["name"] in TRANSIENT)
            if (transient >= SLACK_MIN_TRANSIENT and m.get("max_reserved_bytes") is not None
                    and m.get("max_allocated_bytes") is not None):
                values.append((m["max_reserved_bytes"] - m["max_allocated_bytes"]) / transient)
        out.append(Constant(name=name, where=where, scope=mode_kind, current=current,
                            measured=_median(values), records=len(values), unit="fraction",
                            basis="(measured.max_reserved_bytes - measured.max_allocated_bytes) / "
                                  "planned activations + logits_and_loss, run records with at least "
                                  "256 MiB of them"))
    return out


def _median(values):
    return median(values) if values else None


def calibrate(path: str | Path) -> Calibration:
    """Read a records file and answer the three questions of the module docstring."""
    recs = read_records(path)
    skipped: dict[str, int] = {}
    usable, gpu_recs = [], []
    for r in recs:
        if r.get("emulated"):
            skipped["emulated (bitsandbytes)"] = skipped.get("emulated (bitsandbytes)", 0) + 1
            continue
        usable.append(r)
        if str(r.get("device", "")).startswith("cuda"):
            if r.get("completed"):
                gpu_recs.append(r)
            else:
                skipped["ran out of memory (constants)"] = skipped.get("ran out of memory (constants)", 0) + 1
        else:
            skipped["cpu (no GPU constant)"] = skipped.get("cpu (no GPU constant)", 0) + 1
    run_recs = [r for r in gpu_recs if r.get("level") == "run"]
    constants = [_context(gpu_recs), _reserve(gpu_recs), *_cuda_totals(gpu_recs),
                 *_workspace(run_recs), *_slack(gpu_recs)]
    return Calibration(path=str(path), records=len(recs), skipped=skipped,
                       cases=tuple(_case(r) for r in recs),
                       components=_components([r for r in usable if r.get("completed")]),
                       constants=tuple(constants))
