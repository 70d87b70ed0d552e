"""Files, paths, ids and caches as a hostile user (or a broken disk) presents them (issue #15).

Every refusal goes through tests/bad_input/contract.py: the exit code (2 for the user's own
paths and ids, 3 for a broken cache or install), one or two plain sentences on stderr, no
traceback, nothing on stdout, and an answer within the contract's deadline, so a FIFO or
/dev/zero that used to hang fails the case instead of the suite. No network: the Hub is never
asked (HF_HUB_OFFLINE=1, and the HF cache is a directory under tmp_path with the real layout).
Tests run as root, where chmod 000 denies nothing, so unreadable files are simulated by making
os.stat / os.open raise PermissionError for the paths under test.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import socket
import stat
from dataclasses import replace
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

from tests.bad_input.contract import assert_api_refuses, assert_cli_refuses, deadline, runner
from vramplan import api, catalog
from vramplan.cli import app
from vramplan.errors import BadInput, EnvironmentProblem
from vramplan.memory.weights import (MAX_SKIP_PATTERN_CHARS, MAX_SKIP_PATTERNS, _compile_skip,
                                     is_skipped)
from vramplan.sources import bundled, load_config
from vramplan.files import CONFIG_LIMIT, REF_LIMIT, read_small_file
from vramplan.trace import cache
from vramplan.trace.result import TensorRow, TraceResult
from vramplan.verify import record

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "configs" / "models"
LLAMA = json.loads((MODELS / "meta-llama--Llama-3.1-8B.json").read_text())
GPT_OSS = json.loads((MODELS / "openai--gpt-oss-20b.json").read_text())
TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256,
        "max_position_embeddings": 4096}
COMMIT = "0123456789abcdef0123456789abcdef01234567"

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """An empty HF cache, offline, an empty trace cache, and tmp_path as the working directory."""
    for var in ("HF_HOME", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)


def fit(model: str, *extra: str) -> list[str]:
    return ["fit", model, "--gpu", "l40s", *extra]


def write(path: Path, config: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))
    return path


def sparse(path: Path, size: int) -> Path:
    """A file of `size` bytes that takes no disk space (a hole)."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def deny(monkeypatch, under: Path, calls=("stat", "open")) -> None:
    """os.stat / os.open raise EACCES for `under` and everything below it, as for a user
    without permission; root ignores chmod, so the OS is told what to answer."""
    prefix = str(under)

    def guarded(name):
        real = getattr(os, name)

        def call(path, *args, **kwargs):
            text = os.path.abspath(os.fsdecode(path)) if isinstance(path, (str, bytes, os.PathLike)) else ""
            if text == prefix or text.startswith(prefix + os.sep):
                raise PermissionError(errno.EACCES, "Permission denied", text)
            return real(path, *args, **kwargs)
        return call

    for name in calls:
        monkeypatch.setattr(os, name, guarded(name))


# --- 1. no hangs on files: the user's own paths (exit 2) -----------------------------------------


@needs_fifo
def test_fifo_named_config_json(tmp_path):
    os.mkfifo(tmp_path / "config.json")
    assert_cli_refuses(fit(str(tmp_path / "config.json")), 2, "named pipe")


@needs_fifo
def test_directory_whose_config_is_a_fifo(tmp_path):
    (tmp_path / "model").mkdir()
    os.mkfifo(tmp_path / "model" / "config.json")
    assert_cli_refuses(fit("model"), 2, "named pipe")


@needs_fifo
def test_symlink_to_a_fifo(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "config.json").symlink_to(tmp_path / "pipe")
    assert_cli_refuses(fit("./config.json"), 2, "named pipe")


@needs_fifo
def test_fifo_through_the_api(tmp_path):
    os.mkfifo(tmp_path / "config.json")
    assert_api_refuses(api.plan, str(tmp_path / "config.json"), "l40s", exc=BadInput, needle="named pipe")


@needs_fifo
def test_fifo_swapped_in_after_stat(tmp_path, monkeypatch):
    """The race: stat saw a regular file, the open finds a FIFO. The open does not block (it is
    non-blocking) and fstat on the descriptor refuses it."""
    os.mkfifo(tmp_path / "config.json")
    regular = os.stat(sparse(tmp_path / "regular.json", 10))
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: regular if os.fspath(p).endswith("config.json")
                        else real_stat(p, *a, **k))
    with deadline():
        with pytest.raises(BadInput, match="named pipe"):
            read_small_file(tmp_path / "config.json", CONFIG_LIMIT, "the config file")


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null", "/dev/urandom"])
def test_devices_are_never_read(device):
    if not os.path.exists(device):
        pytest.skip(f"no {device}")
    assert_cli_refuses(fit(device), 2, "device")


