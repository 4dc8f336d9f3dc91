"""LGN -> V1 input through a learned embedding of each LGN input (``connectivity.input_rule =
"embedding"``): identity-conditioned input for data without LGN positions (the thesis .npz layout).

Each LGN input ``j`` has a learned vector ``e_j`` and offset ``c_j``; every V1 unit's labels pass
through one small learned function ``h`` (shared by all units); the weight of input ``j`` onto unit
``i`` of population ``p`` is::

    U_ij = g_p * softplus(h(labels_i) . e_j + c_j)

No unit has a weight row of its own: observed and hidden units alike get theirs from ``h`` and ``e``,
so what the observed units teach (which LGN inputs drive a unit with these labels) reaches hidden units
with similar labels. Every weight is >= 0 (LGN is excitatory), so Dale's law holds by construction.

Labels (:func:`label_features`): random Fourier features of the cortical position (length scale
``embedding_scale_mm``; retinotopy makes position the label that selects LGN inputs), ``cos 2 ori``,
``sin 2 ori``, ``cos phase``, ``sin phase`` (0 where not recorded) and the population as a one-hot.
``h`` is ``Linear -> tanh -> Linear`` (``embedding_hidden`` -> ``embedding_dim``). The per-population
gain ``g_p`` starts where each row sums to ``architecture.input_gain`` on average, as the dense input.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from corticalrnn.errors import DataMismatchError
from corticalrnn.model.dale import softplus_inv
from corticalrnn.sheets import surface_xy


def label_features(xy: np.ndarray, ori: np.ndarray, phase: np.ndarray, row_pop: np.ndarray, n_pops: int,
                   frequencies: np.ndarray) -> np.ndarray:
    """Float32 ``[rows, 2F + 4 + n_pops]``: ``cos``/``sin`` of ``2 pi xy @ frequencies.T``, the orientation
    (period pi) and phase harmonics (NaN -> 0) and the population one-hot."""
    proj = 2 * np.pi * surface_xy(xy) @ np.asarray(frequencies, np.float64).T
    ori, phase = np.asarray(ori, np.float64), np.asarray(phase, np.float64)
    harm = np.stack([np.cos(2 * ori), np.sin(2 * ori), np.cos(phase), np.sin(phase)], 1)
    onehot = np.eye(n_pops)[np.asarray(row_pop, np.int64)]
    return np.concatenate([np.cos(proj), np.sin(proj), np.nan_to_num(harm, nan=0.0), onehot], 1
                          ).astype(np.float32)


class EmbeddingInputWeight(nn.Module):
    """An input block whose weights come from the units' labels and a learned embedding of each input
    (the block interface of :class:`corticalrnn.model.dale.SignedWeight`: :meth:`weight`, :meth:`dense`,
    :meth:`project_`, ...)."""

    identity_conditioned = True  # hidden units get their weights from their labels, not by borrowing

    def __init__(self, unit_xy: np.ndarray, ori: np.ndarray, phase: np.ndarray, row_pop: np.ndarray,
                 n_pops: int, n_inputs: int, input_gain: float, dim: int, n_frequencies: int,
                 scale_mm: float, hidden: int, gen: torch.Generator, where: str = "model") -> None:
        """``unit_xy [rows, >=2]`` cortical positions (mm); ``ori``, ``phase`` per row (NaN: not recorded);
        ``row_pop [rows]`` population index of each row; ``n_inputs`` LGN inputs (columns)."""
        super().__init__()
        rows = len(unit_xy)
        if not np.all(np.isfinite(surface_xy(unit_xy))):
            raise DataMismatchError(f"{where}: connectivity.input_rule='embedding' needs a finite position "
                                    "of every unit receiving LGN input")
        for name, v in (("ori", ori), ("phase", phase), ("row_pop", row_pop)):
            if len(v) != rows:
                raise DataMismatchError(f"{where}: {name} has {len(v)} entries for {rows} units")
        freqs = torch.randn(n_frequencies, 2, generator=gen, dtype=torch.float64) / (2 * np.pi * scale_mm)
        feats = label_features(unit_xy, ori, phase, row_pop, n_pops, freqs.numpy())
        self.register_buffer("features", torch.as_tensor(feats))
        self.register_buffer("row_pop", torch.as_tensor(np.asarray(row_pop), dtype=torch.int64))
        self.label_net = nn.Sequential(nn.Linear(feats.shape[1], hidden), nn.Tanh(), nn.Linear(hidden, dim))
        with torch.no_grad():  # from the model's generator, not torch's global one
            for lin in (self.label_net[0], self.label_net[2]):
                bound = 1.0 / np.sqrt(lin.in_features)
                lin.weight.copy_((torch.rand(lin.weight.shape, generator=gen) * 2 - 1) * bound)
                lin.bias.copy_((torch.rand(lin.bias.shape, generator=gen) * 2 - 1) * bound)
        self.embedding = nn.Parameter(torch.randn(n_inputs, dim, generator=gen) / np.sqrt(dim))
        self.offset = nn.Parameter(torch.zeros(n_inputs))
        self.gain = nn.Parameter(torch.zeros(n_pops))  # softplus-parametrised, set below
        self.shape = (rows, n_inputs)
        with torch.no_grad():
            per_row = self._unit_weights().sum(1)
            mean = torch.zeros(n_pops).index_add_(0, self.row_pop, per_row)
            count = torch.zeros(n_pops).index_add_(0, self.row_pop, torch.ones_like(per_row))
            g = float(input_gain) / (mean / count.clamp_min(1)).clamp_min(1e-12)
            self.gain.copy_(softplus_inv(g))

    def labels(self) -> torch.Tensor:
        """``h(labels)``: ``[rows, dim]``."""
        return self.label_net(self.features.to(self.embedding.dtype))

    def _unit_weights(self) -> torch.Tensor:
        return F.softplus(self.labels() @ self.embedding.T + self.offset)

    def weight(self) -> torch.Tensor:
        """Non-negative weights ``[rows, cols]``, differentiable in ``h``, ``e``, ``c`` and the gains."""
        return F.softplus(self.gain)[self.row_pop][:, None] * self._unit_weights()

    def dense(self) -> torch.Tensor:
        return self.weight()

    stored_sparse = False

    def enable_pattern(self) -> None:  # dense by construction
        return None

    def pattern(self) -> None:
        return None

    def product(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``W @ x`` for ``x [cols, K]`` (one GEMM; the weight is built once per call)."""
        return self.weight().to(dtype) @ x.to(dtype)

    @property
    def n_synapses(self) -> int:
        return self.shape[0] * self.shape[1]

    def project_(self) -> None:  # non-negative by construction
        return None

    @torch.no_grad()
    def violations(self) -> int:
        return int((self.weight() < 0).sum())

    def describe(self) -> dict[str, list[float]]:
        """Learned gains per population and the embedding's scale (for logs and notes)."""
        return {"gain": F.softplus(self.gain).tolist(),
                "embedding_rms": [float(self.embedding.pow(2).mean().sqrt())]}
