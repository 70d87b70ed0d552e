"""`vramplan compare`: one workload planned on every catalog GPU, one row per GPU.

Each row answers: does it fit one card; if not, the fewest cards that do (tensor parallel for
serving, ZeRO-3 for training, none for `infer`); the limits of that configuration; its price and,
where vramplan can estimate a speed, tokens per second and dollars per million tokens. Rows are
sorted by cost per unit of work, the cheapest configuration that fits first.
"""

from __future__ import annotations

from dataclasses import replace

from vramplan import catalog
from vramplan import planner as core_plan
from vramplan.loading import load_model
from vramplan.memory.weights import weight_bytes
from vramplan.errors import BadInput
from vramplan.engines.hf_trainer.options import ADAPTER_METHODS
from vramplan.request import ENGINE_OF_MODE, PlanRequest, build_workload, with_train
from vramplan.spec import GpuSpec, GpuTarget, ModelSpec, Plan, Workload
from vramplan.units import parse_tokens
from vramplan.compare import prices as price_mod
from vramplan.compare import speed as sp
from vramplan.compare import throughput as th
from vramplan.compare.result import Comparison, Estimate, Row, Throughput

# Serving: the tensor-parallel sizes deployments use inside one 8-GPU node (vLLM also needs the
# heads to divide). Training: ZeRO-3 / FSDP worlds up to the catalog's 64-GPU limit.
SERVE_COUNTS = (1, 2, 4, 8)
TRAIN_COUNTS = (1, 2, 4, 8, 16, 32, 64)


def _gpus(gpus) -> tuple[GpuSpec, ...]:
    if gpus is None:
        return catalog.load_gpus()
    names = gpus.split(",") if isinstance(gpus, str) else list(gpus)
    out: list[GpuSpec] = []
    for name in (n.strip() for n in names):
        if not name:
            continue
        if ":" in name:
            raise BadInput(f"{{gpus}} {name!r}: compare finds the number of cards itself; give ids only, "
                           f"e.g. {{gpus}} l40s,h100.")
        g = catalog.find_gpu(name)
        if g not in out:
            out.append(g)
    if not out:
        raise BadInput("{gpus} names no GPU; give catalog ids such as l40s,h100,a100-80gb.")
    return tuple(out)


# How many cards compare tries, per engine: vLLM splits by tensor parallelism, the trainer by
# data parallelism / ZeRO; transformers' generate() is planned on one card.
COUNTS = {"vllm": SERVE_COUNTS, "hf_trainer": TRAIN_COUNTS}


def _parallelism(engine: str, n: int, zero: int) -> str:
    if n == 1 or engine not in COUNTS:
        return "none"
    if engine == "vllm":
        return "tp"
    return f"zero{zero}" if zero else "ddp"


class _Planner:
    """Builds the workload for n cards of one kind and plans it (errors of the user's own
    flags surface at n = 1; a split the model cannot take only skips that n)."""

    def __init__(self, model: ModelSpec, request: PlanRequest):
        self.model, self.request = model, request
        self.engine = ENGINE_OF_MODE.get(request.mode, "")
        self.zero = request.train.zero
        self.counts = COUNTS.get(self.engine, (1,))

    def workload(self, n: int) -> Workload:
        request = self.request          # outside training a given zero stays: build_workload refuses it
        if self.engine == "hf_trainer":
            request = with_train(request, zero=self.zero if self.zero is not None else (3 if n > 1 else 0))
        return build_workload(request, n)

    @property
    def zero_stage(self) -> int:
        return 3 if self.zero is None else self.zero

    def row(self, gpu: GpuSpec) -> tuple[Plan, Plan, int | None]:
        one = core_plan.build(self.model, GpuTarget(gpu), self.workload(1), suggest=False)
        if one.fits:
            return one, one, 1
        last = 1
        for n in self.counts[1:]:
            try:
                w = self.workload(n)
                _, fits = core_plan.evaluate(self.model, GpuTarget(gpu, count=n), w)
            except BadInput:        # e.g. heads that do not split n ways
                continue
            last = n
            if fits:
                break
        plan = one if last == 1 else core_plan.build(self.model, GpuTarget(gpu, count=last),
                                                    self.workload(last), suggest=False)
        return one, plan, last if plan.fits else None


