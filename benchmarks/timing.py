"""Shared by the CLI speed benchmarks: run `python -m vramplan ARGS` as a user would and report
wall and CPU time against a budget, plus any heavy module the command imported.

Python caches compiled bytecode for users; this project's dev machines export
PYTHONDONTWRITEBYTECODE=1, which would recompile every module on every run, so the runs here
drop it. CPU time (user + sys) barely moves when other work shares the machine, so it is the
figure to trust on a busy box; wall time is what the user waits for.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time

ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
HEAVY = ("torch", "transformers", "huggingface_hub", "pynvml", "accelerate", "peft", "numpy", "matplotlib")


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def one_run(args: list[str], expect: int) -> tuple[float, float]:
    start, cpu0 = time.perf_counter(), _cpu()
    proc = subprocess.run([sys.executable, "-m", "vramplan", *args], capture_output=True, env=ENV)
    elapsed, cpu = time.perf_counter() - start, _cpu() - cpu0
    if proc.returncode != expect:
        raise SystemExit(f"unexpected exit {proc.returncode}: {proc.stderr.decode()[-500:]}")
    return elapsed, cpu


def heavy_imports(args: list[str]) -> list[str]:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "vramplan", *args, "--json"],
                          capture_output=True, text=True, env=ENV)
    mods = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    return sorted(m for m in mods if m.split(".")[0] in HEAVY)


def bench(args: list[str], expect: int, budget_s: float) -> int:
    """10 runs (3 with --quick, for CI: the time is reported, only a heavy import fails)."""
    quick = "--quick" in sys.argv
    one_run(args, expect)                       # warm the OS file cache and write .pyc files
    samples = [one_run(args, expect) for _ in range(3 if quick else 10)]
    times, cpus = [w for w, _ in samples], [c for _, c in samples]
    heavy = heavy_imports(args)
    print(f"vramplan {' '.join(args)}")
    print(f"  wall: min {min(times):.3f} s, median {statistics.median(times):.3f} s, "
          f"max {max(times):.3f} s over {len(times)} runs (budget {budget_s} s)")
    print(f"  CPU (user+sys): median {statistics.median(cpus):.3f} s; load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"  heavy imports: {', '.join(heavy) if heavy else 'none'}")
    fast = statistics.median(times) < budget_s
    print("  OK" if fast and not heavy else "  OVER BUDGET" if not fast else "  HEAVY IMPORT")
    if heavy:
        return 1
    return 0 if fast or quick else 1
