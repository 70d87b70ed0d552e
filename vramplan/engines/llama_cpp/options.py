"""llama.cpp's flags as a user types them (llama-server / llama-cli, common/arg.cpp and
common/common.h at llama.cpp commit 0c1e57098), checked and normalized once.

Defaults are llama.cpp's own: -ub 512, -b 2048, -fa auto, f16 K and V, -ngl auto (the largest
number of layers that fit: vramplan solves it, as llama.cpp's --fit does, common/fit.cpp). The
context (-c) is vramplan's --ctx, the whole KV cache the slots share; --parallel (-np) is the
number of slots (default: --batch)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from vramplan.errors import BadInput
from vramplan.units import parse_bytes, parse_tokens

# common/arg.cpp kv_cache_types: the only --cache-type-k/-v llama.cpp accepts
KV_CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
# vramplan's --kv-dtype words that name a llama.cpp cache type
_KV_DTYPE = {"auto": "f16", "fp16": "f16", "bf16": "bf16", "fp32": "f32"}
FLASH_ATTN = ("auto", "on", "off")
# common/common.h: n_batch 2048, n_ubatch 512
DEFAULT_BATCH, DEFAULT_UBATCH = 2048, 512
# common/common.h LLM_FFN_EXPS_REGEX: what --n-cpu-moe / --cpu-moe keep on the CPU, per layer
EXPS_REGEX = r"\.ffn_(up|down|gate|gate_up)_(ch|)exps"
# -ngl "all": more layers than any model has (llama.cpp takes min(ngl, n_layer + 1), so any number
# above the layer count means every layer; models/bounds.py caps layers at 1,000)
ALL_LAYERS = 10**6
# A desktop's RAM bandwidth when none is given: dual-channel DDR5-4000, 2 x 8 B x 4000 MT/s
DEFAULT_RAM_GBS = 64.0


@dataclass(frozen=True, kw_only=True)
class LlamaFlags:
    """llama.cpp's flags as given (None: llama.cpp's default, or Ollama's under --engine ollama)."""

    parallel: int | str | None = None          # -np, --parallel
    n_gpu_layers: int | str | None = None      # -ngl: a number, "auto" or "all"
    tensor_split: str | None = None            # -ts 3,1
    n_cpu_moe: int | None = None               # -ncmoe: experts of the first N layers on the CPU
    cpu_moe: bool | None = None                # --cpu-moe: every layer's experts on the CPU
    override_tensor: str | None = None         # -ot "REGEX=CPU,REGEX2=CPU"
    cache_type_k: str | None = None            # -ctk
    cache_type_v: str | None = None            # -ctv
    flash_attn: str | None = None              # -fa on|off|auto
    ubatch_size: int | str | None = None       # -ub
    batch_size: int | str | None = None        # -b
    kv_unified: bool | None = None             # --kv-unified
    ram: int | str | None = None               # host RAM available (verdict on host buffers)
    ram_bandwidth: float | None = None         # GB/s of system RAM, for the decode-speed estimate

    def given(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True, kw_only=True)
class LlamaOptions:
    """The flags normalized: what the llama.cpp and Ollama engines plan with."""

    parallel: int | None                 # None: the workload's batch
    n_gpu_layers: int | None             # None: auto (solved); else layers incl. the output layer
    tensor_split: tuple[float, ...] | None
    cpu_patterns: tuple[str, ...]        # tensor-name regexes kept on the CPU (-ot X=CPU, --n-cpu-moe)
    cache_type_k: str
    cache_type_v: str
    flash_attn: bool                     # auto resolves to on: CUDA has FA kernels for the usual head sizes
    flash_attn_asked: str
    ubatch: int | None                   # None: the engine's default (llama.cpp 512; Ollama by context)
    batch: int | None
    kv_unified: bool
    ram: int | None
    ram_gbs: float
    ollama: bool = False                 # planned with Ollama's defaults (engines/llama_cpp/ollama.py)


