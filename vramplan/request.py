"""The user's words at the edge: one typed `PlanRequest`, and the validation that turns it into
the core's `Workload`.

The CLI builds a PlanRequest from its flags, the Python API from its keywords; from here on a
request is data, never a bag of keywords. A mode string ("serve", "lora", ...) exists only here
and in the edges that read it: the Workload names its engine and the planner asks that engine.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields, replace

from vramplan.engines.llama_cpp.options import LlamaFlags, normalize as llama_options
from vramplan.errors import BadInput
from vramplan.loading import is_gguf
from vramplan.memory.dtypes import KV_FORMATS, WEIGHT_FORMATS, normalize
from vramplan.spec import GpuTarget, ModelSpec, ServeOptions, Workload
from vramplan.units import parse_bytes, parse_tokens

ENGINE_OF_MODE = {
    "serve": "vllm",            # a vLLM server
    "infer": "transformers",    # transformers generate()
    "full": "hf_trainer",       # one training step: all weights trained
    "lora": "hf_trainer",       # peft LoRA adapters on a 16-bit base
    "qlora": "hf_trainer",      # peft LoRA adapters on a bitsandbytes 4-bit base
}
# --engine: whose rules apply within a mode (DESIGN.md), by the names users type
ENGINES = {"vllm": "vllm", "llama.cpp": "llama_cpp", "llamacpp": "llama_cpp", "llama_cpp": "llama_cpp",
           "ollama": "ollama", "transformers": "transformers", "hf-trainer": "hf_trainer", "hf_trainer": "hf_trainer"}
LOCAL_ENGINES = ("llama_cpp", "ollama")     # take the llama.cpp flags and GGUF mixes
MODES = tuple(ENGINE_OF_MODE)
TRAINING_MODES = tuple(m for m, e in ENGINE_OF_MODE.items() if e == "hf_trainer")
METHODS = ("analytic", "trace")

TRANSFORMERS_MAJORS = (4, 5)


@dataclass(frozen=True, kw_only=True)
class ServeFlags:
    """vLLM's engine flags as given. They are checked in every mode (a bad value is a mistake
    whatever the mode), but only serve plans use them."""

    gpu_memory_utilization: float = 0.9
    max_num_batched_tokens: int | str | None = None     # None: the engine default
    max_num_seqs: int | str | None = None
    block_size: int = 16
    tp: int | None = None                               # None: the GPU count
    pp: int = 1
    enforce_eager: bool = False
    vllm_version: str | None = None                     # None: the default era (0.11-0.20)
    kv_cache_memory: int | str | None = None            # explicit KV bytes per GPU, e.g. "20GiB"


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

    @classmethod
    def from_keywords(cls, model: str | ModelSpec, gpu: str | GpuTarget | None = None,
                      **keywords) -> PlanRequest:
        """The Python API's flat keywords (`plan(model, gpu, ctx=..., tp=..., optim=...)`) sorted
        into the request and its ServeFlags and TrainFlags; an unknown keyword is BadInput."""
        sections = {"serve": {}, "train": {}, "llama": {}, "": {}}
        for name, value in keywords.items():
            section = _SECTION_OF.get(name)
            if section is None:
                close = difflib.get_close_matches(name, list(_SECTION_OF), n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise BadInput(f"{name!r} is not a keyword vramplan plans with{hint}; the keywords are "
                               f"{', '.join(_SECTION_OF)}.")
            sections[section][name] = value
        return cls(model=model, gpu=gpu, **sections[""], serve=ServeFlags(**sections["serve"]),
                   train=TrainFlags(**sections["train"]), llama=LlamaFlags(**sections["llama"]))


_SECTION_OF = {
    **{f.name: "" for f in fields(PlanRequest) if f.name not in ("model", "gpu", "serve", "train", "llama")},
    **{f.name: "llama" for f in fields(LlamaFlags)},
    **{f.name: "serve" for f in fields(ServeFlags)},
    **{f.name: "train" for f in fields(TrainFlags)},
}


def build_workload(request: PlanRequest, gpu_count: int = 1) -> Workload:
    """Check every knob of `request` for `gpu_count` GPUs and build the Workload; a bad value
    raises BadInput naming its parameter."""
    mode, s = request.mode, request.serve
    if mode not in MODES:
        raise BadInput(f"{{mode}} {mode!r} is not one of: {', '.join(MODES)}.")
    given = request.train.given()
    train = None
    if mode in TRAINING_MODES:
        train = _train_options(world=gpu_count, **given)
    elif given:
        names = ", ".join("{" + k + "}" for k in given)
        verb = "applies" if len(given) == 1 else "apply"
        raise BadInput(f"{names} only {verb} to the training modes ({{mode}} full, lora or qlora).")
    if not 0.0 < s.gpu_memory_utilization <= 1.0:
        raise BadInput(f"{{gpu_memory_utilization}} must be in (0, 1], got {s.gpu_memory_utilization}.")
    if s.block_size not in (1, 8, 16, 32, 64, 128, 256):
        raise BadInput(f"{{block_size}} must be a power of two from 1 to 256 (vLLM's choices), "
                       f"got {s.block_size}.")
    tp = (gpu_count if mode == "serve" else 1) if s.tp is None else s.tp
    if tp < 1 or s.pp < 1:
        raise BadInput("{tp} and {pp} must be at least 1.")
    if mode == "serve" and tp * s.pp > gpu_count:
        raise BadInput(f"{{tp}} {tp} x {{pp}} {s.pp} needs {tp * s.pp} GPUs but {{gpu}} gives {gpu_count}; "
                       f"ask for them with {{gpu}} ID:{tp * s.pp}.")
    serve = ServeOptions(
        gpu_memory_utilization=s.gpu_memory_utilization,
        max_num_batched_tokens=(parse_tokens(s.max_num_batched_tokens, "{max_num_batched_tokens}")
                                if s.max_num_batched_tokens is not None else None),
        max_num_seqs=parse_tokens(s.max_num_seqs, "{max_num_seqs}") if s.max_num_seqs is not None else None,
        block_size=s.block_size, tp=tp, pp=s.pp, enforce_eager=s.enforce_eager,
        vllm_version=s.vllm_version or "",
        kv_cache_memory=(parse_bytes(s.kv_cache_memory, "{kv_cache_memory}")
                         if s.kv_cache_memory is not None else None),
    )
    engine, llama = _engine(request)
    if llama is not None:
        return Workload(mode=mode, batch=parse_tokens(request.batch, "{batch}"),
                        ctx=parse_tokens(request.ctx, "{ctx}"), dtype=request.dtype.strip().lower(),
                        kv_dtype=request.kv_dtype, serve=serve, engine=engine, llama=llama)
    return Workload(
        mode=mode, batch=parse_tokens(request.batch, "{batch}"), ctx=parse_tokens(request.ctx, "{ctx}"),
        dtype=normalize(request.dtype, WEIGHT_FORMATS, "{dtype}"),
        kv_dtype=normalize(request.kv_dtype, KV_FORMATS, "{kv_dtype}"), serve=serve, train=train,
        transformers=transformers_major(request.transformers) if mode != "serve" else TRANSFORMERS_MAJORS[-1],
        engine=engine,
    )


def _engine(request: PlanRequest):
    """(engine, llama.cpp options or None): --engine within the mode (serve: vllm, llama.cpp,
    ollama); the llama.cpp flags only with those engines."""
    default = ENGINE_OF_MODE[request.mode]
    if request.mode == "serve" and isinstance(request.model, str) and is_gguf(request.model):
        default = "llama_cpp"                 # a GGUF file is served by llama.cpp unless --engine says
    given = request.engine
    engine = default if given is None else ENGINES.get(str(given).strip().lower())
    serving = ("vllm", *LOCAL_ENGINES)
    if engine is None or (engine != ENGINE_OF_MODE[request.mode] and (request.mode != "serve" or engine not in serving)):
        allowed = "vllm, llama.cpp or ollama" if request.mode == "serve" else default.replace("_", "-")
        raise BadInput(f"{{engine}} {given!r} does not plan {{mode}} {request.mode}; it takes {allowed}.")
    flags = request.llama.given()
    if engine not in LOCAL_ENGINES:
        if flags:
            names = ", ".join("{" + k + "}" for k in flags)
            raise BadInput(f"{names} {'is' if len(flags) == 1 else 'are'} llama.cpp's; add {{engine}} llama.cpp "
                           f"or ollama.")
        return engine, None
    return engine, llama_options(request.llama, normalize(request.kv_dtype, KV_FORMATS, "{kv_dtype}"),
                                 ollama=engine == "ollama")


def make_workload(mode: str = "serve", batch: int | str = 1, ctx: int | str = 4096,
                  dtype: str = "auto", kv_dtype: str = "auto", *, gpu_count: int = 1,
                  **flags) -> Workload:
    """`build_workload` from keywords: the ServeFlags and TrainFlags names and `transformers`.
    The workload does not depend on the model, so the request names none."""
    request = PlanRequest.from_keywords("", mode=mode, batch=batch, ctx=ctx, dtype=dtype,
                                        kv_dtype=kv_dtype, **flags)
    return build_workload(request, gpu_count)


def with_train(request: PlanRequest, **changes) -> PlanRequest:
    """`request` with some training settings changed (compare picks the ZeRO stage per layout)."""
    return replace(request, train=replace(request.train, **changes))


def _train_options(**given):
    # The training settings are the HF Trainer engine's; its package loads on first use, as the
    # engine registry loads every engine, so that serve and infer plans never import it.
    from vramplan.engines.hf_trainer.options import normalize_train_options

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
    major = str(value).strip().split(".")[0]
    if not major.isdigit() or int(major) not in TRANSFORMERS_MAJORS:
        raise BadInput(f"{{transformers}} {value!r}: give the major version to plan for, 4 or 5.")
    return int(major)