def test_dev_zero_through_the_api():
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    assert_api_refuses(api.plan, "/dev/zero", "l40s", exc=BadInput, needle="not a regular file")


def test_unix_socket(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind("sock.json")
        assert_cli_refuses(fit("sock.json"), 2, "socket")
    finally:
        s.close()


def test_sparse_50_mib_file(tmp_path):
    sparse(tmp_path / "model.safetensors.json", 50 * 2**20)
    msg = assert_cli_refuses(fit("model.safetensors.json"), 2, "50 MiB")
    assert "4 MiB limit" in msg


def test_one_byte_over_the_config_limit(tmp_path):
    sparse(tmp_path / "config.json", CONFIG_LIMIT + 1)
    assert_cli_refuses(fit("config.json"), 2, "over vramplan's 4 MiB limit")


def test_a_file_that_lies_about_its_size(tmp_path, monkeypatch):
    """stat says 10 bytes, the file holds 5 MiB (as /proc files and growing files do): the read
    stops at the limit + 1 byte and refuses."""
    big = sparse(tmp_path / "config.json", 5 * 2**20)
    small = os.stat(sparse(tmp_path / "small.json", 10))
    real_stat, real_fstat = os.stat, os.fstat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: small if os.fspath(p) == str(big) else real_stat(p, *a, **k))
    monkeypatch.setattr(os, "fstat", lambda fd: small if real_fstat(fd).st_size == 5 * 2**20 else real_fstat(fd))
    assert_cli_refuses(fit(str(big)), 2, "more than vramplan's 4 MiB limit")


def test_empty_file(tmp_path):
    (tmp_path / "config.json").write_bytes(b"")
    assert_cli_refuses(fit("config.json"), 2, "not valid JSON")


def test_directory_named_config_json(tmp_path):
    (tmp_path / "config.json").mkdir()
    assert_cli_refuses(fit("config.json"), 2, "is a directory, not a config.json file")


def test_directory_holding_a_directory_named_config_json(tmp_path):
    (tmp_path / "model" / "config.json").mkdir(parents=True)
    assert_cli_refuses(fit("model"), 2, "it is a directory, not a regular file")


def test_directory_without_config_json(tmp_path):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.safetensors").write_bytes(b"\0" * 16)
    assert_cli_refuses(fit("weights"), 2, "has no config.json")


def test_directory_without_config_json_through_the_api(tmp_path):
    (tmp_path / "weights").mkdir()
    assert_api_refuses(api.plan, str(tmp_path / "weights"), "l40s", exc=BadInput, needle="has no config.json")


def test_symlink_loop(tmp_path):
    (tmp_path / "a.json").symlink_to(tmp_path / "b.json")
    (tmp_path / "b.json").symlink_to(tmp_path / "a.json")
    assert_cli_refuses(fit("a.json"), 2, "loop")


def test_symlink_loop_as_a_directory(tmp_path):
    (tmp_path / "m").symlink_to(tmp_path / "m")
    assert_cli_refuses(fit("./m"), 2, "loop")


def test_dangling_symlink(tmp_path):
    (tmp_path / "config.json").symlink_to(tmp_path / "deleted-blob")
    assert_cli_refuses(fit("config.json"), 2, "does not exist")


