"""What a workload runs on: catalog GPUs with their dated prices, and the target of one plan."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Price:
    usd_per_hour: float
    provider: str
    kind: str = "on-demand"     # on-demand | spot | community | secure | reserved | range
    date: str = ""              # YYYY-MM-DD (or YYYY-MM) the price was quoted; "" undated
    source: str = ""


@dataclass(frozen=True)
class GpuSpec:
    """One catalog GPU. Capacity comes from `cuda_total_bytes`, never the marketing size."""

    id: str
    name: str
    nvml_name: str
    marketing: str                     # "48 GB GDDR6 ECC", as the vendor labels it
    cuda_total_bytes: int              # what torch.cuda.get_device_properties().total_memory says
    cuda_total_measured: bool          # False: derived from the NVML total (see docs)
    nvml_total_bytes: int | None = None
    memory_bandwidth_gbs: float | None = None   # GB/s, decimal as vendors quote it
    bf16_tflops: float | None = None            # dense
    fp8_tflops: float | None = None             # dense
    tdp_w: int | None = None
    interconnect: str = ""
    nvlink: bool = False
    mig: int = 0                               # max MIG instances, 0 = no MIG
    architecture: str = ""
    fp8: bool = False                          # native FP8 tensor cores
    aliases: tuple[str, ...] = ()
    prices: tuple[Price, ...] = ()
    sources: tuple[str, ...] = ()
    fp4_tflops: float | None = None            # dense FP4 (NVFP4 / MXFP4) tensor peak
    int8_tops: float | None = None             # dense INT8 tensor peak (W8A8 kernels)
    link_gbs: float | None = None              # GPU-to-GPU link per direction, GB/s (NVLink,
                                               # Infinity Fabric); None: the cards talk over PCIe
    vendor: str = "nvidia"                     # "nvidia" | "amd"
    notes: tuple[str, ...] = ()                # what differs on this card (e.g. vLLM on ROCm)


@dataclass(frozen=True)
class GpuTarget:
    """What the workload runs on: `count` cards of one kind, or a bare memory size."""

    gpu: GpuSpec | None
    count: int = 1
    memory_bytes: int | None = None   # --gpu-mem: overrides the catalog's CUDA total
    free_bytes: int | None = None     # probed free memory (other processes hold the rest)

    @property
    def id(self) -> str:
        return self.gpu.id if self.gpu else "custom"

    @property
    def per_gpu_bytes(self) -> int:
        if self.memory_bytes is not None:
            return self.memory_bytes
        assert self.gpu is not None
        return self.gpu.cuda_total_bytes
