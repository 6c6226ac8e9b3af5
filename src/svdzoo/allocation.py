"""Rank allocation across the targeted matrices of a model.

Pure functions over `MatrixInfo` records. A ratio is the fraction of a matrix's
parameters REMOVED (SVD-LLM convention); Duo-SVD and ASVD tables use the retained ratio
`p = 1 - r`, converted at this boundary only. The budget counts only the targeted
matrices (biases, embeddings and `lm_head` are never compressed).

A module whose rank makes factoring not worth it (`k (m + n) >= m n`) is dense, and a
module whose allocated ratio is `<= 0` is kept dense (rank `min(m, n)`) rather than
factored at the break-even rank, which would cost accuracy for no saving.
Every allocator ends with `fit_budget`, which meets the target to 0.5% (absolute).
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from svdzoo.errors import SvdzooError
from svdzoo.lazy import torch
from svdzoo.linalg import rank_for_ratio
from svdzoo.param_counts import column_params, worth_factoring

log = logging.getLogger(__name__)

__all__ = [
    "AllocationError",
    "MatrixInfo",
    "TOLERANCE",
    "effective_params",
    "ranks_for_ratios",
    "ranks_for_retained",
    "achieved_ratio",
    "rebalance",
    "fit_budget",
    "uniform",
    "spectrum_loss",
    "truncation_losses",
    "heterogeneous_by_type",
    "adacr",
    "last_k_layers",
    "knapsack",
    "knapsack_allocation",
    "fit_retained",
    "threshold_allocation",
]

TOLERANCE = 0.005  # |achieved - target| every allocator guarantees
_GREEDY_SLACK = 0.001  # rounding closer than this is left alone (see fit_budget)
_KNAPSACK_WASTE = 0.0025  # most of the total the knapsack's unit rounding may leave unused


class AllocationError(SvdzooError, ValueError):
    """A target that cannot be met, or tables that do not cover the targeted matrices."""


@dataclass(frozen=True)
class MatrixInfo:
    """One targeted matrix: `m x n` (out x in) in decoder layer `layer`, of type `type`."""

    name: str
    layer: int
    type: str
    m: int
    n: int

    @property
    def params(self) -> int:
        return self.m * self.n

    @property
    def full_rank(self) -> int:
        return min(self.m, self.n)


# ---------------------------------------------------------------- accounting


def effective_params(info: MatrixInfo, rank: int, columns: int = 0) -> int:
    """Weight parameters at `rank` (dense when factoring does not pay), `columns` kept dense."""
    if columns > 0:
        return min(column_params(info.m, info.n, rank, columns), info.params)
    if rank >= info.full_rank or not worth_factoring(info.m, info.n, rank):
        return info.params
    return rank * (info.m + info.n)


def _check_infos(infos: list[MatrixInfo]) -> None:
    if not infos:
        raise AllocationError("no target matrices to allocate over")
    names = [i.name for i in infos]
    if len(set(names)) != len(names):
        raise AllocationError("matrix names must be unique")
    for i in infos:
        if i.m <= 0 or i.n <= 0:
            raise AllocationError(f"{i.name}: invalid shape {i.m}x{i.n}")


def _check_target(target: float, lo: float = 0.0, hi: float = 1.0) -> float:
    if not isinstance(target, int | float) or not math.isfinite(target) or not lo <= target <= hi:
        raise AllocationError(f"target ratio {target!r} must lie in [{lo}, {hi}]")
    return float(target)


def _require(infos: list[MatrixInfo], table: Mapping[str, object], what: str) -> None:
    missing = [i.name for i in infos if i.name not in table]
    if missing:
        raise AllocationError(
            f"{what} has no entry for {len(missing)} matrices, e.g. {missing[:3]}"
        )


_DENSE_EPS = 1e-9  # ratios this close to 0 (bisection round-off) mean dense


def _rank(info: MatrixInfo, ratio: float) -> int:
    return info.full_rank if ratio <= _DENSE_EPS else rank_for_ratio(info.m, info.n, ratio)


def ranks_for_ratios(infos: list[MatrixInfo], ratios: Mapping[str, float]) -> dict[str, int]:
    """`k = floor((1-r) m n / (m+n))` per matrix; ratio `<= 0` keeps it dense."""
    _require(infos, ratios, "ratios")
    return {i.name: _rank(i, float(ratios[i.name])) for i in infos}


def ranks_for_retained(infos: list[MatrixInfo], retained: Mapping[str, float]) -> dict[str, int]:
    """Same from retained ratios `p = 1 - r` (Duo-SVD / ASVD tables); `p >= 1` is dense."""
    _require(infos, retained, "retained ratios")
    return {i.name: _rank(i, 1.0 - float(retained[i.name])) for i in infos}


def achieved_ratio(
    infos: list[MatrixInfo], ranks: Mapping[str, int], columns: Mapping[str, int] | None = None
) -> float:
    """Fraction of the targeted parameters removed by `ranks` (and kept `columns`)."""
    _check_infos(infos)
    _require(infos, ranks, "ranks")
    cols = columns or {}
    total = sum(i.params for i in infos)
    kept = sum(effective_params(i, int(ranks[i.name]), int(cols.get(i.name, 0))) for i in infos)
    return 1.0 - kept / total


# ---------------------------------------------------------------- budget fitting


def rebalance(
    infos: list[MatrixInfo],
    ratios: Mapping[str, float],
    target: float,
    *,
    rmin: float = 0.0,
    rmax: float = 0.95,
    frozen: Iterable[str] = (),
) -> dict[str, float]:
    """Continuous ratios meeting the budget exactly: `clamp(r_i + t, rmin, rmax)`.

    A common shift `t` (found by bisection; the weighted mean is monotone in `t`) keeps the
    allocation's ordering and differences, and acts only where the clamps allow, i.e. it
    re-balances what clamping removed onto the other matrices. `frozen` matrices keep
    ratio 0 (dense).
    """
    _check_infos(infos)
    _require(infos, ratios, "ratios")
    target = _check_target(target)
    frozen = set(frozen)
    free = [i for i in infos if i.name not in frozen]
    total = sum(i.params for i in infos)
    for i in free:
        if not math.isfinite(float(ratios[i.name])):
            raise AllocationError(f"{i.name}: ratio {ratios[i.name]!r} is not finite")
    need = target * total
    cap = sum(i.params for i in free)
    if need > rmax * cap * (1 + 1e-12) or (free and need < rmin * cap * (1 - 1e-12)):
        raise AllocationError(
            f"target {target:.4f} is unreachable with per-matrix ratios in [{rmin}, {rmax}] "
            f"over {len(free)} of {len(infos)} matrices"
        )
    base = {i.name: float(ratios[i.name]) for i in free}
    if not free:
        return {i.name: 0.0 for i in infos}

    def removed(t: float) -> float:
        return sum(i.params * min(max(base[i.name] + t, rmin), rmax) for i in free)

    lo, hi = rmin - max(base.values()), rmax - min(base.values())
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if removed(mid) < need:
            lo = mid
        else:
            hi = mid
    t = 0.5 * (lo + hi)
    out = {i.name: 0.0 for i in infos}
    for i in free:
        r = min(max(base[i.name] + t, rmin), rmax)
        out[i.name] = 0.0 if abs(r) <= _DENSE_EPS else r
    return out


def _ladder(info: MatrixInfo, rmin: float, rmax: float) -> tuple[int, int, int]:
    """(lowest rank allowed, largest factored rank worth it, dense rank)."""
    kbe = max(0, math.ceil(info.params / (info.m + info.n)) - 1)  # last k with k(m+n) < mn
    top = min(kbe, rank_for_ratio(info.m, info.n, rmin)) if rmin > 0 else info.full_rank
    low = min(max(1, rank_for_ratio(info.m, info.n, rmax)), kbe)
    return low, kbe, top


def _best_pair(ladders, step, params, by_name, diff):
    """Best (one rank up, another down) move when no single move helps: matrices of
    different sizes trade rank units of different sizes, giving finer steps. Returns the
    two (name, rank, params) updates, or None if no pair reduces |diff|."""
    ups, downs = [], []
    for name in ladders:
        for up, out in ((True, ups), (False, downs)):
            k2 = step(name, up)
            if k2 is not None:
                p2 = effective_params(by_name[name], k2)
                out.append((p2 - params[name], name, k2, p2))
    downs.sort()
    keys = [d[0] for d in downs]
    best, best_err = None, abs(diff)
    for du, nu, ku, pu in ups:
        j = bisect.bisect_left(keys, diff - du)
        for jj in (j - 2, j - 1, j, j + 1):
            if 0 <= jj < len(downs) and downs[jj][1] != nu:
                dd, nd, kd, pd = downs[jj]
                err = abs(diff - du - dd)
                if err < best_err - 1e-9:
                    best, best_err = ((nu, ku, pu), (nd, kd, pd)), err
    return best


def fit_budget(
    infos: list[MatrixInfo],
    ratios: Mapping[str, float],
    target: float,
    *,
    rmin: float = 0.0,
    rmax: float = 0.95,
    frozen: Iterable[str] = (),
    tol: float = TOLERANCE,
) -> dict[str, int]:
    """Ranks whose achieved ratio is within `tol` (absolute) of `target`.

    1. `rebalance`: clamp to `[rmin, rmax]` and shift so removed parameters hit the target.
    2. Ranks by `rank_for_ratio` (ratio `<= 0` -> dense).
    3. Integer rounding fixed greedily, one rank unit at a time, on the matrix whose
       integer ratio deviates most from its continuous ratio in the needed direction,
       while that reduces the error and the error exceeds 0.1% (closer rounding is left
       alone: at LLaMA-7B's shapes the papers' floor ranks are that close, so uniform
       allocation gives exactly them; on SmolLM2-135M they remove 0.13-0.21 % too much at
       40-80 %, so 36, 56 and 123 of its 210 matrices get one rank more); when no
       single move helps, the best pair move (one matrix up, another down). Ties (equal
       deviations, e.g. every matrix of one shape under a uniform ratio) go to the layer
       that has moved least so far, then to a fixed pseudo-random order of the names, so
       the remainder is spread over layers and types instead of going to the first
       layers in iteration order.
    Raises `AllocationError` if the result is not within `tol`.
    """
    cont = rebalance(infos, ratios, target, rmin=rmin, rmax=rmax, frozen=frozen)
    frozen = set(frozen)
    total = sum(i.params for i in infos)
    ranks = {i.name: _rank(i, cont[i.name]) for i in infos}
    ladders = {i.name: _ladder(i, rmin, rmax) for i in infos if i.name not in frozen}
    for i in infos:
        if i.name in ladders:
            low, _, top = ladders[i.name]
            ranks[i.name] = min(max(ranks[i.name], low), top)
    params = {i.name: effective_params(i, ranks[i.name]) for i in infos}
    by_name = {i.name: i for i in infos}
    kept_target = (1.0 - target) * total

    def step(name: str, up: bool) -> int | None:
        low, kbe, top = ladders[name]
        k = ranks[name]
        if up:
            if k >= top:
                return None
            return by_name[name].full_rank if k >= kbe else k + 1
        if k <= low:
            return None
        return kbe if k > kbe else k - 1

    shuffle = {i.name: hashlib.sha1(i.name.encode()).hexdigest() for i in infos}
    moves: dict[int, int] = {}
    for _ in range(100 * len(infos) + 1000):
        kept = sum(params.values())
        diff = kept_target - kept  # > 0: removed too much, add rank
        if abs(diff) <= _GREEDY_SLACK * total:
            break
        up = diff > 0
        best, best_dev = None, (-math.inf,)
        for name in ladders:
            k2 = step(name, up)
            if k2 is None:
                continue
            info = by_name[name]
            p2 = effective_params(info, k2)
            if abs(kept_target - (kept - params[name] + p2)) >= abs(diff):
                continue
            dev = (1 - params[name] / info.params) - cont[name]
            key = (round(dev if up else -dev, 12), -moves.get(info.layer, 0), shuffle[name])
            if key > best_dev:
                best, best_dev = (name, k2, p2), key
        if best is None:
            pair = _best_pair(ladders, step, params, by_name, diff)
            if pair is None:
                break
            for name, k2, p2 in pair:
                ranks[name], params[name] = k2, p2
            continue
        ranks[best[0]], params[best[0]] = best[1], best[2]
        layer = by_name[best[0]].layer
        moves[layer] = moves.get(layer, 0) + 1
    achieved = achieved_ratio(infos, ranks)
    if abs(achieved - target) > tol:
        raise AllocationError(
            f"achieved ratio {achieved:.4f} misses target {target:.4f} by more than {tol}"
        )
    return ranks


# ---------------------------------------------------------------- allocators


def uniform(infos: list[MatrixInfo], target: float) -> dict[str, int]:
    """Every matrix loses the same fraction (SVD, FWSVD, ASVD-uniform, SVD-LLM)."""
    _check_infos(infos)
    target = _check_target(target)
    return fit_budget(infos, {i.name: target for i in infos}, target, rmax=max(0.95, target))


def spectrum_loss(sigma: torch.Tensor, k: int) -> float:
    """`L = sqrt(sum_{j>k} sigma_j^2)`: the theoretical truncation loss at rank `k`."""
    return float(sigma.detach().to(torch.float64)[k:].square().sum().sqrt())


def truncation_losses(
    infos: list[MatrixInfo], spectra: Mapping[str, torch.Tensor], target: float
) -> dict[str, float]:
    """SVD-LLM V2's `L_i` at the target ratio from each matrix's whitened spectrum."""
    _require(infos, spectra, "spectra")
    return {i.name: spectrum_loss(spectra[i.name], rank_for_ratio(i.m, i.n, target)) for i in infos}


def heterogeneous_by_type(
    infos: list[MatrixInfo],
    losses: Mapping[str, float],
    target: float,
    *,
    rmin: float = 0.0,
    rmax: float = 0.95,
) -> dict[str, int]:
    """SVD-LLM V2 heterogeneous allocation.

    Within each type group (all q, all k, ...): `l_i = 1 / log(L_i)`,
    `r_i = G R l_i / sum(l)`, so the group mean is `R` and higher-loss matrices are
    compressed less. Guard (documented choice): `L_i` below `e` is raised to `e`
    (`l_i <= 1`): `1/log` is undefined or negative at `L <= 1`, and such a matrix loses
    almost nothing, so it is compressed most (its ratio then clamps to `rmax`). With the
    unnormalised Gram `L` is far above `e` in practice. Then clamp + `fit_budget`.
    """
    _check_infos(infos)
    target = _check_target(target, 0.0, rmax)
    _require(infos, losses, "losses")
    groups: dict[str, list[MatrixInfo]] = {}
    for i in infos:
        L = float(losses[i.name])
        if not math.isfinite(L) or L < 0:
            raise AllocationError(f"{i.name}: loss {L!r} must be finite and >= 0")
        groups.setdefault(i.type, []).append(i)
    ratios: dict[str, float] = {}
    for kind, members in groups.items():
        raised = [i.name for i in members if float(losses[i.name]) < math.e]
        if raised:  # the allocation then depends on the calibration size (L grows with it)
            log.warning(
                "SVD-LLM V2: %d of %d %s matrices have a loss below e (lowest %.3g), raised "
                "to e, so they share one ratio; a larger calibration set spreads them",
                len(raised), len(members), kind, min(float(losses[n]) for n in raised),
            )  # fmt: skip
        ell = {i.name: 1.0 / math.log(max(float(losses[i.name]), math.e)) for i in members}
        s = sum(ell.values())
        for i in members:
            ratios[i.name] = len(members) * target * ell[i.name] / s
    return fit_budget(infos, ratios, target, rmin=rmin, rmax=rmax)


def adacr(
    infos: list[MatrixInfo],
    layer_importance: Mapping[int, float],
    target: float,
    mrr: float,
    *,
    rmin: float = 0.0,
    rmax: float = 0.95,
) -> dict[str, int]:
    """AdaSVD adaCR: `I_n = I / mean(I)`, retained `CR_l = mrr + I_n (trr - mrr)`,
    `trr = 1 - target`, ratio `1 - CR_l` for every matrix of layer `l`; clamp + `fit_budget`.

    More important layers (larger `I`) keep more. A layer with `CR_l >= 1` stays dense.
    """
    _check_infos(infos)
    target = _check_target(target, 0.0, rmax)
    trr = 1.0 - target
    if not 0.0 <= mrr < trr:
        raise AllocationError(
            f"minimum retained ratio {mrr} must be in [0, target retained ratio {trr:.4f})"
        )
    layers = sorted({i.layer for i in infos})
    missing = [layer for layer in layers if layer not in layer_importance]
    if missing:
        raise AllocationError(f"layer importance missing for layers {missing}")
    imp = {layer: float(layer_importance[layer]) for layer in layers}
    if any(not math.isfinite(v) or v < 0 for v in imp.values()):
        raise AllocationError("layer importances must be finite and >= 0")
    mean = sum(imp.values()) / len(imp)
    if mean <= 0:
        raise AllocationError("all layer importances are zero: adaCR has nothing to go by")
    cr = {layer: mrr + (v / mean) * (trr - mrr) for layer, v in imp.items()}
    ratios = {i.name: 1.0 - cr[i.layer] for i in infos}
    frozen = [name for name, r in ratios.items() if r <= 0]
    return fit_budget(infos, ratios, target, rmin=rmin, rmax=rmax, frozen=frozen)


def last_k_ratio(infos: list[MatrixInfo], target: float, k: int) -> float:
    """The ratio every matrix of the last `k` decoder layers needs so that the targeted
    linears as a whole lose `target` (earlier layers dense): ResSVD's `N R_o / k`."""
    layers = sorted({i.layer for i in infos})
    chosen = set(layers[len(layers) - k :])
    total = sum(i.params for i in infos)
    # total / chosen first: exactly 1.0 when every layer is chosen, so K = N needs exactly
    # `target` (`target * total / total` can round above it, e.g. 0.9 on LLaMA-7B's shapes,
    # and then a target equal to `max_ratio` was refused as unreachable)
    return target * (total / sum(i.params for i in infos if i.layer in chosen))


