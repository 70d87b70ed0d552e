"""Bad settings on the command line (issue #15): every one is refused with exit 2 and one or two
sentences naming the flag, or, where the setting is possible but the engine would not start,
answered "does not fit" (exit 1) with the engine's own reason, never silently ignored.

The rules and bounds asserted here are written with their reasons in docs/validation.md,
"Settings and verdicts"."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests.bad_input.contract import assert_cli_refuses
from vramplan import planner
from vramplan.cli import app

LLAMA = "meta-llama/Llama-3.1-8B"
GPT2 = "openai-community/gpt2"
HUGE = "9" * 400                   # over 308 digits: past a float's range
HUGER = "9" * 5000                 # past Python's 4,300-digit int() limit

runner = CliRunner()


def fit(*argv):
    return ["fit", LLAMA, *argv]


# --- flags of another engine are refused, not ignored -----------------------------------------

SERVE_ONLY = [("--tp", "2"), ("--pp", "2"), ("--gpu-memory-utilization", "0.8"),
              ("--kv-cache-memory", "20GiB"), ("--max-num-seqs", "64"), ("--max-num-batched-tokens", "4096"),
              ("--block-size", "32"), ("--enforce-eager",), ("--vllm-version", "0.10"),
              ("--allow-long-max-model-len",)]


@pytest.mark.parametrize("mode", ["infer", "lora", "full"])
@pytest.mark.parametrize("flag", SERVE_ONLY, ids=lambda f: f[0])
def test_serve_only_flags_are_refused_outside_serve(mode, flag):
    extra = ["--transformers", "5"]
    message = assert_cli_refuses(fit("--gpu", "h100:2", "--mode", mode, *flag, *extra), 2, flag[0])
    assert "--mode serve" in message and f"--mode {mode} does not read it" in message


def test_several_serve_flags_are_named_together():
    message = assert_cli_refuses(fit("--mode", "infer", "--tp", "1", "--block-size", "32"), 2)
    assert message == ("--block-size, --tp only apply to --mode serve (the vLLM engine); "
                       "--mode infer does not read them.")


@pytest.mark.parametrize("flag", [("--optim", "sgd"), ("--lora-r", "8"), ("--zero", "1"), ("--attn", "eager"),
                                  ("--grad-ckpt",), ("--lora-dropout", "0.1")], ids=lambda f: f[0])
def test_training_flags_are_refused_in_serve_and_infer(flag):
    assert_cli_refuses(fit(*flag), 2, flag[0])
    assert_cli_refuses(fit("--mode", "infer", *flag), 2, "training modes")


def test_transformers_version_is_refused_in_serve():
    assert_cli_refuses(fit("--transformers", "5"), 2, "--transformers only applies to --mode infer")


# --- numbers: one sentence naming the flag and the bound ---------------------------------------

@pytest.mark.parametrize("flag", ["--ctx", "--batch", "--max-num-seqs", "--max-num-batched-tokens"])
@pytest.mark.parametrize("value, needle", [
    (HUGE, "beyond any real workload"), (HUGER, "beyond any real workload"), ("0", "at least 1"),
    ("-1", "at least 1"), ("-32k", "at least 1"), ("1e309", "not a token count"), ("nan", "not a token count"),
    ("inf", "not a token count"), ("1.3", "not a whole number"), ("32q", "not a token count"),
    ("99999999999", "limit"),
], ids=lambda v: v[:12] if isinstance(v, str) else v)
def test_token_counts(flag, value, needle):
    message = assert_cli_refuses(fit(flag, value), 2, needle)
    assert message.startswith(flag) and len(message) < 300        # the 5,000 digits are not echoed


def test_the_token_bounds_are_named():
    assert runner.invoke(app, fit("--ctx", "16m", "--json")).exit_code == 1    # 16m = 2**24 is allowed (vLLM refuses)
    assert "limit 16,777,216" in assert_cli_refuses(fit("--ctx", "16777217"))  # one more is not
    assert "limit 1,048,576" in assert_cli_refuses(fit("--batch", "1048577"))
    assert "limit 1,048,576" in assert_cli_refuses(fit("--max-num-seqs", "1048577"))


@pytest.mark.parametrize("flag", ["--gpu-mem", "--kv-cache-memory", "--gpu-free"])
@pytest.mark.parametrize("value, needle", [
    ("10EiB", "more than any GPU holds"), ("9999TiB", "more than any GPU holds"), ("5TiB", "4 TiB"),
    (HUGE + "GB", "more than any GPU holds"), ("-1GB", "positive"), ("0GB", "positive"),
    ("48", "not a memory size"), ("nanGB", "not a memory size"), ("1e309GB", "not a memory size"),
], ids=lambda v: v[:12])
def test_memory_sizes(flag, value, needle):
    argv = ["fit", LLAMA, flag, value] if flag != "--gpu-free" else ["fit", LLAMA, "--gpu", "l40s", flag, value]
    message = assert_cli_refuses(argv, 2, needle)
    assert flag in message


@pytest.mark.parametrize("value, needle", [
    ("1e309", "(0, 1], got inf"), ("nan", "(0, 1], got nan"), ("inf", "got inf"), ("-0.1", "got -0.1"),
    ("0", "got 0.0"), ("1.5", "got 1.5"), ("abc", "not a valid float"), (HUGE, "got inf"),
])
def test_gpu_memory_utilization(value, needle):
    assert_cli_refuses(fit("--gpu-memory-utilization", value), 2, needle)


@pytest.mark.parametrize("argv, needle", [
    (["--lora-dropout", "nan"], "--lora-dropout must be a probability in [0, 1), got nan"),
    (["--lora-dropout", "inf"], "got inf"), (["--lora-dropout", "1e309"], "got inf"),
    (["--lora-dropout", "1"], "got 1.0"), (["--lora-dropout", "-0.1"], "got -0.1"),
    (["--lora-r", "0"], "--lora-r must be between 1 and 65,536, got 0"), (["--lora-r", "100000"], "65,536"),
    (["--lora-r", HUGE], "400-digit number"), (["--lora-r", HUGER], "not a valid int"),
    (["--lora-alpha", "0"], "--lora-alpha must be a positive number"), (["--lora-alpha", "1e309"], "not a valid int"),
    (["--lora-alpha", HUGE], "up to 1,048,576"), (["--zero", "4"], "--zero must be between 0 and 3"),
    (["--zero", "-1"], "got -1"),
])
def test_training_numbers(argv, needle):
    assert_cli_refuses(fit("--mode", "lora", "--transformers", "5", *argv), 2, needle)


@pytest.mark.parametrize("argv, needle", [
    (["--tp", "0"], "--tp must be between 1 and 64, got 0"), (["--tp", "65"], "64"),
    (["--tp", HUGE], "400-digit number"), (["--tp", HUGER], "not a valid int"), (["--tp", "two"], "not a valid int"),
    (["--pp", "0"], "--pp must be between 1 and 64"), (["--block-size", "3"], "power of two from 1 to 256"),
    (["--block-size", "512"], "--block-size must be between 1 and 256"), (["--block-size", "0"], "got 0"),
    (["--tp", "4"], "needs 4 GPUs but --gpu gives 1"),
    (["--vllm-version", "0.5"], "before 0.9"), (["--vllm-version", "abc"], "not a version"),
    (["--vllm-version", "0"], "not a version"), (["--vllm-version", "0." + HUGER], "not a version"),
])
def test_serve_numbers(argv, needle):
    assert_cli_refuses(fit(*argv), 2, needle)


@pytest.mark.parametrize("gpu, needle", [
    ("l40s:0", "from 1 to 64"), ("l40s:65", "from 1 to 64"), ("l40s:" + HUGE[:60], "from 1 to 64"),
    ("l40s:" + HUGER, "5,005 characters long"), ("l40s:²", "from 1 to 64"), ("x" * 500, "500 characters"),
    ("", "names no GPU"),
], ids=lambda v: v[:12])
def test_gpu_counts_and_names(gpu, needle):
    assert_cli_refuses(fit("--gpu", gpu), 2, needle)


@pytest.mark.parametrize("argv, needle", [
    (["fit", LLAMA, "--bogus"], "No such option: --bogus"),
    (["fit", LLAMA, "--batch"], "requires an argument"),
    (["fit"], "Name a model"),
    (["nosuchcommand"], "No such command"),
    (["fit", LLAMA, "--method", "fast"], "--method 'fast' is not one of: analytic, trace"),
    (["fit", LLAMA, "--mode", "train"], "--mode 'train' is not one of"),
    (["compare", LLAMA, "--efficiency", "nan"], "--efficiency must be in (0, 1]"),
    (["compare", LLAMA, "--efficiency", "2"], "got 2.0"),
    (["compare", LLAMA, "--tp", "2"], "No such option"),
    (["sweep", LLAMA, "--ctx", "1..99999999999"], "limit 16,777,216"),
    (["sweep", LLAMA, "--batch", "0"], "at least 1"),
    (["sweep", LLAMA, "--batch", HUGE], "beyond any real workload"),
    (["verify", LLAMA, "--timeout", "nan"], "--timeout must be a positive number of seconds"),
    (["verify", LLAMA, "--timeout", "-1"], "got -1.0"),
    (["verify", LLAMA, "--timeout", "1e309"], "got inf"),
])
def test_usage_and_other_commands(argv, needle):
    assert_cli_refuses(argv, 2, needle)


# --- exit codes are a contract ----------------------------------------------------------------

def test_an_unexpected_error_is_exit_3_with_one_sentence(monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("the planner broke\n  on two lines")

    monkeypatch.setattr(planner, "build", broken)
    message = assert_cli_refuses(fit(), 3, "internal error")
    assert message == ("internal error: RuntimeError: the planner broke on two lines; rerun with --debug "
                       "for the traceback.")
    r = runner.invoke(app, fit("--debug"))                 # --debug lets the traceback through
    assert isinstance(r.exception, RuntimeError)


def test_exit_1_belongs_to_does_not_fit_alone():
    from vramplan.cli import exit_code
    from vramplan.errors import (BadConfig, BadInput, DoesNotFit, EnvironmentProblem, MissingExtra,
                                 ModelNotFound, UnknownGpu, VramplanError)

    class Odd(VramplanError):
        exit_code = 1              # a subclass that claims "does not fit" without being DoesNotFit

    codes = {cls: exit_code(cls("x") if cls is not MissingExtra else cls("trace", "torch"))
             for cls in (BadInput, BadConfig, ModelNotFound, UnknownGpu, EnvironmentProblem, MissingExtra,
                         DoesNotFit, VramplanError, Odd)}
    assert codes == {BadInput: 2, BadConfig: 2, ModelNotFound: 2, UnknownGpu: 2, EnvironmentProblem: 3,
                     MissingExtra: 3, DoesNotFit: 1, VramplanError: 2, Odd: 3}


# --- impossible settings are said, as the engine would say them ------------------------------

def _json(argv):
    r = runner.invoke(app, [*argv, "--json"], env={"HF_HUB_OFFLINE": "1"})
    return r.exit_code, json.loads(r.stdout)


def test_kv_cache_memory_larger_than_the_card():
    old = ("--vllm-version", "0.16")        # the era whose CUDA graphs live outside the budget
    code, p = _json(fit("--gpu", "l40s", "--kv-cache-memory", "60GiB", *old))
    assert code == 1 and not p["fits"] and not p["serve"]["starts"]
    # the capacity never exceeds the card (it was 76.48 GiB, with a negative "other" region)
    assert p["capacity_bytes"] <= p["gpu"]["memory_total_bytes"] == 47_802_482_688        # 44.52 GiB
    # weights 16,094,076,928 (with the 32 MiB rotary cache) + sampler peak 1,264,091,136 + non-torch
    # 375,809,638 = 17,733,977,702; context 0.42 GiB + graphs 0.72 GiB outside: 47,802,482,688 -
    # 17,733,977,702 - 1,224,065,925 (int(0.42 GiB) + int(0.72 GiB)) = 28,844,439,061 B = 26.86 GiB
    assert p["serve"]["refusal"].endswith("so at most 26.86 GiB is left for the KV cache.")
    assert p["max_batch"] == 0 and p["max_ctx"] == 0
    fix = [s for s in p["suggestions"] if s["flags"] == {"kv_cache_memory": "26.86GiB"}]
    assert fix and fix[0]["fits"]
    code, q = _json(fit("--gpu", "l40s", "--kv-cache-memory", "26.86GiB", *old))
    assert code == 0 and q["capacity_bytes"] <= q["gpu"]["memory_total_bytes"]


def test_ctx_above_the_models_positions_is_vllms_refusal_in_serve():
    code, p = _json(["fit", GPT2, "--ctx", "2k"])
    assert code == 1 and not p["fits"] and not p["serve"]["starts"]
    # vllm/config/model.py, _get_and_verify_max_len (v0.11.0 lines 1895-1911)
    assert p["serve"]["refusal"].startswith(
        "User-specified max_model_len (2048) is greater than the derived max_model_len (n_positions=1024 "
        "or model_max_length=None in model's config.json). To allow overriding this maximum, set the env "
        "var VLLM_ALLOW_LONG_MAX_MODEL_LEN=1.")
    assert p["max_ctx"] == 1024 and p["max_batch"] == 0 and p["serve"]["max_model_len_that_starts"] == 1024
    assert p["suggestions"][0] == {"change": "--max-model-len 1024", "flags": {"ctx": 1024},
                                   "total_bytes": p["suggestions"][0]["total_bytes"], "fits": True,
                                   "usd_per_hour": p["suggestions"][0]["usd_per_hour"]}
    code, q = _json(["fit", GPT2, "--ctx", "1024"])
    assert code == 0 and q["fits"]


def test_allow_long_max_model_len_starts_with_vllms_warning():
    code, p = _json(["fit", GPT2, "--ctx", "2k", "--allow-long-max-model-len"])
    assert code == 0 and p["fits"] and p["serve"]["starts"] and p["serve"]["refusal"] == ""
    assert p["workload"]["allow_long_max_model_len"] is True
    assert any("VLLM_ALLOW_LONG_MAX_MODEL_LEN=1" in w and "NaN" in w for w in p["warnings"])


def test_ctx_above_the_positions_only_warns_outside_serve():
    code, p = _json(["fit", GPT2, "--ctx", "2k", "--mode", "infer", "--transformers", "5"])
    assert code == 0 and p["fits"]
    assert any("exceeds the model's max_position_embeddings (1,024)" in w for w in p["warnings"])


def test_rope_scaling_extends_what_vllm_accepts(tmp_path):
    """YaRN factor 4 on a 32k model: vLLM derives 131,072 (original_max_position_embeddings x
    factor), so 128k starts and 128k + 1 does not; a plain 32k config refuses 32k + 1."""
    from tests.tiny import TINY_LLAMA

    cfg = {**TINY_LLAMA, "max_position_embeddings": 32768,
           "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    assert _json(["fit", str(path), "--ctx", "131072"])[0] == 0
    code, p = _json(["fit", str(path), "--ctx", "131073"])
    assert code == 1 and "(max_position_embeddings=131072.0 or model_max_length=None" in p["serve"]["refusal"]
    path.write_text(json.dumps(TINY_LLAMA | {"max_position_embeddings": 32768}))
    assert _json(["fit", str(path), "--ctx", "32768"])[0] == 0
    assert _json(["fit", str(path), "--ctx", "32769"])[0] == 1


def test_a_card_whose_headroom_fails_says_so_and_its_limits_agree():
    """Llama-3.2-1B on an RTX 4060 at vLLM's default 0.9: the 10% outside the budget (0.80 GiB of
    8.00) cannot hold the CUDA context (0.42 GiB) and graphs (0.72 GiB), so nothing starts, and the
    limits say so (they said batch 30 fits before). The fix vLLM users reach for is offered.
    Under 0.16: from 0.21 the graphs are estimated inside the budget and only the context is out."""
    old = ["--vllm-version", "0.16"]
    code, p = _json(["fit", "meta-llama/Llama-3.2-1B-Instruct", "--gpu", "rtx-4060", *old])
    assert code == 1 and not p["serve"]["headroom_ok"] and not p["fits"]
    assert p["max_batch"] == 0 and p["max_ctx"] == 0 and p["serve"]["max_model_len_that_starts"] == 0
    # the largest share leaving 1.14 GiB: 1 - 1.14 / 7.63 (the 4060's CUDA total) -> 0.85
    fix = [s for s in p["suggestions"] if "gpu_memory_utilization" in s["flags"]]
    assert fix[0]["flags"] == {"gpu_memory_utilization": 0.85} and fix[0]["fits"]
    assert _json(["fit", "meta-llama/Llama-3.2-1B-Instruct", "--gpu", "rtx-4060",
                  "--gpu-memory-utilization", "0.85", *old])[0] == 0
    assert _json(["fit", "meta-llama/Llama-3.2-1B-Instruct", "--gpu", "rtx-4060"])[0] == 0   # 0.31: starts


def test_trace_runs_the_attention_asked_for():
    """--attn eager --method trace used to trace SDPA; the scenario now carries the choice (and is
    cached apart from the SDPA trace)."""
    from vramplan import trace
    from vramplan.loading import load_model
    from vramplan.request import make_workload
    from vramplan.targets import resolve_target

    spec, target = load_model(GPT2), resolve_target("l40s")
    for attn in ("eager", "sdpa"):
        w = make_workload("lora", 2, 1024, transformers=5, attn=attn)
        s = planner.setup(spec, target, w)
        assert trace._scenario(spec, target, w, s)["attn"] == attn
    assert_cli_refuses(["fit", GPT2, "--mode", "lora", "--transformers", "5", "--attn", "flash_attention_2",
                        "--method", "trace"], 2, "flash_attention_2 needs CUDA kernels")
