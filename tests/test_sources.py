"""vramplan.sources: where a config.json comes from. No network: the Hub download function is
replaced by fakes, and the HF cache is a directory under tmp_path with the real layout."""

from __future__ import annotations

import difflib
import hashlib
import json
import subprocess
import sys
import types
from pathlib import Path

import huggingface_hub
import httpx2
import pytest
from huggingface_hub.errors import (
    GatedRepoError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
)

import vramplan
from vramplan.errors import BadConfig, BadInput, ModelNotFound
from vramplan.sources import LoadedConfig, bundled, is_hub_id, load_config

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "configs" / "models"
NEMOTRON = MODELS / "nvidia--Nemotron-H-56B-Base-8K.json"
LLAMA = MODELS / "meta-llama--Llama-3.1-8B.json"
TINY = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2}


# --- fixtures -------------------------------------------------------------------------------


def _fake_catalog() -> types.ModuleType:
    """A stand-in for vramplan.catalog with its API, over the repo's configs/models/."""
    ids = {p.stem.replace("--", "/", 1): p for p in MODELS.glob("*.json")}
    fake = types.ModuleType("vramplan.catalog")

    def find_bundled(model_id):
        for canonical, path in ids.items():
            if canonical.lower() == model_id.lower():
                return canonical, path
        return None

    def nearest_bundled(model_id, n=3):
        return difflib.get_close_matches(model_id, sorted(ids), n=n, cutoff=0.0)

    fake.find_bundled = find_bundled
    fake.find_variant = lambda model_id: None    # variants.toml is tested in test_bundled_configs.py
    fake.nearest_bundled = nearest_bundled
    fake.bundled_model_ids = lambda: sorted(ids)
    return fake


def _no_network(*args, **kwargs):
    pytest.fail(f"the Hub was contacted: {args}")


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """Fake catalog, an empty HF home, no offline flags, and any real Hub call fails the test."""
    fake = _fake_catalog()
    monkeypatch.setitem(sys.modules, "vramplan.catalog", fake)
    monkeypatch.setattr(vramplan, "catalog", fake, raising=False)
    monkeypatch.setattr(bundled, "catalog", fake)     # bundled.py imports the catalog at load
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _no_network)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", _no_network)
    monkeypatch.chdir(tmp_path)


def make_cache(hub_dir: Path, repo_id: str, snapshots: dict[str, dict], main: str | None) -> Path:
    """Write the real huggingface_hub layout: blobs, snapshots/<sha>/config.json symlinks, refs/main."""
    repo = hub_dir / ("models--" + repo_id.replace("/", "--"))
    for i, (sha, config) in enumerate(snapshots.items()):
        blob = repo / "blobs" / f"blob{i}"
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_text(json.dumps(config))
        link = repo / "snapshots" / sha / "config.json"
        link.parent.mkdir(parents=True)
        link.symlink_to(Path("..", "..", "blobs", blob.name))
    if main is not None:
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(main)
    return repo


def hub_raises(monkeypatch, error: Exception, on: str = "get_hf_file_metadata") -> None:
    """Make the Hub fail with `error`, at the HEAD probe (where real failures show up) or the download."""

    def fake(*args, **kwargs):
        raise error

    if on == "hf_hub_download":
        monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda url, **kwargs: object())
    monkeypatch.setattr(huggingface_hub, on, fake)


def http_response(status: int) -> httpx2.Response:
    return httpx2.Response(status, request=httpx2.Request("GET", "https://huggingface.co/x"))


def forbid_hub_import(monkeypatch) -> None:
    """Any `import huggingface_hub` now raises ImportError: proves a path stays offline-only."""
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)


# --- local paths ------------------------------------------------------------------------------


def test_local_file(tmp_path):
    f = tmp_path / "my.json"
    f.write_text(json.dumps(TINY))
    got = load_config(str(f))
    assert (got.source, got.id, got.location) == ("path", str(f), str(f.resolve()))
    assert got.config == TINY
    assert got.sha256 == hashlib.sha256(f.read_bytes()).hexdigest()


def test_local_directory(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(TINY))
    got = load_config("model")  # relative to cwd (tmp_path)
    assert got.source == "path"
    assert got.location == str((tmp_path / "model" / "config.json").resolve())
    assert got.config == TINY


def test_directory_without_config(tmp_path):
    (tmp_path / "weights").mkdir()
    with pytest.raises(BadInput, match="has no config.json") as e:
        load_config(str(tmp_path / "weights"))
    assert not isinstance(e.value, (ModelNotFound, BadConfig))