def last_k_layers(
    infos: list[MatrixInfo], target: float, *, max_ratio: float = 0.95, k: int | None = None
) -> tuple[dict[str, int], int]:
    """ResSVD partial compression: only the last `K` decoder layers, at the uniform ratio
    that meets the overall budget; earlier layers stay dense.

    `K` is the smallest whose needed ratio is `<= max_ratio`, unless `k` is given.
    Returns `(ranks, K)`.
    """
    _check_infos(infos)
    target = _check_target(target, 0.0, max_ratio)
    layers = sorted({i.layer for i in infos})
    dense = {i.name: i.full_rank for i in infos}
    if target == 0.0:
        return dense, 0

    def needed(K: int) -> float:
        return last_k_ratio(infos, target, K)

    if k is None:
        K = next((K for K in range(1, len(layers) + 1) if needed(K) <= max_ratio), None)
        if K is None:  # unreachable: target <= max_ratio makes K = all layers feasible
            raise AllocationError(f"target {target} cannot be met with ratio <= {max_ratio}")
    else:
        K = int(k)
        if not 1 <= K <= len(layers):
            raise AllocationError(f"K={k} must be in [1, {len(layers)}] (decoder layers)")
        if needed(K) > max_ratio:
            raise AllocationError(
                f"compressing only the last {K} layers needs ratio {needed(K):.3f} > {max_ratio}"
            )
    chosen = set(layers[-K:])
    subset = [i for i in infos if i.layer in chosen]
    r = needed(K)
    sub_ranks = fit_budget(subset, {i.name: r for i in subset}, r, rmax=max_ratio)
    ranks = {**dense, **sub_ranks}
    achieved = achieved_ratio(infos, ranks)
    if abs(achieved - target) > TOLERANCE:
        raise AllocationError(f"last-{K}: achieved {achieved:.4f} misses target {target:.4f}")
    log.info("last-K allocation: K=%d of %d layers at ratio %.4f", K, len(layers), r)
    return ranks, K


