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


class TiedHidden(nn.Module):
    """Wraps a recurrent weight block (:class:`~corticalrnn.model.dale.SignedWeight` or
    :class:`~corticalrnn.model.dale.SparseSignedWeight`) and replaces its hidden rows."""

    def __init__(self, inner: nn.Module, observed_rows: np.ndarray, row_pop: np.ndarray, col_pop: np.ndarray
                 ) -> None:
        super().__init__()
        self.inner = inner
        self.stored_sparse = bool(inner.stored_sparse)
        with torch.no_grad():
            w0 = inner.weight().detach().clone()
        self.register_buffer("w0", w0)
        obs = torch.as_tensor(np.asarray(observed_rows, bool))
        rp = torch.as_tensor(np.asarray(row_pop, np.int64))
        cp = torch.as_tensor(np.asarray(col_pop, np.int64))
        self.n_rp, self.n_cp = int(rp.max()) + 1, int(cp.max()) + 1
        if self.stored_sparse:
            r, c = inner.pattern().entries()
            self.register_buffer("obs_e", obs[r], persistent=False)
            self.register_buffer("group_e", rp[r] * self.n_cp + cp[c], persistent=False)
        else:
            self.register_buffer("obs_r", obs, persistent=False)
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
            return torch.where(self.obs_e, w, self.w0.to(w.dtype) * g[self.group_e])
        g = g.view(self.n_rp, self.n_cp)[self.rp][:, self.cp]
        return torch.where(self.obs_r[:, None], w, self.w0.to(w.dtype) * g)

    def dense(self) -> torch.Tensor:
        return self.inner.pattern().dense(self.weight()) if self.stored_sparse else self.weight()

    def pattern(self):  # noqa: ANN201 - the inner block's Pattern or None
        return self.inner.pattern()

    def enable_pattern(self) -> None:
        self.inner.enable_pattern()

    @property
    def n_synapses(self) -> int:
        return self.inner.n_synapses

    def project_(self) -> None:
        self.inner.project_()

    @torch.no_grad()
    def violations(self) -> int:
        w = self.weight()
        sign = self.inner.sign.to(w.dtype)
        bad = (w * (sign if self.stored_sparse else sign[None, :])) < 0
        if not self.stored_sparse and getattr(self.inner, "mask", None) is not None:
            bad |= (w != 0) & ~self.inner.mask
        return int(bad.sum()) + self.inner.violations()
