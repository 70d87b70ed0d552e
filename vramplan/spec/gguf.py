"""A GGUF model file as data: every tensor's ggml type, shape and bytes, and the ggml types'
block layouts. Read by models/gguf.py, planned by engines/llama_cpp/.

Sizes follow ggml (llama.cpp ggml/src/ggml.c `type_traits`, ggml/src/ggml-common.h block
structs, llama.cpp commit 0c1e57098): a tensor of type T stores its rows (ne0 elements each) as
ne0 / blck_size(T) blocks of type_size(T) bytes; `ggml_row_size(T, ne0) = type_size * ne0 / blck`.
docs/llama-cpp.md lists every type with its block struct.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

# ggml type id -> (name as ggml_type_name prints it, elements per block, bytes per block).
# ids: ggml/include/ggml.h enum ggml_type; sizes: the static_asserts in ggml-common.h.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("f32", 1, 4),
    1: ("f16", 1, 2),
    2: ("q4_0", 32, 18),       # fp16 d + 16 B of nibbles
    3: ("q4_1", 32, 20),       # fp16 d, m + 16 B
    6: ("q5_0", 32, 22),       # fp16 d + 4 B high bits + 16 B
    7: ("q5_1", 32, 24),
    8: ("q8_0", 32, 34),       # fp16 d + 32 int8
    9: ("q8_1", 32, 40),
    10: ("q2_K", 256, 84),     # 2 x fp16 + QK_K/16 scales + QK_K/4 quants
    11: ("q3_K", 256, 110),    # fp16 + QK_K/4 + QK_K/8 + 12
    12: ("q4_K", 256, 144),    # 2 x fp16 + 12 scale bytes + QK_K/2
    13: ("q5_K", 256, 176),    # 2 x fp16 + 12 + QK_K/2 + QK_K/8
    14: ("q6_K", 256, 210),    # fp16 + QK_K/16 + 3*QK_K/4
    15: ("q8_K", 256, 292),
    16: ("iq2_xxs", 256, 66),
    17: ("iq2_xs", 256, 74),
    18: ("iq3_xxs", 256, 98),
    19: ("iq1_s", 256, 50),
    20: ("iq4_nl", 32, 18),
    21: ("iq3_s", 256, 110),
    22: ("iq2_s", 256, 82),
    23: ("iq4_xs", 256, 136),
    24: ("i8", 1, 1),
    25: ("i16", 1, 2),
    26: ("i32", 1, 4),
    27: ("i64", 1, 8),
    28: ("f64", 1, 8),
    29: ("iq1_m", 256, 56),
    30: ("bf16", 1, 2),
    34: ("tq1_0", 256, 54),
    35: ("tq2_0", 256, 66),
    39: ("mxfp4", 32, 17),     # one E8M0 scale + 16 B of FP4
    40: ("nvfp4", 64, 36),
    41: ("q1_0", 128, 18),
    42: ("q2_0", 64, 18),
}
TYPE_ID = {name.lower(): i for i, (name, _, _) in GGML_TYPES.items()}
UNQUANTIZED = ("f32", "f16", "bf16", "f64", "i8", "i16", "i32", "i64")


def type_name(type_id_or_name: int | str) -> str:
    """ggml's spelling of a type ("q4_K"), from its id or any casing of its name."""
    if isinstance(type_id_or_name, int):
        return GGML_TYPES[type_id_or_name][0]
    return GGML_TYPES[TYPE_ID[type_id_or_name.lower()]][0]


def block(type_: str) -> tuple[int, int]:
    """(elements per block, bytes per block) of a ggml type."""
    _, blck, size = GGML_TYPES[TYPE_ID[type_.lower()]]
    return blck, size


def row_bytes(type_: str, ne0: int) -> int:
    """ggml_row_size: bytes of one row of `ne0` elements (ne0 must be a multiple of the block)."""
    blck, size = block(type_)
    return size * ne0 // blck


def tensor_bytes(type_: str, shape: tuple[int, ...]) -> int:
    """ggml_nbytes of a contiguous tensor; `shape` in ggml order (ne0 = the row, first)."""
    if not shape:
        return row_bytes(type_, 1)
    return row_bytes(type_, shape[0]) * prod(shape[1:])


@dataclass(frozen=True)
class GgufTensor:
    """One tensor as the file stores it."""

    name: str                  # GGUF name: "blk.3.attn_v.weight", "token_embd.weight"
    type: str                  # ggml type name: "q4_K", "f32"
    shape: tuple[int, ...]     # ggml order: ne0 (contiguous row) first
    nbytes: int
    offset: int = 0            # from the start of its file's data section
    file: int = 0              # which split holds it (0 for a single file)

    @property
    def layer(self) -> int:
        """The block index of "blk.N.*", -1 for the tensors outside the repeating layers."""
        if self.name.startswith("blk."):
            head = self.name[4:].split(".", 1)[0]
            if head.isdigit():
                return int(head)
        return -1


@dataclass(frozen=True, kw_only=True)
class GgufFile:
    """What vramplan read from a GGUF model (one file or a split set): its tensors in file order
    and the metadata the planners need."""

    path: str                      # the first (or only) file, or hub "repo/file"
    architecture: str              # general.architecture: "llama", "qwen3", "gemma3", ...
    file_type: str                 # general.file_type as llama.cpp names the mix: "Q4_K_M", or ""
    tensors: tuple[GgufTensor, ...]
    context_length: int = 0        # {arch}.context_length: llama.cpp's n_ctx_train
    files: int = 1                 # split count
    size_bytes: int = 0            # on disk, all splits (0 when unknown, e.g. a planned file)
    planned: bool = False          # True: a file llama.cpp's quantizer would write (not read)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


# llama.cpp's file types (include/llama.h enum llama_ftype, "except 1d tensors"): what
# general.file_type holds and what `llama-quantize` is asked for.
FILE_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M",
    18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S",
    25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M",
    32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0", 41: "Q2_0",
}
FILE_TYPE_ID = {name: i for i, name in FILE_TYPES.items()}
