"""Speed budget of the analytic path (issue #2): the README example answers in under 0.25 s
wall on a 2-core machine and never imports torch, transformers or huggingface_hub.

    python benchmarks/bench_fit.py            # 10 runs; exits 1 if over budget
    python benchmarks/bench_fit.py --quick    # 3 runs (CI): reports the time, fails only on a heavy import
"""

import sys

from timing import bench

EXAMPLE = ["fit", "meta-llama/Llama-3.1-8B", "--gpu", "l40s", "--ctx", "32k", "--batch", "8"]

if __name__ == "__main__":
    sys.exit(bench(EXAMPLE, expect=1, budget_s=0.25))
