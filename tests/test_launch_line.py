"""vLLM's flag names on `fit` and `fit --cmd "<launch line>"` (vramplan/cli/launch.py).

The flag names, short forms and value syntax are vLLM's own (vllm/engine/arg_utils.py,
EngineArgs.add_cli_args: "-tp", "-pp", "-dp", "-q"; human_readable_int: "32k" = 32,000,
"32K" = 32,768; --limit-mm-per-prompt as JSON, or image=2 in vLLM 0.6-0.9's nullable_kvs).
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests.bad_input.contract import assert_cli_refuses
from vramplan.cli import app
from vramplan.cli import launch as L
from vramplan.request import mm_limits

runner = CliRunner()


def run(argv):
    r = runner.invoke(app, argv, env={"HF_HUB_OFFLINE": "1"})
    return r.exit_code, r.stdout, r.stderr


def plan_json(argv):
    code, out, err = run(argv + ["--json"])
    assert code in (0, 1), err
    return json.loads(out)


def test_human_readable_ints_are_vllms():
    assert L.human_int("32768", "--max-model-len") == 32768
    assert L.human_int("32k", "--max-model-len") == 32_000          # decimal, as vLLM
    assert L.human_int("32K", "--max-model-len") == 32_768          # binary
    assert L.human_int("25.6k", "--max-num-batched-tokens") == 25_600
    assert L.human_int("1M", "--max-model-len") == 1_048_576


@pytest.mark.parametrize("cmd", [
    "vllm serve Qwen/Qwen3-32B --max-model-len 32768 -tp 2",
    "vllm serve --model Qwen/Qwen3-32B --max-model-len=32768 --tensor-parallel-size 2",
    "python -m vllm.entrypoints.openai.api_server --model Qwen/Qwen3-32B --max_model_len 32768 -tp 2",
    "CUDA_VISIBLE_DEVICES=0,1 vllm serve Qwen/Qwen3-32B --max-model-len 32K -tp 2 --port 8000",
    "/usr/bin/vllm serve Qwen/Qwen3-32B \\\n  --max-model-len 32768 \\\n  -tp 2 --trust-remote-code",
])
def test_the_forms_of_a_vllm_launch_line(cmd):
    launch = L.parse(cmd)
    assert launch.server == "vllm" and launch.model == "Qwen/Qwen3-32B"
    assert launch.params == {"ctx": 32768, "tp": 2}


def test_every_vllm_flag_of_the_table():
    launch = L.parse(
        "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 vllm serve deepseek-ai/DeepSeek-V3 --max-model-len 64k "
        "-tp 8 -pp 2 -dp 2 --enable-expert-parallel --kv-cache-dtype fp8_e4m3 -q fp8 "
        "--max-num-seqs 128 --max-num-batched-tokens 4096 --gpu-memory-utilization 0.92 --enforce-eager "
        "--block-size 64 --cpu-offload-gb 4 --limit-mm-per-prompt '{\"image\": 2}' --swap-space 8 "
        "--kv-cache-memory-bytes 20G --served-model-name ds --enable-prefix-caching")
    assert launch.params == {
        "allow_long_max_model_len": True, "ctx": 64_000, "tp": 8, "pp": 2, "dp": 2,
        "enable_expert_parallel": True, "kv_dtype": "fp8_e4m3", "dtype": "fp8", "max_num_seqs": 128,
        "max_num_batched_tokens": 4096, "gpu_memory_utilization": 0.92, "enforce_eager": True,
        "block_size": 64, "cpu_offload_gb": 4.0, "limit_mm_per_prompt": '{"image": 2}', "swap_space": 8.0,
        "kv_cache_memory": 20 * 2**30}       # uppercase G is binary in vLLM
    assert launch.ignored == ("--served-model-name ds", "--enable-prefix-caching")


def test_negated_switch_and_checkpoint_quantization():
    launch = L.parse("vllm serve openai/gpt-oss-120b --no-enforce-eager --quantization mxfp4 --dtype bfloat16")
    assert launch.params == {"enforce_eager": False}      # mxfp4 and bf16: what the checkpoint holds
    assert any("quantization_config" in n for n in launch.notes)


def test_sglang_launch_lines_translate_to_its_engine():
    # The SGLang table is checked here at the translation; `fit` plans it with --engine sglang.
    launch = L.parse("python -m sglang.launch_server --model-path Qwen/Qwen3-8B --context-length 32768 "
                     "--tp-size 2 --dp 2 --ep-size 2 --kv-cache-dtype fp8_e5m2 --mem-fraction-static 0.85 "
                     "--page-size 16 --chunked-prefill-size 4096 --max-running-requests 64 "
                     "--cuda-graph-max-bs 32 --enable-dp-attention --host 0.0.0.0")
    assert launch.engine == "sglang" and launch.model == "Qwen/Qwen3-8B"
    assert launch.params == {"ctx": 32768, "tp": 2, "dp_size": 2, "ep_size": 2, "kv_dtype": "fp8_e5m2",
                             "mem_fraction_static": 0.85, "page_size": 16, "chunked_prefill_size": 4096,
                             "max_running_requests": 64, "cuda_graph_max_bs": 32, "enable_dp_attention": True}
    assert launch.ignored == ("--host 0.0.0.0",)
    assert L.parse("sglang serve --model-path Qwen/Qwen3-8B --tp 4").params == {"tp": 4}


def test_limit_mm_per_prompt_both_syntaxes():
    assert mm_limits('{"image": 2, "video": 0}') == mm_limits("image=2,video=0") == (("image", 2), ("video", 0))
    # vLLM's dotted form of a JSON argument (FlexibleArgumentParser): --limit-mm-per-prompt.image 2
    dotted = L.parse("vllm serve google/gemma-3-4b-it --limit-mm-per-prompt.image 2 --limit-mm-per-prompt.video=0")
    assert mm_limits(dotted.params["limit_mm_per_prompt"]) == (("image", 2), ("video", 0))


@pytest.mark.parametrize("cmd, flags", [
    ("vllm serve Qwen/Qwen3-32B --max-model-len 32768 -tp 2",
     ["Qwen/Qwen3-32B", "--gpu", "h100:2", "--ctx", "32768", "--tp", "2"]),
    ("vllm serve meta-llama/Llama-3.1-8B --max-model-len 16K --kv-cache-dtype fp8 --max-num-seqs 64 "
     "--gpu-memory-utilization 0.85 --enforce-eager --block-size 32 --max-num-batched-tokens 4096",
     ["meta-llama/Llama-3.1-8B", "--gpu", "h100", "--ctx", "16384", "--kv-dtype", "fp8", "--max-num-seqs",
      "64", "--gpu-memory-utilization", "0.85", "--enforce-eager", "--block-size", "32",
      "--max-num-batched-tokens", "4096", "--tp", "1"]),
    ("vllm serve deepseek-ai/DeepSeek-V3 -tp 8 -dp 2 --enable-expert-parallel --max-model-len 32768",
     ["deepseek-ai/DeepSeek-V3", "--gpu", "h200:16", "--tp", "8", "--dp", "2", "--enable-expert-parallel",
      "--ctx", "32768"]),
    ("VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 vllm serve Qwen/Qwen3-8B --max-model-len 65536 --cpu-offload-gb 2",
     ["Qwen/Qwen3-8B", "--gpu", "l40s", "--ctx", "65536", "--allow-long-max-model-len", "--cpu-offload-gb", "2",
      "--tp", "1"]),
    ("vllm serve Qwen/Qwen3-32B -q fp8 --max-model-len 8192",
     ["Qwen/Qwen3-32B", "--gpu", "l40s", "--dtype", "fp8", "--ctx", "8192", "--tp", "1"]),
    # SGLang: its own flags; --dp-size with attention DP stays inside the TP group (2 GPUs, not 4)
    ("python -m sglang.launch_server --model-path Qwen/Qwen3-8B --mem-fraction-static 0.8 --tp-size 2 "
     "--dp-size 2 --enable-dp-attention --context-length 8192 --chunked-prefill-size 4096",
     ["Qwen/Qwen3-8B", "--engine", "sglang", "--gpu", "h100:2", "--mem-fraction-static", "0.8", "--tp", "2",
      "--dp-size", "2", "--enable-dp-attention", "--ctx", "8192", "--chunked-prefill-size", "4096", "--pp", "1"]),
])
def test_cmd_round_trips_to_the_same_json_as_explicit_flags(cmd, flags):
    gpu = flags[flags.index("--gpu") + 1]
    with_cmd = plan_json(["fit", "--cmd", cmd, "--gpu", gpu.split(":")[0]])
    explicit = plan_json(["fit", *flags])
    assert with_cmd == explicit


def test_vllm_names_on_fit_are_the_same_flags():
    vllm = plan_json(["fit", "Qwen/Qwen3-32B", "--gpu", "h100:4", "--max-model-len", "32K", "-tp", "2", "-pp", "2",
                      "--kv-cache-dtype", "fp8", "-q", "fp8"])
    ours = plan_json(["fit", "Qwen/Qwen3-32B", "--gpu", "h100:4", "--ctx", "32768", "--tp", "2", "--pp", "2",
                      "--kv-dtype", "fp8", "--dtype", "fp8"])
    assert vllm == ours
    dp = plan_json(["fit", "Qwen/Qwen3-8B", "--gpu", "h100:2", "--data-parallel-size", "2", "--tensor-parallel-size", "1"])
    assert dp["workload"]["dp"] == 2 and dp["workload"]["tp"] == 1


def test_cmd_notes_the_ignored_flags_on_stderr():
    code, out, err = run(["fit", "--cmd", "vllm serve Qwen/Qwen3-8B --port 8000 --trust-remote-code", "--gpu", "h100"])
    assert code == 0 and "ignored" in err and "--port 8000" in err and "--trust-remote-code" in err


def test_suggestions_print_as_launch_lines():
    # planned as vLLM 0.11 (Marlin MXFP4, the sorting sampler), the release these lines were checked on
    code, out, _ = run(["fit", "--cmd", "vllm serve openai/gpt-oss-120b --max-model-len 131072", "--gpu", "h100",
                        "--vllm-version", "0.11"])
    assert code == 1
    lines = out.split("as launch lines:\n", 1)[1].splitlines()
    assert "  vllm serve openai/gpt-oss-120b --max-model-len 131072 --max-num-seqs 256 --kv-cache-dtype fp8" in lines
    assert "  vllm serve openai/gpt-oss-120b --max-model-len 131072 --cpu-offload-gb 8" in lines
    # a bigger card is no flag of the launch line: the line is unchanged but for -tp
    assert "  vllm serve openai/gpt-oss-120b --max-model-len 131072 --tensor-parallel-size 2" in lines


def test_relaunch_replaces_a_flag_given_in_another_form():
    launch = L.parse("vllm serve Qwen/Qwen3-8B -tp 2 --kv-cache-dtype=auto --max-model-len 8192")
    assert L.relaunch(launch, {"tp": 4, "gpu": "h100:4", "kv_dtype": "fp8"}) == (
        "vllm serve Qwen/Qwen3-8B --max-model-len 8192 --tensor-parallel-size 4 --kv-cache-dtype fp8")
    underscores = L.parse("vllm serve Qwen/Qwen3-8B --max_model_len 8192 --enforce-eager")
    assert L.relaunch(underscores, {"ctx": 4096, "enforce_eager": True}) == (
        "vllm serve Qwen/Qwen3-8B --max-model-len 4096 --enforce-eager")
    assert L.relaunch(launch, {"batch": 4}) is None          # no server flag holds the client's load


@pytest.mark.parametrize("argv, needle", [
    (["fit", "--cmd", "vllm serve Qwen/Qwen3-8B --config cfg.yaml"], "YAML"),
    (["fit", "Qwen/Qwen3-8B", "--cmd", "vllm serve Qwen/Qwen3-8B"], "drop the MODEL"),
    (["fit", "--cmd", "vllm serve Qwen/Qwen3-8B --max-model-len 8192", "--ctx", "4096"], "already sets --ctx"),
    (["fit", "--cmd", "vllm serve Qwen/Qwen3-8B -tp 2", "--tp", "1"], "already sets --tp"),
    (["fit", "--cmd", "vllm serve Qwen/Qwen3-8B --max-model-len 8192", "--max-model-len", "4096"], "already sets --ctx"),
    (["fit", "--cmd", "vllm serve --port 8000"], "names no model"),
    (["fit", "--cmd", "docker run vllm/vllm-openai"], "launch line"),
    (["fit", "--cmd", "vllm serve Qwen/Qwen3-8B --max-model-len lots"], "not a whole number"),
    (["fit", "--cmd", "vllm serve 'Qwen/Qwen3-8B"], "shell line"),
    (["fit", "--cmd", "vllm serve Qwen/Qwen3-8B -q experts_int8"], "not a method"),
    (["fit", "--cmd", "vllm serve Qwen/Qwen3-8B --dtype float64"], "vLLM's"),
    (["fit", "--cmd", ""], "empty"),
    (["fit", "Qwen/Qwen3-8B", "--ctx", "4096", "--max-model-len", "4096"], "give one"),
    (["fit", "Qwen/Qwen3-8B", "--dtype", "bf16", "-q", "fp8"], "give one"),
    (["fit", "Qwen/Qwen3-8B", "--limit-mm-per-prompt", "{image: 2}"], "not valid JSON"),
    (["fit", "Qwen/Qwen3-8B", "--limit-mm-per-prompt", "image"], "MODALITY=COUNT"),
    (["fit", "Qwen/Qwen3-8B", "--cpu-offload-gb", "-1"], "cpu-offload-gb"),
])
def test_refusals(argv, needle):
    assert_cli_refuses(argv, 2, needle)
