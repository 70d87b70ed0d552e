"""What a local-inference engine (llama.cpp, Ollama) would do with the model: its layer split
between GPU and CPU and the buffers it logs per device. Plain data (engines/llama_cpp/ fills it)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, kw_only=True)
class DeviceBuffers:
    """One device's buffers as llama.cpp logs them ("CUDA0", "CPU"), bytes."""

    name: str
    model: int                    # "model buffer size" (CPU: the tensors it holds; see mapped)
    kv: int                       # "KV buffer size"
    compute: int                  # "compute buffer size" (modelled)
    output: int = 0               # "output buffer size" (host)
    layers: tuple[int, ...] = ()  # repeating layers on this device
    mapped: int = 0               # CPU: "CPU_Mapped model buffer size", the file range mmap-ed

    @property
    def total(self) -> int:
        return self.model + self.kv + self.compute + self.output


@dataclass(frozen=True, kw_only=True)
class LocalReport:
    engine: str                        # "llama.cpp" or "ollama"
    n_gpu_layers: int                  # llama.cpp's -ngl: GPU layers, the output layer counting as one
    n_layers: int                      # n_layer + 1: every layer llama.cpp can offload
    solved: bool                       # True: the largest -ngl that fits (no -ngl given)
    devices: tuple[DeviceBuffers, ...]
    host_ram_bytes: int                # what the CPU side holds (model, KV, compute, output buffers)
    gpu_bytes: tuple[int, ...]         # per GPU, buffers + CUDA context
    ram_bytes: int | None              # --ram, when given
    ram_ok: bool
    n_ctx: int
    n_ctx_seq: int
    n_seq: int
    n_batch: int
    n_ubatch: int
    flash_attn: bool
    cache_type_k: str
    cache_type_v: str
    kv_bytes_per_token: int            # all attention layers, exact for the cache types
    model_file: str                    # the GGUF file (or "X as Q4_K_M", planned)
    file_type: str
    file_bytes: int                    # tensor bytes of the file
    decode_tokens_per_s: float         # estimate from memory bandwidth (docs/llama-cpp.md)
    fit_margin_layers: int = -1        # what llama.cpp's --fit would offload keeping 1 GiB free
    notes: tuple[str, ...] = field(default_factory=tuple)
