"""A server's launch line as vramplan flags: `vramplan fit --cmd "vllm serve MODEL --max-model-len
32768 -tp 2"`. One table per server (VLLM, SGLANG) maps each of its flags onto the `fit`
parameter that plans it; flags that move no GPU byte vramplan plans are listed as ignored, never
fatal. Values keep the server's own syntax: vLLM's integers take its suffixes ("32k" = 32,000,
"32K" = 32,768: human_readable_int, vllm/engine/arg_utils.py), and --dtype is the activation
dtype, not a weight format. Sources and the tables in prose: docs/cli.md, "Launch lines".
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from vramplan.errors import BadInput

# How a server's flag becomes a fit parameter: (parameter, kind). Kinds: "int" (vLLM's
# human_readable_int), "float", "str", "switch" (store_true / BooleanOptionalAction: no value),
# "kv" (a cache dtype), "quant" (--quantization), "dtype" (vLLM's --dtype), "model".
VLLM = {
    "--model": ("model", "model"),
    "--max-model-len": ("ctx", "int"),
    "--tensor-parallel-size": ("tp", "int"), "-tp": ("tp", "int"),
    "--pipeline-parallel-size": ("pp", "int"), "-pp": ("pp", "int"),
    "--data-parallel-size": ("dp", "int"), "-dp": ("dp", "int"),
    "--enable-expert-parallel": ("enable_expert_parallel", "switch"),
    "--kv-cache-dtype": ("kv_dtype", "kv"),
    "--quantization": ("dtype", "quant"), "-q": ("dtype", "quant"),
    "--dtype": ("dtype", "dtype"),
    "--max-num-seqs": ("max_num_seqs", "int"),
    "--max-num-batched-tokens": ("max_num_batched_tokens", "int"),
    "--gpu-memory-utilization": ("gpu_memory_utilization", "float"),
    "--enforce-eager": ("enforce_eager", "switch"),
    "--block-size": ("block_size", "int"),
    "--cpu-offload-gb": ("cpu_offload_gb", "float"),
    "--limit-mm-per-prompt": ("limit_mm_per_prompt", "str"),
    "--swap-space": ("swap_space", "float"),
    "--kv-cache-memory-bytes": ("kv_cache_memory", "int"),
}
# SGLang (python/sglang/srt/server_args.py ServerArgs.add_cli_args). Its own memory flags are
# planned by --engine sglang (docs/sglang.md); the names are those `fit` takes for it.
SGLANG = {
    "--model-path": ("model", "model"), "--model": ("model", "model"),
    "--context-length": ("ctx", "int"),
    "--tp-size": ("tp", "int"), "--tp": ("tp", "int"),
    "--dp-size": ("dp_size", "int"), "--dp": ("dp_size", "int"),
    "--ep-size": ("ep_size", "int"), "--ep": ("ep_size", "int"),
    "--enable-dp-attention": ("enable_dp_attention", "switch"),
    "--disable-cuda-graph": ("disable_cuda_graph", "switch"),
    "--max-total-tokens": ("max_total_tokens", "int"),
    "--pp-size": ("pp", "int"),
    "--kv-cache-dtype": ("kv_dtype", "kv"),
    "--quantization": ("dtype", "quant"),
    "--mem-fraction-static": ("mem_fraction_static", "float"),
    "--page-size": ("page_size", "int"),
    "--chunked-prefill-size": ("chunked_prefill_size", "int"),
    "--max-running-requests": ("max_running_requests", "int"),
    "--cuda-graph-max-bs": ("cuda_graph_max_bs", "int"),
}
# Flags of either server that take no value (so the next word is not theirs), ignored here.
SWITCHES = {
    "--trust-remote-code", "--enable-prefix-caching", "--no-enable-prefix-caching",
    "--enable-chunked-prefill", "--no-enable-chunked-prefill", "--disable-log-requests",
    "--disable-log-stats", "--enable-auto-tool-choice", "--enable-lora", "--disable-custom-all-reduce",
    "--enable-eplb", "--enable-dbo", "--async-scheduling", "--skip-mm-profiling", "--enable-sleep-mode",
    "--enable-dp-attention", "--disable-cuda-graph", "--disable-radix-cache", "--enable-torch-compile",
    "--enable-mixed-chunk", "--disable-overlap-schedule", "--enable-metrics", "--headless",
    "--enable-log-requests", "--no-enable-log-requests", "--enable-prompt-embeds",
}
# Environment variables with a memory effect; every other NAME=value prefix is ignored.
ENV = {"VLLM_ALLOW_LONG_MAX_MODEL_LEN": ("allow_long_max_model_len", "switch")}
TRUE_WORDS = ("1", "true", "yes", "on")

# vLLM --quantization -> vramplan --dtype. Online quantizations change the bytes; a method read
# from the checkpoint's quantization_config (awq, gptq, compressed-tensors, modelopt, mxfp4 ...)
# is what --dtype auto already plans.
ONLINE_QUANT = {"fp8": "fp8", "fbgemm_fp8": "fp8", "ptpc_fp8": "fp8", "bitsandbytes": "nf4"}
CHECKPOINT_QUANT = {"awq", "awq_marlin", "gptq", "gptq_marlin", "gptq_marlin_24", "compressed-tensors",
                    "modelopt", "modelopt_fp4", "mxfp4", "gguf", "fp_quant", "quark", "auto-round",
                    "bitblas", "marlin", "w8a8_int8", "w8a8_fp8", "petit_nvfp4", "awq_triton", "torchao"}
# vLLM --dtype: 16-bit names keep the checkpoint's bytes (vramplan plans weights as stored; bf16
# and fp16 have the same size); float32 doubles them.
VLLM_DTYPE = {"auto": None, "half": None, "float16": None, "bfloat16": None, "float": "fp32", "float32": "fp32"}
KV_NAMES = {"fp8_inc": "fp8", "fp8_ds_mla": "fp8"}

_VLLM_PROGRAMS = ("vllm.entrypoints.openai.api_server", "vllm.entrypoints.api_server")
_SGLANG_PROGRAMS = ("sglang.launch_server",)
_ENV_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*", re.S)
_HUMAN_INT = re.compile(r"(\d+(?:\.\d+)?)([kKmMgGtT]?)")
_DECIMAL = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_BINARY = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
MAX_CMD_CHARS = 20_000


@dataclass(frozen=True)
class Launch:
    """A launch line read: the server, the model, fit parameters and what was left out."""

    server: str                                   # "vllm" or "sglang"
    model: str
    params: dict = field(default_factory=dict)    # fit parameter -> value
    used: dict = field(default_factory=dict)      # fit parameter -> the server flag that set it
    ignored: tuple[str, ...] = ()                 # server flags and env words with no effect here
    notes: tuple[str, ...] = ()
    words: tuple[str, ...] = ()                   # the line as split, to print suggestions back

    @property
    def engine(self) -> str | None:
        return None if self.server == "vllm" else "sglang"


def human_int(text: str, flag: str) -> int:
    """vLLM's human_readable_int: lowercase suffixes are decimal (32k = 32,000), uppercase
    binary (32K = 32,768), decimals only with a decimal suffix."""
    m = _HUMAN_INT.fullmatch(text.strip())
    if not m or ("." in m[1] and m[2] in _BINARY):
        raise BadInput(f"--cmd: {flag} {text!r} is not a whole number (vLLM takes 32768, 32k = 32,000 or "
                       f"32K = 32,768).")
    number, suffix = m[1], m[2]
    if suffix in _DECIMAL:
        return int(float(number) * _DECIMAL[suffix])
    return int(number) * _BINARY.get(suffix, 1)


def quantization_dtype(method: str) -> tuple[str | None, str]:
    """(vramplan --dtype or None for the checkpoint's, a note or "") for vLLM's --quantization."""
    key = method.strip().lower()
    if key in ONLINE_QUANT:
        return ONLINE_QUANT[key], ""
    if key in CHECKPOINT_QUANT:
        return None, f"--quantization {method}: read from the checkpoint's quantization_config (--dtype auto)."
    raise BadInput(f"--quantization {method!r} is not a method vramplan plans; the checkpoint's own format "
                   f"(--dtype auto) or {', '.join(sorted(ONLINE_QUANT))}.")


def _program(words: list[str]) -> tuple[str, int]:
    """(server, index of the first argument) of the command after any env prefix."""
    if not words:
        raise BadInput("--cmd is empty; paste the launch line, e.g. --cmd \"vllm serve Qwen/Qwen3-8B\".")
    exe = words[0].rsplit("/", 1)[-1]
    if exe == "vllm" and words[1:2] == ["serve"]:
        return "vllm", 2
    if exe == "sglang" and words[1:2] == ["serve"]:
        return "sglang", 2
    if re.fullmatch(r"python[0-9.]*", exe) and len(words) > 2 and words[1] == "-m":
        if words[2] in _VLLM_PROGRAMS:
            return "vllm", 3
        if words[2] in _SGLANG_PROGRAMS:
            return "sglang", 3
    raise BadInput(f"--cmd must be a vLLM or SGLang launch line (vllm serve MODEL ..., python -m "
                   f"vllm.entrypoints.openai.api_server --model MODEL ..., python -m sglang.launch_server "
                   f"--model-path MODEL ...); it starts with {' '.join(words[:2])!r}.")


def _value(kind: str, flag: str, text: str | None, notes: list[str]):
    if kind == "int":
        return human_int(text, flag)
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            raise BadInput(f"--cmd: {flag} {text!r} is not a number.") from None
    if kind == "kv":
        return KV_NAMES.get(text.strip().lower(), text)
    if kind == "quant":
        dtype, note = quantization_dtype(text)
        if note:
            notes.append(note)
        return dtype
    if kind == "dtype":
        key = text.strip().lower()
        if key not in VLLM_DTYPE:
            raise BadInput(f"--cmd: --dtype {text!r} is not one of vLLM's: {', '.join(VLLM_DTYPE)}.")
        if VLLM_DTYPE[key] is None and key != "auto":
            notes.append(f"--dtype {text}: the activation dtype; 16-bit weights are planned as the checkpoint "
                         f"stores them (the same bytes).")
        return VLLM_DTYPE[key]
    return text


def parse(cmd: str) -> Launch:
    """Read a vLLM or SGLang launch line. Refuses --config files and a line without a model; lists
    every flag it does not plan as ignored."""
    if not isinstance(cmd, str) or len(cmd) > MAX_CMD_CHARS:
        raise BadInput(f"--cmd must be one launch line of at most {MAX_CMD_CHARS:,} characters.")
    try:
        words = shlex.split(cmd, comments=True)
    except ValueError as e:
        raise BadInput(f"--cmd could not be split as a shell line ({e}).") from None
    words = [w for w in words if w != "\\"]
    params: dict = {}
    used: dict = {}
    ignored: list[str] = []
    notes: list[str] = []
    start = 0
    if words[:1] == ["env"]:
        start = 1
    while start < len(words) and _ENV_WORD.fullmatch(words[start]):
        name, _, value = words[start].partition("=")
        if name in ENV:
            param = ENV[name][0]
            if value.strip().lower() in TRUE_WORDS:
                params[param], used[param] = True, f"{name}={value}"
        else:
            ignored.append(words[start])
        start += 1
    server, i = _program(words[start:])
    i += start
    table = VLLM if server == "vllm" else SGLANG
    model = None
    dotted: dict[str, str] = {}
    while i < len(words):
        word = words[i]
        i += 1
        if not word.startswith("-") or word == "-":
            if model is None and server == "vllm":
                model = word            # vllm serve MODEL: the positional model_tag
            else:
                ignored.append(word)
            continue
        flag, eq, inline = word.partition("=")
        if server == "vllm" and flag.startswith("--"):
            flag = "--" + flag[2:].replace("_", "-")    # FlexibleArgumentParser takes max_model_len too
        if server == "vllm" and flag.startswith("--limit-mm-per-prompt."):
            # vLLM's dotted form of a JSON argument: --limit-mm-per-prompt.image 2
            text = inline if eq else (words[i] if i < len(words) else "")
            i += 0 if eq else 1
            dotted[flag.split(".", 1)[1]] = text
            continue
        if flag == "--config":
            raise BadInput("--cmd with --config: vramplan does not read a server's YAML config; paste its "
                           "flags into the line instead.")
        negated = flag.startswith("--no-") and ("--" + flag[5:]) in table
        entry = table.get("--" + flag[5:] if negated else flag)
        if entry is not None and entry[1] == "switch":
            if eq:
                raise BadInput(f"--cmd: {flag} takes no value.")
            params[entry[0]], used[entry[0]] = not negated, flag
            continue
        if eq:
            text = inline
        elif flag in SWITCHES or i >= len(words) or (words[i].startswith("-") and words[i] != "-"
                                                     and not re.fullmatch(r"-?\d+(\.\d+)?", words[i])):
            text = None
        else:
            text, i = words[i], i + 1
        if entry is None:
            ignored.append(flag if text is None else f"{flag} {text}")
            continue
        if text is None:
            raise BadInput(f"--cmd: {flag} needs a value.")
        param, kind = entry
        if kind == "model":
            model = text
            continue
        value = _value(kind, flag, text, notes)
        if value is not None:
            params[param], used[param] = value, flag
        elif param == "dtype":
            params.pop(param, None)
    if dotted:
        if "limit_mm_per_prompt" in params:
            raise BadInput("--cmd gives --limit-mm-per-prompt twice (as JSON and by key); give one.")
        params["limit_mm_per_prompt"] = ",".join(f"{k}={v}" for k, v in dotted.items())
        used["limit_mm_per_prompt"] = "--limit-mm-per-prompt"
    if not model:
        raise BadInput(f"--cmd names no model; {server} takes it as "
                       f"{'vllm serve MODEL or --model MODEL' if server == 'vllm' else '--model-path MODEL'}.")
    if ignored:
        notes.append("ignored (no effect on the GPU memory planned): " + ", ".join(ignored) + ".")
    return Launch(server=server, model=model, params=params, used=used, ignored=tuple(ignored),
                  notes=tuple(notes), words=tuple(words))


# The vLLM flag that sets each fit parameter, to print a suggestion as a launch line.
VLLM_FLAG_OF = {"ctx": "--max-model-len", "tp": "--tensor-parallel-size", "pp": "--pipeline-parallel-size",
                "dp": "--data-parallel-size", "kv_dtype": "--kv-cache-dtype", "max_num_seqs": "--max-num-seqs",
                "max_num_batched_tokens": "--max-num-batched-tokens", "block_size": "--block-size",
                "gpu_memory_utilization": "--gpu-memory-utilization", "enforce_eager": "--enforce-eager",
                "cpu_offload_gb": "--cpu-offload-gb", "enable_expert_parallel": "--enable-expert-parallel",
                "kv_cache_memory": "--kv-cache-memory-bytes", "dtype": "--quantization"}
_BACK = {"dtype": {"fp8": "fp8", "nf4": "bitsandbytes"}}


def relaunch(launch: Launch, flags: dict) -> str | None:
    """The launch line with a suggestion's changes applied (vLLM only; None when a change has no
    vLLM flag, such as a bigger GPU or fewer concurrent requests)."""
    if launch.server != "vllm":
        return None
    changes = {}
    for name, value in flags.items():
        if name == "gpu" or name == "batch":
            continue                     # the hardware, and a client-side load: no server flag
        flag = VLLM_FLAG_OF.get(name)
        if flag is None:
            return None
        if name in _BACK:
            value = _BACK[name].get(str(value))
            if value is None:
                return None
        changes[flag] = value
    if not changes:
        return None
    words = list(launch.words)
    out, i = [], 0
    aliases = {f: {g for g, (p, _) in VLLM.items() if p == VLLM[f][0]} for f in changes}
    while i < len(words):
        word = words[i]
        flag = word.partition("=")[0]
        if flag.startswith("--"):
            flag = "--" + flag[2:].replace("_", "-")
        hit = next((f for f, names in aliases.items() if flag in names or flag == "--no-" + f[2:]), None)
        if hit is None:
            out.append(word)
            i += 1
            continue
        kind = VLLM[hit][1]
        i += 1
        if "=" not in word and kind != "switch" and i < len(words) and not words[i].startswith("-"):
            i += 1                      # drop the old value
    for flag, value in changes.items():
        if value is True:
            out.append(flag)
        elif value is not False:
            out += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return shlex.join(out)