def compare(model: str | ModelSpec, gpus=None, *, mode: str = "serve", batch: int | str = 1,
            ctx: int | str = 4096, dtype: str = "auto", kv_dtype: str = "auto", prices=None,
            price_source: str = price_mod.DEFAULT_SOURCE, efficiency: float | None = None,
            step_overhead_s: float = sp.STEP_OVERHEAD_S, input_len=None, output_len=None,
            concurrency=None, max_ttft=None, min_tokens_per_s=None, **options) -> Comparison:
    """Plan one workload on every catalog GPU (or `gpus`: ids or "l40s,h100") and rank them.

    `prices` overrides catalog prices ({"l40s": 0.79} or "l40s=0.79,h100=2.5"); `price_source`
    picks among the catalog's quotes (median, min, max, latest, or a provider name);
    `efficiency` replaces the calibrated decode efficiency (serve) or the training MFU. Other
    keywords are those of `vramplan.api.plan` (serve engine flags, training options), except
    the layout (`tp`, `pp`), which compare chooses itself.
    """
    request = PlanRequest.from_keywords(model, mode=mode, batch=batch, ctx=ctx, dtype=dtype,
                                        kv_dtype=kv_dtype, **options)
    return compare_request(request, gpus, prices=prices, price_source=price_source,
                           efficiency=efficiency, step_overhead_s=step_overhead_s, input_len=input_len,
                           output_len=output_len, concurrency=concurrency, max_ttft=max_ttft,
                           min_tokens_per_s=min_tokens_per_s)


DEFAULT_OUTPUT_LEN = 512        # output tokens per request when --output-len is not given


def traffic(ctx: int, input_len, output_len) -> tuple[int, int]:
    """(input, output) tokens per request: as given, else half the context in and up to 512 out.
    Together they must fit the context (vLLM's max model length)."""
    out = DEFAULT_OUTPUT_LEN if output_len is None else parse_tokens(output_len, "{output_len}")
    inp = ctx // 2 if input_len is None else parse_tokens(input_len, "{input_len}")
    if output_len is None and input_len is None:
        out = max(1, min(out, ctx - inp))
    if inp + out > ctx:
        raise BadInput(f"{{input_len}} {inp:,} + {{output_len}} {out:,} tokens exceed {{ctx}} {ctx:,}: a request "
                       f"must fit the context; raise {{ctx}} or shorten the request.")
    return inp, out


def _targets(max_ttft, min_tokens_per_s) -> tuple[float | None, float | None]:
    out = []
    for value, name, unit in ((max_ttft, "max_ttft", "seconds, e.g. 0.5"),
                              (min_tokens_per_s, "min_tokens_per_s", "tokens/s per sequence, e.g. 20")):
        if value is None:
            out.append(None)
            continue
        text = str(value).strip().lower()
        scale = 1e-3 if name == "max_ttft" and text.endswith("ms") else 1.0
        text = text[:-2] if scale != 1.0 else text.rstrip("s") if name == "max_ttft" else text
        try:
            v = float(text) * scale
        except ValueError:
            v = -1.0
        if not 0 < v < float("inf"):
            raise BadInput(f"{{{name}}} {value!r} must be a positive number ({unit}).")
        out.append(v)
    return out[0], out[1]


def _meets(e: Estimate | None, max_ttft: float | None, min_rate: float | None) -> bool:
    if max_ttft is None and min_rate is None:
        return True
    if e is None:
        return False
    return ((max_ttft is None or e.ttft_s <= max_ttft)
            and (min_rate is None or e.per_sequence_tokens_per_s >= min_rate))


def _as_throughput(e: Estimate, tp: int) -> Throughput:
    """The serving estimate in the shape training rows use (tokens/s, bound, step, traffic)."""
    d = e.decode
    return Throughput(tokens_per_s=e.output_tokens_per_s, bound=d.bound, step_s=d.seconds,
                      bytes_per_step=d.bytes_read, flops_per_token=d.flops * tp / max(e.concurrency, 1),
                      efficiency=sp.MEM_EFF, comm_s=d.comm_s, needs_nvlink=d.comm_s > d.seconds - d.comm_s)