def test_directory_with_dangling_config_link(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").symlink_to("../blobs/gone")
    assert_cli_refuses(fit("model"), 2, "symbolic link to a file that does not exist")


def test_unreadable_config_file(tmp_path, monkeypatch):
    write(tmp_path / "model" / "config.json", TINY)
    deny(monkeypatch, tmp_path / "model" / "config.json", calls=("open",))
    assert_cli_refuses(fit("model"), 2, "permission denied")


def test_unreadable_directory(tmp_path, monkeypatch):
    """A directory we may not search: its own stat works, a stat or open of anything inside it
    fails with EACCES (before: "has no config.json", which sends the user looking elsewhere)."""
    write(tmp_path / "model" / "config.json", TINY)
    deny(monkeypatch, tmp_path / "model" / "config.json")
    assert_cli_refuses(fit(str(tmp_path / "model")), 2, "permission denied")


def test_unreadable_file_through_the_api(tmp_path, monkeypatch):
    write(tmp_path / "config.json", TINY)
    deny(monkeypatch, tmp_path / "config.json", calls=("open",))
    assert_api_refuses(api.plan, str(tmp_path / "config.json"), "l40s", exc=BadInput, needle="permission denied")


def test_other_os_errors_are_one_sentence(tmp_path, monkeypatch):
    write(tmp_path / "config.json", TINY)
    real_open = os.open

    def eio(path, *args, **kwargs):
        if os.fspath(path) == str(tmp_path / "config.json"):
            raise OSError(errno.EIO, "Input/output error", os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", eio)
    assert_cli_refuses(fit(str(tmp_path / "config.json")), 2, "input/output error")


@needs_fifo
@pytest.mark.parametrize("command", [["kv"], ["compare"], ["sweep"]])
def test_other_commands_refuse_a_fifo_too(tmp_path, command):
    os.mkfifo(tmp_path / "config.json")
    assert_cli_refuses([*command, "config.json"], 2, "named pipe")


def test_a_regular_file_still_loads(tmp_path):
    """The control: the same reader reads a real config, byte for byte."""
    f = write(tmp_path / "model" / "config.json", TINY)
    got = load_config("model")
    assert got.config == TINY and got.sha256 == hashlib.sha256(f.read_bytes()).hexdigest()


# --- 2. skip patterns without backtracking -------------------------------------------------------


def _quantized(skip: list[str]) -> dict:
    return {**GPT_OSS, "quantization_config": {**GPT_OSS["quantization_config"], "modules_to_not_convert": skip}}


STARS = "*" * 24 + "Z"


def test_24_stars_answer_in_time_and_match_nothing(tmp_path):
    """Before: the regex (^|.*\\.).*.*...Z(\\..*)?$ backtracked exponentially and never ended.
    Now the answer comes at once, and since no module name has a 'Z' the plan is byte for byte
    the plan without the pattern."""
    original = GPT_OSS["quantization_config"]["modules_to_not_convert"]
    write(tmp_path / "stars" / "config.json", _quantized([*original, STARS]))
    with deadline():
        r = runner.invoke(app, fit(str(tmp_path / "stars"), "--json"))
    assert r.exit_code in (0, 1), r.output
    assert "Traceback" not in r.output
    with deadline():
        starred = api.plan(str(tmp_path / "stars"), "h100")
    plain = api.plan("openai/gpt-oss-20b", "h100")
    assert starred.components == plain.components


@pytest.mark.parametrize("key", ["modules_to_not_convert", "llm_int8_skip_modules"])
def test_24_stars_in_a_bitsandbytes_config(tmp_path, key):
    cfg = {**LLAMA, "quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True,
                                            "bnb_4bit_quant_type": "nf4", key: ["lm_head", STARS]}}
    write(tmp_path / "bnb" / "config.json", cfg)
    with deadline():
        r = runner.invoke(app, fit("bnb", "--json"))
    assert r.exit_code in (0, 1) and "Traceback" not in r.output, r.output


def test_adversarial_patterns_answer_in_time():
    names = ["model.layers.0.self_attn.q_proj." + "a" * 150, "a" * 200, "a." * 100]
    patterns = ["*a" * 512, "*a?" * 341, "?*" * 512, "*[a]" * 256, "*" * 1023 + "Z", "a*" * 512]
    with deadline(5):
        for name in names:
            for p in patterns:
                hit = is_skipped(name, (p[:MAX_SKIP_PATTERN_CHARS],))
                assert not (hit and "Z" in p), (name, p)


def _old_regex(name: str, pattern: str) -> bool:
    """The matcher before issue #15 (memory/weights.py at 21c290c): the oracle for semantics."""
    body = "".join(".*" if c == "*" else re.escape(c) for c in pattern)
    return bool(re.match(rf"(^|.*\.){body}(\..*)?$", name) or fnmatchcase(name, pattern))


def test_same_answers_as_the_old_regex_on_random_small_cases():
    """5,000 random (name, pattern) pairs over the characters that matter: '.', '*', '?', '['."""
    rng = random.Random(15)
    for _ in range(5_000):
        name = "".join(rng.choice("ab._") for _ in range(rng.randint(0, 9)))
        pattern = "".join(rng.choice("ab.*?[]!") for _ in range(rng.randint(0, 6)))
        assert is_skipped(name, (pattern,)) == _old_regex(name, pattern), (name, pattern)


# (module name, pattern, skipped?) from the bundled configs and transformers' conventions.
SKIP_CASES = [
    ("model.layers.0.self_attn.q_proj", "model.layers.*.self_attn", True),
    ("model.layers.23.self_attn.sinks", "model.layers.*.self_attn", True),
    ("model.layers.0.mlp.router", "model.layers.*.mlp.router", True),
    ("model.layers.0.mlp.experts.gate_up_proj", "model.layers.*.mlp.router", False),
    ("model.embed_tokens", "model.embed_tokens", True),
    ("lm_head", "lm_head", True),
    ("model.lm_head", "lm_head", True),
    ("model.layers.0.mlp.gate", "gate", True),
    ("model.layers.0.mlp.gate_proj", "gate", False),
    ("model.layers.0.mlp.gate", "mlp.gate", True),
    ("model.layers.0.mlp.gate_proj", "mlp.gate", False),
    ("model.layers.0.mlp.gate", "*mlp.gate", True),
    ("model.layers.10.mlp.down_proj", "model.layers.1*", True),      # '*' crosses dots
    ("model.layers.1.mlp.down_proj", "layers.?.mlp", False),          # '?' is fnmatch's, on the whole name only
    ("model.layers.1.mlp.down_proj", "model.layers.?.mlp.down_proj", True),
    ("model.layers.1.mlp.down_proj", "model.layers.[0-3].mlp.down_proj", True),   # fnmatch class
    ("model.layers.7.mlp.down_proj", "model.layers.[0-3].mlp.down_proj", False),
    ("model.layers.0.self_attn.q_proj", "self", False),
    ("model.layers.0.self_attn.q_proj", "", False),
]


@pytest.mark.parametrize("name,pattern,want", SKIP_CASES)
def test_skip_semantics(name, pattern, want):
    assert is_skipped(name, (pattern,)) == want == _old_regex(name, pattern)


def test_pattern_too_long(tmp_path):
    write(tmp_path / "long" / "config.json", _quantized(["a" * (MAX_SKIP_PATTERN_CHARS + 1)]))
    msg = assert_cli_refuses(fit("long"), 2, f"at most {MAX_SKIP_PATTERN_CHARS}")
    assert "1,025 characters" in msg


def test_too_many_patterns(tmp_path):
    write(tmp_path / "many" / "config.json", _quantized([f"m{i}" for i in range(MAX_SKIP_PATTERNS + 1)]))
    assert_cli_refuses(fit("many"), 2, f"at most {MAX_SKIP_PATTERNS:,}")


def test_pattern_bound_through_the_api():
    assert_api_refuses(_compile_skip, "x" * 5000, exc=BadInput, needle="5,000 characters")


# --- 3. the trace cache believes nothing -----------------------------------------------------------


KEY = "0123456789abcdef0123456789abcdef"


def _result(**changes) -> TraceResult:
    rows = (TensorRow(bytes=1024, category="weights", shape=(16, 32), dtype="torch.bfloat16",
                      op="aten.empty", module="model.embed_tokens", phase="load"),
            TensorRow(bytes=512, category="activations", shape=(2, 64, 2), dtype="torch.bfloat16",
                      op="aten.mm", module="layers.0.mlp", phase="prefill"))
    base = TraceResult(scenario={"mode": "infer", "batch": 2, "ctx": 64}, peak_bytes=1536,
                       components={"weights": 1024, "activations": 512}, phase="prefill", op="aten.mm",
                       module="layers.0.mlp", phase_peaks={"prefill": 1536, "decode": 1024}, top=rows,
                       weights_bytes=1024, measured={"warnings": ["w"], "attn": "sdpa"},
                       versions={"torch": "2.13.0", "transformers": "5.25.0"}, seconds=1.25)
    return replace(base, **changes)


def _entry_path() -> Path:
    return cache.directory() / f"{KEY}.json"


def _write_entry(result_json: dict, *, fmt: int = cache.FORMAT, key: str = KEY, checksum: str | None = None) -> None:
    path = _entry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": fmt, "key": key,
                                "sha256": checksum or cache.checksum(result_json), "result": result_json}))


