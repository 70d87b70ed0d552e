"""The golden matrix: ~300 command lines whose output pins every number vramplan prints.

Each case is a CLI argv; its captured output (exit code, stdout) lives in `tests/golden/out/`.
`tests/test_golden.py` re-runs every case and demands byte-identical output, so a refactoring
that moves any number fails. A change that is meant to move numbers regenerates the files in the
same commit (`python tests/golden/matrix.py --write`) and says why in the commit message.

Run in-process through typer's CliRunner (about 1 min for the whole matrix on 2 cores).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
REPO = HERE.parent.parent

BUNDLED = [
    "deepseek-ai/DeepSeek-V3", "google/gemma-3-27b-it", "google/gemma-3-4b-it",
    "meta-llama/Llama-2-13b-hf", "meta-llama/Llama-2-7b-hf", "meta-llama/Llama-3.1-405B",
    "meta-llama/Llama-3.1-70B", "meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.2-1B-Instruct",
    "meta-llama/Llama-3.2-3B", "meta-llama/Llama-3.3-70B-Instruct", "meta-llama/Meta-Llama-3-8B",
    "microsoft/Phi-3-mini-4k-instruct", "mistralai/Mistral-7B-Instruct-v0.3",
    "mistralai/Mistral-7B-v0.1", "mistralai/Mixtral-8x7B-v0.1", "nvidia/Nemotron-H-56B-Base-8K",
    "openai-community/gpt2", "openai-community/gpt2-large", "openai/gpt-oss-120b",
    "openai/gpt-oss-20b", "Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-72B",
    "Qwen/Qwen3-0.6B", "Qwen/Qwen3-8B", "Qwen/Qwen3-32B", "tiiuae/falcon-40b",
]
# One representative per family, for the flag sweeps.
FAMILY = ["meta-llama/Llama-3.1-8B", "Qwen/Qwen3-8B", "mistralai/Mixtral-8x7B-v0.1",
          "google/gemma-3-4b-it", "openai/gpt-oss-20b", "microsoft/Phi-3-mini-4k-instruct",
          "nvidia/Nemotron-H-56B-Base-8K", "deepseek-ai/DeepSeek-V3", "tiiuae/falcon-40b",
          "openai-community/gpt2", "Qwen/Qwen2.5-7B", "mistralai/Mistral-7B-v0.1"]
SMALL = ["meta-llama/Llama-3.1-8B", "Qwen/Qwen3-8B", "google/gemma-3-4b-it",
         "microsoft/Phi-3-mini-4k-instruct", "openai-community/gpt2", "mistralai/Mistral-7B-v0.1",
         "Qwen/Qwen2.5-0.5B"]
NO_DEFAULT_TARGETS = {"google/gemma-3-4b-it", "microsoft/Phi-3-mini-4k-instruct"}
MOE_TRAIN = ["mistralai/Mixtral-8x7B-v0.1", "openai/gpt-oss-20b", "nvidia/Nemotron-H-56B-Base-8K"]


def cases() -> dict[str, list[str]]:
    """name -> argv. Names are stable file names; the order is the order of the files."""
    c: dict[str, list[str]] = {}

    def add(*argv: str) -> None:
        name = "_".join(a.replace("/", "-").replace(":", "x").lstrip("-") for a in argv)
        name = name.replace("=", "-").replace(",", "+").replace(" ", "_")
        if len(name) > 120:
            name = name[:100] + "-" + hashlib.sha1(name.encode()).hexdigest()[:10]
        assert name not in c, name
        c[name] = list(argv)

    for m in BUNDLED:                                   # every model, every mode, JSON
        add("fit", m, "--gpu", "l40s", "--ctx", "8k", "--batch", "4", "--json")
        add("fit", m, "--mode", "infer", "--gpu", "h100", "--ctx", "4k", "--batch", "2",
            "--transformers", "5", "--json")
        add("kv", m, "--json")
    for m in FAMILY:                                    # serve flag sweeps
        add("fit", m, "--gpu", "h100:2", "--ctx", "32k", "--batch", "16", "--json")
        add("fit", m, "--gpu", "h100:4", "--tp", "2", "--pp", "2", "--ctx", "16k", "--json")
        add("fit", m, "--gpu", "a100-80gb", "--dtype", "fp8", "--kv-dtype", "fp8", "--ctx", "16k",
            "--batch", "8", "--json")
        add("fit", m, "--gpu", "rtx-4090", "--dtype", "int4", "--ctx", "4k", "--json")
        add("fit", m, "--gpu", "h100", "--enforce-eager", "--gpu-memory-utilization", "0.8",
            "--max-num-seqs", "64", "--max-num-batched-tokens", "4096", "--json")
        add("fit", m, "--gpu", "l40s", "--vllm-version", "0.10", "--json")
        add("fit", m, "--gpu", "l40s", "--vllm-version", "0.21", "--block-size", "32", "--json")
        add("fit", m, "--gpu", "h200", "--kv-cache-memory", "20GiB", "--json")
        add("fit", m, "--mode", "infer", "--gpu", "a100-40gb", "--dtype", "nf4", "--ctx", "16k",
            "--batch", "4", "--transformers", "5", "--json")
        add("fit", m, "--mode", "infer", "--gpu", "l4", "--dtype", "int8", "--transformers", "4",
            "--json")
    for m in SMALL:                                     # training flag sweeps
        t = ["--lora-targets", "all-linear"] if m in NO_DEFAULT_TARGETS else []
        add("fit", m, "--mode", "lora", "--gpu", "h100", "--ctx", "2k", "--batch", "4",
            "--transformers", "5", *t, "--json")
        add("fit", m, "--mode", "lora", "--gpu", "l40s", "--ctx", "4k", "--batch", "2",
            "--grad-ckpt", "--lora-r", "64", "--lora-targets", "all-linear", "--transformers", "5",
            "--json")
        add("fit", m, "--mode", "lora", "--gpu", "a100-80gb", "--lora-dropout", "0.05",
            "--lora-dtype", "bf16", "--attn", "eager", "--transformers", "5", *t, "--json")
        add("fit", m, "--mode", "qlora", "--gpu", "rtx-4090", "--ctx", "2k", "--batch", "2",
            "--transformers", "5", *t, "--json")
        add("fit", m, "--mode", "qlora", "--gpu", "t4", "--grad-ckpt", "--kbit-prepare", "trl",
            "--optim", "paged_adamw_8bit", "--transformers", "4", *t, "--json")
        add("fit", m, "--mode", "full", "--gpu", "h100", "--ctx", "2k", "--batch", "1",
            "--transformers", "5", "--json")
        add("fit", m, "--mode", "full", "--gpu", "h100:8", "--zero", "3", "--grad-ckpt",
            "--precision", "mixed", "--optim", "adamw_8bit", "--transformers", "5", "--json")
        add("fit", m, "--mode", "full", "--gpu", "a100-80gb:4", "--zero", "2", "--optim",
            "adafactor", "--attn", "flash_attention_2", "--transformers", "5", "--json")
        add("fit", m, "--mode", "full", "--gpu", "l40s:2", "--zero", "1", "--optim", "sgd",
            "--precision", "bf16", "--transformers", "5", "--json")
    for m in MOE_TRAIN:
        add("fit", m, "--mode", "lora", "--gpu", "h100:8", "--zero", "3", "--lora-targets",
            "all-linear", "--lora-dropout", "0", "--grad-ckpt", "--transformers", "5", "--json")
        add("fit", m, "--mode", "qlora", "--gpu", "h100", "--lora-targets", "all-linear",
            "--grad-ckpt", "--transformers", "4", "--json")
    add("fit", "meta-llama/Llama-3.1-8B", "--gpu-mem", "24GiB", "--json")
    add("fit", "meta-llama/Llama-3.1-8B", "--gpu", "l40s", "--gpu-free", "30GiB", "--json")
    add("fit", "meta-llama/Llama-3.1-70B", "--gpu", "h100:8", "--ctx", "128k", "--batch", "32",
        "--json")
    add("fit", "meta-llama/Llama-3.1-405B", "--gpu", "h200:8", "--dtype", "fp8", "--json")
    add("fit", "openai/gpt-oss-120b", "--gpu", "h100", "--ctx", "128k", "--json")
    add("fit", "deepseek-ai/DeepSeek-V3", "--gpu", "h200:8", "--ctx", "32k", "--batch", "8",
        "--json")
    for m in ("meta-llama/Llama-3.1-8B", "Qwen/Qwen2.5-7B", "google/gemma-3-27b-it"):
        for d in ("gptq", "awq", "mxfp4", "fp4", "fp16", "fp32"):
            add("fit", m, "--gpu", "a100-80gb", "--dtype", d, "--json")
    # human-readable tables: the renderers are pinned too
    for m in ("meta-llama/Llama-3.1-8B", "mistralai/Mixtral-8x7B-v0.1", "openai/gpt-oss-20b",
              "nvidia/Nemotron-H-56B-Base-8K", "google/gemma-3-27b-it"):
        add("fit", m, "--gpu", "l40s", "--ctx", "32k", "--batch", "8")
        add("fit", m, "--mode", "qlora", "--gpu", "rtx-4090", "--ctx", "2k", "--transformers", "5",
            "--lora-targets", "all-linear", "--lora-dropout", "0")
        add("fit", m, "--gpu", "h100:4", "--pp", "2", "--tp", "2")
        add("kv", m)
    add("fit", "meta-llama/Llama-3.1-8B", "--mode", "infer", "--gpu", "l40s", "--transformers", "5")
    add("fit", "meta-llama/Llama-3.1-8B", "--mode", "full", "--gpu", "h100", "--transformers", "5")
    # compare and sweep
    for args in (["meta-llama/Llama-3.1-8B", "--ctx", "8k", "--batch", "32"],
                 ["meta-llama/Llama-3.1-70B", "--ctx", "32k", "--batch", "8"],
                 ["Qwen/Qwen3-8B", "--mode", "qlora", "--transformers", "5"],
                 ["mistralai/Mixtral-8x7B-v0.1", "--dtype", "fp8"],
                 ["openai/gpt-oss-120b", "--ctx", "64k"],
                 ["meta-llama/Llama-3.1-8B", "--mode", "lora", "--grad-ckpt", "--transformers", "5"],
                 ["meta-llama/Llama-3.1-8B", "--mode", "infer", "--transformers", "5"],
                 ["google/gemma-3-27b-it", "--gpus", "l40s,h100,a100-80gb", "--price-source", "min"],
                 ["deepseek-ai/DeepSeek-V3", "--ctx", "16k"]):
        add("compare", *args, "--json")
        add("compare", *args)
    add("compare", "meta-llama/Llama-3.1-8B", "--format", "csv")
    add("compare", "meta-llama/Llama-3.1-8B", "--format", "markdown", "--price", "l40s=0.79")
    add("sweep", "meta-llama/Llama-3.1-8B", "--gpu", "l40s", "--json")
    add("sweep", "Qwen/Qwen3-8B", "--gpu", "rtx-4090", "--mode", "qlora", "--ctx", "1k..8k",
        "--batch", "1,2,4", "--transformers", "5")
    add("models", "--json")
    add("models")
    add("gpus", "--json")
    add("gpus")
    # refusals: the exit code and message are part of the contract
    add("fit", "deepseek-ai/DeepSeek-V3", "--mode", "lora", "--gpu", "h100")
    add("fit", "meta-llama/Llama-3.1-8B", "--gpu", "l40s", "--tp", "3")
    add("fit", "meta-llama/Llama-3.1-8B", "--mode", "infer", "--optim", "sgd")
    add("fit", "meta-llama/Llama-3.1-8B", "--dtype", "int3")
    # vLLM releases (issue #13): each era, the MXFP4 backend per release, refusals
    add("fit", "meta-llama/Llama-3.1-8B", "--gpu", "l40s", "--ctx", "32k", "--batch", "8", "--vllm-version", "0.16")
    add("fit", "meta-llama/Llama-3.1-8B", "--gpu", "h100", "--vllm-version", "0.19.0", "--json")
    add("fit", "openai/gpt-oss-120b", "--gpu", "h100", "--ctx", "64k", "--json")
    add("fit", "openai/gpt-oss-120b", "--gpu", "h100", "--ctx", "64k", "--vllm-version", "0.11.0")
    add("fit", "Qwen/Qwen3-0.6B", "--gpu", "h100", "--vllm-version", "0.40")
    add("fit", "Qwen/Qwen3-0.6B", "--gpu", "h100", "--kv-dtype", "int8")
    # SGLang (docs/sglang.md): default fraction per card, a given one, DP attention, refusals
    add("fit", "meta-llama/Llama-3.1-8B", "--engine", "sglang", "--gpu", "h100", "--ctx", "32k", "--batch", "8")
    add("fit", "meta-llama/Llama-3.1-8B", "--engine", "sglang", "--gpu", "l40s", "--ctx", "8k", "--batch", "4", "--json")
    add("fit", "deepseek-ai/DeepSeek-V3", "--engine", "sglang", "--gpu", "h200:8", "--tp-size", "8",
        "--context-length", "64k", "--batch", "16")
    add("fit", "Qwen/Qwen3-8B", "--engine", "sglang", "--gpu", "b200", "--mem-fraction-static", "0.9",
        "--chunked-prefill-size", "4096", "--cuda-graph-max-bs", "128")
    add("fit", "mistralai/Mixtral-8x7B-v0.1", "--engine", "sglang", "--gpu", "h100:4", "--tp-size", "4",
        "--dp-size", "2", "--enable-dp-attention", "--ep-size", "4")
    add("fit", "meta-llama/Llama-3.1-70B", "--engine", "sglang", "--gpu", "h100:2", "--tp-size", "2",
        "--mem-fraction-static", "0.5")
    add("fit", "meta-llama/Llama-3.1-8B", "--mem-fraction-static", "0.8")
    # compare (issue 18): traffic shape, latency targets, price columns, the new cards
    add("compare", "meta-llama/Llama-3.1-8B", "--ctx", "8k", "--batch", "32", "--gpus", "h100,l40s,mi300x",
        "--max-ttft", "50ms")
    add("compare", "meta-llama/Llama-3.1-8B", "--gpus", "l40s,h100,rtx-5090", "--input-len", "1000",
        "--output-len", "200", "--concurrency", "8", "--json")
    add("compare", "meta-llama/Llama-3.1-70B", "--gpus", "h100,mi300x,h200", "--price-source", "hyperscaler")
    add("compare", "meta-llama/Llama-3.1-8B", "--ctx", "8k", "--input-len", "9000")
    # vLLM's flag names, launch lines, expert and data parallel (issue 13)
    add("fit", "--cmd", "vllm serve Qwen/Qwen3-32B --max-model-len 32768 -tp 2 --port 8000", "--gpu", "h100")
    add("fit", "--cmd", "vllm serve openai/gpt-oss-120b --max-model-len 131072", "--gpu", "h100")
    add("fit", "deepseek-ai/DeepSeek-V3", "--gpu", "h200:16", "-tp", "8", "-dp", "2", "--enable-expert-parallel",
        "--ctx", "32k", "--batch", "64", "--json")
    add("fit", "deepseek-ai/DeepSeek-V3", "--gpu", "h100:16", "--ctx", "32k")
    add("fit", "openai/gpt-oss-120b", "--gpu", "h100:8", "-tp", "1", "-dp", "8", "--enable-expert-parallel",
        "--ctx", "32k", "--batch", "64")
    add("fit", "meta-llama/Llama-3.1-8B", "--gpu", "l4", "--cpu-offload-gb", "4", "--max-model-len", "8K")
    add("fit", "--cmd", "vllm serve Qwen/Qwen3-8B --config serve.yaml")
    # issue #14: QLoRA's recipe checkpoints (and --no-grad-ckpt), DeepSpeed ZeRO-2's buffers, FSDP
    # hybrid shard, a paged optimizer that does not all fit beside the step
    add("fit", "meta-llama/Llama-3.1-8B", "--mode", "qlora", "--gpu", "h100", "--batch", "4", "--ctx", "2k",
        "--transformers", "5")
    add("fit", "meta-llama/Llama-3.1-8B", "--mode", "qlora", "--gpu", "h100", "--batch", "4", "--ctx", "2k",
        "--no-grad-ckpt", "--transformers", "5", "--json")
    add("fit", "mistralai/Mistral-7B-v0.1", "--mode", "full", "--gpu", "a100-40gb:8", "--zero", "2",
        "--precision", "mixed", "--grad-ckpt", "--batch", "4", "--ctx", "4352", "--transformers", "5")
    add("fit", "mistralai/Mistral-7B-v0.1", "--mode", "full", "--gpu", "h100:16", "--fsdp", "hybrid_shard",
        "--precision", "mixed", "--grad-ckpt", "--transformers", "5", "--json")
    add("fit", "meta-llama/Llama-3.1-8B", "--mode", "qlora", "--gpu", "rtx-4090", "--ctx", "4k",
        "--optim", "paged_adamw_32bit", "--lora-targets", "all-linear", "--lora-r", "64", "--transformers", "5")
    return c


def normalize(text: str) -> str:
    """Paths that depend on where the checkout lives become <repo>."""
    for root in {str(REPO), os.path.realpath(REPO)}:
        text = text.replace(root, "<repo>")
    return text


def run_case(runner, app, argv: list[str]) -> str:
    r = runner.invoke(app, argv, env={"HF_HUB_OFFLINE": "1", "COLUMNS": "120", "VRAMPLAN_TODAY": "2026-12-07"})
    return f"exit {r.exit_code}\n--- stdout\n{normalize(r.stdout)}--- stderr\n{normalize(r.stderr)}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="regenerate tests/golden/out/")
    ap.add_argument("-k", default="", help="only cases whose name contains this")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))       # this checkout's vramplan, whatever is installed
    from typer.testing import CliRunner

    from vramplan.cli import app

    runner = CliRunner()
    if a.write and not a.k:
        for f in OUT.glob("*.txt"):
            f.unlink()
    OUT.mkdir(exist_ok=True)
    bad = 0
    for name, args in cases().items():
        if a.k not in name:
            continue
        got = run_case(runner, app, args)
        path = OUT / f"{name}.txt"
        if a.write:
            path.write_text(got)
        elif not path.exists() or path.read_text() != got:
            bad += 1
            print("DIFFERS:", name)
    print(f"{len(cases())} cases, {bad} differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
