"""Identity-conditioned LGN -> V1 input: each unit's afferent weights are a Gabor receptive field set
by its recorded identity (retinotopic position, orientation, phase, frequency, size), with a few
shape parameters per population learned from the observed units (``input_connectivity = "gabor"``).

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

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from corticalrnn.errors import DataMismatchError
from corticalrnn.model.dale import softplus_inv
from corticalrnn.receptive_field import envelope, gabor


def lgn_extent(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre and side length per axis of the region LGN positions tile: the bounding box grown by
    one grid step (the median spacing of distinct coordinates), as cells of a grid cover it."""
    xy = np.asarray(xy, np.float64)[:, :2]
    lo, hi = xy.min(0), xy.max(0)
    step = []
    for k in range(2):
        u = np.unique(xy[:, k])
        step.append(float(np.median(np.diff(u))) if u.size > 1 else 1.0)
    return (lo + hi) / 2, hi - lo + np.asarray(step)


class GaborInputWeight(nn.Module):
    """An input block whose weights are computed from identity (the block interface of
    :class:`corticalrnn.model.dale.SignedWeight`: :meth:`weight`, :meth:`dense`, :meth:`project_`, ...)."""

    stored_sparse = False

    def __init__(self, unit_xy: np.ndarray, props: dict[str, np.ndarray], row_pop: np.ndarray, n_pops: int,
                 lgn_xy: np.ndarray, polarity: np.ndarray, input_gain: float, default_size: float,
                 default_frequency: float, where: str = "model") -> None:
        """``unit_xy [rows, 2]`` cortical positions; ``props`` per row ``ori``, ``phase`` and optionally
        ``frequency``, ``size``, ``aspect_ratio`` (NaN = not recorded); ``row_pop [rows]`` population
        index of each row; ``lgn_xy [cols, 2]`` and ``polarity [cols]`` (+1 ON, -1 OFF)."""
        super().__init__()
        rows = len(unit_xy)
        for key in ("ori", "phase"):
            v = props.get(key)
            if v is None or len(v) != rows or not np.all(np.isfinite(v)):
                raise DataMismatchError(
                    f"{where}: input_connectivity='gabor' needs the {key!r} of every unit receiving LGN "
                    "input (the store's per-neuron properties; Mozaik annotation "
                    f"{'LGNAfferentOrientation' if key == 'ori' else 'LGNAfferentPhase'})")

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
        self.register_buffer("unit_xy", torch.as_tensor(np.asarray(unit_xy)[:, :2], dtype=torch.float32))
        self.register_buffer("lgn_xy", torch.as_tensor(np.asarray(lgn_xy)[:, :2], dtype=torch.float32))
        self.register_buffer("polarity", torch.as_tensor(polarity, dtype=torch.float32))
        self.register_buffer("row_pop", torch.as_tensor(row_pop, dtype=torch.int64))
        # retinotopic map: cortical position -> LGN units, by matching bounding boxes
        c_lgn, ext_lgn = lgn_extent(lgn_xy)
        xy = np.asarray(unit_xy, np.float64)[:, :2]
        c_v1, ext_v1 = (xy.min(0) + xy.max(0)) / 2, np.maximum(xy.max(0) - xy.min(0), 1e-9)
        scale = ext_lgn / ext_v1
        self.retino_scale = nn.Parameter(torch.as_tensor(scale, dtype=torch.float32))
        self.retino_offset = nn.Parameter(torch.as_tensor(c_lgn - scale * c_v1, dtype=torch.float32))
        self.log_size = nn.Parameter(torch.zeros(n_pops))
        self.log_freq = nn.Parameter(torch.zeros(n_pops))
        self.gain = nn.Parameter(torch.zeros(n_pops, 2))  # softplus-parametrised, set below
        self.dc = nn.Parameter(torch.zeros(n_pops))
        with torch.no_grad():
            sel, env = self._parts()
            per_row = sel.sum(1)
            target = torch.full((n_pops,), float(input_gain))
            mean = torch.zeros(n_pops).index_add_(0, self.row_pop, per_row)
            count = torch.zeros(n_pops).index_add_(0, self.row_pop, torch.ones_like(per_row))
            g = target / (mean / count.clamp_min(1)).clamp_min(1e-12)
            self.gain.copy_(softplus_inv(g)[:, None].expand(n_pops, 2))
            self.dc.copy_(softplus_inv(torch.full((n_pops,), 1e-3)))

    def centres(self) -> torch.Tensor:
        """RF centres ``[rows, 2]`` in LGN units."""
        return self.unit_xy * self.retino_scale + self.retino_offset

    def _parts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Selective part (``relu(pol * G)`` with unit gain) and envelope, each ``[rows, cols]``."""
        d = self.lgn_xy[None, :, :] - self.centres()[:, None, :]
        p = self.row_pop
        size = (self.size0 * self.log_size.exp()[p])[:, None]
        freq = (self.freq0 * self.log_freq.exp()[p])[:, None]
        ori, phase, aspect = self.ori[:, None], self.phase[:, None], self.aspect[:, None]
        g = gabor(d[..., 0], d[..., 1], ori, phase, freq, size, aspect, torch)
        env = envelope(d[..., 0], d[..., 1], ori, size, aspect, torch)
        return F.relu(g * self.polarity[None, :]), env

    def weight(self) -> torch.Tensor:
        """Non-negative weights ``[rows, cols]`` (differentiable in the shape parameters)."""
        sel, env = self._parts()
        gains = F.softplus(self.gain)[self.row_pop]  # [rows, 2]: ON, OFF
        on = (self.polarity > 0).to(sel.dtype)
        g = gains[:, :1] * on[None, :] + gains[:, 1:] * (1 - on)[None, :]
        return g * sel + F.softplus(self.dc)[self.row_pop][:, None] * env

    dense = weight

    def enable_pattern(self) -> None:  # dense products only
        return None

    def pattern(self) -> None:
        return None

    @property
    def n_synapses(self) -> int:
        return int(self.unit_xy.shape[0] * self.lgn_xy.shape[0])

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


def default_rf_size(lgn_xy: np.ndarray) -> float:
    """Envelope s.d. where none is recorded: 1.5 LGN grid steps."""
    _, ext = lgn_extent(lgn_xy)
    n_side = max(math.sqrt(len(np.unique(np.asarray(lgn_xy)[:, :2], axis=0))), 1.0)
    return float(1.5 * np.mean(ext) / n_side)