def _good_json() -> dict:
    return json.loads(json.dumps(_result().to_json()))


def test_cache_round_trip():
    assert cache.load(KEY) is None                      # nothing there: a miss
    cache.store(KEY, _result())
    assert cache.load(KEY) == _result()
    entry = json.loads(_entry_path().read_text())
    assert entry["format"] == cache.FORMAT and entry["key"] == KEY
    assert entry["sha256"] == hashlib.sha256(json.dumps(entry["result"], sort_keys=True,
                                                        separators=(",", ":")).encode()).hexdigest()


def _mutated(path: str, value):
    """The good result JSON with the field at dotted `path` set to `value`."""
    d = _good_json()
    *parents, last = path.split(".")
    node = d
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if value is _DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return d


_DELETE = object()

# Entries whose checksum is right (so only the schema and range checks can reject them).
BAD_RESULTS = {
    "peak as a string": ("peak_bytes", "1536"),
    "peak as a float": ("peak_bytes", 1536.0),
    "peak as a bool": ("peak_bytes", True),
    "negative peak": ("peak_bytes", -1536),
    "negative component": ("components.activations", -512),
    "component as null": ("components.activations", None),
    "components as a list": ("components", [1024, 512]),
    "components do not sum to the peak": ("components.activations", 100),
    "peak beyond a petabyte": ("peak_bytes", 2**60),
    "negative weights": ("weights_bytes", -1),
    "negative phase peak": ("phase_peaks.decode", -5),
    "phase as a number": ("phase", 3),
    "top as a dict": ("top", {"0": 1}),
    "negative row bytes": ("top.0.bytes", -1024),
    "negative shape": ("top.0.shape", [-16, 32]),
    "shape as a string": ("top.0.shape", "16x32"),
    "row missing a field": ("top.0.dtype", _DELETE),
    "missing field": ("weights_bytes", _DELETE),
    "extra field": ("fits", True),
    "measured warnings as a string": ("measured.warnings", "w"),
    "attn as a number": ("measured.attn", 1),
    "versions as numbers": ("versions.torch", 2.13),
    "negative seconds": ("seconds", -1.0),
    "scenario as a list": ("scenario", []),
}


