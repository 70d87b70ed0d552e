"""The command-line contract: exit codes, JSON keys, the README example, bad input."""

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from vramplan.cli import app

runner = CliRunner()
EXAMPLE = ["fit", "meta-llama/Llama-3.1-8B", "--gpu", "l40s", "--ctx", "32k", "--batch", "8"]


def run(args):
    result = runner.invoke(app, args)
    return result.exit_code, result.stdout, result.stderr


def run_json(args):
    code, out, err = run(args + ["--json"])
    return code, json.loads(out)


def test_readme_example_does_not_fit():
    code, p = run_json(EXAMPLE)
    assert code == 1 and p["fits"] is False
    # 2 B x 8,030,261,248 params + vLLM's rotary cos_sin_cache, 131,072 x 128 x 2 B = 32 MiB
    assert p["components"]["weights"] == 16_060_522_496 + 33_554_432
    assert p["kv_bytes_per_token"] == 131_072                   # 32 layers x 2 x 8 x 128 x 2 B
    # KV for 8 x 32,768 tokens: 262,144 tokens x 131,072 B = 32 GiB exactly (2048 full blocks each)
    assert p["components"]["kv_cache"] == 32 * 2**30
    assert p["workload"]["ctx"] == 32_768 and p["workload"]["batch"] == 8
    assert p["total_bytes"] == sum(p["components"].values())
    assert p["capacity_bytes"] < p["total_bytes"]
    for key in ("model", "gpu", "workload", "components", "peak_allocated_bytes", "total_bytes",
                "capacity_bytes", "fits", "headroom_bytes", "max_batch", "max_ctx", "serve",
                "suggestions"):
        assert key in p
    assert p["serve"]["kv_cache_tokens"] > 0 and p["serve"]["max_concurrency"] < 8
    assert any(s["fits"] for s in p["suggestions"])


def test_readme_example_limits_are_consistent():
    _, p = run_json(EXAMPLE)
    mb, mc = p["max_batch"], p["max_ctx"]
    assert 1 <= mb < 8 and 1 <= mc < 32_768
    base = EXAMPLE[:4] + ["--ctx", "32k"]
    assert run(base + ["--batch", str(mb)])[0] == 0
    assert run(base + ["--batch", str(mb + 1)])[0] == 1
    base = EXAMPLE[:4] + ["--batch", "8"]
    assert run(base + ["--ctx", str(mc)])[0] == 0
    assert run(base + ["--ctx", str(mc + 1)])[0] == 1
    # vLLM's max concurrency agrees with the solved batch: floor(concurrency) == max batch
    assert int(p["serve"]["max_concurrency"]) == mb


@pytest.mark.parametrize("extra", [["--kv-dtype", "fp8"], ["--gpu", "h100"]])
def test_readme_example_fixes_fit(extra):
    args = list(EXAMPLE)
    if extra[0] == "--gpu":
        args[args.index("--gpu") + 1] = extra[1]
    else:
        args += extra
    code, p = run_json(args)
    assert code == 0 and p["fits"] is True and p["headroom_bytes"] > 0


def test_table_output_explains():
    code, out, _ = run(EXAMPLE)
    assert code == 1
    for text in ("16,094,076,928", "131,072", "does not fit", "max batch", "max ctx",
                 "GPU KV cache size", "--kv-cache-dtype fp8"):
        assert text in out


@pytest.mark.parametrize("args,needle", [
    (["fit", "meta-llama/Llama-3.1-13B"], "meta-llama/Llama-3.1-8B"),
    (["fit", "meta-llama/Llama-3.1-8B", "--ctx", "32q"], "--ctx"),
    (["fit", "meta-llama/Llama-3.1-8B", "--ctx", "-5"], "--ctx"),
    (["fit", "meta-llama/Llama-3.1-8B", "--ctx", "0"], "--ctx"),
    (["fit", "meta-llama/Llama-3.1-8B", "--batch", "0"], "--batch"),
    (["fit", "meta-llama/Llama-3.1-8B", "--batch", "10000000000"], "--batch"),
    (["fit", "meta-llama/Llama-3.1-8B", "--gpu", "rtx-9090"], "l40s"),
    (["fit", "meta-llama/Llama-3.1-8B", "--gpu", "l40s:0"], "l40s"),
    (["fit", "meta-llama/Llama-3.1-8B", "--gpu-mem", "48"], "GB"),
    (["fit", "meta-llama/Llama-3.1-8B", "--gpu", "l40s", "--gpu-mem", "48GB"], "not both"),
    (["fit", "meta-llama/Llama-3.1-8B", "--dtype", "int3"], "--dtype"),
    (["fit", "meta-llama/Llama-3.1-8B", "--kv-dtype", "int4"], "--kv-dtype"),
    (["fit", "meta-llama/Llama-3.1-8B", "--mode", "train"], "--mode"),
    (["fit", "meta-llama/Llama-3.1-8B", "--gpu-memory-utilization", "1.5"], "utilization"),
])
def test_bad_input_is_exit_2_without_traceback(args, needle):
    code, out, err = run(args)
    assert code == 2, (code, out, err)
    assert needle in err
    assert "Traceback" not in err + out
    assert len(err.strip().splitlines()) <= 3