def _options(table: Mapping, name: str) -> list[tuple[float, float]]:
    try:
        opts = sorted(((float(p), float(c)) for p, c in table[name].items()), reverse=True)
    except (TypeError, ValueError, AttributeError) as exc:
        raise AllocationError(f"{name}: malformed sensitivity/cost entry ({exc})") from exc
    if not opts:
        raise AllocationError(f"{name}: no retained-ratio options")
    for p, c in opts:
        if not 0 < p <= 1.0 + 1e-9 or math.isnan(c):
            raise AllocationError(f"{name}: invalid option p={p}, value={c}")
    return opts


def _params_retained(info: MatrixInfo, p: float) -> int:
    return effective_params(info, _rank(info, 1.0 - p))


def knapsack(
    infos: list[MatrixInfo],
    cost: Mapping[str, Mapping[float, float]],
    budget_params: int,
    *,
    resolution: int = 8192,
) -> dict[str, float]:
    """Duo-SVD module-adaptive allocation: one retained ratio `p` per module (from its
    cost table's keys, e.g. 0.1..1.0; `p = 1.0` is dense), chosen as the official code's
    `determine_optimal_ranks_dp` chooses: the reachable parameter total closest to the
    budget, and at that total the smallest summed cost (ties: the smaller total).

    Dynamic programme over a parameter axis discretised into at least `resolution` units
    of at most `ceil(total / resolution)` parameters: the least cost of every exact total.
    Each option's weight is rounded UP to whole units and the budget DOWN (the official
    code rounds both down), so a choice at or below the budget's units fits the real
    budget. The rounding wastes up to one unit per module, `n / resolution` of the total
    for `n` modules (2.6 % for SmolLM2's 210 at 8192 units, five times the 0.5 %
    tolerance): the unit is made finer where needed so it stays under 0.25 %. Within a
    module, ties prefer the larger `p`. A budget outside the grid's reach (e.g. 85 %
    removed with retained options down to 0.2) gets the nearest total the grid reaches,
    with a warning: `fit_budget` then shifts the ratios to the target. Returns retained
    ratios.
    """
    _check_infos(infos)
    _require(infos, cost, "cost table")
    total = sum(i.params for i in infos)
    if budget_params < 0:
        raise AllocationError(f"parameter budget {budget_params} is negative")
    unit = max(1, math.ceil(total / max(1, resolution)))
    # rounding wastes < 1 unit per module and < 1 of the capacity: keep that under
    # _KNAPSACK_WASTE of the total, or the choice answers a tighter budget than asked
    unit = max(1, min(unit, math.floor(_KNAPSACK_WASTE * total / (len(infos) + 1))))
    target = int(budget_params) // unit
    opts_all = [_options(cost, info.name) for info in infos]
    weights = [
        [math.ceil(_params_retained(info, p) / unit) for p, _ in opts]
        for info, opts in zip(infos, opts_all, strict=True)
    ]
    size = sum(max(w) for w in weights) + 1  # every reachable total
    INF = math.inf
    dp = torch.full((size,), INF, dtype=torch.float64)  # least cost of each exact total
    dp[0] = 0.0
    choices: list[torch.Tensor] = []
    for opts, ws in zip(opts_all, weights, strict=True):
        cand = torch.full((len(opts), size), INF, dtype=torch.float64)
        for o, ((_, c), w) in enumerate(zip(opts, ws, strict=True)):
            cand[o, w:] = dp[: size - w] + c
        dp, arg = cand.min(0)  # the first minimum: the larger `p` (options sorted descending)
        choices.append(arg.to(torch.int16) if len(opts) <= 2**15 - 1 else arg)  # compact
    reachable = torch.isfinite(dp)
    distance = (torch.arange(size) - target).abs().to(torch.float64)
    distance[~reachable] = INF
    nearest = torch.nonzero(distance == distance.min()).squeeze(1)  # one or two totals
    j = int(nearest[int(torch.argmin(dp[nearest]))])  # argmin: the first, the smaller total
    if abs(j - target) * unit > _KNAPSACK_WASTE * total:
        log.warning(
            "the sensitivity table's grid does not reach this budget (%d parameters): the "
            "nearest choice it allows keeps about %d, and fit_budget shifts the ratios to "
            "the target, so the allocation is not the table's alone",
            budget_params,
            j * unit,
        )
    out: dict[str, float] = {}
    for info, opts, ws, arg in zip(
        reversed(infos), reversed(opts_all), reversed(weights), reversed(choices), strict=True
    ):
        o = int(arg[j])
        out[info.name] = opts[o][0]
        j -= ws[o]
    assert j == 0, j
    return {i.name: out[i.name] for i in infos}