def test_missing_path_is_no_such_file():
    for model in ("./nope", "~/nope/config.json", "nope.json", "a/b/c"):
        with pytest.raises(ModelNotFound, match="No such file"):
            load_config(model)


def test_bad_json_names_line_and_column(tmp_path):
    f = tmp_path / "config.json"
    f.write_text('{\n  "hidden_size": 64,\n}')  # trailing comma
    with pytest.raises(BadConfig, match=r"config.json is not valid JSON \(line 3, column 1\): Expecting"):
        load_config(str(f))


@pytest.mark.parametrize("text", ["[1, 2]", '"llama"', "null"])
def test_top_level_must_be_an_object(tmp_path, text):
    f = tmp_path / "config.json"
    f.write_text(text)
    with pytest.raises(BadConfig, match="not an object"):
        load_config(str(f))


def test_binary_file_is_bad_config(tmp_path):
    f = tmp_path / "model.json"
    f.write_bytes(b"\x80\x81\xfe\xff")
    with pytest.raises(BadConfig, match="not UTF-8"):
        load_config(str(f))


def test_infinity_accepted():
    got = load_config(str(NEMOTRON))
    assert got.config["time_step_limit"] == [0.0, float("inf")]


def test_empty_model_is_bad_input():
    with pytest.raises(BadInput, match="empty"):
        load_config("  ")


# --- bundled and resolution order -------------------------------------------------------------


def test_bundled_id():
    got = load_config("meta-llama/llama-3.1-8b")
    assert (got.source, got.id) == ("bundled", "meta-llama/Llama-3.1-8B")
    assert got.sha256 == hashlib.sha256(LLAMA.read_bytes()).hexdigest()


def test_local_path_beats_bundled_id(tmp_path):
    d = tmp_path / "meta-llama" / "Llama-3.1-8B"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(TINY))
    got = load_config("meta-llama/Llama-3.1-8B")
    assert got.source == "path" and got.config == TINY


def test_bundled_beats_hf_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    make_cache(tmp_path / "hub", "meta-llama/Llama-3.1-8B", {"a" * 40: TINY}, main="a" * 40)
    assert load_config("meta-llama/Llama-3.1-8B").source == "bundled"


def test_not_an_id_lists_nearest_bundled():
    with pytest.raises(ModelNotFound, match=r"not a local path.*Did you mean: .*Llama-3\.1-8B") as e:
        load_config("llama 3.1 8b")
    assert "vramplan models" in str(e.value)


def test_hub_id_rules():
    assert is_hub_id("meta-llama/Llama-3.1-8B") and is_hub_id("a_b/c.d-e")
    for bad in ("gpt2", "a/b/c", "-a/b", "a/b.", "a--b/c", "a/b..c", "a/b.git", "a/" + "x" * 97, "a b/c"):
        assert not is_hub_id(bad), bad


# --- local Hugging Face cache -----------------------------------------------------------------


def test_hf_cache_found_via_hf_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    make_cache(tmp_path / "hf" / "hub", "acme/tiny-7B", {"a" * 40: TINY}, main="a" * 40)
    forbid_hub_import(monkeypatch)
    got = load_config("acme/tiny-7B")
    assert (got.source, got.id, got.config) == ("hf-cache", "acme/tiny-7B", TINY)
    assert got.location.endswith(f"snapshots/{'a' * 40}/config.json")


def test_hf_cache_found_via_hf_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "elsewhere"))  # HF_HUB_CACHE wins over HF_HOME
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    make_cache(tmp_path / "cache", "acme/tiny-7B", {"a" * 40: TINY}, main="a" * 40)
    forbid_hub_import(monkeypatch)
    assert load_config("acme/tiny-7B").source == "hf-cache"


