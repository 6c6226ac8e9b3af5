"""One Duo-SVD candidate's rest truncation, solved exactly and cheaply: in the whitened SVD's
coordinates, or on the rest's own side, each candidate updated from the nearest one formed."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from svdzoo import lapack
from svdzoo.column_split.kernels import (
    F32_MAX_ERROR,
    _congruence,
    _f32_error,
    _lower_congruence,
    _scaled_f32,
    _times_lower_rows,
    top_eigenpairs,
)
from svdzoo.lazy import torch
from svdzoo.linalg import NumericsError, all_finite

if TYPE_CHECKING:
    from torch import Tensor


class _RestProblem:
    """Duo-SVD's rest truncation, for the top-`c` scored columns kept, solved in the
    coordinates of the baseline's whitened SVD `W S = U Sigma V^T`.

    For kept columns `K` and the rest `R`, Duo-SVD truncates the rest under `H_RR`: the
    optimum keeps the top eigenvectors of `G_R = W_R H_RR W_R^T`. Every column of `W` lies
    in the span of `U` (`S` is invertible), so in the coordinates `W^ = U^T W` the problem
    is `r x r` (`r = min(m, n)`), whatever the shape:
    `T = U^T G_R U = diag(lam) - (a Q^T + Q a^T)`, with `a = W^_K`, `P^ = W^ H`,
    `Q = P^_K - a H_KK / 2` (a correction of rank <= 2c), or `T = W^_R H_RR W^_R^T`
    directly when few columns are left. One eigenvalue solve of `T` per candidate, no
    Cholesky, no whitened product; the kept columns' coordinates are computed once, as a
    prefix of the score order. Because the kept sets are nested, `T` is updated from the
    nearest candidate already formed (`_update`): moving the boundary from `c0` to `c`
    changes `T` by a rank-`2|c - c0|` term, `r x |c - c0| x (r + min(c, c0))` flops instead
    of `r x c x (r + c)`; the search's late probes sit a few columns apart.

    `d` (the `ritz` search): when `d + 2c < r`, the top eigenvectors lie, up to a coupling
    bounded by `lam` past `d`, in the first `d` coordinates plus the span of the kept
    columns' coordinates, so a `(d + 2c)`-sized Rayleigh-Ritz problem replaces `T`.

    What it returns is not an estimate: the top `kr` eigen- (or Ritz) vectors `E` give the
    factors `A B = U E E^T U^T W_R`, whose loss `tr(G_R) - sum(top kr)` is the loss
    reported. With `d=None` it is the exact truncation's; the Ritz one bounds it from above
    (Ky Fan), tight to the coupling's square (tests and `bench_compress.py` compare both
    with `search="reference"`, which whitens every rest afresh).
    """

    def __init__(
        self,
        W: Tensor,
        H: Tensor,
        U: Tensor,
        sigma: Tensor,
        order: Tensor,
        d: int | None,
        *,
        Vh: Tensor,
        L: Tensor,
        rest_factor: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self.W, self.H, self.U, self.order, self.d = W, H, U, order, d
        self.rest_factor = rest_factor  # rest indices -> a Cholesky factor of H_RR
        self._WtW: Tensor | None = None  # W^T W, made once the own side is used
        self._own_formed: dict[int, tuple[Tensor, Tensor, Tensor]] = {}  # c -> (G, S_R, R)
        self._own_factor: Tensor | None = None  # `_prepare_own`'s Cholesky factor
        self._own_size = 0  # the leading block `_prepare_own` has made (n: the fallback)
        self.solved = 0  # candidates whose loss was asked for
        # row-major: LAPACK's `Vh` comes column-major, and a product with a slice of that
        # layout ran 20x slower than with a row-major copy (4 ms against 92 ms for 11 kept
        # columns at r = 1024, n = 2752), which the search's late probes make many of
        self.sigma, self.Vh, self.L = sigma, Vh.contiguous(), L
        self.lam = sigma.square()
        self.tr_g = float(self.lam.sum())
        # the kept prefix's coordinates `U^T W_K` and `U^T W H_K`, in buffers that grow by
        # doubling (re-concatenating at every extension copied them ~12 times per search)
        self._have = 0
        self._Wc = W.new_empty(U.shape[1], 0)
        self._Pc = W.new_empty(U.shape[1], 0)
        self._W_hat: Tensor | None = None  # U^T W, made once the direct form is used
        self._formed: dict[int, Tensor] = {}  # c -> T(c), the few most recently formed
        self._Wt: Tensor | None = None
        self._Ut: Tensor | None = None
        self._last_loss: float | None = None  # the latest candidate's, for `loss_f32`

    KEEP_FORMED = 3  # r x r float64 each: 0.4 GB at r = 4096
    NARROW = 64  # columns: `_update` adds a narrower block as two GEMMs

    def _update_cost(self, c: int) -> tuple[int, int]:
        """`(c0, flops / 2)`: the formed candidate to update `T(c)` from (0: `diag(lam)`)."""
        r = self.lam.numel()
        best, cost = 0, r * c * (r + c)
        for c0 in self._formed:
            step = abs(c - c0)
            if r * step * (r + min(c, c0) + step) < cost:
                best, cost = c0, r * step * (r + min(c, c0) + step)
        return best, cost

    def _direct_cost(self, c: int) -> int:
        left = self.W.shape[1] - c
        return self.lam.numel() * left * (self.lam.numel() + left)

    def _update(self, c: int) -> Tensor:
        """`T(c)` from `T(c0)`: with the kept prefix split into `o = [0, lo)` and
        `w = [lo, hi)`, `T(hi) = T(lo) - (a_w Y^T + Y a_w^T)`, where
        `Y = P^_w - a_o H_ow - a_w H_ww / 2` (the cross terms with the columns kept before).
        A narrow `w` (the search's late probes) adds both halves to `T(c0)` as GEMMs; a
        wide one forms `X = a_w Y^T` once and adds `X` and its transpose (one GEMM and a
        strided pass instead of two GEMMs: cheaper past ~64 columns at r = 192 and 576)."""
        c0, _ = self._update_cost(c)
        lo, hi = min(c, c0), max(c, c0)
        a, b = self._coordinates(hi)
        kept = self.order[:hi]
        a_w = a[:, lo:hi]
        # rows w of H, read as its columns (H symmetric), restricted to the kept prefix
        H_w = self.H.index_select(0, kept[lo:]).index_select(1, kept)
        Y = torch.addmm(b[:, lo:], a_w, H_w[:, lo:].T, alpha=-0.5)
        if lo > 0:
            Y.addmm_(a[:, :lo], H_w[:, :lo].T, alpha=-1.0)
        sign = -1.0 if c > c0 else 1.0
        if c0 > 0 and hi - lo <= self.NARROW:
            T = torch.addmm(self._formed[c0], a_w, Y.T, alpha=sign).addmm_(Y, a_w.T, alpha=sign)
        elif c0 > 0:
            X = a_w @ Y.T
            T = torch.add(self._formed[c0], X, alpha=sign).add_(X.T, alpha=sign)
        else:
            X = a_w @ Y.T
            T = -(X + X.T)
            T.diagonal().add_(self.lam)
        self._formed[c] = T
        while len(self._formed) > self.KEEP_FORMED:
            del self._formed[next(iter(self._formed))]
        return T

    def _coordinates(self, c: int) -> tuple[Tensor, Tensor]:
        have = self._have
        if c > have:
            new = self.order[have:c]
            if self._Wt is None:
                self._Wt = self.W.T.contiguous()  # columns of W as rows: gathers are memcpys
            if c > self._Wc.shape[1]:
                size = min(max(c, 2 * self._Wc.shape[1]), self.W.shape[1])
                Wc, Pc = (self._Wc.new_empty(self._Wc.shape[0], size) for _ in range(2))
                Wc[:, :have], Pc[:, :have] = self._Wc[:, :have], self._Pc[:, :have]
                self._Wc, self._Pc = Wc, Pc
            if self._Ut is None:  # `U^T` row-major: the product with the transposed view
                self._Ut = self.U.T.contiguous()  # ran 1.8x slower (70 -> 39 ms, r = 1024)
            torch.mm(self._Ut, self._Wt.index_select(0, new).T, out=self._Wc[:, have:c])
            # U^T W H = Sigma V^T L^T, as W L = U Sigma V^T and H = L L^T: an r x n x c
            # product instead of m x n x c plus r x m x c (5x less for gate/up)
            self._Pc[:, have:c] = self.sigma[:, None] * _times_lower_rows(self.Vh, self.L, new)
            self._have = c
        return self._Wc[:, :c], self._Pc[:, :c]

    def _direct(self, c: int) -> tuple[Tensor, float]:
        if self._W_hat is None:
            self._W_hat = self.U.T @ self.W
        rest = self.order[c:]  # T does not depend on the rest's order
        Wr = self._W_hat.index_select(1, rest)
        T = (Wr @ self.H.index_select(0, rest).index_select(1, rest)) @ Wr.T
        T = 0.5 * (T + T.T)
        return T, float(T.diagonal().sum())

    def _reduces(self, c: int) -> bool:
        """Whether the Ritz subspace (`ritz` search) is smaller than the coordinates."""
        return self.d is not None and self.d + 2 * c < self.lam.numel()

    def _problem(self, c: int) -> tuple[Tensor | None, Tensor, float]:
        """`(V, V^T T V, tr G_R)`; `V` None means the full coordinates."""
        d = self.d
        reduce = self._reduces(c)
        if not reduce:
            if c in self._formed:
                T = self._formed[c]
            elif self._direct_cost(c) < self._update_cost(c)[1]:
                return (None, *self._direct(c))
            else:
                T = self._update(c)
            return None, T, float(T.diagonal().sum())
        a, b = self._coordinates(c)
        kept = self.order[:c]
        Q = b - 0.5 * (a @ self.H.index_select(0, kept).index_select(1, kept))
        tr = self.tr_g - 2.0 * float((a * Q).sum())
        assert d is not None
        Uz, sz, _ = torch.linalg.svd(torch.cat([a[d:], Q[d:]], 1), full_matrices=False)
        tol = (float(sz[0]) if sz.numel() else 0.0) * max(Uz.shape) * torch.finfo(torch.float64).eps
        V = Uz[:, sz > tol]  # orthonormal, in the coordinates past d
        a = torch.cat([a[:d], V.T @ a[d:]], 0)
        Q = torch.cat([Q[:d], V.T @ Q[d:]], 0)
        X = a @ Q.T
        T = -(X + X.T)
        T.diagonal()[:d] += self.lam[:d]
        T[d:, d:] += (V.T * self.lam[d:]) @ V
        return V, T, tr

    def _prepare_own(self, left: int) -> None:
        """The own side's shared work, for rests of up to `left` columns. Taken in the
        reverse score order, every candidate's rest is a leading block, and the Cholesky
        factor of a leading block of `H` is the leading block of its Cholesky factor: one
        factorisation of the reordered `H` and one `W^T W`, each as large as the largest
        rest asked for so far (extended by blocks when a larger one is asked: the search
        rarely needs all of `H`), serve every candidate, as views. When the factorisation
        fails, each rest is whitened by `rest_factor` (the reference's, with its fallback)
        instead, against the whole `W^T W`."""
        size = self._own_size
        if left <= size:
            return
        rev = self.order.flip(0)
        new = rev[size:left]
        H_new = self.H.index_select(0, new).index_select(1, rev[:left])  # rows `[size, left)`
        L = H_new.new_zeros(left, left)
        if size:
            old = self._own_factor
            assert old is not None
            L[:size, :size] = old
            L21 = torch.linalg.solve_triangular(old.T, H_new[:, :size], upper=True, left=False)
            L[size:, :size] = L21
            H_new[:, size:].sub_(L21 @ L21.T)
        L22, info = torch.linalg.cholesky_ex(H_new[:, size:])
        if int(info) != 0 or not all_finite(L22):
            self._own_factor, self._own_size = None, self.W.shape[1]
            self._WtW = self.W.T @ self.W  # symmetric to rounding; each `G` is symmetrised
            return
        L[size:, size:] = L22
        Wl = self.W.index_select(1, rev[:left])
        A = Wl.new_empty(left, left)
        B = Wl[:, size:].T @ Wl
        if size:
            assert self._WtW is not None
            A[:size, :size] = self._WtW
            A[:size, size:] = B[:, :size].T
        A[size:] = B
        self._own_factor, self._WtW, self._own_size = L, A, left

    def _own(self, c: int) -> tuple[Tensor, float]:
        """The rest's own `L x L` problem, `L = n - c`: `G = S_R^T (W^T W)_RR S_R` for a
        Cholesky factor `S_R` of `H_RR`, whose eigenvalues are those of the whitened rest's
        Gram `(W_R S_R)^T (W_R S_R)` (in any column order). With `_prepare_own`'s views a
        candidate costs two `L x L` GEMMs, no gather and no factorisation, instead of
        `m L^2` flops and a Cholesky. The last few are kept for `own_factors` (the chosen
        candidate was formed by the search)."""
        assert self.rest_factor is not None
        if c in self._own_formed:
            G = self._own_formed[c][0]
            return G, float(G.diagonal().sum())
        left = self.order.numel() - c
        self._prepare_own(left)
        assert self._WtW is not None
        if self._own_factor is not None:  # leading blocks, in the reverse score order
            cols = self.order.flip(0)[:left]
            S = self._own_factor[:left, :left]
            c0, _ = self._own_form_cost(c)
            if c0 is not None:
                G = self._own_update(self._own_formed[c0][0], left)
            else:
                G = _lower_congruence(S, self._WtW[:left, :left])
        else:
            cols = torch.sort(self.order[c:]).values  # the reference's order and Cholesky
            S = self.rest_factor(cols)
            G = _congruence(S, self._WtW.index_select(0, cols).index_select(1, cols))
        self._own_formed[c] = (G, S, cols)
        while len(self._own_formed) > self.KEEP_FORMED:
            del self._own_formed[next(iter(self._own_formed))]
        return G, float(G.diagonal().sum())

    def _own_form_cost(self, c: int) -> tuple[int | None, int]:
        """`(c0, flops)`: the formed own-side candidate to update `G(c)` from, or None to form
        it afresh (`4 L^3` flops). Updates need `_prepare_own`'s shared factor."""
        left = self.order.numel() - c
        best, cost = None, 4 * left**3
        if self._WtW is not None and self._own_factor is None:
            return best, cost
        for c0, (G0, _, _) in self._own_formed.items():
            lo, step = min(left, G0.shape[0]), abs(left - G0.shape[0])
            flops = 4 * step * lo * (lo + step) + 3 * lo * lo
            if flops < cost:
                best, cost = c0, flops
        return best, cost

    def _own_update(self, G0: Tensor, left: int) -> Tensor:
        """`G` for `left` columns from a formed `G0` (its `L0` columns): in the reverse
        score order the two rests are nested leading blocks, `o = [0, lo)` and the
        difference `w = [lo, hi)`. With `P = A_wo S_oo` and `Y = P + A_ww S_wo / 2`,
        `G(hi)_oo = G(lo) + X + X^T` for `X = S_wo^T Y`, `G(hi)_wo = S_ww^T (2 Y - P)` and
        `G(hi)_ww = S_ww^T A_ww S_ww` (`S` the shared Cholesky factor, `A = W^T W`): about
        `4 |w| lo^2` flops instead of `4 L^3`; the search's late probes sit a few columns
        apart."""
        S, A = self._own_factor, self._WtW
        assert S is not None and A is not None
        lo, hi = min(left, G0.shape[0]), max(left, G0.shape[0])
        S_wo, S_ww, A_ww = S[lo:hi, :lo], S[lo:hi, lo:hi], A[lo:hi, lo:hi]
        P = A[lo:hi, :lo] @ S[:lo, :lo]
        Y = torch.addmm(P, A_ww, S_wo, alpha=0.5)
        X = S_wo.T @ Y
        if left < G0.shape[0]:
            return (G0[:lo, :lo] - X).sub_(X.T)
        G = G0.new_empty(hi, hi)
        torch.add(G0, X, out=G[:lo, :lo])
        G[:lo, :lo] += X.T
        G_wo = S_ww.T @ (2.0 * Y - P)
        G[lo:, :lo] = G_wo
        G[:lo, lo:] = G_wo.T
        G[lo:, lo:] = _lower_congruence(S_ww, A_ww)
        return G

    def own_factors(self, c: int, rest: Tensor, kr: int) -> tuple[Tensor, Tensor, float] | None:
        """`(A, B, loss)` for the rest columns (`rest` ascending) from the eigenvectors of
        the own side's `G`, split like `truncate` (`A = W_R S_R V_k s^{-1/2}`,
        `B = s^{1/2} V_k^T S_R^{-1}`, `s` the singular values of `W_R S_R`); the loss is
        `tr G - sum(top kr)`, exact for these factors. None when a kept singular value is
        numerically zero (the caller then truncates the rest by its own SVD)."""
        G, tr = self._own(c)
        _, S, cols = self._own_formed[c]
        to_rest = torch.argsort(cols)  # rest = cols[to_rest]
        if not torch.equal(cols[to_rest], rest):
            raise NumericsError("own_factors: the rest is not the candidate's")
        mu, V = top_eigenpairs(G, kr)
        if kr and not float(mu[-1]) > G.shape[0] * torch.finfo(torch.float64).eps * float(mu[0]):
            return None
        s = mu.sqrt()
        A = (self.W.index_select(1, cols) @ (S @ V)) / s.sqrt()
        B = torch.linalg.solve_triangular(S, s.sqrt()[:, None] * V.T, upper=False, left=False)
        return A, B.index_select(1, to_rest), max(tr - float(mu.sum()), 0.0)

    # the cost model's weights, in units of a float32 eigenvalue-solve flop (an `N x N`
    # solve costs `N^3`), measured on CPU at LLaMA-7B shapes / 4 (r = 1024, L = 300-2500):
    # the own side's solve per `L^3` (1.0 at L = 600 to 1.6 at L = 300) and a flop of
    # forming its `G` (a float64 GEMM flop: 0.25; formed afresh, the own side came to 2.0
    # per `L^3` at L = 922 to 4.0 at L = 410), `_prepare_own`'s `W^T W` per `m n^2` and
    # Cholesky per `n^3`, and a GEMM flop of the coordinates or of forming `T`
    OWN_SIDE_SOLVE = 1.2
    OWN_SIDE_FORM = 0.25
    OWN_SIDE_GRAM = 0.6
    OWN_SIDE_CHOLESKY = 0.8
    GEMM_FLOP = 0.4
    # the candidates `_prepare_own` is shared by, once two have been solved: the official
    # schedule's pre-check makes two and often stops (most matrices of a real model); past
    # it, a golden-section search makes ~log_phi(k / 3) more, 8-10 at ranks 100-500
    AMORTISE = 4

    def own_side_cheaper(self, c: int) -> bool:
        """The cost model for one candidate: the rest's own side (`_own`) costs
        `OWN_SIDE_SOLVE L^3` (`L = n - c` columns left) and forming its `G` (afresh or
        updated, `_own_form_cost`), plus `_prepare_own` the first time; the
        `r x r` problem `r^3` plus forming `T` (the cheaper of an update and the direct
        product) and the coordinates of the kept columns not yet computed, at `GEMM_FLOP`
        each. A Ritz reduction, when it applies, is kept, and so is a `T` already formed.
        Without `rest_factor` there is no own side."""
        if self.rest_factor is None:
            return False
        m, n = self.W.shape
        r, left = self.lam.numel(), n - c
        if self._reduces(c) or c in self._formed:
            return False
        form = 2 * min(self._update_cost(c)[1], self._direct_cost(c))
        new = max(0, c - self._have)
        coordinates = r**3 + self.GEMM_FLOP * (form + 2 * r * (m + n) * new)
        once, size = 0.0, self._own_size
        if left > size:  # `_prepare_own`'s block made or extended
            once = self.OWN_SIDE_GRAM * m * (left**2 - size**2)
            once += self.OWN_SIDE_CHOLESKY * (left**3 - size**3)
            if self.solved >= 2:  # past Duo-SVD's pre-check: a search follows
                once /= self.AMORTISE
        own = self.OWN_SIDE_SOLVE * left**3 + self.OWN_SIDE_FORM * self._own_form_cost(c)[1]
        return own + once <= coordinates

    def _side(self, c: int) -> tuple[Tensor, float]:
        """`(T, tr)` of the cheaper exact form of the candidate's problem."""
        if self.own_side_cheaper(c):
            return self._own(c)
        _, T, tr = self._problem(c)
        return T, tr

    def _solve64(self, T: Tensor, tr: float, kr: int) -> float:
        """`tr - sum(top kr)` from one float64 eigenvalue solve."""
        top = lapack.eigvalsh(T).flip(0)[:kr].clamp_min(0)  # T may be kept: not overwritten
        self._last_loss = max(tr - float(top.sum()), 0.0)
        return self._last_loss

    def _solve32(self, T: Tensor, norm: float) -> Tensor | None:
        """`T`'s eigenvalues (ascending, float64) from one float32 solve of `T` scaled by a
        power of two near `||T||_F` (exact both ways, so float32's range cannot underflow or
        overflow it; `norm` is `||T||_F`); None when the scale or the result is not finite."""
        scaled = _scaled_f32(T, norm)
        if scaled is None:
            return None
        T32, scale = scaled
        mu = lapack.eigvalsh(T32, overwrite=True).to(torch.float64)
        if not bool(torch.isfinite(mu).all()):
            return None
        return mu * scale

    def loss(self, c: int, kr: int) -> float:
        """The candidate's loss from one float64 eigenvalue solve: `tr - sum(top kr)`."""
        self.solved += 1
        T, tr = self._side(c)
        return self._solve64(T, tr, kr)

    def loss_f32(self, c: int, kr: int) -> tuple[float, float]:
        """`(loss, error bound)` from one float32 eigenvalue solve of the float64-formed
        problem (forming it in float32 loses up to 0.3 % to cancellation against `lam`).
        The loss is the sum of the eigenvalues past `kr` plus the trace a Ritz basis leaves
        out, in float64 (the form `tr - sum(top kr)` would amplify float32's error by
        `tr / loss`); its error bound is `_f32_error`'s. The float64 solve is returned
        instead, with a zero bound, when that bound exceeds `F32_MAX_ERROR` of the loss
        (a float32 value would be re-solved at almost every comparison) or the float32
        solve fails; and without trying float32 first when the bound exceeds half that
        of the latest loss solved (the search's neighbouring candidates differ by a few %)."""
        self.solved += 1
        T, tr = self._side(c)
        size = T.shape[0]
        norm = float(torch.linalg.matrix_norm(T))
        bound = _f32_error(T, size - kr, norm)
        if self._last_loss is not None and bound > 0.5 * F32_MAX_ERROR * self._last_loss:
            return self._solve64(T, tr, kr), 0.0
        mu = self._solve32(T, norm)
        if mu is None:
            return self._solve64(T, tr, kr), 0.0
        outside = tr - float(T.diagonal().sum())  # 0 up to rounding unless reduced
        value = max(outside + float(mu[: max(size - kr, 0)].clamp_min(0).sum()), 0.0)
        if bound > F32_MAX_ERROR * value:
            return self._solve64(T, tr, kr), 0.0
        self._last_loss = value
        return value, bound

    def factors(self, c: int, rest: Tensor, kr: int) -> tuple[Tensor, Tensor, float]:
        """`(A, B, loss)` for the rest columns, split like `truncate` (`A = U_kr sqrt(s)`,
        `B = s^{-1/2} U_kr^T W_R`, which is `sqrt(s) V^T S_R^+` of the whitened SVD)."""
        V, T, tr = self._problem(c)
        mu, E = top_eigenpairs(T, kr)
        mu = mu.clamp_min(0)
        if V is not None:  # back from the Ritz basis to the coordinates
            d = self.d
            E = torch.cat([E[:d], V @ E[d:]], 0)
        r = mu.sqrt().sqrt()  # the square roots of the singular values
        safe = torch.where(r > 0, r, torch.ones_like(r))
        Uk = self.U @ E
        A = Uk * r
        B = (Uk.T @ self.W.index_select(1, rest)) / safe[:, None]
        B = torch.where(r[:, None] > 0, B, torch.zeros_like(B))
        return A, B, max(tr - float(mu.sum()), 0.0)