def compare_request(request: PlanRequest, gpus=None, *, prices=None,
                    price_source: str = price_mod.DEFAULT_SOURCE, efficiency: float | None = None,
                    step_overhead_s: float = sp.STEP_OVERHEAD_S, input_len=None, output_len=None,
                    concurrency=None, max_ttft=None, min_tokens_per_s=None) -> Comparison:
    """`compare` of a PlanRequest that names no GPU and no parallel layout."""
    layout = (request.gpu, request.gpu_mem, request.gpu_free, request.serve.tp)
    if any(v is not None for v in layout) or request.serve.pp not in (None, 1):
        raise BadInput("{tp}, {pp} and {gpu} fix the layout; compare chooses the cards and the "
                       "parallelism itself (use `vramplan fit` for one layout).")
    serving = ENGINE_OF_MODE.get(request.mode) == "vllm"
    if concurrency is not None:
        conc = parse_tokens(concurrency, "{concurrency}")
        if str(request.batch).strip() not in ("1", str(conc)):
            raise BadInput(f"{{batch}} {request.batch} and {{concurrency}} {conc} disagree; compare plans the "
                           "sequences in flight, give one of them.")
        request = replace(request, batch=conc)
    if not serving and any(v is not None for v in (input_len, output_len, concurrency, max_ttft, min_tokens_per_s)):
        raise BadInput("{input_len}, {output_len}, {concurrency}, {max_ttft} and {min_tokens_per_s} describe "
                       "serving traffic; use them with mode serve.")
    ttft_target, rate_target = _targets(max_ttft, min_tokens_per_s)
    default_eff = sp.MEM_EFF if serving else th.TRAIN_MFU
    eff = default_eff if efficiency is None else float(efficiency)
    if not 0 < eff <= 1:
        raise BadInput(f"{{efficiency}} must be in (0, 1] (a share of the hardware peak), got {efficiency}.")
    spec = load_model(request.model, request.weights_from)
    cards = _gpus(gpus)
    overrides = price_mod.parse_overrides(prices)
    source = price_mod.check_source(price_source, catalog.load_gpus())
    planner = _Planner(spec, request)
    base = planner.workload(1)                      # validates every flag once
    inp, out = traffic(base.ctx, input_len, output_len) if serving else (0, 0)
    decode_context = inp + out // 2
    constants = sp.Constants(mem_eff=eff, step_overhead_s=step_overhead_s) if serving else None

    rows = []
    for g in cards:
        one, plan, needed = planner.row(g)
        n = plan.target.count
        speed, est, meets = None, None, True
        if needed is not None and base.engine == "vllm":
            s = core_plan.setup(spec, plan.target, plan.workload)
            est = sp.estimate(s, g, base.batch, inp, out, constants)
            meets = _meets(est, ttft_target, rate_target)
            if not meets:                       # more cards: lower latency, the first that meets
                for k in (c for c in SERVE_COUNTS if c > n):
                    try:
                        w = planner.workload(k)
                        t = GpuTarget(g, count=k)
                        if not core_plan.evaluate(spec, t, w)[1]:
                            continue
                    except BadInput:
                        continue
                    e2 = sp.estimate(core_plan.setup(spec, t, w), g, base.batch, inp, out, constants)
                    if _meets(e2, ttft_target, rate_target):
                        plan, needed, n, est, meets = core_plan.build(spec, t, w, suggest=False), k, k, e2, True
                        break
            speed = _as_throughput(est, n) if est else None
        elif needed is not None and base.engine == "hf_trainer":
            s = core_plan.setup(spec, plan.target, plan.workload)
            o = plan.workload.train
            weight_grads = base.mode not in ADAPTER_METHODS      # full fine-tuning
            speed = th.training(spec, g, n, weight_grads, base.batch, base.ctx, o.grad_ckpt, o.zero if n > 1 else 0,
                                weight_bytes(spec, s.fmt, layout="vllm").total, eff)
        rows.append(Row(gpu=g, one_card=one, plan=plan, gpus_needed=needed,
                        parallelism=_parallelism(base.engine, n, planner.zero_stage),
                        price=price_mod.choose(g, source, overrides), speed=speed, serve=est,
                        meets_target=meets))
    rows.sort(key=_rank)
    if rows and rows[0].gpus_needed is not None and rows[0].meets_target:
        rows[0] = replace(rows[0], cheapest=True)
    return Comparison(model=spec, workload=base, rows=tuple(rows), price_source=source,
                      price_overrides=overrides, efficiency=eff,
                      step_overhead_s=step_overhead_s if serving else 0.0,
                      decode_context=decode_context if serving else 0, max_gpus=planner.counts[-1],
                      input_len=inp, output_len=out,
                      concurrency=base.batch if serving else 0, max_ttft_s=ttft_target,
                      min_tokens_per_s=rate_target)


def _rank(r: Row) -> tuple:
    """Fitting configurations first, by $/M tokens, then by $/hour (no speed estimate), then
    unpriced; within ties the card with more memory to spare."""
    per_m, per_h = r.usd_per_million_tokens, r.cost_per_hour
    return (r.gpus_needed is None, not r.meets_target, per_m is None, per_m or 0.0, per_h is None, per_h or 0.0,
            r.gpus_needed or 0, -r.plan.headroom_bytes, r.gpu.id)
