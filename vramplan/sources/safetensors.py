"""A model's weights as its safetensors checkpoint stores them: each file's header, never its data.

The format (huggingface/safetensors README, "Format"): an unsigned 64-bit little-endian header
length N, then N bytes of UTF-8 JSON mapping each tensor name to {"dtype", "shape",
"data_offsets": [begin, end]} (offsets into the data that follows the header), plus an optional
"__metadata__" map of strings. A sharded checkpoint has `model.safetensors.index.json`, whose
"weight_map" names the file of every tensor (transformers' SAFE_WEIGHTS_INDEX_NAME).

Which files stand for the model, as transformers' from_pretrained picks them
(modeling_utils._get_resolved_checkpoint_files): the index when there is one, else
`model.safetensors`; a directory with neither is read as all its `*.safetensors` files.

On the Hub, huggingface_hub's `get_safetensors_metadata` reads the same headers with range
requests (HF_TOKEN and HF_ENDPOINT honoured by huggingface_hub; HF_HUB_OFFLINE checked here
first). What is read is capped: a header of more than HEADER_CAP bytes is refused
(docs/model-sources.md).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from vramplan.errors import BadConfig, EnvironmentProblem
from vramplan.files import Kind, kind_of, read_head, read_small_file
from vramplan.spec.checkpoint import DTYPE_BITS, Checkpoint, StoredTensor
from vramplan.units import printable

MiB = 2**20
# The largest header vramplan reads. safetensors itself refuses headers over 100,000,000 bytes
# (safetensors/src/tensor.rs, MAX_HEADER_SIZE); the largest real ones, one entry per tensor of a
# 600 B-parameter MoE shard, are a few MiB. 100 MiB is the cap (issue #12).
HEADER_CAP = 100 * MiB
# model.safetensors.index.json: DeepSeek-V3's (91k tensors) is about 9 MiB.
INDEX_LIMIT = 64 * MiB
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
# A PEFT adapter saved into the model's directory is not the model (peft SAFETENSORS_WEIGHTS_NAME).
_NOT_THE_MODEL = frozenset({"adapter_model.safetensors"})
_HINT = "Download the file again, or plan from the config with --weights-from config."


class NoCheckpoint(Exception):
    """No safetensors checkpoint where the model was found (not an error under --weights-from auto)."""


# ------------------------------------------------------------------ one header

def parse_header(raw: bytes, file: str, data_size: int | None) -> tuple[StoredTensor, ...]:
    """The tensors of one header's JSON `raw`; `data_size` (the bytes after the header, None when
    unknown) bounds every tensor's offsets. Anything malformed is BadConfig naming `file`."""
    def bad(why: str) -> BadConfig:
        return BadConfig(f"The safetensors file '{printable(file)}' has a malformed header: {why}. {_HINT}")

    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise bad("it is not JSON") from None
    if not isinstance(header, dict):
        raise bad("its JSON is not an object of tensors")
    meta = header.pop("__metadata__", None)
    if meta is not None and not isinstance(meta, dict):
        raise bad("'__metadata__' is not a map of strings")
    out = []
    for name, info in header.items():
        shown = printable(name, 80)
        if not isinstance(info, dict):
            raise bad(f"the entry of tensor '{shown}' is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
            raise bad(f"tensor '{shown}' has dtype {printable(repr(dtype), 40)}, which is not a safetensors "
                      f"dtype vramplan knows ({', '.join(DTYPE_BITS)})")
        numel = _numel(shape)           # type(x) is int: a JSON true is not a size
        if numel is None:
            raise bad(f"tensor '{shown}' has shape {printable(repr(shape), 60)}, not a list of sizes")
        if (type(offsets) is not list or len(offsets) != 2 or type(offsets[0]) is not int
                or type(offsets[1]) is not int or offsets[0] < 0):
            raise bad(f"tensor '{shown}' has data_offsets {printable(repr(offsets), 60)}, not [begin, end]")
        bits = DTYPE_BITS[dtype] * numel
        nbytes = bits // 8 if bits % 8 == 0 else None
        if nbytes is None or offsets[1] - offsets[0] != nbytes:
            raise bad(f"tensor '{shown}' ({dtype} {tuple(shape)}) spans bytes {offsets[0]}-{offsets[1]}, "
                      f"not the {nbytes} its shape and dtype take")
        if data_size is not None and offsets[1] > data_size:
            raise bad(f"tensor '{shown}' ends at byte {offsets[1]:,} of the data, past the end of the file "
                      f"({data_size:,} bytes of data): the file is truncated")
        out.append(StoredTensor(name=name, dtype=dtype, shape=tuple(shape), nbytes=nbytes, file=file, numel=numel))
    return tuple(out)


def _numel(shape) -> int | None:
    """The element count of a header's shape: a list of at most 16 non-negative integers, else None."""
    if type(shape) is not list or len(shape) > 16:
        return None
    n = 1
    for d in shape:
        if type(d) is not int or d < 0:
            return None
        n *= d
    return n


def read_file_header(path: Path) -> tuple[tuple[StoredTensor, ...], int]:
    """The tensors of the local safetensors file `path` and the header bytes read (8 + N)."""
    what, name = "the safetensors file", path.name
    head, size = read_head(path, 8, what, BadConfig, _HINT)
    if len(head) < 8:
        raise BadConfig(f"The safetensors file '{printable(name)}' is {size} bytes long, too short to hold "
                        f"the 8-byte header length: it is truncated or not safetensors. {_HINT}")
    (length,) = struct.unpack("<Q", head)
    if length > HEADER_CAP:
        raise BadConfig(f"The safetensors file '{printable(name)}' declares a header of {length:,} bytes, over "
                        f"vramplan's {HEADER_CAP // MiB} MiB cap on what it reads: it is malformed or not "
                        f"safetensors. Plan from the config with --weights-from config.")
    if 8 + length > size:
        raise BadConfig(f"The safetensors file '{printable(name)}' declares a header of {length:,} bytes but is "
                        f"only {size:,} bytes long: it is truncated or not safetensors. {_HINT}")
    raw, _ = read_head(path, length, what, BadConfig, _HINT, offset=8)
    if len(raw) != length:
        raise BadConfig(f"The safetensors file '{printable(name)}' ends inside its header: it is truncated. {_HINT}")
    return parse_header(raw, name, size - 8 - length), 8 + length


# ------------------------------------------------------------------ a local directory

def _plain_name(name: object, index: str) -> str:
    """A shard name from an index: a file next to the index, never a path elsewhere."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", "..") or "\x00" in name:
        raise BadConfig(f"{index} names the shard {printable(repr(name), 80)}, which is not a file name in "
                        f"its directory. {_HINT}")
    return name


def read_index(path: Path) -> dict[str, str]:
    """weight_map of a model.safetensors.index.json: tensor name -> shard file name."""
    raw = read_small_file(path, INDEX_LIMIT, "the checkpoint index", BadConfig, _HINT)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadConfig(f"{INDEX_NAME} in {printable(str(path.parent))} is not JSON. {_HINT}") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise BadConfig(f"{INDEX_NAME} in {printable(str(path.parent))} has no 'weight_map' of tensors. {_HINT}")
    return {str(k): _plain_name(v, INDEX_NAME) for k, v in weight_map.items()}


def checkpoint_files(directory: Path) -> tuple[list[str], dict[str, str] | None]:
    """The safetensors files that stand for the model in `directory`, and the index's weight map."""
    index = directory / INDEX_NAME
    if kind_of(index) != Kind.MISSING:
        weight_map = read_index(index)
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if kind_of(directory / f) == Kind.MISSING]
        if missing:
            shown = ", ".join(printable(f, 80) for f in missing[:3]) + (" ..." if len(missing) > 3 else "")
            raise BadConfig(f"{INDEX_NAME} in {printable(str(directory))} names {len(missing)} shard"
                            f"{'s' if len(missing) != 1 else ''} that {'is' if len(missing) == 1 else 'are'} not "
                            f"there ({shown}). Download them, or plan from the config with --weights-from config.")
        return files, weight_map
    if kind_of(directory / SINGLE_NAME) != Kind.MISSING:
        return [SINGLE_NAME], None
    try:
        files = sorted(p.name for p in directory.glob("*.safetensors") if p.name not in _NOT_THE_MODEL)
    except OSError:
        files = []
    # Mistral's repos ship their own-format consolidated.safetensors beside the transformers files
    others = [f for f in files if not f.startswith("consolidated")]
    return (others or files), None