def knapsack_allocation(
    infos: list[MatrixInfo],
    cost: Mapping[str, Mapping[float, float]],
    target: float,
    *,
    resolution: int = 8192,
    rmax: float = 0.95,
) -> dict[str, int]:
    """Ranks from `knapsack` at budget `(1 - target) * total`, then `fit_budget` (dense
    choices stay dense) so the achieved ratio is within 0.5% of `target`."""
    _check_infos(infos)
    target = _check_target(target)
    total = sum(i.params for i in infos)
    retained = knapsack(infos, cost, math.floor((1.0 - target) * total), resolution=resolution)
    return fit_retained(infos, retained, target, rmax=rmax)


def fit_retained(
    infos: list[MatrixInfo], retained: Mapping[str, float], target: float, *, rmax: float = 0.95
) -> dict[str, int]:
    """Ranks for a knapsack's retained ratios, shifted by `fit_budget` to `target` (dense
    choices stay dense). Lets a caller that keeps the knapsack's choice run it once."""
    ratios = {name: 1.0 - p for name, p in retained.items()}
    frozen = [name for name, r in ratios.items() if r <= 1e-12]
    return fit_budget(infos, ratios, target, rmax=max(rmax, max(ratios.values())), frozen=frozen)


def threshold_allocation(
    infos: list[MatrixInfo],
    sensitivity: Mapping[str, Mapping[float, float]],
    target: float,
    *,
    rmax: float = 0.95,
) -> dict[str, int]:
    """ASVD sensitivity-based allocation.

    All `(module, retained p < 1, ppl)` triples are sorted by perplexity and the threshold
    is binary-searched over them: at threshold `tau` each module takes the smallest `p`
    whose ppl `<= tau` (dense if none). Parameters fall as `tau` rises; the smallest `tau`
    that meets the budget is chosen, then `fit_budget` (dense modules stay dense) removes
    the overshoot of the discrete ratios.
    """
    _check_infos(infos)
    target = _check_target(target)
    _require(infos, sensitivity, "sensitivity table")
    table = {i.name: [(p, v) for p, v in _options(sensitivity, i.name) if p < 1.0] for i in infos}
    taus = sorted({v for opts in table.values() for _, v in opts})
    total = sum(i.params for i in infos)
    budget = (1.0 - target) * total

    def choose(tau: float) -> dict[str, float]:
        out = {}
        for i in infos:
            ok = [p for p, v in table[i.name] if v <= tau]
            out[i.name] = min(ok) if ok else 1.0
        return out

    def params(ch: Mapping[str, float]) -> int:
        return sum(_params_retained(i, ch[i.name]) for i in infos)

    if not taus or params(choose(taus[-1])) > budget:
        raise AllocationError(
            f"target {target} is beyond the sensitivity table: even the smallest retained "
            f"ratios keep more than {budget:.0f} parameters"
        )
    lo, hi = 0, len(taus) - 1  # invariant: taus[hi] meets the budget
    while lo < hi:
        mid = (lo + hi) // 2
        if params(choose(taus[mid])) <= budget:
            hi = mid
        else:
            lo = mid + 1
    chosen = choose(taus[hi])
    log.info("ASVD threshold: ppl <= %.4f (%d of %d triples)", taus[hi], hi + 1, len(taus))
    ratios = {name: 1.0 - p for name, p in chosen.items()}
    frozen = [name for name, r in ratios.items() if r <= 1e-12]
    return fit_budget(infos, ratios, target, rmax=max(rmax, max(ratios.values())), frozen=frozen)
