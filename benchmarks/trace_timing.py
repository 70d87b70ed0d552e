"""Wall time and peak RSS of `--method trace` training steps (targets: 8B < 30 s, 70B < 90 s,
< 2 GiB RSS on a 2-core machine).

    python benchmarks/trace_timing.py

Each trace runs in a fresh interpreter (imports included, disk cache bypassed), so the time is
what a user waits for on a first question; RSS is that child's maximum resident set.
"""

from __future__ import annotations

import json
import subprocess
import sys

CASES = [
    ("meta-llama/Llama-3.1-8B", "full", 1, 2048, {}),
    ("meta-llama/Llama-3.1-8B", "lora", 4, 2048, {"grad_ckpt": True}),
    ("meta-llama/Llama-3.1-8B", "qlora", 4, 2048, {}),
    ("meta-llama/Llama-3.1-70B", "full", 1, 2048, {}),
    ("meta-llama/Llama-3.1-70B", "qlora", 4, 2048, {"grad_ckpt": True}),
    # the heaviest programs since: Mamba layers through the emulated CUDA kernels, and peft's
    # ParamWrapper folding every layer's expert stack (targets of the 70B class)
    ("nvidia/Nemotron-H-56B-Base-8K", "lora", 4, 2048, {}),
    ("mistralai/Mixtral-8x7B-v0.1", "lora", 1, 2048, {"lora_targets": "all-linear", "lora_dropout": 0.0}),
]
TARGET_SECONDS = {"8B": 30, "70B": 90}
TARGET_RSS = 2 * 2**30

CHILD = """
import json, resource, sys, time
t = time.perf_counter()
from vramplan import api, trace
model, mode, batch, ctx, opts = json.loads(sys.argv[1])
target = api.resolve_target("h100")
w = api.make_workload(mode, batch, ctx, gpu_count=1, **opts)
p = trace.plan(model, target, w, no_cache=True, progress=False)
print(json.dumps({"seconds": time.perf_counter() - t, "trace_seconds": p.trace.seconds,
                  "peak": p.trace.peak_bytes, "where": p.trace.where,
                  "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def main() -> int:
    ok = True
    print(f"{'case':52s} {'wall':>7s} {'trace':>7s} {'RSS':>9s}  peak")
    for model, mode, batch, ctx, opts in CASES:
        out = subprocess.run([sys.executable, "-W", "ignore", "-c", CHILD,
                              json.dumps([model, mode, batch, ctx, opts])],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        size = "8B" if any(x in model for x in ("7B", "8B")) and "8x7B" not in model else "70B"
        fine = r["seconds"] < TARGET_SECONDS[size] and r["rss"] < TARGET_RSS
        ok &= fine
        label = f"{model} {mode} b{batch} c{ctx} {' '.join(opts)}"
        print(f"{label:52s} {r['seconds']:6.1f}s {r['trace_seconds']:6.1f}s {r['rss'] / 2**20:7.0f}MiB  "
              f"{r['peak'] / 2**30:.2f} GiB at {r['where']}{'' if fine else '  OVER TARGET'}",
              flush=True)
    print("all within targets" if ok else "some cases over target")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
