"""How Duo-SVD's split search walks `delta_r`: the official code's schedule with its
pre-check, the exact integer golden-section (Fibonacci) search, and svdzoo's first form."""

from __future__ import annotations

import math
from collections.abc import Callable


def _memoised(f: Callable[[int], float], cache: dict[int, float]) -> Callable[[int], float]:
    """`f` evaluated once per point, into `cache` (the search schedules read it back)."""

    def F(x: int) -> float:
        if x not in cache:
            cache[x] = f(x)
        return cache[x]

    return F


def _golden_int(f: Callable[[int], float], lo: int, hi: int) -> int:
    """Golden-section search for a minimum of `f` on the integers `[lo, hi]` (assumes
    unimodal, as Duo-SVD does), in its exact integer form (Fibonacci search): the bracket
    shrinks by consecutive Fibonacci numbers, so the interior point that survives a step is
    the next step's probe and every step costs one evaluation (rounding the continuous
    golden ratio misses that reuse: about 4 more evaluations at Duo-SVD's ranks). Points
    past `hi` pad the bracket and count as +inf. The last bracket of <= 3 points is
    scanned, `lo` (the plain factorisation) is always compared; returns the argmin seen,
    the smallest on ties."""
    cache: dict[int, float] = {}
    inner = _memoised(f, cache)

    def F(x: int) -> float:
        return math.inf if x > hi else inner(x)

    fib = [0, 1]
    while fib[-1] < hi - lo:
        fib.append(fib[-1] + fib[-2])
    a, n = lo, len(fib) - 1
    while n > 3:  # the bracket [a, a + fib[n]] holds a minimum
        if F(a + fib[n - 2]) <= F(a + fib[n - 1]):
            n -= 1  # keep [a, a + fib[n - 1]]: its right probe is the left one just used
        else:
            a, n = a + fib[n - 2], n - 1  # keep the right part: its left probe was the right
    for x in range(a, min(a + fib[n], hi) + 1):
        F(x)
    F(lo)
    return min(cache, key=lambda x: (cache[x], x))


def _rounded_golden(f: Callable[[int], float], lo: int, hi: int) -> int:
    """svdzoo's first integer golden-section search (`schedule=rounded`, kept so that the
    results recorded with it before 2026-12-03 reproduce): both probes rounded afresh from
    the bracket at every step (so the surviving one is often missed), the final bracket of
    <= 4 points scanned, `lo` always compared. Returns the argmin seen."""
    cache: dict[int, float] = {}
    F = _memoised(f, cache)

    invphi = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    while b - a > 3:
        c = b - round(invphi * (b - a))
        d = a + round(invphi * (b - a))
        if c >= d:
            c, d = (a + b) // 2, (a + b) // 2 + 1
        if F(c) <= F(d):
            b = d
        else:
            a = c
    for x in range(a, b + 1):
        F(x)
    F(lo)
    return min(cache, key=lambda x: (cache[x], x))


def _official_schedule(f: Callable[[int], float], k: int, f0: float) -> int:
    """Duo-SVD's own split search (official code, `component/cal_r.py`), re-implemented:

    1. A pre-check at `delta_r = round(0.382 k)` and `round(0.090 k)` (`phi^-2 k` and
       `phi^-5 k`, at least 1): if neither beats the plain error `f0`, no split is tried.
       Most matrices of a real model end here, after two evaluations.
    2. Otherwise golden-section on `[0, k]` with the interior probes rounded, the
       surviving one reused (one new evaluation per step, earlier values reused), while
       the bracket spans >= 3; `f(c) < f(d)` keeps the left part, ties the right.
    3. The answer is the better of the last two probes (no scan of the final bracket;
       the left one on ties). Returns 0 when the pre-check gives up.
    """
    F = _memoised(f, {0: f0})

    inv_phi = (math.sqrt(5) - 1) / 2
    inv_phi2 = inv_phi * inv_phi
    if F(max(1, round(k * inv_phi2))) >= f0 and F(max(1, round(k * inv_phi * inv_phi2**2))) >= f0:
        return 0
    low, high = 0, k
    c, d = low + round(inv_phi2 * (high - low)), low + round(inv_phi * (high - low))
    while high - low >= 3:
        if F(c) < F(d):
            high, d = d, c
            c = low + round(inv_phi2 * (high - low))
        else:
            low, c = c, d
            d = low + round(inv_phi * (high - low))
    return c if F(c) <= F(d) else d


SCHEDULES = ("official", "golden", "rounded")
