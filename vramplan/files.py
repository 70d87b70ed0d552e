"""Reading a small file without trusting it: the one way vramplan reads data from disk.

A path can name anything: a FIFO (opening it blocks until a writer appears, which is never),
/dev/zero (reading it never ends), a 50 GiB weights file passed by mistake, a symlink loop, a
directory, a file we may not read. `read_small_file` answers each with one sentence instead of a
hang, an out-of-memory or a traceback: it reads regular files only (checked with stat before
opening, so a device is never opened, and again with fstat on the opened descriptor, so a file
swapped for a FIFO in between is caught; the open is non-blocking, so that swap cannot block
either) and at most `limit` bytes (read limit + 1, so a file that grows or lies about its size is
caught too). The bounds and their reasons are in docs/validation.md, "Files, paths and caches".

Errors are raised as `error` (BadInput, exit 2, for the user's own paths; EnvironmentProblem,
exit 3, for vramplan's caches and data files), naming `what` the file was meant to be.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from vramplan.errors import BadInput, VramplanError
from vramplan.units import printable

__all__ = ["read_small_file", "read_head", "kind_of", "shown", "Kind", "CONFIG_LIMIT", "REF_LIMIT", "TOML_LIMIT"]

KiB, MiB = 2**10, 2**20

# config.json: causal-LM configs are 1-10 KiB (the bundled ones: 0.5-2 KiB); the largest configs
# on the Hub are classifiers with an id2label map (21,843 ImageNet-21k labels, ~0.7 MiB). 4 MiB
# leaves five times that and parses in well under 0.1 s; anything larger is a weights file.
CONFIG_LIMIT = 4 * MiB
# refs/main in the HF cache holds one 40-character commit hash (huggingface_hub writes it).
REF_LIMIT = 1 * KiB
# configs/gpus.toml and aliases.toml ship with vramplan: 30 KiB today.
TOML_LIMIT = 4 * MiB

# O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer; O_NOCTTY: a
# terminal device swapped in is never made our controlling terminal.
_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
               | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))


class Kind:
    """What a path names, from stat without opening it."""

    MISSING = "missing"      # nothing there (or a parent is not a directory)
    FILE = "file"
    DIR = "dir"
    OTHER = "other"          # FIFO, socket, character or block device
    LOOP = "loop"            # a symlink loop (ELOOP)
    DANGLING = "dangling"    # a symlink whose target does not exist
    DENIED = "denied"        # stat itself was refused (a parent directory we may not search)
    TOO_LONG = "too-long"    # ENAMETOOLONG
    INVALID = "invalid"      # a NUL byte or a character the file system cannot encode


def kind_of(path: str | os.PathLike) -> str:
    """One of `Kind`'s values; never raises for what a user may type."""
    try:
        st = os.stat(path)
    except (ValueError, UnicodeEncodeError):
        return Kind.INVALID
    except OSError as e:
        if e.errno == errno.ELOOP:
            return Kind.LOOP
        if e.errno == errno.ENAMETOOLONG:
            return Kind.TOO_LONG
        if isinstance(e, PermissionError):
            return Kind.DENIED
        try:
            os.lstat(path)
            return Kind.DANGLING
        except OSError:
            return Kind.MISSING
    if stat.S_ISREG(st.st_mode):
        return Kind.FILE
    if stat.S_ISDIR(st.st_mode):
        return Kind.DIR
    return Kind.OTHER