def test_hf_cache_is_case_blind(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    make_cache(tmp_path, "Acme/Tiny-7B", {"a" * 40: TINY}, main="a" * 40)
    assert load_config("acme/tiny-7b").id == "Acme/Tiny-7B"


def test_hf_cache_prefers_refs_main(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    old, new = {**TINY, "rev": "main"}, {**TINY, "rev": "pinned"}
    # The pinned snapshot is written last (newest), but refs/main points at the other one.
    make_cache(tmp_path, "acme/tiny-7B", {"m" * 40: old, "p" * 40: new}, main="m" * 40)
    assert load_config("acme/tiny-7B").config["rev"] == "main"


def test_hf_cache_without_main_takes_newest_snapshot(tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    repo = make_cache(tmp_path, "acme/tiny-7B", {"o" * 40: {"rev": "old"}, "n" * 40: {"rev": "new"}}, main=None)
    os.utime(repo / "snapshots" / ("o" * 40) / "config.json", (1, 1), follow_symlinks=False)
    assert load_config("acme/tiny-7B").config["rev"] == "new"


def test_hf_cache_skips_broken_blob(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = make_cache(tmp_path, "acme/tiny-7B", {"a" * 40: TINY}, main="a" * 40)
    for blob in (repo / "blobs").iterdir():
        blob.unlink()
    with pytest.raises(ModelNotFound, match="HF_HUB_OFFLINE"):
        load_config("acme/tiny-7B")


# --- the Hub (faked) --------------------------------------------------------------------------


def test_hub_success(tmp_path, monkeypatch):
    calls = []

    def fake(repo_id, filename, **kwargs):
        calls.append((repo_id, filename))
        f = tmp_path / "downloaded.json"
        f.write_text(json.dumps(TINY))
        return str(f)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda url, **kwargs: calls.append(url))
    got = load_config("acme/fresh-1B")
    url = "https://huggingface.co/acme/fresh-1B/resolve/main/config.json"
    assert calls == [url, ("acme/fresh-1B", "config.json")]  # HEAD probe, then the download
    assert (got.source, got.id, got.config) == ("hub", "acme/fresh-1B", TINY)
    assert got.location == url


def test_hf_cache_beats_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    make_cache(tmp_path, "acme/tiny-7B", {"a" * 40: TINY}, main="a" * 40)
    assert load_config("acme/tiny-7B").source == "hf-cache"  # the autouse fake fails on any Hub call


@pytest.mark.parametrize("on", ["get_hf_file_metadata", "hf_hub_download"])
def test_hub_gated(monkeypatch, on):
    hub_raises(monkeypatch, GatedRepoError("gated", response=http_response(403)), on)
    with pytest.raises(ModelNotFound, match="gated.*accept the license.*HF_TOKEN"):
        load_config("meta-llama/Llama-4-Secret")


def test_hub_missing_repo_lists_nearest(monkeypatch):
    hub_raises(monkeypatch, RepositoryNotFoundError("404", response=http_response(404)))
    with pytest.raises(ModelNotFound) as e:
        load_config("meta-llama/Llama-3.1-13B")
    msg = str(e.value)
    assert msg.startswith("No model 'meta-llama/Llama-3.1-13B' in the bundled catalog, the local Hugging Face cache, or on the Hub")
    assert "Did you mean: meta-llama/" in msg and "meta-llama/Llama-3.1-8B" in msg and "`vramplan models`" in msg


def test_hub_repo_without_config(monkeypatch):
    hub_raises(monkeypatch, RemoteEntryNotFoundError("404", response=http_response(404)))
    with pytest.raises(BadConfig, match="has no config.json"):
        load_config("acme/tiny-GGUF")


@pytest.mark.parametrize(
    "error",
    [LocalEntryNotFoundError("connection"), httpx2.ConnectError("dns"), TimeoutError("slow")],
    ids=["local-entry", "transport", "timeout"],
)
@pytest.mark.parametrize("on", ["get_hf_file_metadata", "hf_hub_download"])
def test_hub_unreachable(monkeypatch, error, on):
    hub_raises(monkeypatch, error, on)
    with pytest.raises(ModelNotFound, match="Hub could not be reached.*Did you mean") as e:
        load_config("meta-llama/Llama-3.1-13B")
    assert not isinstance(e.value, BadConfig)


def test_hub_other_http_error(monkeypatch):
    from huggingface_hub.errors import HfHubHTTPError

    hub_raises(monkeypatch, HfHubHTTPError("boom", response=http_response(503)))
    with pytest.raises(ModelNotFound, match="HTTP 503"):
        load_config("acme/tiny-7B")


def test_offline_env_never_imports_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    forbid_hub_import(monkeypatch)
    with pytest.raises(ModelNotFound, match="not tried because HF_HUB_OFFLINE is set.*Did you mean"):
        load_config("meta-llama/Llama-3.1-13B")


def test_offline_argument(monkeypatch):
    forbid_hub_import(monkeypatch)
    with pytest.raises(ModelNotFound, match="offline mode is on"):
        load_config("acme/tiny-7B", offline=True)


def test_offline_false_overrides_env(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_raises(monkeypatch, LocalEntryNotFoundError("offline"), "hf_hub_download")
    with pytest.raises(ModelNotFound, match="could not be reached"):
        load_config("acme/tiny-7B", offline=False)


# --- the contract around the edges ------------------------------------------------------------


def test_loaded_config_is_frozen_and_hashable():
    got = load_config(str(LLAMA))
    with pytest.raises(AttributeError):
        got.source = "hub"
    assert hash(got) == hash(LoadedConfig(got.id, got.source, got.location, {}, got.sha256))
    assert "config=" not in repr(got)


def test_import_is_light():
    """The analytic path must not pay for huggingface_hub, torch or transformers."""
    code = (
        "import sys; from vramplan.sources import load_config; "
        f"load_config({str(NEMOTRON)!r}); "
        "print([m for m in ('huggingface_hub', 'torch', 'transformers') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_real_catalog_if_present(monkeypatch):
    """Once vramplan/catalog.py exists, a bundled id resolves through it."""
    monkeypatch.undo()  # drop the fake catalog (and the other isolation) for this one test
    pytest.importorskip("vramplan.catalog")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _no_network)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", _no_network)
    got = load_config("meta-llama/Llama-3.1-8B")
    assert (got.source, got.id, got.config["model_type"]) == ("bundled", "meta-llama/Llama-3.1-8B", "llama")


# --- issue #15: ids, paths and the reader (the hostile cases are in tests/bad_input/test_files.py)


def test_hub_id_problem_names_the_rule():
    from vramplan.sources import hub_id_problem

    assert hub_id_problem("meta-llama/Llama-3.1-8B") is None
    assert hub_id_problem("a/b/c") == "a Hub id is exactly two parts, org/name"
    assert hub_id_problem("a/") == "a Hub id is exactly two parts, org/name"
    assert hub_id_problem("a/" + "x" * 97) == "each part of a Hub id is at most 96 characters"
    assert hub_id_problem("a b/c") == "a Hub id holds only letters, digits, '-', '_' and '.'"
    assert hub_id_problem("-a/b") == "each part of a Hub id starts and ends with a letter, a digit or '_'"
    assert hub_id_problem("a--b/c") == hub_id_problem("a/b..c") == "a Hub id cannot contain '--' or '..'"
    assert hub_id_problem("a/b.git") == "a Hub id cannot end in '.git'"
    # every id is_hub_id refuses gets a reason, and every reason belongs to a refused id
    for bad in ("gpt2", "a/b/c", "-a/b", "a/b.", "a--b/c", "a/b..c", "a/b.git", "a/" + "x" * 97, "a b/c"):
        assert not is_hub_id(bad) and hub_id_problem(bad), bad


def test_shown_escapes_what_stderr_cannot_print():
    from vramplan.units import printable as shown

    assert shown("meta-llama/Llama-3.1-8B") == "meta-llama/Llama-3.1-8B"
    assert shown("a\x00b\ud800\x07") == "a\\x00b\\ud800\\x07"
    assert shown("héllo") == "héllo"
    long = shown("x" * 500)
    assert len(long) < 140 and long.endswith("(500 characters)")
    shown("\ud800" * 10).encode("ascii")          # printable as plain ASCII


def test_kind_of_every_kind(tmp_path):
    import os

    from vramplan.files import Kind, kind_of

    (tmp_path / "f").write_text("x")
    (tmp_path / "d").mkdir()
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "dangling").symlink_to(tmp_path / "nothing")
    os.mkfifo(tmp_path / "fifo")
    assert [kind_of(tmp_path / n) for n in ("f", "d", "loop", "dangling", "fifo", "nothing")] == [
        Kind.FILE, Kind.DIR, Kind.LOOP, Kind.DANGLING, Kind.OTHER, Kind.MISSING]
    assert kind_of("a\x00b") == kind_of("\ud800") == Kind.INVALID
    assert kind_of("x" * 300) == Kind.TOO_LONG
    assert kind_of(tmp_path / "f" / "under-a-file") == Kind.MISSING


def test_read_small_file_reads_exactly_the_bytes(tmp_path):
    from vramplan.files import read_small_file

    data = bytes(range(256)) * 4096 + b"tail"          # 1 MiB + 4 bytes: crosses the 1 MiB chunks
    (tmp_path / "f").write_bytes(data)
    assert read_small_file(tmp_path / "f", len(data), "the file") == data
    with pytest.raises(BadInput, match="1,048,580 bytes, over vramplan's 1 MiB limit"):
        read_small_file(tmp_path / "f", len(data) - 4, "the file")


def test_path_ids_are_normalised_as_before(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(TINY))
    assert load_config("./model/").id == "model"
