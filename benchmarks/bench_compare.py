"""Speed budget of `vramplan compare`: the default comparison of a bundled 8B model (every catalog
GPU, one to eight cards each) and what it imports.

Budget (issue #7): under 0.5 s wall on a 2-core machine, and no torch, transformers, numpy or
matplotlib (the plot extra is imported only for --plot).

    python benchmarks/bench_compare.py            # 10 runs; exits 1 if over budget
    python benchmarks/bench_compare.py --quick    # 3 runs (CI); reports the time, fails only on a
                                                  # heavy import (a shared machine's clock is noisy)
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time

# Measure what a user gets: Python caches compiled bytecode. This project's dev machines export
# PYTHONDONTWRITEBYTECODE=1, which would recompile every module on every run (see bench_fit.py).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

BUDGET_S = 0.5
HEAVY = ("torch", "transformers", "huggingface_hub", "pynvml", "accelerate", "peft", "numpy", "matplotlib")
EXAMPLE = ["compare", "meta-llama/Llama-3.1-8B"]


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def one_run() -> tuple[float, float]:
    """(wall, CPU) seconds of one run; CPU time is the figure to trust on a busy machine."""
    start, cpu0 = time.perf_counter(), _cpu()
    proc = subprocess.run([sys.executable, "-m", "vramplan", *EXAMPLE], capture_output=True, env=ENV)
    elapsed, cpu = time.perf_counter() - start, _cpu() - cpu0
    if proc.returncode != 0:
        raise SystemExit(f"unexpected exit {proc.returncode}: {proc.stderr.decode()[-500:]}")
    return elapsed, cpu


def heavy_imports() -> list[str]:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "vramplan", *EXAMPLE, "--json"],
                          capture_output=True, text=True, env=ENV)
    mods = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    return sorted(m for m in mods if m.split(".")[0] in HEAVY)


def main() -> int:
    runs = 3 if "--quick" in sys.argv else 10
    one_run()                                   # warm the OS file cache and write .pyc files
    samples = [one_run() for _ in range(runs)]
    times, cpus = [w for w, _ in samples], [c for _, c in samples]
    heavy = heavy_imports()
    print(f"vramplan {' '.join(EXAMPLE)}")
    print(f"  wall: min {min(times):.3f} s, median {statistics.median(times):.3f} s, "
          f"max {max(times):.3f} s over {runs} runs (budget {BUDGET_S} s)")
    print(f"  CPU (user+sys): median {statistics.median(cpus):.3f} s; load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"  heavy imports: {', '.join(heavy) if heavy else 'none'}")
    fast = statistics.median(times) < BUDGET_S
    print("  OK" if fast and not heavy else "  OVER BUDGET" if not fast else "  HEAVY IMPORT")
    if heavy:
        return 1
    return 0 if fast or "--quick" in sys.argv else 1


if __name__ == "__main__":
    sys.exit(main())