def _what_it_is(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _size(n: int, limit: int | None = None) -> str:
    """Round units for limits and for sizes far above one; exact bytes near a limit, so that a
    file one byte over 4 MiB does not read as "4 MiB, over the 4 MiB limit"."""
    if limit is not None and n < 2 * limit:
        return f"{n:,} bytes"
    for unit, name in ((2**30, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if n >= unit:
            return f"{n / unit:.0f} {name}" if n % unit == 0 or n >= 10 * unit else f"{n / unit:.1f} {name}"
    return f"{n} bytes"


def _refusal(path, what: str, error: type[VramplanError], hint: str):
    """The one refusal every reader raises: "Cannot read WHAT PATH: WHY. HINT"."""
    name = printable(os.fspath(path))
    hint = f" {hint}" if hint else ""
    return lambda why: error(f"Cannot read {what} {name}: {why}.{hint}")


def _read_regular(path, refuse, want: int, *, offset: int = 0, size_limit: int | None = None) -> tuple[bytes, int]:
    """(at most `want` bytes from `offset` of the regular file `path`, its size), checking by stat
    and again by fstat on the opened descriptor (the file opened may not be the one stat saw);
    a file larger than `size_limit` is refused before it is opened. Non-blocking open: a FIFO
    never hangs."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise refuse(f"it is {_what_it_is(st.st_mode)}, not a regular file")
        if size_limit is not None and st.st_size > size_limit:
            raise refuse(f"it is {_size(st.st_size, size_limit)}, over vramplan's {_size(size_limit)} "
                         "limit for this kind of file")
        fd = os.open(path, _OPEN_FLAGS)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise refuse(f"it is {_what_it_is(st.st_mode)}, not a regular file")
            if offset:
                os.lseek(fd, offset, os.SEEK_SET)
            chunks, total = [], 0
            while total < want:
                chunk = os.read(fd, min(want - total, MiB))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
        finally:
            os.close(fd)
    except VramplanError:
        raise
    except (ValueError, UnicodeEncodeError):
        raise refuse("the path holds a NUL byte or a character no file name can hold") from None
    except OSError as e:
        raise refuse(_os_reason(e)) from None
    return b"".join(chunks), st.st_size


def read_small_file(path: str | os.PathLike, limit: int, what: str,
                    error: type[VramplanError] = BadInput, hint: str = "") -> bytes:
    """The bytes of the regular file `path`, at most `limit` of them; else `error` naming `what`.

    `hint` is the second sentence of every refusal (what to do about it)."""
    refuse = _refusal(path, what, error, hint)
    data, _ = _read_regular(path, refuse, limit + 1, size_limit=limit)
    if len(data) > limit:       # it grew between stat and read
        raise refuse(f"it holds more than vramplan's {_size(limit)} limit for this kind of file")
    return data


def read_head(path: str | os.PathLike, count: int, what: str, error: type[VramplanError] = BadInput,
              hint: str = "", *, offset: int = 0) -> tuple[bytes, int]:
    """(the `count` bytes at `offset` of the regular file `path`, the file's size): the start of a
    large file (a safetensors header) without reading the rest. The same checks as
    `read_small_file`; fewer bytes than asked when the file is shorter (the caller says what
    that means)."""
    return _read_regular(path, _refusal(path, what, error, hint), count, offset=offset)


def _os_reason(e: OSError) -> str:
    """The OS's refusal in words (strerror, without the path it repeats)."""
    if e.errno == errno.ELOOP:
        return "it is a symbolic link that leads to itself (a loop)"
    if e.errno == errno.EISDIR:
        return "it is a directory, not a regular file"
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, FileNotFoundError):
        return "no such file"
    return (e.strerror or str(e)).rstrip(".").lower()


def read_resource(node, limit: int, what: str, error: type[VramplanError], hint: str = "") -> bytes:
    """A packaged data file (an importlib.resources Traversable): through `read_small_file` when
    it is a real file, else (inside a zip) its bytes, with the same size bound."""
    if isinstance(node, (str, os.PathLike)):
        return read_small_file(node, limit, what, error, hint)
    try:
        raw = node.read_bytes()
    except OSError as e:
        raise error(f"Cannot read {what} {printable(str(node))}: {_os_reason(e)}.{(' ' + hint) if hint else ''}") from None
    if len(raw) > limit:
        raise error(f"Cannot read {what} {printable(str(node))}: it is {_size(len(raw), limit)}, over vramplan's "
                    f"{_size(limit)} limit for this kind of file.{(' ' + hint) if hint else ''}")
    return raw


def is_within(path: Path, root: Path) -> bool:
    """True when `path`, every link followed, lies inside `root` (also resolved)."""
    try:
        real, base = path.resolve(strict=True), root.resolve(strict=True)
    except (OSError, RuntimeError, ValueError):
        return False
    return real == base or base in real.parents
