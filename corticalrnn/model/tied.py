"""Hidden units' recurrent weights tied to what observed units learned (``hidden_weights = "tied"``).

A hidden unit has no loss of its own, so its incoming weights barely train: they keep their random
initial scale while the observed units' weights of the same pathway grow or shrink. Here a hidden
row's weights are its initial weights times the factor by which the observed rows of its population
have changed that pathway's total weight (per post population x pre population, from the current
weights, not a parameter): the structure (mask, relative values from the connectivity rule) stays the
unit's own, the strength is what the data taught. Observed rows are the free parameters as before.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from corticalrnn.sheets import surface_xy


class _WrappedBlock(nn.Module):
    """What a wrapper of a weight block passes through to its ``inner`` block."""

    inner: nn.Module
    stored_sparse = False

    def weight(self) -> torch.Tensor:
        raise NotImplementedError

    def pattern(self):  # noqa: ANN201 - the inner block's Pattern or None
        return self.inner.pattern()

    def enable_pattern(self) -> None:
        self.inner.enable_pattern()

    @property
    def sign(self) -> torch.Tensor:
        return self.inner.sign

    @property
    def n_synapses(self) -> int:
        return self.inner.n_synapses

    def project_(self) -> None:
        self.inner.project_()

    @torch.no_grad()
    def violations(self) -> int:
        """Entries of :meth:`weight` with the wrong sign, or non-zero outside a dense block's mask."""
        w = self.weight()
        sign = self.inner.sign.to(w.dtype)
        bad = (w * (sign if self.stored_sparse else sign[None, :])) < 0
        mask = None if self.stored_sparse else getattr(self.inner, "mask", None)
        if mask is not None:
            bad |= (w != 0) & ~mask
        return int(bad.sum())


class TiedHidden(_WrappedBlock):
    """Wraps a recurrent weight block (:class:`~corticalrnn.model.dale.SignedWeight` or
    :class:`~corticalrnn.model.dale.SparseSignedWeight`) and replaces its hidden rows."""

    def __init__(self, inner: nn.Module, observed_rows: np.ndarray, row_pop: np.ndarray, col_pop: np.ndarray,
                 tied_rows: np.ndarray | None = None) -> None:
        """``tied_rows`` (default: all): the rows whose hidden units are tied; the other hidden rows stay
        free parameters (and, like them, never enter the gain, which comes from the observed rows)."""
        super().__init__()
        self.inner = inner
        self.stored_sparse = bool(inner.stored_sparse)
        with torch.no_grad():
            w0 = inner.weight().detach().clone()
        self.register_buffer("w0", w0)
        obs = torch.as_tensor(np.asarray(observed_rows, bool))
        tied = np.ones(len(obs), bool) if tied_rows is None else np.asarray(tied_rows, bool)
        free = obs | torch.as_tensor(~tied)  # rows that keep the inner block's own weights
        rp = torch.as_tensor(np.asarray(row_pop, np.int64))
        cp = torch.as_tensor(np.asarray(col_pop, np.int64))
        self.n_rp, self.n_cp = int(rp.max()) + 1, int(cp.max()) + 1
        if self.stored_sparse:
            r, c = inner.pattern().entries()
            self.register_buffer("obs_e", obs[r], persistent=False)
            self.register_buffer("free_e", free[r], persistent=False)
            self.register_buffer("group_e", rp[r] * self.n_cp + cp[c], persistent=False)
        else:
            self.register_buffer("obs_r", obs, persistent=False)
            self.register_buffer("free_r", free, persistent=False)
            self.register_buffer("rp", rp, persistent=False)
            self.register_buffer("cp", cp, persistent=False)

    def _gain(self, w: torch.Tensor) -> torch.Tensor:
        """Per (post pop, pre pop): total |w| of observed rows over their total initial |w| (1 where
        there is none); detached (a statistic, not a parameter)."""
        with torch.no_grad():
            a, a0 = w.abs(), self.w0.abs().to(w.dtype)
            n = self.n_rp * self.n_cp
            if self.stored_sparse:
                keep = self.obs_e.to(w.dtype)
                num = torch.zeros(n, dtype=w.dtype, device=w.device).index_add_(0, self.group_e, a * keep)
                den = torch.zeros(n, dtype=w.dtype, device=w.device).index_add_(0, self.group_e, a0 * keep)
            else:
                rows = torch.zeros(self.n_rp, w.shape[0], dtype=w.dtype, device=w.device)
                rows[self.rp, torch.arange(w.shape[0], device=w.device)] = self.obs_r.to(w.dtype)
                cols = torch.zeros(w.shape[1], self.n_cp, dtype=w.dtype, device=w.device)
                cols[torch.arange(w.shape[1], device=w.device), self.cp] = 1.0
                num, den = (rows @ a @ cols).reshape(-1), (rows @ a0 @ cols).reshape(-1)
            return torch.where(den > 0, num / den.clamp_min(1e-30), torch.ones_like(num))

    def weight(self) -> torch.Tensor:
        w = self.inner.weight()
        g = self._gain(w)
        if self.stored_sparse:
            return torch.where(self.free_e, w, self.w0.to(w.dtype) * g[self.group_e])
        g = g.view(self.n_rp, self.n_cp)[self.rp][:, self.cp]
        return torch.where(self.free_r[:, None], w, self.w0.to(w.dtype) * g)

    def dense(self) -> torch.Tensor:
        return self.inner.pattern().dense(self.weight()) if self.stored_sparse else self.weight()

    @torch.no_grad()
    def violations(self) -> int:
        return super().violations() + self.inner.violations()