@pytest.mark.parametrize("args, keywords, cli, python", [
    (["--gpu-memory-utilization", "1.5"], {"gpu_memory_utilization": 1.5},
     "--gpu-memory-utilization must be in (0, 1], got 1.5.", "gpu_memory_utilization must be in (0, 1], got 1.5."),
    (["--mode", "infer", "--optim", "sgd"], {"mode": "infer", "optim": "sgd"},
     "--optim only applies to the training modes (--mode full, lora or qlora).",
     "optim only applies to the training modes (mode full, lora or qlora)."),
    (["--gpu", "l40s", "--gpu-mem", "48GB"], {"gpu": "l40s", "gpu_mem": "48GB"},
     "Give either --gpu or --gpu-mem, not both.", "Give either gpu or gpu_mem, not both."),
])
def test_one_mistake_phrased_by_each_edge(args, keywords, cli, python):
    """The CLI names flags, the Python API names keywords: the same BadInput, phrased twice."""
    from vramplan import api
    from vramplan.errors import BadInput

    code, _, err = run(["fit", "meta-llama/Llama-3.1-8B", *args])
    assert code == 2 and err == f"vramplan: {cli}\n"
    with pytest.raises(BadInput) as e:
        api.plan("meta-llama/Llama-3.1-8B", **keywords)
    assert str(e.value) == python and e.value.for_cli() == cli


def test_the_api_names_an_unknown_keyword():
    from vramplan import api
    from vramplan.errors import BadInput

    with pytest.raises(BadInput, match=r"'lora_rank' is not a keyword vramplan plans with \(did you mean lora_r\?\)"):
        api.plan("meta-llama/Llama-3.1-8B", mode="lora", lora_rank=8)


def test_bad_configs(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    for path, needle in ((bad, "JSON"), (missing, "num_hidden_layers"), (empty_dir, "config.json")):
        code, out, err = run(["fit", str(path)])
        assert code == 2, (path, err)
        assert needle in err and "Traceback" not in err


def test_local_config_path_matches_bundled(tmp_path):
    src = os.path.join(os.path.dirname(__file__), "..", "configs", "models", "meta-llama--Llama-3.1-8B.json")
    model_dir = tmp_path / "Llama-3.1-8B"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(open(src).read())
    _, a = run_json(EXAMPLE)
    for target in (str(model_dir), str(model_dir / "config.json")):
        code, b = run_json(["fit", target] + EXAMPLE[2:])
        assert code == 1 and b["model"]["source"] == "path"
        assert b["components"] == a["components"]


def test_other_commands():
    code, out, _ = run(["kv", "google/gemma-3-27b-it", "--json"])
    kinds = {k["kind"]: k for k in json.loads(out)["kinds"]}
    assert code == 0 and kinds["sliding"]["layers"] == 52 and kinds["full"]["layers"] == 10
    assert json.loads(out)["kv_bytes_per_token"]["bf16"] == 507_904
    code, out, _ = run(["models", "qwen3", "--json"])
    assert code == 0 and {m["id"] for m in json.loads(out)} >= {"Qwen/Qwen3-8B", "Qwen/Qwen3-0.6B"}
    code, out, _ = run(["gpus", "--json"])
    assert code == 0 and any(g["id"] == "l40s" for g in json.loads(out))


def test_analytic_path_imports_nothing_heavy():
    """`python -X importtime` lists every module imported; none of the heavy ones may appear."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "vramplan"] + EXAMPLE + ["--json"],
                          capture_output=True, text=True, env=env,
                          cwd=os.path.join(os.path.dirname(__file__), ".."))
    assert proc.returncode == 1, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    for heavy in ("torch", "transformers", "huggingface_hub", "pynvml", "accelerate", "peft", "numpy"):
        assert heavy not in imported, heavy
    assert json.loads(proc.stdout)["fits"] is False
