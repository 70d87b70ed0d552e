"""The Python steps of benchmarks/gpu_check.sh.

    python benchmarks/gpu_check.py readings            calibration readings, one JSON object
    python benchmarks/gpu_check.py ctrl-c [S] -- CMD...  run CMD, send it a real SIGINT once it
                                                         holds 1 GiB of GPU memory (after S
                                                         seconds where NVML cannot see it),
                                                         check it freed and said so

`readings` runs in its own process, before anything else touched the GPU in it, so the context
is ours to measure:

* context: this process in NVML right after cudaMemGetInfo creates the context;
* growth at the first kernels (lazy module loading): NVML again after the first matmul, the first
  SDPA call and the first optimizer step, minus what the caching allocator reserved;
* cuBLAS workspace: memory_allocated() after the first matmul, minus its tensors;
* NVML vs CUDA total: NVML's total minus cudaMemGetInfo's (the catalog's driver reserve);
* PID visibility: whether NVML lists this process at all (containers hide it).

Exit 0 with {"skipped": why} when there is no torch, no GPU or no nvidia-ml-py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

MiB = 2**20
INTERRUPTED = "interrupted; everything verify allocated was freed"


def readings() -> int:
    try:
        import torch
    except ImportError:
        print(json.dumps({"skipped": "torch is not installed"}))
        return 0
    if not torch.cuda.is_available():
        print(json.dumps({"skipped": f"torch {torch.__version__} sees no CUDA GPU"}))
        return 0
    from vramplan.probe.nvml import NvmlError, PynvmlBackend
    from vramplan.errors import MissingExtra

    try:
        n = PynvmlBackend()
        n.init()
    except (MissingExtra, NvmlError) as e:
        print(json.dumps({"skipped": f"NVML unavailable: {e}"}))
        return 0
    props = torch.cuda.get_device_properties(0)
    uuid = str(getattr(props, "uuid", ""))
    h = None
    for prefix in ("GPU-", "MIG-"):
        try:
            h = n.handle_by_uuid(prefix + uuid)
            break
        except NvmlError:
            continue
    if h is None:
        h = n.handle(0)
    pid = os.getpid()

    def device_used():
        try:
            return n.memory_v2(h)[2]
        except NvmlError:
            return n.memory_v1(h)[1]

    def mine():
        try:
            for p, used in n.processes(h):
                if p == pid and used is not None:
                    return used, True
        except NvmlError:
            pass
        return device_used() - baseline, False

    baseline = device_used()
    free, cuda_total = torch.cuda.mem_get_info(0)          # the context, nothing allocated
    torch.cuda.synchronize(0)
    context, visible = mine()
    out = {"gpu": props.name, "uuid": uuid, "capability": f"{props.major}.{props.minor}",
           "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "cuda_module_loading": os.environ.get("CUDA_MODULE_LOADING"),
           "pid_visible": visible, "context_bytes": context, "cuda_total_bytes": cuda_total,
           "cuda_free_bytes": free}
    try:
        nvml_total = n.memory_v2(h)[0]
    except NvmlError:
        nvml_total = n.memory_v1(h)[0]
    out["nvml_total_bytes"] = nvml_total
    out["driver_reserve_mib"] = (nvml_total - cuda_total) / MiB

    dtype = torch.bfloat16 if props.major >= 8 else torch.float16
    a = torch.ones(1024, 1024, device="cuda:0", dtype=dtype)
    b = a @ a
    torch.cuda.synchronize(0)
    tensors = 2 * a.numel() * a.element_size()
    out["cublas_workspace_bytes"] = torch.cuda.memory_allocated(0) - tensors
    out["after_matmul_non_torch_bytes"] = mine()[0] - torch.cuda.memory_reserved(0)
    q = torch.ones(1, 8, 1024, 64, device="cuda:0", dtype=dtype)
    torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
    torch.cuda.synchronize(0)
    out["after_sdpa_non_torch_bytes"] = mine()[0] - torch.cuda.memory_reserved(0)
    p = torch.nn.Parameter(torch.ones(1 << 20, device="cuda:0"))
    p.grad = torch.ones_like(p)
    torch.optim.AdamW([p], lr=1e-4, foreach=True).step()
    torch.cuda.synchronize(0)
    out["after_optimizer_non_torch_bytes"] = mine()[0] - torch.cuda.memory_reserved(0)
    out["context_growth_bytes"] = out["after_optimizer_non_torch_bytes"] - context
    del a, b, q, p
    torch._C._cuda_clearCublasWorkspaces()
    torch.cuda.empty_cache()
    n.shutdown()
    print(json.dumps(out))
    return 0


def _holding(pid: int) -> int | None:
    """GPU bytes NVML attributes to `pid` (None: no NVML, or the PID is hidden)."""
    try:
        from vramplan.probe.nvml import PynvmlBackend

        n = PynvmlBackend()
        n.init()
        try:
            for i in range(n.device_count()):
                for p, used in n.processes(n.handle(i)):
                    if p == pid and used:
                        return used
        finally:
            n.shutdown()
    except Exception:
        return None
    return None


def ctrl_c(cmd: list[str], hold: int = 1 << 30, wait: float = 90.0, fallback: float = 20.0) -> int:
    """A real SIGINT (what Ctrl-C sends) to a running verify, once NVML shows it holding `hold`
    bytes (or after `fallback` seconds where NVML cannot see it). Exit 0 when it stopped with
    exit 130 and said it had freed everything."""
    start = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = None
    while time.monotonic() - start < wait and p.poll() is None:
        time.sleep(1)
        seen = _holding(p.pid)
        if (seen or 0) >= hold or (seen is None and time.monotonic() - start >= fallback):
            break
    if p.poll() is not None:
        print(f"ctrl-c: the run ended (exit {p.returncode}) before the signal; nothing to interrupt")
        return 1
    p.send_signal(signal.SIGINT)
    try:
        _, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        print("ctrl-c: no exit within 60 s of SIGINT")
        return 1
    held = "?" if seen is None else f"{seen / 2**30:.2f} GiB"
    ok = p.returncode == 130 and INTERRUPTED in err
    print(f"ctrl-c: SIGINT after {time.monotonic() - start:.0f} s holding {held}: exit {p.returncode}"
          + ("; it freed everything and said so" if ok else f"; stderr tail: {err.strip()[-300:]}"))
    return 0 if ok else 1


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what == "readings":
        sys.exit(readings())
    if what == "ctrl-c" and "--" in sys.argv:
        k = sys.argv.index("--")
        after = float(sys.argv[2]) if k > 2 else 20.0
        sys.exit(ctrl_c(sys.argv[k + 1:], fallback=after))
    print(__doc__, file=sys.stderr)
    sys.exit(2)