# ------------------------------------------------------------------------------------------------
# hidden_weights = "borrowed": a hidden unit is the identity-weighted average of observed units


def neighbour_kernel(xy: np.ndarray, ori: np.ndarray, phase: np.ndarray, pop: np.ndarray,
                     observed: np.ndarray, k: int, sigma: float, kappa: float, chunk: int = 2048
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each hidden unit's ``k`` most similar observed units of its own population and their weights.

    Similarity ``s = -d^2 / (2 sigma^2) + kappa cos(2 (ori_i - ori_o)) + kappa / 2 cos(phase_i - phase_o)``
    (``d`` the cortical distance; a NaN orientation or phase drops its term); the weights are the
    softmax of ``s`` over the ``k`` best, so ``sigma -> inf, kappa = 0`` gives the population mean.
    Returns ``(hidden, source, weight)`` per entry (unit indices into the given arrays). Memory is
    ``chunk x observed`` at a time, so it scales to the full model."""
    xy = surface_xy(xy)
    ori, phase = np.asarray(ori, np.float64), np.asarray(phase, np.float64)
    pop, obs = np.asarray(pop), np.asarray(observed, bool)
    hid_all, src_all, w_all = [], [], []
    for p in np.unique(pop):
        o = np.flatnonzero((pop == p) & obs)
        h = np.flatnonzero((pop == p) & ~obs)
        if o.size == 0 or h.size == 0:
            continue
        kk = min(k, o.size)
        for c0 in range(0, h.size, chunk):
            hc = h[c0:c0 + chunk]
            d2 = ((xy[hc, None, :] - xy[None, o, :]) ** 2).sum(-1)
            s = -d2 / (2 * sigma * sigma)
            for term, scale in ((np.cos(2 * (ori[hc, None] - ori[None, o])), kappa),
                                (np.cos(phase[hc, None] - phase[None, o]), kappa / 2)):
                if scale:
                    s = s + scale * np.nan_to_num(term, nan=0.0)
            top = np.argpartition(-s, kk - 1, axis=1)[:, :kk] if kk < o.size else np.tile(np.arange(o.size),
                                                                                        (hc.size, 1))
            st = np.take_along_axis(s, top, 1)
            w = np.exp(st - st.max(1, keepdims=True))
            w /= w.sum(1, keepdims=True)
            hid_all.append(np.repeat(hc, kk))
            src_all.append(o[top].ravel())
            w_all.append(w.ravel())
    if not hid_all:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(hid_all), np.concatenate(src_all), np.concatenate(w_all)


class Borrow(nn.Module):
    """Replaces the hidden rows of a ``[units, ...]`` tensor by their kernel averages of observed rows
    (one sparse product, differentiable in the observed rows)."""

    def __init__(self, hidden: np.ndarray, source: np.ndarray, weight: np.ndarray, n: int) -> None:
        super().__init__()
        rows, pos = np.unique(np.asarray(hidden, np.int64), return_inverse=True)
        self.n = int(n)
        self.register_buffer("rows", torch.as_tensor(rows, dtype=torch.int64), persistent=False)
        self.register_buffer("index", torch.as_tensor(np.stack([pos, np.asarray(source, np.int64)])),
                             persistent=False)
        value = torch.as_tensor(np.asarray(weight), dtype=torch.float64)
        self.register_buffer("value", value, persistent=False)

    def averages(self, x: torch.Tensor) -> torch.Tensor:
        """``[hidden rows, ...]``: the kernel averages of ``x``'s observed rows."""
        dt = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32  # sparse kernels' dtypes
        k = torch.sparse_coo_tensor(self.index, self.value.to(dt), (self.rows.numel(), self.n),
                                    is_coalesced=False, check_invariants=False)
        flat = x.reshape(self.n, -1).to(dt)
        return torch.sparse.mm(k, flat).reshape((self.rows.numel(),) + tuple(x.shape[1:])).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rows.numel() == 0:
            return x
        return x.index_copy(0, self.rows, self.averages(x))


MAX_RESCALE = 4.0


class BorrowedHidden(_WrappedBlock):
    """Wraps a dense recurrent or input block (:class:`~corticalrnn.model.dale.SignedWeight`): its hidden
    rows are the identity-weighted averages of observed rows of the same population (``borrow``). With
    a mask, the average is restricted to the hidden unit's own mask and rescaled, per sign, to the
    total it had before (the strength its neighbours learned), by at most ``MAX_RESCALE``."""

    def __init__(self, inner: nn.Module, borrow: Borrow) -> None:
        super().__init__()
        if inner.stored_sparse:
            raise ValueError("hidden_weights='borrowed' needs dense weight storage")
        self.inner, self.borrow = inner, borrow

    def weight(self) -> torch.Tensor:
        w = self.inner.weight()
        b = self.borrow
        if b.rows.numel() == 0:
            return w
        wh = b.averages(w)
        mask = getattr(self.inner, "mask", None)
        if mask is not None:
            m = mask[b.rows].to(w.dtype)
            exc = (self.inner.sign > 0).to(w.dtype)
            a, am = wh.abs(), (wh * m).abs()
            # restore each sign's total, at most MAX_RESCALE-fold (a unit whose mask barely overlaps its
            # neighbours' synapses keeps a weaker row instead of a few huge weights)
            se, si = a @ exc, a @ (1 - exc)
            f_e = se / torch.maximum(am @ exc, se / MAX_RESCALE).clamp_min(1e-30)
            f_i = si / torch.maximum(am @ (1 - exc), si / MAX_RESCALE).clamp_min(1e-30)
            wh = wh * m * (f_e[:, None] * exc + f_i[:, None] * (1 - exc))
        return w.index_copy(0, b.rows, wh)

    def dense(self) -> torch.Tensor:
        return self.weight()

    def product(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``W @ x`` for ``x [cols, K]``. Unmasked: the hidden rows of ``W x`` are the kernel averages of
        the observed rows of ``W x`` (one GEMM plus a small sparse product, instead of averaging the
        weight rows: 14,400 LGN inputs x 32 neighbours per hidden unit)."""
        if getattr(self.inner, "mask", None) is not None:
            return self.weight().to(dtype) @ x.to(dtype)
        return self.borrow(self.inner.weight().to(dtype) @ x.to(dtype))

