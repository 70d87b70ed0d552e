"""One trace, end to end: build the model, materialize it under the tracker, run the scenario,
and read the breakdown at the peak. `fake=False` runs the very same code on real CPU tensors:
the tests use it to prove the fake run exact to the byte."""

from __future__ import annotations

import contextlib
import gc
import time
import warnings
from dataclasses import asdict, dataclass

import torch

from vramplan.engines.hf_trainer.phases import TrainOptions
from vramplan.errors import BadInput
from vramplan.trace import build, mamba, patches, quant, recipe, scenarios, training
from vramplan.trace import device as trace_device
from vramplan.trace.result import TensorRow, TraceResult
from vramplan.trace.tracker import MemoryTracker

TOP_ROWS = 12


@dataclass(frozen=True)
class Scenario:
    """Everything that decides the traced program (and so the cache key, with the config hash)."""

    mode: str                    # infer | serve | full | lora | qlora
    batch: int
    ctx: int
    dtype: str = "bf16"          # dtype the model is built in: bf16 | fp16 | fp32
    quant: str = "none"          # none | nf4 | fp4: bitsandbytes 4-bit linears (trace/quant.py)
    double_quant: bool = True
    skip: tuple[str, ...] = ()   # module patterns a quantizer leaves alone
    serve_tokens: int = 0        # serve: max_num_batched_tokens of the profiling forward
    attn: str = "sdpa"
    train: TrainOptions | None = None
    pre_sm80: bool = False       # the target is a Volta/Turing card: SDPA's kernels differ there

    def key(self) -> dict:
        d = asdict(self)
        if not d["pre_sm80"]:        # as before the field existed: cached traces stay valid
            del d["pre_sm80"]
        return d


def execute(raw_config: dict, scenario: Scenario, model_id: str = "", fake: bool = True,
            progress=None, device: str = "cpu", bitsandbytes=None, on_reset_peak=None) -> TraceResult:
    """Trace `scenario` for this config.json. `progress(text)` is told about slow stages.
    Library deprecation chatter is silenced; what matters for the numbers is in the result's
    `measured["warnings"]`. `bitsandbytes`: the library's module, to run its own 4-bit layers
    and 8-bit optimizers instead of the emulation (real tensors on a GPU only). `on_reset_peak`
    is called wherever the tracker resets its peak (verify resets the allocator's there)."""
    if fake and device != "cpu":
        raise ValueError("the trace runs fake tensors on cpu only; a real device needs fake=False")
    if bitsandbytes is not None and (fake or device == "cpu"):
        raise ValueError("bitsandbytes runs on real GPU tensors only")
    with warnings.catch_warnings(), _quiet_transformers(), trace_device.use(device, bitsandbytes, on_reset_peak):
        warnings.simplefilter("ignore")
        return _execute(raw_config, scenario, model_id, fake, progress)


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _execute(raw_config: dict, scenario: Scenario, model_id: str, fake: bool, progress) -> TraceResult:
    say = progress or (lambda text: None)
    start = time.perf_counter()
    s = scenario
    say("building the model on the meta device")
    config, model = build.build(raw_config, model_id, s.dtype, s.attn)
    if s.train is not None:
        model = training.prepare_model(model, s.train, s.mode)
    if s.quant != "none":
        quant.quantize_linears(model, s.quant, s.double_quant, torch.bfloat16, s.skip)
    if s.mode == "qlora":
        training.cast_for_kbit(model, s.train)
    vocab = config.get_text_config().vocab_size
    params = sum(p.numel() for p in model.parameters())     # unique storages, tied once
    notes = build.notes(model, s.attn)
    attn_used = getattr(model.config, "_attn_implementation", s.attn)

    tr = MemoryTracker()
    tr.name_modules(model)
    fake_mode = _fake_mode() if fake else contextlib.nullcontext()
    gc_was = gc.isenabled()
    gc.collect()
    gc.disable()      # frees happen when refcounts drop, as on a GPU, never at a collector's whim
    try:
        on_cpu = trace_device.kind() == "cpu"    # on a real GPU its own kernels decide
        with patches.unpacked_batches(), \
                (patches.cuda_sdpa_backends(s.pre_sm80) if on_cpu else contextlib.nullcontext()), \
                (patches.cuda_dropout() if on_cpu else contextlib.nullcontext()), \
                (patches.cuda_autocast_layer_norm() if on_cpu else contextlib.nullcontext()), \
                (mamba.cuda_mamba_kernels() if on_cpu else contextlib.nullcontext()), fake_mode, tr:
            say("materializing the weights as fake tensors" if fake else "allocating real weights")
            build.materialize(model, fake)
            if trace_device.bitsandbytes() is not None and s.quant != "none":
                quant.use_bitsandbytes(model, trace_device.bitsandbytes(), s.quant, s.double_quant)
            weights = list(build.parameters_and_buffers(model))
            adapters = s.mode in ("lora", "qlora")
            tr.mark("trainable", [t for t in weights if adapters and t.requires_grad])
            tr.mark("weights", [t for t in weights if isinstance(t, torch.nn.Parameter)])
            tr.mark("weights", quant.state_tensors(model))
            tr.mark("buffers", weights)
            weights_bytes = sum(r.nbytes for r in tr.records if r.category == "weights" and r.died is None)
            del weights
            tr.reset_peak()
            _run(model, s, tr, say, fake)
    finally:
        if gc_was:
            gc.enable()
    return _result(tr, s, weights_bytes, {"warnings": notes, "attn": attn_used, "params": params}, vocab,
                   time.perf_counter() - start)


