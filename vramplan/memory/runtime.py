"""Which program lays a model's tensors out in memory.

The formulas in memory/ serve every engine, but vLLM and transformers build the same model
differently (transformers' fused MoE experts and gate_up, the wider dtypes it keeps some tensors
in, Mamba through the mamba_ssm kernels), so a formula that depends on it takes the runtime by
name instead of assuming one.
"""

from __future__ import annotations

from typing import Literal

RuntimeLayout = Literal["vllm", "transformers"]
