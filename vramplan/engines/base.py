"""What an engine is: the program whose memory a plan predicts (vLLM, transformers' generate(),
the HF Trainer, llama.cpp and Ollama). The planner knows engines only through this protocol;
every rule that belongs to one program lives in that program's package.

An engine turns (model, GPU, workload) into a `Setup` (what stays fixed while batch and context
vary), a Setup into the components at the peak for one batch and context (`Breakdown`), and may
add a start-up report (vLLM's logged figures), conditions of its own on the verdict, and the
levers a user of that program would pull when the workload does not fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

from vramplan.memory.setup import Breakdown, Setup
from vramplan.spec import GpuTarget, ModelSpec, Plan, ServeReport, Workload

# attempt(text, flags, target=None, **workload_changes) -> fits, or None when the change is impossible
Attempt = Callable[..., Optional[bool]]


@dataclass(frozen=True)
class ScaleOut:
    """One way to spread the workload over `n` cards of the same kind: the flags a user types
    and the workload fields that change."""

    text: str
    flags: dict
    changes: dict = field(default_factory=dict)


class Engine(Protocol):
    name: str
    ctx_flag: str           # how this program's users name the context in a suggestion

    def prepare(self, model: ModelSpec, target: GpuTarget, workload: Workload) -> Setup:
        """Everything that does not depend on batch and context."""

    def components(self, setup: Setup, batch: int, ctx: int) -> Breakdown:
        """Bytes per GPU at the peak, by component."""

    def report(self, setup: Setup, breakdown: Breakdown, ctx: int) -> ServeReport | None:
        """What the program would log at start-up (None: nothing to report)."""

    def fits(self, setup: Setup, breakdown: Breakdown, ctx: int) -> bool:
        """The verdict: one rule, used for the plan and for every limit and suggestion. Never
        more permissive as batch or context grow (the limits are solved by bisection on it), and
        cheap: it is asked once per candidate batch and context."""

    def warnings(self, setup: Setup, report: ServeReport | None) -> list[str]:
        """What the plan should say about this engine's decisions."""

    def levers(self, plan: Plan, attempt: Attempt) -> None:
        """Try this program's own switches (re-planned through `attempt`), least disruptive first."""

    def scale_out(self, plan: Plan, n: int) -> ScaleOut | None:
        """How this program spreads over n cards, or None when it does not."""


class EngineBase:
    """Defaults shared by the engines: no report, the verdict is total <= capacity. An engine
    whose program can also refuse to start says so in `fits`, and its report's `starts` must
    agree (Plan.fits reads both)."""

    name = ""
    ctx_flag = "--ctx"

    def report(self, setup: Setup, breakdown: Breakdown, ctx: int) -> ServeReport | None:
        return None

    def fits(self, setup: Setup, breakdown: Breakdown, ctx: int) -> bool:
        return breakdown.total <= setup.capacity

    def warnings(self, setup: Setup, report: ServeReport | None) -> list[str]:
        return []

    def scale_out(self, plan: Plan, n: int) -> ScaleOut | None:
        return None
