"""The allocator arithmetic of the tracker, on plain CPU tensors: one count per storage (views
are free), 512-byte blocks, freed when the last reference dies, peaks by phase."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from vramplan.trace.tracker import MemoryTracker, rounded  # noqa: E402

pytestmark = pytest.mark.trace


def test_rounding_is_the_cuda_allocators():
    assert [rounded(n) for n in (0, 1, 512, 513, 4096)] == [0, 512, 512, 1024, 4096]


def test_views_count_once_and_frees_are_seen():
    tr = MemoryTracker()
    with tr:
        tr.phase = "a"
        x = torch.empty(1000, dtype=torch.float32)      # 4000 B -> 4096
        y = x.view(10, 100)[2:5]                          # a view: no new storage
        assert tr.live == 4096
        z = torch.empty(10)                               # 40 B -> 512
        assert tr.live == 4096 + 512
        del x, y
        assert tr.live == 512                              # x's storage died with its last view
    assert tr.peak.bytes == 4096 + 512
    assert tr.phase_peaks["a"].bytes == 4096 + 512
    del z


def test_storage_freed_when_last_view_dies():
    tr = MemoryTracker()
    with tr:
        x = torch.empty(256, dtype=torch.float64)         # 2048 B
        v = x[:10]
        del x
        assert tr.live == 2048                             # the view keeps the storage
        del v
        assert tr.live == 0


def test_alive_at_peak_reconstructs_the_peak():
    tr = MemoryTracker()
    with tr:
        a = torch.empty(1024)                              # 4096
        b = torch.empty(2048)                              # 8192  <- peak 12288
        del b
        c = torch.empty(512)                               # 2048
    alive = tr.alive_at(tr.peak.clock)
    assert sum(r.nbytes for r in alive) == tr.peak.bytes == 12288
    del a, c