def _fake_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode(allow_non_fake_inputs=False)


def _run(model, s: Scenario, tr: MemoryTracker, say, fake: bool) -> None:
    """On fake tensors a library error means the settings cannot run at all: say so plainly.
    On real tensors errors (an out-of-memory above all) pass through for the caller."""
    try:
        _program(model, s, tr, say)
    except (RuntimeError, NotImplementedError) as e:
        if not fake:
            raise
        raise BadInput(f"transformers cannot run this workload as configured: {str(e).splitlines()[0]} "
                       f"(a training or inference script with the same settings fails the same way). "
                       f"Use {{method}} analytic, or change the settings.") from e


def _program(model, s: Scenario, tr: MemoryTracker, say) -> None:
    if s.mode == "infer":
        say(f"prefill of {s.batch} x {s.ctx:,} tokens, then one decode step")
        return scenarios.infer(model, s.batch, s.ctx, tr)
    if s.mode == "serve":
        say(f"profiling forward of {s.serve_tokens:,} tokens")
        return scenarios.serve_profile(model, s.serve_tokens, tr)
    assert s.train is not None
    say(f"two training steps of {s.batch} x {s.ctx:,} tokens")
    model.train()
    optimizer = training.make_optimizer(model, s.train)
    autocast = torch.bfloat16 if recipe.autocast_on(s.mode, s.train) else None
    return scenarios.train(model, optimizer, s.batch, s.ctx, tr, autocast)


def _category(r, s: Scenario, vocab: int) -> str:
    """What an unnamed storage is, from where it was born."""
    if r.category:
        return r.category
    if r.phase == "optimizer step":
        return "optimizer_step_temporaries"
    if s.train is not None and r.shape and r.shape[-1] == vocab:
        return "logits_and_loss"
    return "activations"


def _result(tr: MemoryTracker, s: Scenario, weights_bytes: int, measured: dict, vocab: int,
            seconds: float) -> TraceResult:
    peak = tr.peak
    alive = tr.alive_at(peak.clock)
    components: dict[str, int] = {}
    for r in alive:
        cat = _category(r, s, vocab)
        components[cat] = components.get(cat, 0) + r.nbytes
    assert sum(components.values()) == peak.bytes, (sum(components.values()), peak.bytes)
    top = sorted(alive, key=lambda r: -r.nbytes)[:TOP_ROWS]
    rows = tuple(TensorRow(r.nbytes, _category(r, s, vocab), r.shape, r.dtype, r.op,
                           _short(r.module), r.phase) for r in top)
    return TraceResult(
        scenario=s.key(), peak_bytes=peak.bytes, components=components, phase=peak.phase,
        op=peak.op, module=_short(peak.module),
        phase_peaks={k: v.bytes for k, v in tr.phase_peaks.items()}, top=rows,
        weights_bytes=weights_bytes, measured=measured, versions=versions(),
        seconds=round(seconds, 2))


def _short(module: str) -> str:
    """peft's "base_model.model." prefix off: the path a user knows."""
    return module.removeprefix("base_model.model.")


def versions() -> dict:
    import transformers

    out = {"torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import peft

        out["peft"] = peft.__version__
    except ImportError:
        pass
    return out
