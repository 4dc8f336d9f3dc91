"""Identity-conditioned LGN -> V1 input: each unit's afferent weights are a Gabor receptive field set
by its recorded identity (retinotopic position, orientation, phase, frequency, size), with a few
shape parameters per population learned from the observed units (``connectivity.input_rule = "gabor"``).

A hidden unit has no loss of its own, so free per-unit input weights stay random for it; here its
weights come from the same function of identity as the observed units' weights, which is what makes
its response predictable. The formula is :func:`corticalrnn.receptive_field.gabor`.

Weight of ON input ``j`` (polarity +1) / OFF input (-1) onto unit ``i`` of population ``p``::

    U_ij = gain_p,pol * relu(pol_j * G_i(q_j - c_i)) + dc_p * E_i(q_j - c_i)

``q_j`` is the LGN position (the store's LGN units), ``c_i = a * x_i + b`` the unit's cortical position
mapped to LGN units by one learned affine retinotopic map (initialised by matching bounding boxes),
``E_i`` the Gabor's envelope (a non-selective part). Size and frequency are each unit's recorded
values times a learned per-population factor (a learned per-population value where not recorded).
Every weight is >= 0 (LGN is excitatory), so Dale's law holds by construction.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from corticalrnn.errors import DataMismatchError
from corticalrnn.model.dale import _pattern, _register_pattern, softplus_inv
from corticalrnn.model.sparse import Pattern, pattern_from_pairs
from corticalrnn.receptive_field import envelope, gabor
from corticalrnn.sheets import surface_xy


def lgn_extent(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre and side length per axis of the region LGN positions tile: the bounding box grown by
    one grid step (the median spacing of distinct coordinates), as cells of a grid cover it."""
    xy = surface_xy(xy)
    lo, hi = xy.min(0), xy.max(0)
    step = []
    for k in range(2):
        u = np.unique(xy[:, k])
        step.append(float(np.median(np.diff(u))) if u.size > 1 else 1.0)
    return (lo + hi) / 2, hi - lo + np.asarray(step)


