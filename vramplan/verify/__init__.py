"""Tier 3: check a plan against reality by allocating (--level alloc) or running (--level run)
it on a device and measuring, per component and in total.

On `cuda:N` the measurements are torch's caching-allocator statistics and NVML (the `gpu`
extra); on `cpu` (tiny models, how the tests exercise this code) they come from the trace
tier's storage tracker, so a CPU run equals the trace to the byte. Importing this package
imports neither torch nor pynvml.

    from vramplan.verify import verify
    r = verify("meta-llama/Llama-3.1-8B", level="alloc", device="cuda:0", mode="infer", ctx="8k")
    r.rows, r.measured, r.errors()
"""

from __future__ import annotations

from vramplan.verify.result import Row, VerifyResult
from vramplan.verify.session import verify

__all__ = ["verify", "VerifyResult", "Row"]
