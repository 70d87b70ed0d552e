"""Count live tensor bytes the way the CUDA caching allocator does, op by op.

`MemoryTracker` is a TorchDispatchMode: every aten op that runs under it (on FakeTensors or on
real tensors alike) hands it its outputs. Each *storage* is counted once, however many views
share it, rounded up to 512 bytes as `CUDACachingAllocator` rounds every block, and uncounted
when its Python storage object dies (a weakref finalizer: torch keeps one Python object per
storage alive as long as any tensor, view or autograd saved-tensor holds it). So `live` is what
`torch.cuda.memory_allocated()` would say, and `peak` what `max_memory_allocated()` would, minus
what only a GPU adds (context, kernel workspaces): memory/overhead.py adds that on top.

Every storage gets a record (bytes, op, module, phase, clock of birth and death). After the run
the scenario names what the big objects are (`mark`: weights, gradients, optimizer state, KV
cache); the rest is what the phase that made it made: activations. The records alive at the
peak clock are the breakdown, and they sum to the peak exactly.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch.nn.modules import module as _nn_module
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from vramplan.memory.overhead import block_rounded as rounded   # the allocator's 512-B blocks, shared with the analytic tier
from vramplan.trace import device as trace_device


@dataclass
class Record:
    """One storage: where it was born, and when it was born and freed (op clock)."""

    nbytes: int
    op: str
    module: str
    phase: str
    shape: tuple
    dtype: str
    born: int
    died: int | None = None
    category: str = ""

    def alive_at(self, clock: int) -> bool:
        return self.born <= clock and (self.died is None or self.died >= clock)


@dataclass
class Peak:
    bytes: int = 0
    clock: int = -1
    op: str = ""
    module: str = ""
    phase: str = ""


class MemoryTracker(TorchDispatchMode):
    """Live bytes per storage; peaks overall and per phase. Set `phase` as the program moves on."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[Record] = []
        self._index: dict[int, int] = {}       # id(storage) -> index in records, while alive
        self.live = 0
        self.clock = 0
        self.phase = "build"
        self.peak = Peak()
        self.phase_peaks: dict[str, Peak] = {}
        self.names: dict[int, str] = {}        # id(module) -> its path in the model
        self.stack: list[str] = []             # modules whose forward is running
        self._hooks: list = []

    def name_modules(self, model: torch.nn.Module) -> None:
        """Report allocations by module path (else by class name)."""
        self.names = {id(m): name for name, m in model.named_modules()}

    # --- the dispatch hook ---------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.clock += 1
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t, func)
        if func is torch.ops.aten.resize_.default or func is torch.ops.aten.set_.source_Storage:
            self._track(args[0], func)
        self._check_peak(func)
        return out

    def _track(self, t: torch.Tensor, func) -> None:
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):      # sparse or nested layouts: none here
            return
        key = id(st)
        n = rounded(st.nbytes())
        i = self._index.get(key)
        if i is not None:
            r = self.records[i]
            if r.nbytes != n:                            # resized in place
                self.live += n - r.nbytes
                r.nbytes = n
            return
        self._index[key] = len(self.records)
        self.records.append(Record(n, _op_name(func), self._module(), self.phase, tuple(t.shape),
                                   str(t.dtype).removeprefix("torch."), self.clock))
        self.live += n
        weakref.finalize(st, self._free, key)

    def _free(self, key: int) -> None:
        i = self._index.pop(key, None)
        if i is None:
            return
        r = self.records[i]
        r.died = self.clock
        self.live -= r.nbytes

    def _check_peak(self, func) -> None:
        p = self.phase_peaks.get(self.phase)
        if p is None or self.live > p.bytes:
            p = Peak(self.live, self.clock, _op_name(func), self._module(), self.phase)
            self.phase_peaks[self.phase] = p
            if self.live > self.peak.bytes:
                self.peak = p

    def _module(self) -> str:
        """The innermost module whose forward is running (also a checkpointed recompute); in
        the backward, the autograd node running."""
        if self.stack:
            return self.stack[-1]
        node = torch._C._current_autograd_node()
        return node.name() if node is not None else ""

    # Global forward hooks only: they hold no tensor. (torch's ModuleTracker also hooks the
    # backward through grad hooks on module outputs, which keeps the tensors a checkpointed
    # layer recomputes alive: it would change the program it measures.)
    def _enter(self, module, args):
        self.stack.append(self.names.get(id(module), type(module).__name__))

    def _leave(self, module, args, output):
        if self.stack:
            self.stack.pop()

    def __enter__(self):
        self._hooks = [_nn_module.register_module_forward_pre_hook(self._enter),
                       _nn_module.register_module_forward_hook(self._leave, always_call=True)]
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            for h in self._hooks:
                h.remove()
            self._hooks = []

    # --- what the scenario tells us ---------------------------------------------------------------
    def mark(self, category: str, tensors) -> None:
        """Name the storages of these (alive) tensors: "weights", "gradients", "kv_cache", ..."""
        for t in tensors:
            if not isinstance(t, torch.Tensor):
                continue
            i = self._index.get(id(t.untyped_storage()))
            if i is not None and not self.records[i].category:
                self.records[i].category = category

    def reset_peak(self) -> None:
        """Measure from here on (e.g. the steady-state second training step); on a real device
        its allocator's peak is reset at the same point (trace/device.py)."""
        self.peak = Peak(self.live, self.clock, "", "", self.phase)
        self.phase_peaks = {}
        trace_device.peak_reset()

    def alive_at(self, clock: int) -> list[Record]:
        return [r for r in self.records if r.alive_at(clock)]


def _op_name(func) -> str:
    name = getattr(func, "__name__", str(func))
    return name.removesuffix(".default")