def read_local(directory: str | os.PathLike) -> Checkpoint:
    """The checkpoint in `directory`; NoCheckpoint when it holds no safetensors file."""
    directory = Path(directory)
    files, weight_map = checkpoint_files(directory)
    if not files:
        raise NoCheckpoint(f"{printable(str(directory))} holds no *.safetensors file")
    tensors, read = [], 0
    for f in files:
        found, n = read_file_header(directory / f)
        tensors.extend(found)
        read += n
    if weight_map is not None:
        _check_index(weight_map, tensors, str(directory))
    return Checkpoint(tensors=tuple(tensors), files=tuple(files), where=str(directory), origin="local",
                      header_bytes=read)


def _check_index(weight_map: dict[str, str], tensors: list[StoredTensor], where: str) -> None:
    """Every tensor the index names is in the shard it names (transformers loads by the index)."""
    held = {(t.name, t.file) for t in tensors}
    absent = [n for n, f in weight_map.items() if (n, f) not in held]
    if absent:
        raise BadConfig(f"{INDEX_NAME} in {printable(where)} names {len(absent)} tensor"
                        f"{'s' if len(absent) != 1 else ''} that {'its' if len(absent) == 1 else 'their'} shard "
                        f"does not hold (first: '{printable(absent[0], 80)}'). {_HINT}")