@pytest.mark.parametrize("path,value", BAD_RESULTS.values(), ids=BAD_RESULTS.keys())
def test_cache_entry_with_wrong_types_or_ranges_is_a_miss(path, value):
    _write_entry(_mutated(path, value))
    assert cache.load(KEY) is None


def _raw(data: bytes) -> None:
    _entry_path().parent.mkdir(parents=True, exist_ok=True)
    _entry_path().write_bytes(data)


def test_cache_bad_checksum_is_a_miss():
    good = _good_json()
    _write_entry({**good, "peak_bytes": 3072, "components": {"weights": 2560, "activations": 512}},
                 checksum=cache.checksum(good))
    assert cache.load(KEY) is None


def test_cache_future_format_is_a_miss():
    _write_entry(_good_json(), fmt=cache.FORMAT + 1)
    assert cache.load(KEY) is None


def test_cache_entry_under_another_key_is_a_miss():
    _write_entry(_good_json(), key="f" * 32)
    assert cache.load(KEY) is None


def test_cache_old_format_without_envelope_is_a_miss():
    """What TRACE_VERSION 9 wrote before issue #15: the bare result."""
    _raw(json.dumps(_good_json()).encode())
    assert cache.load(KEY) is None


@pytest.mark.parametrize("data", [b"", b"{", b"[1, 2]", b"null", b"\xff\xfe not utf-8", b"[" * 100_000,
                                  b'{"format": 2, "key": "x", "sha256": "", "result": NaN}'],
                         ids=["empty", "truncated", "list", "null", "binary", "deep", "nan"])
def test_cache_entry_that_is_not_json_is_a_miss(data):
    _raw(data)
    assert cache.load(KEY) is None


def test_cache_nan_seconds_is_a_miss():
    _write_entry(_good_json())
    _raw(_entry_path().read_bytes().replace(b'"seconds": 1.25', b'"seconds": NaN'))
    assert cache.load(KEY) is None


@needs_fifo
def test_cache_entry_that_is_a_fifo_is_a_miss():
    _entry_path().parent.mkdir(parents=True)
    os.mkfifo(_entry_path())
    with deadline():
        assert cache.load(KEY) is None


def test_cache_entry_that_is_a_directory_or_huge_is_a_miss():
    _entry_path().mkdir(parents=True)
    assert cache.load(KEY) is None
    _entry_path().rmdir()
    sparse(_entry_path(), cache.ENTRY_LIMIT + 1)
    assert cache.load(KEY) is None


@pytest.mark.parametrize("key", ["../../etc/passwd", "", "0" * 31, "G" * 32, None])
def test_cache_keys_that_are_not_ours(key):
    assert cache.load(key) is None
    cache.store(key, _result())                       # nothing written, nothing raised
    assert not cache.directory().exists() or not any(cache.directory().iterdir())


def test_a_bad_entry_is_overwritten_by_the_next_store():
    _write_entry(_mutated("peak_bytes", -1))
    assert cache.load(KEY) is None
    cache.store(KEY, _result())
    assert cache.load(KEY) == _result()
    assert [p.name for p in cache.directory().iterdir()] == [f"{KEY}.json"]   # no temporary left


def test_store_into_an_unwritable_cache_does_not_fail(tmp_path, monkeypatch):
    (tmp_path / "xdg").write_text("a file where the cache directory should be")
    cache.store(KEY, _result())
    assert cache.load(KEY) is None


# --- 3b. the HF cache: confined, and a broken one is exit 3 ---------------------------------------


