"""The user's words at the edge: one typed `PlanRequest`, and the validation that turns it into
the core's `Workload`.

The CLI builds a PlanRequest from its flags, the Python API from its keywords; from here on a
request is data, never a bag of keywords. A mode string ("serve", "lora", ...) exists only here
and in the edges that read it: the Workload names its engine and the planner asks that engine.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field, fields, replace

from vramplan.engines.llama_cpp.options import LlamaFlags, normalize as llama_options
from vramplan.engines.sglang.options import SglangFlags, normalize as sglang_options
from vramplan.errors import BadInput
from vramplan.loading import LAYERS_FROM, is_gguf
from vramplan.memory.dtypes import KV_FORMATS, WEIGHT_FORMATS, normalize
from vramplan.memory.parallel import serve_layout
from vramplan.spec import GpuTarget, ModelSpec, ServeOptions, Workload
from vramplan.catalog import MAX_GPU_COUNT
from vramplan.files import read_small_file
from vramplan.units import GiB, parse_bytes, parse_tokens, printable, real, shown, whole

ENGINE_OF_MODE = {
    "serve": "vllm",            # a vLLM server
    "infer": "transformers",    # transformers generate()
    "full": "hf_trainer",       # one training step: all weights trained
    "lora": "hf_trainer",       # peft LoRA adapters on a 16-bit base
    "qlora": "hf_trainer",      # peft LoRA adapters on a bitsandbytes 4-bit base
}
# --engine: whose rules apply within a mode (DESIGN.md), by the names users type
ENGINES = {"vllm": "vllm", "llama.cpp": "llama_cpp", "llamacpp": "llama_cpp", "llama_cpp": "llama_cpp",
           "ollama": "ollama", "transformers": "transformers", "hf-trainer": "hf_trainer", "hf_trainer": "hf_trainer",
           "sglang": "sglang", "unsloth": "unsloth"}
LOCAL_ENGINES = ("llama_cpp", "ollama")     # take the llama.cpp flags and GGUF mixes
MODES = tuple(ENGINE_OF_MODE)
TRAINING_MODES = tuple(m for m, e in ENGINE_OF_MODE.items() if e == "hf_trainer")
METHODS = ("analytic", "trace")

TRANSFORMERS_MAJORS = (4, 5)


@dataclass(frozen=True, kw_only=True)
class ServeFlags:
    """vLLM's engine flags as given. None means not given (vLLM's default, in SERVE_DEFAULTS);
    giving any of them outside {mode} serve is an error, as training flags are outside training:
    the other engines would ignore it and print the same answer."""

    gpu_memory_utilization: float | str | None = None   # None: 0.9
    max_num_batched_tokens: int | str | None = None     # None: the engine default for this card
    max_num_seqs: int | str | None = None
    block_size: int | None = None                       # None: 16
    tp: int | None = None                               # None: the GPU count
    pp: int | None = None                               # None: 1
    enforce_eager: bool | None = None                   # None: CUDA graphs captured
    vllm_version: str | None = None                     # None: the newest vLLM release known
    kv_cache_memory: int | str | None = None            # explicit KV bytes per GPU, e.g. "20GiB"
    allow_long_max_model_len: bool | None = None        # as VLLM_ALLOW_LONG_MAX_MODEL_LEN=1
    dp: int | None = None                               # --data-parallel-size; None: 1
    enable_expert_parallel: bool | None = None          # None: experts tensor-sliced
    cpu_offload_gb: float | str | None = None           # GiB of weights per GPU kept in CPU memory
    limit_mm_per_prompt: str | dict | None = None       # '{"image": 2}' or image=2 (vLLM's syntaxes)
    swap_space: float | str | None = None               # GiB of CPU swap (no GPU effect)

    def given(self) -> dict:
        """The flags that were given, in declaration order."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


