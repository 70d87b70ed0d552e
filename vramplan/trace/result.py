"""What one trace measured, as plain data (no torch): cached on disk as JSON, rendered as a table.

`components` are the bytes alive at the peak by what they are, and sum to `peak_bytes`:
    weights       parameters (and quantization state) as loaded
    buffers       non-parameter model buffers (rotary frequencies, ...)
    kv_cache      tensors held by the transformers cache object
    gradients     parameter .grad tensors
    optimizer     optimizer state (moments, step counters, 8-bit absmax)
    activations   everything else the program made: saved-for-backward tensors, transients,
                  logits and loss buffers, inputs
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class TensorRow:
    """One storage alive at the peak."""

    bytes: int
    category: str
    shape: tuple
    dtype: str
    op: str          # the aten op that allocated it
    module: str      # the module running when it was allocated
    phase: str       # the phase that allocated it


@dataclass(frozen=True)
class TraceResult:
    scenario: dict
    peak_bytes: int                     # live tensor bytes at the peak (512-B blocks)
    components: dict[str, int]          # at the peak, by category; sums to peak_bytes
    phase: str                          # phase of the peak: prefill, decode, backward, ...
    op: str                             # aten op whose outputs made the peak
    module: str                         # module running then
    phase_peaks: dict[str, int]         # peak live bytes within each phase
    top: tuple[TensorRow, ...]          # largest storages alive at the peak
    weights_bytes: int                  # parameters + quantization state, as loaded
    measured: dict = field(default_factory=dict)   # scenario figures (kv bytes after prefill, ...)
    versions: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def where(self) -> str:
        at = f" in {self.module}" if self.module else ""
        return f"{self.phase}: {self.op}{at}"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "TraceResult":
        d = dict(d)
        d["top"] = tuple(TensorRow(**{**r, "shape": tuple(r["shape"])}) for r in d.get("top", ()))
        return cls(**d)
