"""`vramplan verify`: plan the workload, check it is safe to try, allocate or run it on the
device, measure, and compare. The order is the point of this module:

1. resolve the device and, on CUDA, probe it through NVML (capacity and free memory now);
2. plan the workload against that GPU (the analytic tier);
3. refuse unless the plan fits in what is free (exit 1), unless --force;
4. measure the CUDA context on its own, before any tensor exists;
5. allocate (--level alloc) or run (--level run) under a timeout, stopping at the first OOM;
6. free everything, whatever happened (OOM, timeout, Ctrl-C), then report and --record.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import replace

from vramplan import methods, sources, trace
from vramplan.engines.hf_trainer.optimizers import resolve_optim
from vramplan.errors import BadInput, EnvironmentProblem, MissingExtra, VramplanError
from vramplan.loading import load_model
from vramplan.request import PlanRequest
from vramplan.targets import resolve_target
from vramplan.verify import alloc, guard
from vramplan.verify import record as rec
from vramplan.probe.nvml import NvmlError
from vramplan.verify.device import CudaDevice, problem
from vramplan.verify.meter import CpuMeter
from vramplan.verify.result import Row, VerifyResult

LEVELS = ("alloc", "run")
GPU_ONLY = ("cuda_context", "cublas_workspace", "nccl", "cuda_graphs", "non_torch", "allocator_slack",
            "optimizer_paged")


def parse_device(device: str) -> str:
    d = str(device).strip().lower()
    if d == "cpu":
        return d
    if d == "cuda":
        return "cuda:0"
    if d.startswith("cuda:") and d[5:].isdigit():
        return d
    raise BadInput(f"{{device}} {device!r} is not cpu or cuda:N (e.g. cuda:0).")


def _torch(extra: str):
    try:
        import torch
    except ImportError:
        raise MissingExtra(extra, "torch") from None
    return torch


def verify(model, *, level: str = "alloc", device: str = "cuda:0", force: bool = False,
           timeout: float | None = None, record: str | None = None, gpu: str | None = None,
           gpu_mem: str | None = None, emulate: bool = False, hard_timeout: bool = False,
           backend=None, environ=None, **plan_options) -> VerifyResult:
    """Plan MODEL with `plan_options` (the `fit` flags), then allocate or run it on `device`
    and measure. Raises DoesNotFit (exit 1) when it would not fit in free memory (unless
    `force`), EnvironmentProblem (exit 3) without a usable device, BadInput on bad flags.
    `emulate`: on a GPU without bitsandbytes, run vramplan's emulation of its 4-bit layers and
    8-bit optimizers (the result and record say `emulated`) instead of refusing.
    `hard_timeout`: when the run has not stopped guard.GRACE_S after `timeout` (a blocked CUDA
    call), end the process with exit 3 (what the command does; a library caller may not want it)."""
    plan_options = {k: v for k, v in plan_options.items() if v is not None}   # None: not given
    if level not in LEVELS:
        raise BadInput(f"{{level}} {level!r} is not one of: {', '.join(LEVELS)}.")
    device = parse_device(device)
    if timeout is not None and timeout <= 0:
        raise BadInput("{timeout} must be a positive number of seconds.")
    if record:
        why = rec.unusable(record)
        if why:
            raise BadInput(f"{{record}} {record} cannot be written: {why}.")
    torch = _torch("gpu" if device != "cpu" else "trace")
    notes: list[str] = []
    flags = {"level": level, "device": device, "force": force, "timeout": timeout,
             "gpu": gpu, "gpu_mem": gpu_mem, "emulate": emulate, **plan_options}

    try:
        result, plan, cuda = _attempt(model, level, device, force, (timeout, hard_timeout), gpu,
                                      gpu_mem, emulate, backend, environ, plan_options, torch, notes)
    except (RuntimeError, AssertionError, NvmlError) as e:
        said = problem(e, device) if device != "cpu" and not isinstance(e, VramplanError) else None
        if said is None:
            raise
        raise said from None
    rows, predicted, measured, oom, more, emulated = result
    if cuda is not None:
        more = cuda.notes + more
    out = VerifyResult(level, device, plan, tuple(rows), predicted, measured,
                       context=cuda.context_json() if cuda else None,
                       gpu=cuda.gpu if cuda else None, oom=oom, notes=tuple(notes + more),
                       flags=flags, emulated=emulated)
    if record:
        line = rec.make_record(out.to_json())
        try:
            rec.append(record, line)
        except OSError as e:      # checked before the run; the disk may still fill up
            kept = rec.keep_elsewhere(line)
            out = replace(out, notes=out.notes + (f"--record {record} could not be written "
                                                  f"({e.strerror or e}): the record is kept in {kept} instead",))
    return out


def _attempt(model, level, device, force, timeout, gpu, gpu_mem, emulate, backend, environ,
             plan_options, torch, notes):
    """Steps 1-6 of the module docstring: (the measurement + what was emulated, the plan, the
    CUDA device or None). A failure of the driver, NVML or CUDA comes out as it was raised."""
    cuda = None
    try:
        if device == "cpu":
            target = resolve_target(gpu, gpu_mem)
            free, where = guard.host_available_bytes(), "this host"
        else:
            cuda = CudaDevice(torch, device, backend, environ)
            target = resolve_target(gpu, gpu_mem) if (gpu or gpu_mem) else cuda.target
            free, where = cuda.target.free_bytes, f"{device} ({cuda.gpu['name']})"
        spec = load_model(model)
        plan = methods.plan(PlanRequest.from_keywords(spec, target, **plan_options))
        need = _needed(plan, level, device)
        margin = guard.FREE_MARGIN_BYTES if device != "cpu" else 0
        note = guard.check_free(need, free, force, where, margin)
        if note:
            notes.append(note)
        if level == "run" and device != "cpu":
            _refuse_managed(plan)
        bnb, emulated = _bitsandbytes(plan, level, device, emulate)
        run = functools.partial(_run, bnb=bnb, force=force, notes=notes)
        if cuda is not None:
            cuda.need = need - plan.components.get("cuda_context", 0)   # once the context exists
            cuda.force = force
        result = _measure(plan, level, device, cuda, model, spec, timeout, run)
    finally:
        if cuda is not None:
            cuda.close()
    return (*result, emulated), plan, cuda


def _measure(plan, level, device, cuda, model, spec, timeout, run):
    """Allocate or run under the time limit, with the device under test as torch's current
    device (so nothing, autocast's checks included, touches another GPU); whatever happens,
    free every tensor we made."""
    holder: list = []
    with cuda.selected() if cuda is not None else contextlib.nullcontext():
        try:
            with guard.time_limit(*timeout):
                if cuda is not None:
                    result = cuda.measure(plan, level, holder, model, spec, run)
                elif level == "alloc":
                    result = _alloc_cpu(plan, holder)
                else:
                    result = run(plan, model, spec, device, None)
        except guard.VerifyTimeout as e:
            e.__traceback__ = None          # as for Ctrl-C below
            guard.release(holder, e, device)
            raise EnvironmentProblem(f"verify {e} and stopped; everything it allocated was freed. "
                                     "Raise --timeout or verify a smaller workload.") from None
        except KeyboardInterrupt as e:
            # the traceback's frames keep the model alive through hooks and closures that
            # clearing their locals does not reach: drop it, free, then let Ctrl-C go on
            e.__traceback__ = None
            guard.release(holder, e, device)
            raise e from None
        except BaseException as e:          # free first, then let it go on
            guard.release(holder, e, device)
            raise
        guard.release(holder, None, device)
    return result


def _needed(plan, level: str, device: str) -> int:
    """Bytes the attempt will take: alloc = the components it allocates (+ the context on a
    GPU); run = the plan's total (tensor peak only on the CPU)."""
    parts = plan.components
    if level == "alloc":
        n = sum(v for k, v in parts.items() if k not in alloc.NOT_ALLOCATED)
        return n + (parts.get("cuda_context", 0) if device != "cpu" else 0)
    if device == "cpu":
        return sum(v for k, v in parts.items() if k not in GPU_ONLY)
    return plan.total_bytes


def _bitsandbytes(plan, level: str, device: str, emulate: bool) -> tuple[object, tuple[str, ...]]:
    """(the bitsandbytes module a GPU run uses, or None; what the run emulates instead).

    A run with 4-bit weights or an 8-bit optimizer measures bitsandbytes on a GPU: its own
    layers and optimizers when it is installed; without it, refused (exit 3) unless `emulate`,
    and then every record says what was emulated. On the CPU bitsandbytes cannot run: the run
    is the trace tier's emulation, and says so too."""
    if level != "run":
        return None, ()
    s = _scenario(plan)
    needs = []
    if s.quant != "none":
        needs.append(f"bitsandbytes {s.quant} weights (vramplan/trace/quant.py)")
    if s.train is not None and resolve_optim(s.train.optim).impl == "bnb":
        needs.append(f"bitsandbytes {s.train.optim} optimizer (vramplan/trace/training.py Adam8bitLike)")
    if not needs:
        return None, ()
    if device == "cpu" or emulate:
        return None, tuple(needs)
    try:
        import bitsandbytes
    except ImportError:
        what = " and ".join(n.split(" (")[0] for n in needs)
        raise EnvironmentProblem(f"Measuring {what} on a GPU needs bitsandbytes, which is not "
                                 "installed: pip install bitsandbytes, or verify with --emulate to "
                                 "measure vramplan's emulation of it (the record says emulated).") from None
    return bitsandbytes, ()


def _refuse_managed(plan) -> None:
    optim = getattr(getattr(plan.workload, "train", None), "optim", "") or ""
    if optim.startswith("paged_"):
        raise BadInput(f"{{optim}} {optim} keeps its state in CUDA managed memory, which verify never "
                       "uses; verify with the unpaged variant (e.g. adamw_8bit).")


# ---------------------------------------------------------------------------------------------
# --device cpu

def _alloc_cpu(plan, holder: list):
    from vramplan.trace.tracker import MemoryTracker

    tr = MemoryTracker()
    with tr:
        tr.reset_peak()
        rows, oom = alloc.allocate(plan, "cpu", CpuMeter(tr), holder)
    peak = tr.peak.bytes
    predicted = {"peak_allocated_bytes": alloc.planned_total(rows), "total_bytes": plan.total_bytes}
    measured = {"max_allocated_bytes": peak, "max_reserved_bytes": peak, "nvml_peak_bytes": None}
    return (rows, predicted, measured, oom,
            ["cpu: measured with the trace tier's storage tracker (512-B blocks); no caching "
             "allocator, so reserved = allocated, and no NVML"])


def _tensor_peak(plan, device: str) -> int:
    """The plan's peak_allocated_bytes; on the CPU without the cuBLAS workspace (GPU only)."""
    if device == "cpu":
        return plan.peak_allocated_bytes - plan.components.get("cublas_workspace", 0)
    return plan.peak_allocated_bytes


# ---------------------------------------------------------------------------------------------
# --level run: the trace tier's own programs, on real tensors

def _run(plan, model, spec, device: str, meter, bnb=None, force=False, notes=None):
    """Run the planned workload with the trace tier's programs on real tensors. On the CPU the
    trace tier's tracker is the measurement; the same programs on fake tensors are its
    prediction, and the two must agree to the byte."""
    from vramplan.trace import run as trace_run

    raw, model_id = _raw_config(model, spec)
    scenario = _scenario(plan)
    predicted_trace = trace_run.execute(raw, scenario, model_id, fake=True)
    if meter is not None:      # the trace's peak, against what is free right before the run
        need = predicted_trace.peak_bytes + plan.components.get("cublas_workspace", 0)
        note = guard.check_free(need, meter.free_now(), force, f"{device} now (the trace's peak)",
                                guard.FREE_MARGIN_BYTES)
        if note and notes is not None:
            notes.append(note)
    try:
        real = trace_run.execute(raw, scenario, model_id, fake=False, device=device, bitsandbytes=bnb,
                                 on_reset_peak=meter.reset_peaks if meter is not None else None)
    except Exception as e:
        if not guard.is_oom(e):
            raise
        where = f"out of memory during the run, {_where(e)}: {str(e).splitlines()[0][:200]}"
        guard.release([], e, device)
        measured = {"max_allocated_bytes": None}
        if meter is not None:
            p = meter.peaks()
            measured = {"max_allocated_bytes": p.allocated, "max_reserved_bytes": p.reserved,
                        "nvml_peak_bytes": p.nvml}
        return (_run_rows(plan, predicted_trace, None), _run_predicted(plan, device, predicted_trace),
                measured, where, [])
    measured = {"max_allocated_bytes": real.peak_bytes, "peak_phase": real.phase,
                "peak_op": real.op, "peak_module": real.module, "phase_peaks": real.phase_peaks}
    if meter is None:
        measured.update(max_reserved_bytes=real.peak_bytes, nvml_peak_bytes=None)
        more = ["cpu: measured with the trace tier's storage tracker on real tensors; the "
                "trace column is the same program on fake tensors"]
    else:
        p = meter.peaks()
        measured.update(tracker_peak_bytes=real.peak_bytes, max_allocated_bytes=p.allocated,
                        max_reserved_bytes=p.reserved, nvml_peak_bytes=p.nvml,
                        outside_tracker_bytes=p.allocated - real.peak_bytes,
                        memory_stats=meter.stats(), baseline_allocated_bytes=meter.baseline_allocated)
        more = ["max_allocated - tracker peak (outside_tracker_bytes) is what the allocator "
                "held beyond the program's tensors: the cuBLAS workspace, mostly"]
    return (_run_rows(plan, predicted_trace, real), _run_predicted(plan, device, predicted_trace),
            measured, None, more)


def _where(e: BaseException) -> str:
    """The phase and module the trace tracker was in when `e` was raised (read from the
    traceback's frames, before they are cleared)."""
    from vramplan.trace.tracker import MemoryTracker

    tb = e.__traceback__
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            if isinstance(value, MemoryTracker):
                module = value._module()
                return (f"in {value.phase}" + (f" ({module})" if module else "")
                        + f" with {value.live:,} B of tensors live")
        tb = tb.tb_next
    return "at an unknown point"


def _run_predicted(plan, device, trace) -> dict:
    return {"peak_allocated_bytes": _tensor_peak(plan, device), "total_bytes": plan.total_bytes,
            "trace_peak_bytes": trace.peak_bytes, "trace_peak_phase": trace.phase}


def _run_rows(plan, trace, real) -> list[Row]:
    """One row per component the run can separate (trace categories), beside the plan's."""
    names = list(plan.components)
    for name in list(trace.components) + (list(real.components) if real else []):
        if name not in names:
            names.append(name)
    rows = []
    for name in names:
        planned = plan.components.get(name)
        if name in GPU_ONLY:      # not tensors of the program: the trace cannot see them either
            rows.append(Row(name, planned, note="not a tensor of the program: GPU-level figures below"))
            continue
        got = real.components.get(name, 0) if real else None
        note = "host memory on a GPU (AdamW step counters)" if name == "host" else ""
        rows.append(Row(name, planned, got, trace=trace.components.get(name, 0), note=note))
    return rows


def _raw_config(model, spec) -> tuple[dict, str]:
    if isinstance(model, str):
        loaded = sources.load_config(model)
        return loaded.config, loaded.id
    raise BadInput("{level} run needs MODEL as a config path or id, not a parsed ModelSpec.")


def _scenario(plan):
    """The trace scenario of this plan, from the trace tier's own mapping (the one
    `--method trace` uses), so both tiers run one program with one set of options."""
    trace.require(plan.workload)
    return trace.scenario_for(plan.model, plan.target, plan.workload)