def normalize(flags: LlamaFlags, kv_dtype: str = "auto", *, ollama: bool = False) -> LlamaOptions:
    """Check every flag; a bad value raises BadInput naming it."""
    f = flags
    parallel = None
    if f.parallel is not None:
        parallel = parse_tokens(f.parallel, "{parallel}")
    ngl = None
    if f.n_gpu_layers is not None:
        text = str(f.n_gpu_layers).strip().lower()
        if text in ("auto", "-1"):
            ngl = None
        elif text in ("all", "999") or (text.lstrip("-").isdigit() and int(text) <= -2):
            ngl = ALL_LAYERS
        elif text.isdigit():
            ngl = int(text)
        else:
            raise BadInput(f"{{n_gpu_layers}} {f.n_gpu_layers!r}: give a number of layers, auto or all.")
    split = None
    if f.tensor_split is not None:
        try:
            split = tuple(float(x) for x in re.split(r"[,/]", str(f.tensor_split)) if x.strip())
        except ValueError:
            split = None
        if not split or any(x < 0 for x in split) or sum(split) <= 0:
            raise BadInput(f"{{tensor_split}} {f.tensor_split!r}: give one proportion per GPU, e.g. 3,1.")
    patterns: list[str] = []
    if f.cpu_moe:
        patterns.append(r"blk\.\d+" + EXPS_REGEX)
    if f.n_cpu_moe is not None:
        if f.n_cpu_moe < 0:
            raise BadInput("{n_cpu_moe} must be 0 or more.")
        patterns += [rf"blk\.{i}" + EXPS_REGEX for i in range(f.n_cpu_moe)]
    if f.override_tensor:
        for item in str(f.override_tensor).split(","):
            regex, _, where = item.partition("=")
            if not regex or where.strip().upper() not in ("CPU",):
                raise BadInput(f"{{override_tensor}} {item!r}: vramplan plans 'REGEX=CPU' overrides "
                               f"(tensors kept in system RAM).")
            try:
                re.compile(regex)
            except re.error as e:
                raise BadInput(f"{{override_tensor}} {regex!r} is not a regular expression: {e}.") from None
            patterns.append(regex)
    default_kv = _KV_DTYPE.get(kv_dtype)
    if default_kv is None:
        raise BadInput(f"{{kv_dtype}} {kv_dtype} is not a llama.cpp cache type; use {{cache_type_k}} and "
                       f"{{cache_type_v}} ({', '.join(KV_CACHE_TYPES)}), e.g. q8_0.")
    ctk = _cache_type(f.cache_type_k, default_kv, "{cache_type_k}")
    ctv = _cache_type(f.cache_type_v, default_kv, "{cache_type_v}")
    fa = (f.flash_attn or "auto").strip().lower()
    fa = {"1": "on", "true": "on", "0": "off", "false": "off", "enabled": "on", "disabled": "off"}.get(fa, fa)
    if fa not in FLASH_ATTN:
        raise BadInput(f"{{flash_attn}} {f.flash_attn!r} is not one of: on, off, auto.")
    if fa == "off" and ctv not in ("f32", "f16", "bf16"):
        # llama-context.cpp: "quantized V cache was requested, but this requires Flash Attention"
        raise BadInput(f"{{cache_type_v}} {ctv} needs flash attention, and {{flash_attn}} is off: llama.cpp "
                       f"refuses a quantized V cache without it.")
    batch = parse_tokens(f.batch_size, "{batch_size}") if f.batch_size is not None else None
    ubatch = parse_tokens(f.ubatch_size, "{ubatch_size}") if f.ubatch_size is not None else None
    ram = parse_bytes(f.ram, "{ram}") if f.ram is not None else None
    gbs = DEFAULT_RAM_GBS if f.ram_bandwidth is None else float(f.ram_bandwidth)
    if gbs <= 0:
        raise BadInput("{ram_bandwidth} must be a positive number of GB/s.")
    return LlamaOptions(parallel=parallel, n_gpu_layers=ngl, tensor_split=split, cpu_patterns=tuple(patterns),
                        cache_type_k=ctk, cache_type_v=ctv, flash_attn=fa != "off", flash_attn_asked=fa,
                        ubatch=ubatch, batch=batch, kv_unified=bool(f.kv_unified), ram=ram, ram_gbs=gbs,
                        ollama=ollama)


def _cache_type(value: str | None, default: str, flag: str) -> str:
    if value is None:
        return default
    v = str(value).strip().lower()
    if v not in KV_CACHE_TYPES:
        raise BadInput(f"{flag} {value!r} is not one of llama.cpp's cache types: {', '.join(KV_CACHE_TYPES)}.")
    return v