def make_cache(hub: Path, repo_id: str, config: dict | None = None, main: str | None = COMMIT,
               commit: str = COMMIT) -> Path:
    """The real huggingface_hub layout: blobs/, snapshots/<commit>/config.json -> ../../blobs/<x>, refs/main."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "blobs" / "blob0").write_text(json.dumps(config or TINY))
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    (snap / "config.json").symlink_to(Path("..", "..", "blobs", "blob0"))
    if main is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(main)
    return repo


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "hf-cache"
    root.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    return root


def test_hf_cache_control(hub):
    make_cache(hub, "acme/tiny-7B", main=COMMIT + "\n")       # huggingface_hub writes no newline; tolerate one
    got = load_config("acme/tiny-7B")
    assert (got.source, got.config) == ("hf-cache", TINY)


@pytest.mark.parametrize("ref", ["../../../../etc", "/etc/passwd", "..", ".", "a/b", "x" * 65,
                                 "abc\0def", COMMIT + "/../..", "C:\\Windows", " "],
                         ids=["dotdot", "absolute", "parent", "self", "slash", "too-long", "nul",
                              "hash-then-dotdot", "windows", "blank"])
def test_tampered_refs_main(hub, ref):
    make_cache(hub, "acme/tiny-7B", main=ref)
    if ref.strip():
        assert_cli_refuses(fit("acme/tiny-7B"), 3, "not a commit hash")
    else:      # an empty ref is no ref: the newest snapshot answers, as huggingface_hub would
        assert load_config("acme/tiny-7B").config == TINY


def test_tampered_ref_never_reads_outside(hub, tmp_path):
    """refs/main = ../../../<dir>, and <dir>/config.json exists outside the cache: not read."""
    secret = write(tmp_path / "outside" / "snapshots" / "x" / "config.json", {**TINY, "secret": 1})
    make_cache(hub, "acme/tiny-7B", main="../../../outside")
    assert secret.exists()
    assert_api_refuses(load_config, "acme/tiny-7B", exc=EnvironmentProblem, needle="not a commit hash")


@needs_fifo
def test_refs_main_is_a_fifo(hub):
    repo = make_cache(hub, "acme/tiny-7B", main=None)
    (repo / "refs").mkdir()
    os.mkfifo(repo / "refs" / "main")
    assert_cli_refuses(fit("acme/tiny-7B"), 3, "named pipe")


def test_refs_main_is_huge(hub):
    repo = make_cache(hub, "acme/tiny-7B", main=None)
    (repo / "refs").mkdir()
    sparse(repo / "refs" / "main", REF_LIMIT + 1)
    assert_cli_refuses(fit("acme/tiny-7B"), 3, "limit")


def test_refs_main_is_a_directory(hub):
    repo = make_cache(hub, "acme/tiny-7B", main=None)
    (repo / "refs" / "main").mkdir(parents=True)
    assert_cli_refuses(fit("acme/tiny-7B"), 3, "directory")


def test_snapshot_link_leading_outside(hub, tmp_path):
    repo = make_cache(hub, "acme/tiny-7B")
    outside = write(tmp_path / "elsewhere.json", TINY)
    link = repo / "snapshots" / COMMIT / "config.json"
    link.unlink()
    link.symlink_to(outside)
    assert_cli_refuses(fit("acme/tiny-7B"), 3, "leads outside its repo folder")


def test_snapshot_directory_leading_outside(hub, tmp_path):
    repo = make_cache(hub, "acme/tiny-7B", commit="c" * 40)
    write(tmp_path / "evil" / "config.json", TINY)
    (repo / "snapshots" / COMMIT).symlink_to(tmp_path / "evil")
    assert_cli_refuses(fit("acme/tiny-7B"), 3, "leads outside")


def test_newest_snapshot_leading_outside(hub, tmp_path):
    repo = make_cache(hub, "acme/tiny-7B", main=None)
    link = repo / "snapshots" / COMMIT / "config.json"
    link.unlink()
    link.symlink_to(write(tmp_path / "elsewhere.json", TINY))
    assert_api_refuses(load_config, "acme/tiny-7B", exc=EnvironmentProblem, needle="leads outside")


@needs_fifo
def test_cached_config_is_a_fifo(hub):
    repo = make_cache(hub, "acme/tiny-7B")
    (repo / "blobs" / "blob0").unlink()
    os.mkfifo(repo / "blobs" / "blob0")
    assert_cli_refuses(fit("acme/tiny-7B"), 3, "named pipe")


def test_cached_config_is_huge(hub):
    repo = make_cache(hub, "acme/tiny-7B")
    sparse(repo / "blobs" / "blob0", 50 * 2**20)
    assert_cli_refuses(fit("acme/tiny-7B"), 3, "50 MiB")


def test_hf_home_with_unknown_user(monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", "~nosuchuser-15/hf")
    assert_cli_refuses(fit("acme/tiny-7B"), 2, "HF_HUB_OFFLINE")


# --- 4. ids and paths as a hostile user types them ----------------------------------------------


ID_CASES = {
    # model, needle
    "a name part over 255": ("a/" + "x" * 300, "302 characters long"),
    "256 characters, id-shaped": ("a/" + "x" * 254, "at most 96"),
    "5000 characters": ("m" * 5000, "5,000 characters"),
    "a path of 4097 characters": (("abcdefg/" * 600)[:4097], "4,097 characters"),
    "empty": ("", "empty"),
    "spaces": ("   ", "empty"),
    "tab and newline": ("\t\n", "empty"),
    "trailing space": ("meta-llama/Llama-3.1-8B ", "whitespace"),
    "leading space": (" meta-llama/Llama-3.1-8B", "whitespace"),
    "NUL": ("meta-llama/Llama\x00-3.1-8B", "NUL"),
    "NUL in a path": ("./config.json\x00.txt", "NUL"),
    "lone surrogate": ("meta-llama/Llama-\ud800", "lone surrogate"),
    "undecodable byte": ("meta-llama/Llama-\udcff", "nor a valid Hub id"),
    "control character": ("meta-llama/Llama\x07", "\\x07"),
    "~nosuchuser": ("~nosuchuser-15/models/llama", "no such user"),
    "~nosuchuser alone": ("~nosuchuser-15", "no such user"),
    "dot dot": ("../nowhere/config.json", "No such file"),
    "dot dot inside": ("meta-llama/../Llama-3.1-8B", "No such file"),
    "dot dot escaping": ("meta-llama/../../../../etc/passwd", "No such file"),
    "absolute missing": ("/nonexistent-15/config.json", "No such file"),
    "windows drive": ("C:\\models\\llama\\config.json", "separates directories with '/'"),
    "windows relative": ("models\\llama", "No such file"),
    "windows forward": ("C:/models/llama", "No such file"),
    "https url": ("https://huggingface.co/meta-llama/Llama-3.1-8B", "Pass meta-llama/Llama-3.1-8B"),
    "blob url": ("https://huggingface.co/meta-llama/Llama-3.1-8B/blob/main/config.json",
                 "Pass meta-llama/Llama-3.1-8B"),
    "url without scheme": ("huggingface.co/meta-llama/Llama-3.1-8B", "Pass meta-llama/Llama-3.1-8B"),
    "hf.co": ("https://hf.co/Qwen/Qwen3-8B", "Pass Qwen/Qwen3-8B"),
    "other url": ("http://example.com/config.json", "is a URL"),
    "hf scheme": ("hf://meta-llama/Llama-3.1-8B", "is a URL"),
    "revision colon": ("meta-llama/Llama-3.1-8B:main", "revision"),
    "revision at": ("Qwen/Qwen3-8B@0123abc", "Pass Qwen/Qwen3-8B"),
    "double dash": ("meta--llama/Llama", "'--'"),
    "double dot": ("meta-llama/Llama..8B", "'..'"),
    ".git": ("meta-llama/Llama-3.1-8B.git", ".git"),
    "trailing dash": ("meta-llama/Llama-", "starts and ends"),
    "leading dot": ("meta-llama/.Llama", "starts and ends"),
    "97-char name": ("acme/" + "x" * 97, "at most 96"),
    "space inside": ("meta llama/Llama", "only letters"),
    "dollar": ("acme/na$me", "only letters"),
    "three parts": ("a/b/c", "No such file"),
    "bare unknown word": ("notamodel-15", "not a local path, a bundled model"),
    "valid id, offline": ("acme/not-cached-15", "HF_HUB_OFFLINE"),
}


@pytest.mark.parametrize("model,needle", ID_CASES.values(), ids=ID_CASES.keys())
def test_ids_and_paths_cli(model, needle):
    assert_cli_refuses(fit(model), 2, needle)


API_CASES = ["a/" + "x" * 254, "", "meta-llama/Llama\x00", "x/\ud800", "~nosuchuser-15/x",
             "https://huggingface.co/a/b", "a/b:main", "a--b/c", "/nonexistent-15"]


@pytest.mark.parametrize("model", API_CASES)
def test_ids_and_paths_api(model):
    assert_api_refuses(api.plan, model, "l40s", exc=BadInput)


@pytest.mark.parametrize("model", [123, None, b"meta-llama/Llama-3.1-8B", ["a/b"]])
def test_load_config_wants_a_string(model):
    assert_api_refuses(load_config, model, exc=BadInput, needle="string")


def test_long_id_refused_before_the_disk(monkeypatch):
    """Over 255 characters: refused without a single stat."""
    def no_disk(*args, **kwargs):
        raise AssertionError("the disk was asked")

    monkeypatch.setattr(os, "stat", no_disk)
    assert_api_refuses(load_config, "acme/" + "x" * 300, exc=BadInput, needle="characters long")


def test_a_long_path_that_exists_still_loads(tmp_path):
    """The bound is per file name (255) and per path (4096), not 255 for the whole path."""
    deep = tmp_path.joinpath(*["d" * 60] * 5)
    write(deep / "config.json", TINY)
    assert len(str(deep)) > 255
    assert load_config(str(deep)).config == TINY


def test_tilde_of_this_user_still_expands(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    write(tmp_path / "home" / "m" / "config.json", TINY)
    assert load_config("~/m").config == TINY


def test_existing_path_with_spaces_still_loads(tmp_path):
    write(tmp_path / " spaced " / "config.json", TINY)
    assert load_config(" spaced ").config == TINY


# --- 5. the other files vramplan reads: verify records, the catalog, bundled configs ----------------


def test_verify_records_round_trip(tmp_path):
    rec = {"schema": record.SCHEMA, "x": 1}
    (tmp_path / "r.jsonl").write_text(json.dumps(rec) + "\n" + json.dumps({"schema": "other"}) + "\n\n")
    assert record.read(tmp_path / "r.jsonl") == [rec]


@pytest.mark.parametrize("kind", ["fifo", "device", "huge", "directory", "broken line", "binary"])
def test_verify_records_refused(tmp_path, kind):
    path = tmp_path / "r.jsonl"
    if kind == "fifo":
        if not hasattr(os, "mkfifo"):
            pytest.skip("no FIFOs")
        os.mkfifo(path)
    elif kind == "device":
        path = Path("/dev/zero")
    elif kind == "huge":
        sparse(path, record.READ_LIMIT + 1)
    elif kind == "directory":
        path.mkdir()
    elif kind == "broken line":
        path.write_text(json.dumps({"schema": record.SCHEMA}) + "\n{\"schema\": \"vramplan.ver\n")
    else:
        path.write_bytes(b"\xff\xfe\x00")
    needle = {"broken line": "Line 2", "binary": "UTF-8"}.get(kind, "Cannot read")
    assert_api_refuses(record.read, path, exc=BadInput, needle=needle)


@pytest.fixture
def fake_configs(tmp_path, monkeypatch):
    """catalog.configs_dir() pointed at a copy of configs/ under tmp_path; caches cleared both ways."""
    import shutil

    copy = tmp_path / "configs"
    shutil.copytree(ROOT / "configs", copy)
    cached = (catalog.configs_dir, catalog.load_gpus, catalog._gpu_index, catalog._bundled,
              catalog._model_index, catalog.driver_reserve_mib)
    for f in cached:
        f.cache_clear()
    monkeypatch.setattr(catalog, "configs_dir", lambda: copy)
    yield copy
    for f in cached:
        f.cache_clear()


@pytest.mark.parametrize("kind", ["fifo", "huge", "not toml", "directory"])
def test_broken_gpu_catalog_is_an_environment_problem(fake_configs, kind):
    toml = fake_configs / "gpus.toml"
    toml.unlink()
    if kind == "fifo":
        if not hasattr(os, "mkfifo"):
            pytest.skip("no FIFOs")
        os.mkfifo(toml)
    elif kind == "huge":
        sparse(toml, 5 * 2**20)
    elif kind == "not toml":
        toml.write_text("[[gpu]\nid = ")
    else:
        toml.mkdir()
    assert_cli_refuses(["gpus"], 3, "Reinstall vramplan")


@needs_fifo
def test_bundled_config_that_is_a_fifo(fake_configs):
    target = fake_configs / "models" / "meta-llama--Llama-3.1-8B.json"
    target.unlink()
    os.mkfifo(target)
    assert_cli_refuses(fit("meta-llama/Llama-3.1-8B"), 3, "named pipe")
    assert_api_refuses(bundled.read, target, exc=EnvironmentProblem, needle="Reinstall")
    assert_api_refuses(catalog.load_bundled_text, "meta-llama/Llama-3.1-8B", exc=EnvironmentProblem)


def test_mode_bits_of_a_fifo_are_what_the_reader_checks(tmp_path):
    """Guard for the tests above: a FIFO really is S_ISFIFO here (a tmpfs that faked it would
    make the FIFO cases pass for the wrong reason)."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs")
    os.mkfifo(tmp_path / "p")
    assert stat.S_ISFIFO(os.stat(tmp_path / "p").st_mode)