# vLLM's own defaults for the flags above (vllm/engine/arg_utils.py EngineArgs).
SERVE_DEFAULTS = {"gpu_memory_utilization": 0.9, "block_size": 16, "pp": 1}
VLLM_BLOCK_SIZES = (1, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True, kw_only=True)
class TrainFlags:
    """Training settings as given, named as in HF TrainingArguments / peft LoraConfig. None means
    not given (the engine's default); giving any of them outside a training mode is an error."""

    optim: str | None = None
    grad_ckpt: bool | None = None
    lora_r: int | None = None
    lora_alpha: int | float | None = None
    lora_targets: str | tuple[str, ...] | list[str] | None = None
    lora_dropout: float | None = None
    precision: str | None = None
    zero: int | None = None
    attn: str | None = None
    lora_dtype: str | None = None
    kbit_prepare: str | None = None
    deepspeed: str | dict | None = None     # a DeepSpeed JSON config: its path, or the dict
    fsdp: str | None = None                 # the Trainer's fsdp: full_shard, hybrid_shard, shard_grad_op [offload]
    gpus_per_node: int | None = None        # hybrid shard: the shard group (None: 8)
    grad_accum: int | None = None           # gradient_accumulation_steps (None: 1)
    liger: bool | None = None               # use_liger_kernel (None: off)
    loss: str | None = None                 # default | chunked | cut (None: default)
    offload_activations: bool | None = None  # activation offloading to host RAM (None: off)

    def given(self) -> dict:
        """The settings that were given, in declaration order."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass(frozen=True, kw_only=True)
class PlanRequest:
    """One question, as the user put it: which model, on which GPU, doing what. Values are the
    user's own ("32k", "l40s:2", "48GB"); `build_workload` checks and converts them."""

    model: str | ModelSpec
    gpu: str | GpuTarget | None = None      # catalog id[:count] or "auto"; None: the default card
    gpu_mem: str | int | None = None        # any other card by its memory
    gpu_free: str | int | None = None       # memory free on each GPU now
    mode: str = "serve"
    batch: int | str = 1
    ctx: int | str = 4096
    dtype: str = "auto"
    kv_dtype: str = "auto"
    method: str = "analytic"
    no_cache: bool = False                  # trace: ignore the on-disk cache of earlier traces
    transformers: int | str | None = None   # infer/train: transformers major version (None: installed, else 5)
    serve: ServeFlags = field(default_factory=ServeFlags)
    train: TrainFlags = field(default_factory=TrainFlags)
    engine: str | None = None               # --engine; None: the mode's (a GGUF model: llama.cpp)
    llama: LlamaFlags = field(default_factory=LlamaFlags)
    sglang: SglangFlags = field(default_factory=SglangFlags)
    weights_from: str = "auto"              # --weights-from: auto, config or checkpoint (loading.WEIGHTS_FROM)
    strict: bool = False                    # --strict: an approximate plan is refused (exit 2)
    new_tokens: int | str | None = None     # infer: tokens generate() adds to the --ctx prompt
    layers_from: str = "auto"               # auto | analytic | transformers (loading.LAYERS_FROM)

    @classmethod
    def from_keywords(cls, model: str | ModelSpec, gpu: str | GpuTarget | None = None,
                      **keywords) -> PlanRequest:
        """The Python API's flat keywords (`plan(model, gpu, ctx=..., tp=..., optim=...)`) sorted
        into the request and its ServeFlags and TrainFlags; an unknown keyword is BadInput."""
        sections = {"serve": {}, "train": {}, "llama": {}, "sglang": {}, "": {}}
        for name, value in keywords.items():
            section = _SECTION_OF.get(name)
            if section is None:
                close = difflib.get_close_matches(name, list(_SECTION_OF), n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise BadInput(f"{name!r} is not a keyword vramplan plans with{hint}; the keywords are "
                               f"{', '.join(_SECTION_OF)}.")
            sections[section][name] = value
        return cls(model=model, gpu=gpu, **sections[""], serve=ServeFlags(**sections["serve"]),
                   train=TrainFlags(**sections["train"]), llama=LlamaFlags(**sections["llama"]),
                   sglang=SglangFlags(**sections["sglang"]))


_SECTION_OF = {
    **{f.name: "" for f in fields(PlanRequest) if f.name not in ("model", "gpu", "serve", "train", "llama", "sglang")},
    **{f.name: "llama" for f in fields(LlamaFlags)},
    **{f.name: "serve" for f in fields(ServeFlags)},
    **{f.name: "train" for f in fields(TrainFlags)},
    **{f.name: "sglang" for f in fields(SglangFlags)},
}


def build_workload(request: PlanRequest, gpu_count: int = 1) -> Workload:
    """Check every knob of `request` for `gpu_count` GPUs and build the Workload; a bad value
    raises BadInput naming its parameter. A flag of another engine (a training setting in serve,
    a vLLM flag in infer or training, --transformers in serve) is refused, not ignored."""
    check_request(request)
    mode = request.mode
    if not isinstance(request.serve, ServeFlags) or not isinstance(request.train, TrainFlags):
        raise BadInput("A PlanRequest's serve and train must be ServeFlags and TrainFlags.")
    trained, served = request.train.given(), request.serve.given()
    train = None
    if mode in TRAINING_MODES:
        train = _train_options(method=mode, world=gpu_count, **trained)
    elif trained:
        raise BadInput(f"{_names(trained)} only {_verb(trained)} to the training modes "
                       f"({{mode}} full, lora or qlora).")
    if mode != "serve" and served:
        raise BadInput(f"{_names(served)} only {_verb(served)} to {{mode}} serve (the vLLM engine); "
                       f"{{mode}} {mode} does not read {'it' if len(served) == 1 else 'them'}.")
    if mode == "serve" and request.transformers is not None:
        raise BadInput("{transformers} only applies to {mode} infer and the training modes; "
                       "{mode} serve plans vLLM, whatever transformers is installed.")
    serve = _serve_options(request.serve, gpu_count, mode == "serve")
    engine, llama = _engine(request)
    if engine != "transformers":
        _new_tokens(request, engine)
    if engine == "sglang":
        serve, sglang = _sglang(request, serve, gpu_count)
        return Workload(mode=mode, batch=parse_tokens(request.batch, "{batch}"),
                        ctx=parse_tokens(request.ctx, "{ctx}"), dtype=normalize(request.dtype, WEIGHT_FORMATS, "{dtype}"),
                        kv_dtype=normalize(request.kv_dtype, KV_FORMATS, "{kv_dtype}"), serve=serve,
                        engine=engine, sglang=sglang)
    if llama is not None:
        return Workload(mode=mode, batch=parse_tokens(request.batch, "{batch}"),
                        ctx=parse_tokens(request.ctx, "{ctx}"), dtype=request.dtype.strip().lower(),
                        kv_dtype=request.kv_dtype, serve=serve, engine=engine, llama=llama)
    return Workload(
        mode=mode, batch=parse_tokens(request.batch, "{batch}"), ctx=parse_tokens(request.ctx, "{ctx}"),
        dtype=normalize(request.dtype, WEIGHT_FORMATS, "{dtype}"),
        kv_dtype=normalize(request.kv_dtype, KV_FORMATS, "{kv_dtype}"), serve=serve, train=train,
        transformers=transformers_major(request.transformers) if mode != "serve" else TRANSFORMERS_MAJORS[-1],
        engine=engine, new_tokens=_new_tokens(request, engine),
    )


def _new_tokens(request: PlanRequest, engine: str) -> int:
    """--new-tokens: transformers generate() only (the prompt is --ctx, the cache grows by N)."""
    if request.new_tokens is None:
        return 0
    if engine != "transformers":
        raise BadInput("{new_tokens} only applies to {mode} infer (transformers generate()); the other modes "
                       "plan a context of {ctx} tokens in all.")
    return parse_tokens(request.new_tokens, "{new_tokens}")


def _engine(request: PlanRequest):
    """(engine, llama.cpp options or None): --engine within the mode (serve: vllm, llama.cpp,
    ollama); the llama.cpp flags only with those engines."""
    default = ENGINE_OF_MODE[request.mode]
    if request.mode == "serve" and isinstance(request.model, str) and is_gguf(request.model):
        default = "llama_cpp"                 # a GGUF file is served by llama.cpp unless --engine says
    given = request.engine
    engine = default if given is None else ENGINES.get(str(given).strip().lower())
    serving = ("vllm", "sglang", *LOCAL_ENGINES)
    adapters = request.mode in ("lora", "qlora") and engine == "unsloth"    # Unsloth's LoRA/QLoRA recipe
    if engine is None or (engine != ENGINE_OF_MODE[request.mode] and not adapters
                          and (request.mode != "serve" or engine not in serving)):
        allowed = ("vllm, sglang, llama.cpp or ollama" if request.mode == "serve" else
                   "hf-trainer or unsloth" if request.mode in ("lora", "qlora") else default.replace("_", "-"))
        raise BadInput(f"{{engine}} {given!r} does not plan {{mode}} {request.mode}; it takes {allowed}.")
    flags = request.llama.given()
    vllm_flags = request.serve.given()
    if engine in LOCAL_ENGINES and vllm_flags:
        raise BadInput(f"{_names(vllm_flags)} {'is' if len(vllm_flags) == 1 else 'are'} vLLM's; "
                       f"{{engine}} {engine.replace('_', '.')} does not read {'it' if len(vllm_flags) == 1 else 'them'}.")
    sglang_flags = request.sglang.given() if isinstance(request.sglang, SglangFlags) else {"sglang": request.sglang}
    if engine != "sglang" and sglang_flags:
        raise BadInput(f"{_names(sglang_flags)} {'is' if len(sglang_flags) == 1 else 'are'} SGLang's; add "
                       f"{{engine}} sglang (vLLM's own names: {{gpu_memory_utilization}}, {{max_num_seqs}}, "
                       f"{{max_num_batched_tokens}}, {{block_size}}).")
    if engine == "sglang":
        vllm_only = {k: v for k, v in vllm_flags.items() if k not in SGLANG_SHARED}
        if vllm_only:
            raise BadInput(f"{_names(vllm_only)} {'is' if len(vllm_only) == 1 else 'are'} vLLM's; {{engine}} sglang "
                           f"does not read {'it' if len(vllm_only) == 1 else 'them'} (SGLang's own: "
                           f"{{mem_fraction_static}}, {{max_running_requests}}, {{chunked_prefill_size}}, "
                           f"{{page_size}}, {{cuda_graph_max_bs}}, {{disable_cuda_graph}}).")
    if engine not in LOCAL_ENGINES:
        if flags:
            names = ", ".join("{" + k + "}" for k in flags)
            raise BadInput(f"{names} {'is' if len(flags) == 1 else 'are'} llama.cpp's; add {{engine}} llama.cpp "
                           f"or ollama.")
        return engine, None
    return engine, llama_options(request.llama, normalize(request.kv_dtype, KV_FORMATS, "{kv_dtype}"),
                                 ollama=engine == "ollama")


# ServeFlags that SGLang reads too, under its own names: --tp-size, --pp-size
SGLANG_SHARED = ("tp", "pp", "allow_long_max_model_len")   # the last: SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN=1


def _sglang(request: PlanRequest, serve: ServeOptions, gpu_count: int):
    """(ServeOptions, SglangOptions) for --engine sglang: its flags checked, and the GPUs its
    layout needs (tp x pp, times --dp-size replicas unless the DP is attention's, inside tp)."""
    given = request.sglang.given()
    dp_given = given.get("dp_size")
    if "tp" not in request.serve.given() and dp_given is not None and not given.get("enable_dp_attention"):
        dp = whole(dp_given, "{dp_size}", 1, MAX_GPU_COUNT)
        serve = replace(serve, tp=max(1, gpu_count // (dp * serve.pp)))
    options = sglang_options(request.sglang, serve.tp)
    replicas = 1 if options.enable_dp_attention else options.dp_size
    need = serve.tp * serve.pp * replicas
    if need > gpu_count:
        raise BadInput(f"{{tp}} {serve.tp} x {{pp}} {serve.pp} x {{dp_size}} {replicas} needs {need} GPUs but "
                       f"{{gpu}} gives {gpu_count}; ask for them with {{gpu}} ID:{need}.")
    return serve, options


def check_request(request: PlanRequest) -> None:
    """The types of a request's own fields (the flags are checked where they are converted):
    a wrong type is BadInput naming the parameter, never a TypeError from deep inside."""
    if not isinstance(request, PlanRequest):
        raise BadInput(f"Expected a PlanRequest, got {type(request).__name__}.")
    if not isinstance(request.mode, str) or request.mode not in MODES:
        raise BadInput(f"{{mode}} {shown(request.mode)} is not one of: {', '.join(MODES)}.")
    if not isinstance(request.method, str) or request.method not in METHODS:
        raise BadInput(f"{{method}} {shown(request.method)} is not one of: {', '.join(METHODS)}.")
    for name in ("dtype", "kv_dtype"):
        if not isinstance(getattr(request, name), str):
            raise BadInput(f"{{{name}}} must be a string such as 'auto' or 'bf16', got {shown(getattr(request, name))}.")
    if not isinstance(request.no_cache, bool):
        raise BadInput(f"{{no_cache}} must be True or False, got {shown(request.no_cache)}.")
    if not isinstance(request.layers_from, str) or request.layers_from not in LAYERS_FROM:
        raise BadInput(f"{{layers_from}} {shown(request.layers_from)} is not one of: {', '.join(LAYERS_FROM)}.")


def check_model(model) -> None:
    """A model as the user may name it: a Hub id, a bundled id, a local path (str), a config
    dict or a ModelSpec."""
    if not isinstance(model, (str, ModelSpec, dict)):     # an empty name: the loader says so
        raise BadInput(f"{{model}} must be a Hub id, a bundled id, a local path or config.json, a config "
                       f"dict or a ModelSpec, got {shown(model)}.")


def _names(given: dict) -> str:
    return ", ".join("{" + k + "}" for k in given)


def _verb(given: dict) -> str:
    return "applies" if len(given) == 1 else "apply"


def _flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise BadInput(f"{{{name}}} must be True or False, got {shown(value)}.")
    return value


def _serve_options(s: ServeFlags, gpu_count: int, serving: bool) -> ServeOptions:
    """vLLM's flags, checked and with vLLM's defaults filled in (the other engines get the
    defaults, which they do not read)."""
    v = {**SERVE_DEFAULTS, **s.given()}
    util = real(v["gpu_memory_utilization"], "{gpu_memory_utilization}", lambda x: 0.0 < x <= 1.0, "in (0, 1]")
    block = whole(v["block_size"], "{block_size}", 1, VLLM_BLOCK_SIZES[-1])
    if block not in VLLM_BLOCK_SIZES:
        raise BadInput(f"{{block_size}} must be a power of two from 1 to 256 (vLLM's choices), got {block}.")
    pp = whole(v["pp"], "{pp}", 1, MAX_GPU_COUNT) if "pp" in s.given() else None
    dp = whole(v["dp"], "{dp}", 1, MAX_GPU_COUNT) if "dp" in v else None
    tp = whole(v["tp"], "{tp}", 1, MAX_GPU_COUNT) if "tp" in v else None
    note = ""
    if serving:
        tp, pp, dp, note = serve_layout(gpu_count, tp, pp, dp)
    else:
        tp, pp, dp = tp or 1, pp or 1, dp or 1
    world = tp * pp * dp
    if serving and world > gpu_count:
        shown_dp = f" x {{dp}} {dp}" if dp > 1 else ""
        raise BadInput(f"{{tp}} {tp} x {{pp}} {pp}{shown_dp} needs {world} GPUs but {{gpu}} gives {gpu_count}; "
                       f"ask for them with {{gpu}} ID:{world}.")
    version = v.get("vllm_version")
    if version is not None and (not isinstance(version, str) or not version.strip()):
        raise BadInput(f"{{vllm_version}} must be a version string such as '0.10' or '0.21', got {shown(version)}.")
    return ServeOptions(
        gpu_memory_utilization=util,
        max_num_batched_tokens=(parse_tokens(v["max_num_batched_tokens"], "{max_num_batched_tokens}")
                                if "max_num_batched_tokens" in v else None),
        max_num_seqs=parse_tokens(v["max_num_seqs"], "{max_num_seqs}") if "max_num_seqs" in v else None,
        block_size=block, tp=tp, pp=pp,
        enforce_eager=_flag(v.get("enforce_eager", False), "enforce_eager"),
        vllm_version=version or "",
        kv_cache_memory=(parse_bytes(v["kv_cache_memory"], "{kv_cache_memory}")
                         if "kv_cache_memory" in v else None),
        allow_long_max_model_len=_flag(v.get("allow_long_max_model_len", False), "allow_long_max_model_len"),
        dp=dp, enable_expert_parallel=_flag(v.get("enable_expert_parallel", False), "enable_expert_parallel"),
        cpu_offload_bytes=(int(real(v["cpu_offload_gb"], "{cpu_offload_gb}", lambda x: 0.0 <= x <= 1e5,
                                    "from 0 to 100000 GiB") * GiB) if "cpu_offload_gb" in v else 0),
        limit_mm_per_prompt=mm_limits(v["limit_mm_per_prompt"]) if "limit_mm_per_prompt" in v else (),
        swap_space_gib=(real(v["swap_space"], "{swap_space}", lambda x: 0.0 <= x <= 1e5, "from 0 to 100000 GiB")
                        if "swap_space" in v else None),
        layout_note=note,
    )


MM_LIMIT_MAX = 10_000      # items of one modality per prompt: beyond any real request


def mm_limits(value) -> tuple:
    """--limit-mm-per-prompt in either of vLLM's syntaxes: JSON ('{"image": 2, "video": 0}', the
    current one: a dict field parsed with json.loads, vllm/engine/arg_utils.py _compute_kwargs)
    or the older comma-separated image=2,video=0 (nullable_kvs, vLLM 0.6-0.9). Returns sorted
    (modality, count) pairs; a count may also be a dict of per-item options (kept as given)."""
    if isinstance(value, dict):
        items = value
    else:
        text = str(value).strip()
        if text.startswith("{"):
            try:
                items = json.loads(text)
            except ValueError:
                raise BadInput(f"{{limit_mm_per_prompt}} {shown(text)} is not valid JSON; write it as "
                               "'{\"image\": 2}' or image=2.") from None
            if not isinstance(items, dict):
                raise BadInput(f"{{limit_mm_per_prompt}} {shown(text)} must be a JSON object such as "
                               "'{\"image\": 2}'.")
        else:
            items = {}
            for part in filter(None, (p.strip() for p in text.split(","))):
                key, eq, count = part.partition("=")
                if not eq or not key.strip():
                    raise BadInput(f"{{limit_mm_per_prompt}} {shown(part)} is not MODALITY=COUNT, e.g. image=2.")
                items[key.strip().lower()] = count.strip()
    out = []
    for key, count in items.items():
        if isinstance(count, dict):
            count = count.get("count", 1)
        out.append((str(key), whole(count, "{limit_mm_per_prompt}", 0, MM_LIMIT_MAX)))
    return tuple(sorted(out))


def make_workload(mode: str = "serve", batch: int | str = 1, ctx: int | str = 4096,
                  dtype: str = "auto", kv_dtype: str = "auto", *, gpu_count: int = 1,
                  **flags) -> Workload:
    """`build_workload` from keywords: the ServeFlags and TrainFlags names and `transformers`.
    The workload does not depend on the model, so the request names none."""
    request = PlanRequest.from_keywords("", mode=mode, batch=batch, ctx=ctx, dtype=dtype,
                                        kv_dtype=kv_dtype, **flags)
    return build_workload(request, whole(gpu_count, "{gpu_count}", 1, MAX_GPU_COUNT))


def with_train(request: PlanRequest, **changes) -> PlanRequest:
    """`request` with some training settings changed (compare picks the ZeRO stage per layout)."""
    return replace(request, train=replace(request.train, **changes))


MAX_DEEPSPEED_CONFIG = 1 << 20     # a DeepSpeed JSON config is a few KB; 1 MiB is no config


def _deepspeed_config(value):
    """--deepspeed ds.json: the file read (files.py, capped) and parsed; a dict passes as it is."""
    if not isinstance(value, (str, os.PathLike)):
        return value
    raw = read_small_file(value, MAX_DEEPSPEED_CONFIG, "the DeepSpeed config",
                          hint="Give the JSON file passed to the Trainer's --deepspeed.")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInput(f"{{deepspeed}} {printable(os.fspath(value))} is not JSON: {e}.") from None


def _train_options(**given):
    # The training settings are the HF Trainer engine's; its package loads on first use, as the
    # engine registry loads every engine, so that serve and infer plans never import it.
    from vramplan.engines.hf_trainer.options import normalize_train_options

    if given.get("deepspeed") is not None:
        given["deepspeed"] = _deepspeed_config(given["deepspeed"])
    return normalize_train_options(**given)


def transformers_major(value: int | str | None = None) -> int:
    """--transformers 4|5; None: the installed transformers' major version (read from package
    metadata, no import), else the newest we model. Infer and training plans depend on it."""
    if value is None:
        # importlib.metadata costs ~10 ms (it loads the email parser); serve plans never ask.
        from importlib import metadata

        try:
            installed = metadata.version("transformers").split(".")[0]
        except metadata.PackageNotFoundError:
            installed = ""
        if not installed.isdigit():
            return TRANSFORMERS_MAJORS[-1]
        return min(max(int(installed), TRANSFORMERS_MAJORS[0]), TRANSFORMERS_MAJORS[-1])
    major = str(value).strip().split(".")[0] if isinstance(value, (int, str)) and not isinstance(value, bool) else ""
    if not (major.isascii() and major.isdigit()) or len(major) > 2 or int(major) not in TRANSFORMERS_MAJORS:
        raise BadInput(f"{{transformers}} {shown(value)}: give the major version to plan for, 4 or 5.")
    return int(major)
