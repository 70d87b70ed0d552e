"""Speed budget of `vramplan.preflight` (issue #3): under 50 ms per call after import, no
network for a bundled config, no torch imported.

    python benchmarks/bench_preflight.py
"""

from __future__ import annotations

import statistics
import sys
import time


def main() -> int:
    start = time.perf_counter()
    import vramplan

    imported = time.perf_counter() - start
    calls = []
    for _ in range(20):
        t = time.perf_counter()
        vramplan.preflight("meta-llama/Llama-3.1-8B", mode="lora", batch=4, ctx=2048, gpu="l40s",
                           grad_ckpt=True)
        calls.append(time.perf_counter() - t)
    heavy = [m for m in ("torch", "transformers", "huggingface_hub") if m in sys.modules]
    print(f"import vramplan: {imported * 1000:.1f} ms")
    print(f"preflight (LoRA, Llama-3.1-8B, L40S): first {calls[0] * 1000:.1f} ms, "
          f"median {statistics.median(calls) * 1000:.1f} ms over {len(calls)} calls (budget 50 ms)")
    print(f"heavy modules imported: {', '.join(heavy) or 'none'}")
    ok = calls[0] < 0.05 * 4 and statistics.median(calls) < 0.05 and not heavy
    print("OK" if ok else "OVER BUDGET")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
