"""Baselines with a time course, from the training windows only (what a model may see).

* ``mean_rate``: each neuron's mean count per bin over the training windows (NLB's null, without
  peeking at test data);
* ``psth``: each neuron's mean time course over the training windows (for a hidden neuron this uses
  its own recorded data, which the model never sees: an upper reference, not a fair competitor);
* ``population``: per population, the mean time course of its *observed* neurons over the training
  windows; a hidden neuron gets it as is, an observed neuron scaled to its own mean rate. This is the
  fair baseline for hidden neurons: it uses only what the model may see.

All three predict the same time course for every image (they know no image), so on test images they
measure how much of a neuron's response is the stimulus-locked time course shared by all images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

BASELINES: tuple[str, ...] = ("mean_rate", "psth", "population")


@dataclass(frozen=True)
class TrainingBaselines:
    """Per-neuron statistics of the training windows: ``psth [T, N]`` (mean count per bin),
    ``population [T, N]`` (see module doc) and the number of windows they average."""

    psth: np.ndarray
    population: np.ndarray
    n_windows: int

    @property
    def mean_rate(self) -> np.ndarray:
        return self.psth.mean(0)

    def predictions(self, n_images: int) -> dict[str, np.ndarray]:
        """Trial-independent predictions ``[n_images, T, N]`` of each baseline."""
        t, n = self.psth.shape
        return {"mean_rate": np.broadcast_to(self.mean_rate, (n_images, t, n)),
                "psth": np.broadcast_to(self.psth, (n_images, t, n)),
                "population": np.broadcast_to(self.population, (n_images, t, n))}


def from_psth(psth: np.ndarray, labels: np.ndarray, observed: np.ndarray, n_windows: int
              ) -> TrainingBaselines:
    """Baselines from each neuron's training PSTH ``[T, N]``, its population label and observed flag."""
    psth = np.asarray(psth, np.float64)
    labels, observed = np.asarray(labels), np.asarray(observed, bool)
    pop = np.zeros_like(psth)
    for lab in np.unique(labels):
        in_pop = labels == lab
        obs = in_pop & observed
        if not obs.any():
            pop[:, in_pop] = np.nan
            continue
        shape = psth[:, obs].mean(1)  # [T]
        pop[:, in_pop & ~observed] = shape[:, None]
        scale = psth[:, obs].mean(0) / max(float(shape.mean()), 1e-12)
        pop[:, obs] = shape[:, None] * scale[None, :]
    return TrainingBaselines(psth, pop, int(n_windows))


def training_baselines(store: Any, subset: Any, windows: np.ndarray, batch: int = 64) -> TrainingBaselines:
    """Baselines of ``subset``'s V1 neurons over the store's training ``windows`` (streamed in batches,
    memory O(batch))."""
    from corticalrnn.data import subset_windows

    windows = np.asarray(windows, np.int64)
    data = subset_windows(store, subset, windows)
    total = None
    for a in range(0, len(windows), batch):
        v1 = data.batch(np.arange(a, min(a + batch, len(windows))))["v1"].double().sum(0).numpy()
        total = v1 if total is None else total + v1
    if total is None:
        raise ValueError(f"{store.path}: no training windows to compute baselines from")
    return from_psth(total / len(windows), np.asarray(subset.v1_sheet_labels()),
                     np.asarray(subset.observed_mask(), bool), len(windows))
