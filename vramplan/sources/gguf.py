"""Where a GGUF model comes from, and its header: the metadata and the tensor infos, never the
tensor data.

The layout (llama.cpp gguf-py/gguf/gguf_reader.py and ggml/src/gguf.cpp, commit 0c1e57098;
docs in llama.cpp's gguf-py/README): the magic "GGUF", a u32 version (2 or 3), u64 tensor count,
u64 key/value count; each key/value as a string key, a u32 value type and the value (scalars,
strings as u64 length + bytes, arrays as u32 item type + u64 count + items); then per tensor its
name, u32 n_dims, n_dims u64 dimensions (ne0 first), u32 ggml type and u64 offset into the data
section, which starts at the next multiple of `general.alignment` (default 32).

A split model ("name-00001-of-00003.gguf", llama.cpp's gguf-split) is read part by part; each
part holds some tensors. What is read is capped (HEADER_CAP): a file whose header claims more
is refused as malformed. Arrays longer than KEEP_ARRAY (token lists, merges) are skipped and
only their length kept, as Ollama's reader does with maxArraySize (ollama llm/server.go
LoadModel).
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from vramplan.errors import BadConfig, BadInput, EnvironmentProblem, ModelNotFound
from vramplan.files import Kind, kind_of

GGUF_MAGIC = b"GGUF"
HEADER_CAP = 256 * 2**20          # the most header bytes read from one file
KEEP_ARRAY = 4096                 # longer arrays keep only their length (and item type)
DEFAULT_ALIGNMENT = 32            # GGUF_DEFAULT_ALIGNMENT, ggml/include/gguf.h

# GGUF value types (gguf.h enum gguf_type): struct format, or None for string/array.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9

SPLIT = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)


@dataclass(frozen=True)
class SkippedArray:
    """An array too long to keep: its item type and length (e.g. tokenizer.ggml.tokens)."""

    item_type: int
    length: int


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]    # ne0 first
    type_id: int
    offset: int
    file: int = 0


@dataclass
class GgufHeader:
    """Everything before the tensor data of one GGUF model (all its splits)."""

    version: int
    metadata: dict
    tensors: list[TensorInfo] = field(default_factory=list)
    files: int = 1
    size_bytes: int = 0        # on disk, all parts (0 when unknown)
    path: str = ""
    header_bytes: int = 0      # bytes read from the (first) file: the header, no tensor data


class _Reader:
    """Reads little-endian GGUF fields from a stream, refusing to go past the cap."""

    def __init__(self, stream: BinaryIO, where: str, cap: int = HEADER_CAP):
        self.stream, self.where, self.cap, self.pos = stream, where, cap, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.cap:
            raise BadConfig(f"{self.where}: the GGUF header is larger than {self.cap // 2**20} MiB or "
                            f"malformed; vramplan reads only the header and refuses this file.")
        data = self.stream.read(n)
        if len(data) != n:
            raise BadConfig(f"{self.where} ends inside its GGUF header: the file is truncated or not GGUF.")
        self.pos += n
        return data

    def skip(self, n: int) -> None:
        # the header is small next to the data; reading (not seeking) works on any stream
        while n > 0:
            step = min(n, 1 << 20)
            self.take(step)
            n -= step

    def scalar(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.take(self.scalar("<Q")).decode("utf-8", errors="replace")

    def value(self, vtype: int):
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item, count = self.scalar("<I"), self.scalar("<Q")
            if count > KEEP_ARRAY:
                self._skip_items(item, count)
                return SkippedArray(item, count)
            return [self.value(item) for _ in range(count)]
        raise BadConfig(f"{self.where}: unknown GGUF value type {vtype}; the file is not GGUF or newer "
                        f"than vramplan knows.")

    def _skip_items(self, item: int, count: int) -> None:
        if item in _SCALARS:
            self.skip(struct.calcsize(_SCALARS[item]) * count)
        elif item == _STRING:
            for _ in range(count):
                self.skip(self.scalar("<Q"))
        else:
            for _ in range(count):
                self.value(item)


def read_header(stream: BinaryIO, where: str = "GGUF file", file: int = 0) -> GgufHeader:
    """The header of one GGUF file from `stream` (positioned at its start)."""
    r = _Reader(stream, where)
    if r.take(4) != GGUF_MAGIC:
        raise BadConfig(f"{where} is not a GGUF file (it does not start with 'GGUF').")
    version = r.scalar("<I")
    if version not in (2, 3):
        raise BadConfig(f"{where} is GGUF version {version}; vramplan reads versions 2 and 3.")
    n_tensors, n_kv = r.scalar("<Q"), r.scalar("<Q")
    if n_tensors > 1_000_000 or n_kv > 1_000_000:
        raise BadConfig(f"{where}: the GGUF header claims {n_tensors} tensors and {n_kv} keys; malformed.")
    metadata = {}
    for _ in range(n_kv):
        key = r.string()
        metadata[key] = r.value(r.scalar("<I"))
    tensors = []
    for _ in range(n_tensors):
        name = r.string()
        n_dims = r.scalar("<I")
        if n_dims > 8:
            raise BadConfig(f"{where}: tensor {name!r} claims {n_dims} dimensions; malformed.")
        shape = tuple(r.scalar("<Q") for _ in range(n_dims))
        tensors.append(TensorInfo(name, shape, r.scalar("<I"), r.scalar("<Q"), file))
    return GgufHeader(version, metadata, tensors, header_bytes=r.pos)


# ------------------------------------------------------------------ local files

def is_gguf_path(text: str) -> bool:
    """A local .gguf file, or a directory holding one (and no config.json). Never raises: a path
    that cannot be looked at is not a GGUF here, and the config loader says what is wrong."""
    if not isinstance(text, str):
        return False
    try:
        text = os.path.expanduser(text)
    except (KeyError, RuntimeError):       # ~nosuchuser: the config loader explains
        return False
    kind = kind_of(text)
    if kind == Kind.FILE:
        return text.lower().endswith(".gguf")
    if kind != Kind.DIR or kind_of(os.path.join(text, "config.json")) != Kind.MISSING:
        return False
    try:
        return any(Path(text).glob("*.gguf"))
    except OSError:
        return False


def split_parts(path: Path) -> list[Path]:
    """The parts of a split set given any of them, else [path]."""
    m = SPLIT.match(path.name)
    if not m:
        return [path]
    count = int(m["count"])
    parts = [path.with_name(f"{m['stem']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise ModelNotFound(f"{path.name} is part of a {count}-file split set, but {', '.join(missing)} "
                            f"{'is' if len(missing) == 1 else 'are'} missing next to it.")
    return parts


def _pick_in_directory(directory: Path) -> Path:
    files = sorted(p for p in directory.glob("*.gguf") if p.is_file())
    models = [p for p in files if "mmproj" not in p.name.lower()]
    firsts = [p for p in models if not SPLIT.match(p.name) or SPLIT.match(p.name)["no"] == "00001"]
    if len(firsts) != 1:
        names = ", ".join(p.name for p in firsts) or "none"
        raise BadInput(f"{directory} holds {len(firsts)} GGUF models ({names}); pass the file to plan.")
    return firsts[0]


def read_local(text: str) -> GgufHeader:
    """The header of a local GGUF model: a file, a directory holding one, or a split set."""
    path = Path(text).expanduser()
    if path.is_dir():
        path = _pick_in_directory(path)
    parts = split_parts(path)
    header = None
    for i, part in enumerate(parts):
        try:
            with open(part, "rb") as f:
                h = read_header(f, part.name, file=i)
        except OSError as e:
            raise EnvironmentProblem(f"cannot read {part}: {e.strerror or e}.") from None
        header = _merge(header, h)
    assert header is not None
    header.files = len(parts)
    header.size_bytes = sum(os.path.getsize(p) for p in parts)
    header.path = str(parts[0])
    return header


def _merge(into: GgufHeader | None, part: GgufHeader) -> GgufHeader:
    """Split parts after the first carry their own tensors; the first holds the model's metadata."""
    if into is None:
        return part
    into.tensors.extend(part.tensors)
    return into


