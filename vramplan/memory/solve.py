"""Solve for the largest batch and context that fit, given a monotone cost function.

Memory never decreases when batch or context grows, so a doubling search followed by bisection
finds the exact largest integer in O(log n) evaluations.
"""

from __future__ import annotations

from typing import Callable


def largest_fitting(fits: Callable[[int], bool], upper: int) -> int:
    """Largest n in [1, upper] with fits(n), or 0 when even 1 does not fit."""
    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= upper and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, upper + 1)
    while hi - lo > 1:          # invariant: fits(lo), not fits(hi) (or hi beyond upper)
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo
