"""Memory a GPU process spends outside the tensors the model program creates.

Every constant is named and sourced here and in docs/methodology.md ("Overhead"). They are
deliberately few: the trace tier counts tensors exactly, and these are what it cannot see.
"""

from __future__ import annotations

from vramplan.spec import GpuSpec
from vramplan.units import MiB

# CUDA context + PyTorch/cuBLAS/cuDNN module images loaded on first use. Measured 426 MiB with
# torch 2.10 on an RTX 6000 Ada (lazy module loading, CUDA 12); PyTorch PR #86509 reports 287 MB
# with lazy loading and 667 MB eager. We take the recent measurement (reference/gpus.md).
CUDA_CONTEXT_BYTES = 426 * MiB

# cuBLAS workspace per handle/stream, allocated through PyTorch's caching allocator (so it is in
# memory_allocated). cuBLAS docs (cublasSetWorkspace) recommend 32 MiB on Hopper and newer and
# 4 MiB before; PyTorch's default CUBLAS_WORKSPACE_CONFIG ":4096:2:16:8" is 8 MiB + 128 KiB.
CUBLAS_WORKSPACE_HOPPER_BYTES = 32 * MiB
CUBLAS_WORKSPACE_BYTES = 8 * MiB + 128 * 1024

# The caching allocator rounds every allocation up to a multiple of 512 B (kMinBlockSize in
# c10/cuda/CUDACachingAllocator.cpp) and memory_allocated() counts the rounded size, so each
# tensor costs block_rounded(its bytes): a Qwen3 q_norm of 256 B takes 512.
ALLOC_BLOCK = 512

# It also serves requests <= 1 MiB from 2 MiB segments and rounds larger ones up to 2 MiB;
# in inference the churn of prefill transients
# leaves cached-but-free blocks of a few percent of the transient working set
# (reference/gpus.md, "Caching allocator"). Applied to activations only: weights and the cache
# are allocated once, in large blocks, and pack tightly.
ALLOCATOR_SLACK_INFER = 0.05

# NCCL communicator buffers per rank when world size > 1: vLLM's non-torch memory on H100 was
# 1.79 GiB at TP1 and 3.58 GiB at TP2 (vLLM PR #10511, reference/gpus.md): 1.79 GiB more.
NCCL_BYTES_PER_RANK = int(1.79 * 1024) * MiB

_NEW_ARCH = ("hopper", "blackwell")


def cublas_workspace_bytes(gpu: GpuSpec | None) -> int:
    arch = (gpu.architecture if gpu else "").lower()
    return CUBLAS_WORKSPACE_HOPPER_BYTES if arch in _NEW_ARCH else CUBLAS_WORKSPACE_BYTES


def runtime_overhead(gpu: GpuSpec | None, world_size: int) -> dict[str, int]:
    """Context, workspace and communication buffers, by name, for one GPU of the job."""
    parts = {
        "cuda_context": CUDA_CONTEXT_BYTES,
        "cublas_workspace": cublas_workspace_bytes(gpu),
    }
    if world_size > 1:
        parts["nccl"] = NCCL_BYTES_PER_RANK
    return parts


def block_rounded(nbytes: int) -> int:
    """Bytes the caching allocator hands out for a tensor of `nbytes` (0 stays 0)."""
    return -(-nbytes // ALLOC_BLOCK) * ALLOC_BLOCK


def allocator_slack(transient_bytes: int, fraction: float = ALLOCATOR_SLACK_INFER) -> int:
    return int(transient_bytes * fraction)