# ------------------------------------------------------------------ the Hub

HUB_GGUF = re.compile(r"^(?P<repo>[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+?)(?::(?P<quant>[A-Za-z0-9_.-]+))?$")


GGML_TAG = re.compile(r"(?i)^(?:u?i?t?q\d|f16|f32|bf16|mxfp4)")


def is_hub_gguf(text: str) -> bool:
    """"org/repo-GGUF", "org/repo:Q4_K_M" (llama.cpp's -hf syntax) or "org/repo/file.gguf"."""
    if text.count("/") == 2 and text.lower().endswith(".gguf"):
        return True
    m = HUB_GGUF.match(text)
    if not m:
        return False
    # a ":tag" names a GGUF file only when it reads as a ggml type (Q4_K_M, IQ3_M, F16, BF16, ...):
    # "org/repo:main" is a revision, which the config loader refuses in plain words
    quant = m["quant"] is not None and GGML_TAG.match(m["quant"]) is not None
    return quant or m["repo"].lower().endswith("-gguf")


def choose_file(files: list[str], quant: str | None, repo: str) -> list[str]:
    """The parts of the GGUF model in `files` that `quant` names (llama.cpp -hf picks Q4_K_M when
    none is named: common/arg.cpp, and so do we); a split set gives all its parts."""
    ggufs = [f for f in files if f.lower().endswith(".gguf") and "mmproj" not in f.lower()]
    if not ggufs:
        raise ModelNotFound(f"The Hub repo '{repo}' holds no .gguf files.")
    # llama.cpp common/download.cpp: tags Q4_K_M then Q8_0, else the first file
    wants = [quant.lower()] if quant else ["q4_k_m", "q8_0"]
    hits = []
    for want in wants:
        tag = re.compile(rf"(^|[-_.]){re.escape(want)}([-_.]|$)")
        hits = hits or [f for f in ggufs if tag.search(Path(f).name.lower()) or tag.search(f.lower())]
    if not hits:
        if quant is None:
            hits = sorted(ggufs)[:1]
        else:
            names = ", ".join(sorted(Path(f).name for f in ggufs)[:12])
            raise ModelNotFound(f"The Hub repo '{repo}' has no GGUF file for {quant.upper()}; it holds: {names}.")
    firsts = sorted(f for f in hits if not SPLIT.match(Path(f).name) or SPLIT.match(Path(f).name)["no"] == "00001")
    first = firsts[0]
    m = SPLIT.match(Path(first).name)
    if not m:
        return [first]
    stem = first[: -len(Path(first).name)] + m["stem"]
    count = int(m["count"])
    return [f"{stem}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


def read_hub(text: str) -> GgufHeader:
    """List the repo's files and read the chosen model's header through huggingface_hub's
    file system (ranged reads: the tensor data is never downloaded)."""
    try:
        from huggingface_hub import HfApi, HfFileSystem
    except ImportError:
        raise EnvironmentProblem(f"'{text}' is a Hub GGUF repo and huggingface_hub is not installed to "
                                 f"read it. Install it with: pip install huggingface_hub") from None
    if text.count("/") == 2:
        repo, name = text.rsplit("/", 1)
        parts = [name]
        if SPLIT.match(name):
            m = SPLIT.match(name)
            parts = [f"{m['stem']}-{i:05d}-of-{int(m['count']):05d}.gguf" for i in range(1, int(m["count"]) + 1)]
    else:
        m = HUB_GGUF.match(text)
        repo = m["repo"]
        try:
            files = HfApi().list_repo_files(repo)
        except Exception as e:       # huggingface_hub raises its own HTTP and validation errors
            raise ModelNotFound(f"Could not list the Hub repo '{repo}': {e}") from None
        parts = choose_file(list(files), m["quant"], repo)
    fs = HfFileSystem()
    header, size = None, 0
    for i, name in enumerate(parts):
        path = f"{repo}/{name}"
        try:
            with fs.open(path, "rb", block_size=2**20) as f:
                header = _merge(header, read_header(f, path, file=i))
            size += int(fs.info(path).get("size") or 0)
        except (OSError, ValueError) as e:
            raise ModelNotFound(f"Could not read {path} from the Hub: {e}") from None
    assert header is not None
    header.files, header.size_bytes, header.path = len(parts), size, f"{repo}/{parts[0]}"
    return header
