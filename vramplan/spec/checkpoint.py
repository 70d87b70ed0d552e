"""A safetensors checkpoint as its headers describe it: every tensor's name, dtype and shape, and
its bytes. Read by sources/safetensors.py (never the data), mapped onto a ModelSpec by
models/checkpoint.py. Nothing here does I/O."""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

# Bits per element of every dtype the safetensors format defines: the Rust `Dtype` enum of
# safetensors 0.8.0 (safetensors/src/tensor.rs, `Dtype::bitsize`; the 22 variants are the
# strings of the installed _safetensors_rust module). F4 (e2m1) and F6 are sub-byte: a tensor's
# shape counts elements, and its bytes are numel x bits / 8, which must be whole (the format's
# own rule: "invalid shape, data type, or offset for tensor"). F8_E8M0 is the MX block scale.
DTYPE_BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
    "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}
# Floating dtypes that hold an unquantized weight: a loader casts them to the model's dtype.
PLAIN_FLOATS = {"F16": "fp16", "BF16": "bf16", "F32": "fp32", "F64": "fp64"}


def tensor_bytes(dtype: str, shape: tuple[int, ...]) -> int | None:
    """Bytes of a tensor of `dtype` and `shape`; None when they are not a whole number of bytes."""
    bits = DTYPE_BITS[dtype] * prod(shape)
    return bits // 8 if bits % 8 == 0 else None


@dataclass(frozen=True)
class StoredTensor:
    """One tensor of a safetensors file, as its header gives it."""

    name: str
    dtype: str                 # the safetensors code: "BF16", "I32", "F8_E4M3" ...
    shape: tuple[int, ...]
    nbytes: int                # numel x bits / 8, equal to its data_offsets span
    file: str                  # the file name it sits in
    numel: int = -1            # elements (set from the shape when not given)

    def __post_init__(self):
        if self.numel < 0:
            object.__setattr__(self, "numel", prod(self.shape))


@dataclass(frozen=True)
class Checkpoint:
    """The tensors of a model's safetensors files (one file, or the shards of an index)."""

    tensors: tuple[StoredTensor, ...]
    files: tuple[str, ...]
    where: str                 # the directory, or the Hub repo id
    origin: str                # "local" (headers read from disk) or "hub" (huggingface_hub metadata)
    header_bytes: int = 0      # bytes read from disk (headers only); 0 from the Hub

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def description(self) -> str:
        """"3 safetensors files, headers read" / "1 safetensors file on the Hub, metadata read"."""
        n = len(self.files)
        files = f"{n} safetensors file{'s' if n != 1 else ''}"
        return f"{files}, headers read" if self.origin == "local" else f"{files} on the Hub, metadata read"
