"""Speed budget of `vramplan compare` (issue #7): the default comparison of a bundled 8B model
(every catalog GPU, one to eight cards each) under 0.5 s wall on a 2-core machine, importing no
torch, transformers, numpy or matplotlib (the plot extra is imported only for --plot).

    python benchmarks/bench_compare.py            # 10 runs; exits 1 if over budget
    python benchmarks/bench_compare.py --quick    # 3 runs (CI): reports the time, fails only on a heavy import
"""

import sys

from timing import bench

EXAMPLE = ["compare", "meta-llama/Llama-3.1-8B"]

if __name__ == "__main__":
    sys.exit(bench(EXAMPLE, expect=0, budget_s=0.5))
