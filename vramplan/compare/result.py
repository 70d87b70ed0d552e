"""What `compare` and `sweep` answer, as data: a row per GPU of a comparison, a grid of cells of
a sweep, and the speed estimate of one configuration. The renderers (vramplan.render.compare,
vramplan.render.plot) read these and nothing else."""

from __future__ import annotations

from dataclasses import dataclass

from vramplan.compare.prices import PriceChoice
from vramplan.spec import GpuSpec, GpuTarget, ModelSpec, Plan, Workload


@dataclass(frozen=True, kw_only=True)
class Phase:
    """One forward pass: its time and which side of the roofline binds."""
    seconds: float
    memory_s: float
    compute_s: float
    comm_s: float
    bound: str            # "memory" | "compute"
    bytes_read: int       # per rank
    flops: float          # per rank


@dataclass(frozen=True, kw_only=True)
class Estimate:
    """A serving configuration under a traffic shape (per configuration, all ranks)."""
    decode: Phase                 # one decode step at the mean context
    prefill: Phase                # one prompt alone (time to first token, less queueing)
    batch_prefill: Phase          # the `concurrency` prompts of one request cycle
    concurrency: int
    input_len: int
    output_len: int

    @property
    def per_sequence_tokens_per_s(self) -> float:
        return 1.0 / self.decode.seconds

    @property
    def cycle_s(self) -> float:
        return self.batch_prefill.seconds + self.output_len * self.decode.seconds

    @property
    def output_tokens_per_s(self) -> float:
        """Aggregate output tokens per second over request cycles (prefill included)."""
        return self.concurrency * self.output_len / self.cycle_s

    @property
    def input_tokens_per_s(self) -> float:
        return self.concurrency * self.input_len / self.cycle_s

    @property
    def ttft_s(self) -> float:
        """One prompt's prefill plus the decode step it waits behind: a lower bound under load."""
        return self.prefill.seconds + self.decode.seconds

    @property
    def prefill_share(self) -> float:
        """Share of a cycle's GPU time spent in prefill: what input tokens are charged."""
        return self.batch_prefill.seconds / self.cycle_s


@dataclass(frozen=True, kw_only=True)
class Throughput:
    tokens_per_s: float
    bound: str                  # "memory" or "compute" (which side of the roofline binds)
    step_s: float               # decode: one step; training: one micro-batch step
    bytes_per_step: int         # decode, per GPU (0 for training)
    flops_per_token: float      # per token, whole model
    efficiency: float
    comm_s: float = 0.0         # inter-GPU traffic of one step over PCIe, per GPU
    needs_nvlink: bool = False  # comm_s exceeds the step's own work


@dataclass(frozen=True, kw_only=True)
class Row:
    gpu: GpuSpec
    one_card: Plan                  # the workload on one card: the "fits" column and the bar
    plan: Plan                      # on `gpus_needed` cards, else on the most cards tried
    gpus_needed: int | None         # None: no configuration tried fits
    parallelism: str                # "none", "tp" (serving), "zero3" (or the --zero stage), "ddp"
    price: PriceChoice | None       # None: no quote from the price source, no --price
    speed: Throughput | None        # of the configuration on `gpus_needed` cards
    cheapest: bool = False
    serve: Estimate | None = None   # serving: the traffic shape's estimate (prefill, decode, TTFT)
    meets_target: bool = True       # --max-ttft / --min-tokens-per-s met (True without targets)

    @property
    def fits(self) -> bool:
        return self.one_card.fits

    @property
    def needs_nvlink(self) -> bool:
        """The cards' traffic per step (TP all-reduces, ZeRO gathers) would take longer over PCIe
        than the step's own work (docs/compare.md); without an estimate, any multi-GPU layout."""
        if self.gpus_needed is None or self.gpus_needed == 1:
            return False
        return self.speed.needs_nvlink if self.speed else True

    @property
    def price_per_hour(self) -> float | None:
        return self.price.usd_per_hour if self.price else None

    @property
    def cost_per_hour(self) -> float | None:
        if self.price is None or self.gpus_needed is None:
            return None
        return self.price.usd_per_hour * self.gpus_needed

    @property
    def tokens_per_s(self) -> float | None:
        return self.speed.tokens_per_s if self.speed else None

    @property
    def usd_per_million_tokens(self) -> float | None:
        """The seeds' formula: hourly x cards / tokens per second x 1e6 / 3600 (serving: output
        tokens per second over whole request cycles, so prefill time is paid for too)."""
        cost, rate = self.cost_per_hour, self.tokens_per_s
        if cost is None or not rate:
            return None
        return cost / rate * 1e6 / 3600

    def _split(self, prefill: bool) -> float | None:
        e, cost = self.serve, self.cost_per_hour
        if e is None or cost is None:
            return None
        seconds = e.batch_prefill.seconds if prefill else e.output_len * e.decode.seconds
        tokens = e.concurrency * (e.input_len if prefill else e.output_len)
        return cost / 3600 * seconds / tokens * 1e6

    @property
    def usd_per_million_input(self) -> float | None:
        """Serving: the cycle's prefill time, charged to its input tokens ($ per million)."""
        return self._split(True)

    @property
    def usd_per_million_output(self) -> float | None:
        """Serving: the cycle's decode time, charged to its output tokens ($ per million)."""
        return self._split(False)


@dataclass(frozen=True, kw_only=True)
class Comparison:
    model: ModelSpec
    workload: Workload              # as planned on one card
    rows: tuple[Row, ...]
    price_source: str
    price_overrides: dict
    efficiency: float               # serve: share of the roofline; training: MFU
    step_overhead_s: float          # serve only
    decode_context: int             # serve: KV tokens each sequence holds in the estimate
    max_gpus: int                   # the most cards of one kind tried
    input_len: int = 0              # serve: the traffic shape (tokens in and out per request,
    output_len: int = 0             # requests in flight)
    concurrency: int = 0
    max_ttft_s: float | None = None         # latency targets, None when not asked
    min_tokens_per_s: float | None = None   # per sequence

    @property
    def cheapest(self) -> Row | None:
        return next((r for r in self.rows if r.cheapest), None)


@dataclass(frozen=True)
class Cell:
    total_bytes: int
    fits: bool


@dataclass(frozen=True, kw_only=True)
class Sweep:
    model: ModelSpec
    target: GpuTarget
    workload: Workload              # the first grid point; batch and ctx vary
    capacity_bytes: int
    ctxs: tuple[int, ...]
    batches: tuple[int, ...]
    cells: tuple[tuple[Cell, ...], ...]     # [ctx index][batch index]
    max_batch: tuple[int, ...]              # largest batch that fits at each ctx (0: none)
    weight_dtype: str = ""                  # resolved, as in Plan
    kv_dtype: str = ""

    @property
    def any_fits(self) -> bool:
        return any(c.fits for row in self.cells for c in row)