class GaborInputWeight(nn.Module):
    """An input block whose weights are computed from identity (the block interface of
    :class:`corticalrnn.model.dale.SignedWeight`: :meth:`weight`, :meth:`dense`, :meth:`project_`, ...)."""

    identity_conditioned = True  # hidden units get their weights from their identity, not by borrowing

    def __init__(self, unit_xy: np.ndarray, props: dict[str, np.ndarray], row_pop: np.ndarray, n_pops: int,
                 lgn_xy: np.ndarray, polarity: np.ndarray, input_gain: float, default_size: float,
                 default_frequency: float, where: str = "model", footprint: float | None = None,
                 learn_positions: bool = False, unit_frame: bool = False) -> None:
        """``unit_xy [rows, 2]`` cortical positions; ``props`` per row ``ori``, ``phase`` and optionally
        ``frequency``, ``size``, ``aspect_ratio`` (NaN = not recorded); ``row_pop [rows]`` population
        index of each row; ``lgn_xy [cols, 2]`` and ``polarity [cols]`` (+1 ON, -1 OFF).

        ``footprint`` (sparse storage): keep only the LGN inputs within ``footprint`` envelope s.d.
        (along the longer axis) of each unit's initial RF centre; weights are then values on that fixed
        pattern, and the input product a CSR product (memory O(units x footprint), not O(units x LGN)).
        ``learn_positions``: the LGN positions are parameters (data without LGN positions, e.g. the thesis
        layout: ``lgn_xy`` is then an initial guess in the units' own cortical frame, and the retinotopic
        map starts at the identity). ``unit_frame``: ``lgn_xy`` is in the units' cortical frame (inferred
        positions, :mod:`corticalrnn.lgn_layout`): the retinotopic map starts at the identity. In both,
        recorded sizes and frequencies are rescaled into that frame (:func:`recorded_in_frame`)."""
        super().__init__()
        rows = len(unit_xy)
        for key in ("ori", "phase"):
            v = props.get(key)
            if v is None or len(v) != rows or not np.all(np.isfinite(v)):
                raise DataMismatchError(
                    f"{where}: connectivity.input_rule='gabor' needs the {key!r} of every unit receiving LGN "
                    "input (the store's per-neuron properties; Mozaik annotation "
                    f"{'LGNAfferentOrientation' if key == 'ori' else 'LGNAfferentPhase'})")

        if learn_positions or unit_frame:
            props = recorded_in_frame(props, default_size, default_frequency)

        def prop(key: str, default: float) -> tuple[torch.Tensor, torch.Tensor]:
            v = np.asarray(props.get(key, np.full(rows, np.nan)), np.float64)
            known = np.isfinite(v) & (v > 0)
            return (torch.as_tensor(np.where(known, v, default), dtype=torch.float32),
                    torch.as_tensor(known))

        self.register_buffer("ori", torch.as_tensor(props["ori"], dtype=torch.float32))
        self.register_buffer("phase", torch.as_tensor(props["phase"], dtype=torch.float32))
        size, self._size_known = prop("size", default_size)
        freq, self._freq_known = prop("frequency", default_frequency)
        aspect, _ = prop("aspect_ratio", 1.0)
        self.register_buffer("size0", size)
        self.register_buffer("freq0", freq)
        self.register_buffer("aspect", aspect)
        self.register_buffer("unit_xy", torch.as_tensor(surface_xy(unit_xy), dtype=torch.float32))
        if footprint is not None and learn_positions:
            raise DataMismatchError(f"{where}: learned LGN positions need dense input storage (a footprint "
                                    "fixed at construction would not follow them)")
        xy_lgn = torch.as_tensor(surface_xy(lgn_xy), dtype=torch.float32)
        if learn_positions:
            self.lgn_xy = nn.Parameter(xy_lgn)
        else:
            self.register_buffer("lgn_xy", xy_lgn)
        self.register_buffer("polarity", torch.as_tensor(polarity, dtype=torch.float32))
        self.register_buffer("row_pop", torch.as_tensor(row_pop, dtype=torch.int64))
        # retinotopic map: cortical position -> LGN units, by matching bounding boxes
        c_lgn, ext_lgn = lgn_extent(lgn_xy)
        xy = surface_xy(unit_xy)
        c_v1, ext_v1 = (xy.min(0) + xy.max(0)) / 2, np.maximum(xy.max(0) - xy.min(0), 1e-9)
        scale = ext_lgn / ext_v1
        if learn_positions or unit_frame:  # the (initial) positions are in the units' own frame
            scale, c_lgn, c_v1 = np.ones(2), np.zeros(2), np.zeros(2)
        self.retino_scale = nn.Parameter(torch.as_tensor(scale, dtype=torch.float32))
        self.retino_offset = nn.Parameter(torch.as_tensor(c_lgn - scale * c_v1, dtype=torch.float32))
        self.log_size = nn.Parameter(torch.zeros(n_pops))
        self.log_freq = nn.Parameter(torch.zeros(n_pops))
        self.gain = nn.Parameter(torch.zeros(n_pops, 2))  # softplus-parametrised, set below
        self.dc = nn.Parameter(torch.zeros(n_pops))
        self.shape = (rows, len(lgn_xy))
        self._pattern_keys: list[str] = []
        if footprint is not None:
            with torch.no_grad():
                radius = (footprint * self.size0 / self.aspect.clamp(max=1.0)).numpy()
                r, c = footprint_pairs(self.centres().numpy(), surface_xy(lgn_xy), radius)
            self._pattern_keys = _register_pattern(self, pattern_from_pairs(
                torch.as_tensor(r), torch.as_tensor(c), self.shape))
        with torch.no_grad():
            sel, env = self._parts()
            per_row = self._row_sums(sel)
            target = torch.full((n_pops,), float(input_gain))
            mean = torch.zeros(n_pops).index_add_(0, self.row_pop, per_row)
            count = torch.zeros(n_pops).index_add_(0, self.row_pop, torch.ones_like(per_row))
            g = target / (mean / count.clamp_min(1)).clamp_min(1e-12)
            self.gain.copy_(softplus_inv(g)[:, None].expand(n_pops, 2))
            self.dc.copy_(softplus_inv(torch.full((n_pops,), 1e-3)))

    def centres(self) -> torch.Tensor:
        """RF centres ``[rows, 2]`` in LGN units."""
        return self.unit_xy * self.retino_scale + self.retino_offset

    @property
    def stored_sparse(self) -> bool:  # type: ignore[override]
        return bool(self._pattern_keys)

    def _index(self) -> tuple[torch.Tensor, torch.Tensor] | tuple[slice, slice]:
        """(row, column) index of every weight: the pattern's entries (sparse) or the full grid."""
        if not self._pattern_keys:
            return (slice(None), None), (None, slice(None))  # type: ignore[return-value]
        return self.pattern().entries()

    def _parts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Selective part (``relu(pol * G)`` with unit gain) and envelope: ``[rows, cols]`` (dense) or
        ``[nnz]`` on the footprint's pattern (sparse)."""
        ri, ci = self._index()
        d = self.lgn_xy[ci] - self.centres()[ri]
        p = self.row_pop[ri]
        size = self.size0[ri] * self.log_size.exp()[p]
        freq = self.freq0[ri] * self.log_freq.exp()[p]
        ori, phase, aspect = self.ori[ri], self.phase[ri], self.aspect[ri]
        g = gabor(d[..., 0], d[..., 1], ori, phase, freq, size, aspect, torch)
        env = envelope(d[..., 0], d[..., 1], ori, size, aspect, torch)
        return F.relu(g * self.polarity[ci]), env

    def _row_sums(self, w: torch.Tensor) -> torch.Tensor:
        if not self._pattern_keys:
            return w.sum(1)
        rows = self._index()[0]
        return torch.zeros(self.shape[0], dtype=w.dtype).index_add_(0, rows, w)

    def weight(self) -> torch.Tensor:
        """Non-negative weights (differentiable in the shape parameters): ``[rows, cols]``, or the
        values ``[nnz]`` on the footprint's pattern when stored sparse."""
        sel, env = self._parts()
        ri, ci = self._index()
        gains = F.softplus(self.gain)[self.row_pop[ri]]  # [..., 2]: ON, OFF
        on = (self.polarity[ci] > 0).to(sel.dtype)
        g = gains[..., 0] * on + gains[..., 1] * (1 - on)
        return g * sel + F.softplus(self.dc)[self.row_pop[ri]] * env

    def dense(self) -> torch.Tensor:
        """The dense weight ``[rows, cols]`` (differentiable; for tests and inspection)."""
        w = self.weight()
        return self.pattern().dense(w) if self._pattern_keys else w

    def enable_pattern(self) -> None:  # the footprint, when any, is fixed at construction
        return None

    def pattern(self) -> Pattern | None:
        return _pattern(self, self.shape) if self._pattern_keys else None

    def product(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``W @ x`` for ``x [cols, K]``: a GEMM (dense) or a CSR product with an SDDMM value gradient."""
        if not self._pattern_keys:
            return self.weight().to(dtype) @ x.to(dtype)
        dt = dtype if dtype in (torch.float32, torch.float64) else torch.float32  # CSR kernels' dtypes
        return SparseProduct.apply(self.pattern(), self.weight().to(dt), x.to(dt))

    @property
    def n_synapses(self) -> int:
        return int(self.pattern_flat.numel()) if self._pattern_keys else self.shape[0] * self.shape[1]

    def project_(self) -> None:  # non-negative by construction
        return None

    @torch.no_grad()
    def violations(self) -> int:
        return int((self.weight() < 0).sum())

    def describe(self) -> dict[str, list[float]]:
        """Learned shape parameters (for logs and notes)."""
        return {"size_factor": self.log_size.exp().tolist(), "frequency_factor": self.log_freq.exp().tolist(),
                "gain_on_off": F.softplus(self.gain).tolist(), "dc": F.softplus(self.dc).tolist(),
                "retino_scale": self.retino_scale.tolist(), "retino_offset": self.retino_offset.tolist()}


class SparseProduct(torch.autograd.Function):
    """``y = W x`` for ``W`` given by its values on a fixed pattern: forward one CSR product; backward
    the values' gradient as one SDDMM (``dy @ x^T`` at the pattern) and ``x``'s as ``W^T dy``."""

    @staticmethod
    def forward(ctx: Any, pattern: Pattern, values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.pattern = pattern
        ctx.save_for_backward(values, x)
        return pattern.csr(values, values.dtype, stored=True) @ x

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[Any, ...]:
        values, x = ctx.saved_tensors
        p = ctx.pattern
        dvalues = p.sddmm_values(dy.contiguous(), x.contiguous()) if ctx.needs_input_grad[1] else None
        dx = p.csr_t(values, values.dtype, stored=True) @ dy if ctx.needs_input_grad[2] else None
        return None, dvalues, dx


def footprint_pairs(centres: np.ndarray, lgn_xy: np.ndarray, radius: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``(unit, lgn)`` index pairs (int64, sorted row-major) with ``|lgn - centre| <= radius[unit]``:
    a k-d tree query per unit, memory O(pairs)."""
    from scipy.spatial import cKDTree

    tree = cKDTree(lgn_xy)
    hits = tree.query_ball_point(centres, radius)
    rows = np.repeat(np.arange(len(centres)), [len(h) for h in hits])
    cols = np.concatenate([np.sort(np.asarray(h, np.int64)) for h in hits]) if len(hits) else np.zeros(0)
    return rows.astype(np.int64), cols.astype(np.int64)


def recorded_in_frame(props: dict[str, np.ndarray], default_size: float, default_frequency: float
                      ) -> dict[str, np.ndarray]:
    """``props`` with the recorded ``size`` and ``frequency`` (the simulator's visual-field units, those
    of the store's LGN positions) moved into a frame without LGN positions from the store (inferred or
    learned positions, cortical mm): both scaled by one factor that puts the median recorded size at
    ``default_size`` (or, with no size recorded, the median frequency at ``default_frequency``), so
    each unit's Gabor keeps its shape (cycles per envelope) and its size relative to the others; the
    learned per-population factors then set the scale."""
    out = dict(props)
    size = np.asarray(props.get("size", []), np.float64)
    freq = np.asarray(props.get("frequency", []), np.float64)
    ok_size, ok_freq = size[np.isfinite(size) & (size > 0)], freq[np.isfinite(freq) & (freq > 0)]
    if ok_size.size:
        k = default_size / float(np.median(ok_size))
    elif ok_freq.size:
        k = float(np.median(ok_freq)) / default_frequency
    else:
        return out
    if size.size:
        out["size"] = size * k
    if freq.size:
        out["frequency"] = freq / k
    return out


def default_rf_size(lgn_xy: np.ndarray, polarity: np.ndarray | None = None) -> float:
    """Envelope s.d. where none is recorded: 1.5 LGN grid steps (the spacing of one polarity's cells:
    inferred ON and OFF positions do not coincide as a grid's do)."""
    xy = surface_xy(lgn_xy)
    if polarity is not None and np.any(np.asarray(polarity) > 0):
        xy = xy[np.asarray(polarity) > 0]
    _, ext = lgn_extent(xy)
    n_side = max(math.sqrt(len(np.unique(xy, axis=0))), 1.0)
    return float(1.5 * np.mean(ext) / n_side)