# ------------------------------------------------------------------ the Hub

def read_hub(repo_id: str) -> Checkpoint:
    """The checkpoint of Hub repo `repo_id` from huggingface_hub's safetensors metadata.

    NoCheckpoint: the repo has no safetensors weights. EnvironmentProblem (exit 3): huggingface_hub
    is missing, HF_HUB_OFFLINE is set, the Hub cannot be reached or refuses the token."""
    if _offline():
        raise EnvironmentProblem(f"The safetensors headers of '{repo_id}' are on the Hub and HF_HUB_OFFLINE is "
                                 "set. Unset it, pass a local directory, or use --weights-from config.")
    try:
        from huggingface_hub import get_safetensors_metadata
        from huggingface_hub.errors import NotASafetensorsRepoError, SafetensorsParsingError
    except ImportError:
        raise EnvironmentProblem("Reading a Hub checkpoint's headers needs huggingface_hub. Install it with: "
                                 "pip install huggingface_hub, or use --weights-from config.") from None
    try:
        meta = get_safetensors_metadata(repo_id)
    except NotASafetensorsRepoError:
        raise NoCheckpoint(f"the Hub repo '{repo_id}' holds no safetensors weights") from None
    except SafetensorsParsingError:
        raise BadConfig(f"The safetensors headers of the Hub repo '{repo_id}' cannot be parsed. Plan from the "
                        "config with --weights-from config.") from None
    except Exception as e:       # network, authorization, gated repos: the environment, exit 3
        raise EnvironmentProblem(f"Cannot read the safetensors headers of '{repo_id}' from the Hub "
                                 f"({type(e).__name__}). Check the connection and HF_TOKEN, or use "
                                 "--weights-from config.") from e
    tensors = []
    for file in sorted(meta.files_metadata):
        info = meta.files_metadata[file]
        header = {name: {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": list(t.data_offsets)}
                  for name, t in info.tensors.items()}
        tensors.extend(parse_header(json.dumps(header).encode(), file, None))
    return Checkpoint(tensors=tuple(tensors), files=tuple(sorted(meta.files_metadata)), where=repo_id,
                      origin="hub")


def _offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in {"1", "ON", "YES", "TRUE"}
