"""What a verify run found: planned vs measured, per component and in total, as plain data.

`error` is (measured - planned) / planned: positive means the plan was too low, the dangerous
direction. A run that OOMed keeps the rows it got through and says where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vramplan.render import plan_json


def rel_error(measured: int | None, planned: int | None) -> float | None:
    if measured is None or not planned:
        return None
    return (measured - planned) / planned


@dataclass(frozen=True)
class Row:
    name: str
    planned: int | None                 # the analytic plan's bytes
    measured: int | None = None         # alloc: memory_allocated growth; run: bytes alive at the peak
    reserved: int | None = None         # alloc: memory_reserved growth
    nvml: int | None = None             # alloc: NVML growth for this process
    trace: int | None = None            # run: the trace tier's prediction (fake tensors)
    pieces: int = 0
    note: str = ""

    @property
    def error(self) -> float | None:
        return rel_error(self.measured, self.planned)


@dataclass(frozen=True)
class VerifyResult:
    level: str                          # alloc | run
    device: str                         # cpu | cuda:N
    plan: object                        # vramplan.spec.Plan
    rows: tuple[Row, ...]
    predicted: dict                     # peak_allocated_bytes, total_bytes, trace_peak_bytes
    measured: dict                      # max_allocated_bytes, max_reserved_bytes, nvml_peak_bytes, ...
    context: dict | None = None         # the CUDA context, measured before anything else
    gpu: dict | None = None             # the probed GPU (name, uuid, driver, CUDA, NVML total)
    oom: str | None = None              # where the first OOM happened; None: ran to the end
    notes: tuple[str, ...] = ()
    flags: dict = field(default_factory=dict)
    emulated: tuple[str, ...] = ()      # what ran as vramplan's emulation, not the real library

    @property
    def completed(self) -> bool:
        return self.oom is None

    def errors(self) -> dict[str, float | None]:
        """Relative error of every headline figure the run measured."""
        p, m = self.predicted, self.measured
        out = {"peak_allocated": rel_error(m.get("max_allocated_bytes"), p.get("peak_allocated_bytes"))}
        if m.get("nvml_peak_bytes") is not None:
            out["total"] = rel_error(m.get("nvml_peak_bytes"), p.get("total_bytes"))
        if p.get("trace_peak_bytes") is not None:
            out["trace_peak"] = rel_error(m.get("max_allocated_bytes"), p.get("trace_peak_bytes"))
        return out

    def to_json(self) -> dict:
        return {
            "level": self.level, "device": self.device, "completed": self.completed,
            "oom": self.oom, "flags": dict(self.flags), "gpu": self.gpu, "context": self.context,
            "components": [{"name": r.name, "planned_bytes": r.planned, "measured_bytes": r.measured,
                            "reserved_bytes": r.reserved, "nvml_bytes": r.nvml,
                            "trace_bytes": r.trace, "tensors": r.pieces, "error": r.error,
                            "note": r.note} for r in self.rows],
            "predicted": dict(self.predicted), "measured": dict(self.measured),
            "errors": self.errors(), "notes": list(self.notes), "emulated": list(self.emulated),
            "plan": plan_json(self.plan),
        }
