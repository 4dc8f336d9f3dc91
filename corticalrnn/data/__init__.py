"""Dataset API over a ``corticalrnn.windows`` store: one package for choosing windows and batching them.

- :mod:`~corticalrnn.data.windows` (torch-free): window candidates (:func:`select_windows`,
  :func:`test_window_candidates`) and trial grouping (:func:`group_trials`, :func:`read_grouped`,
  :func:`group_test_windows`, one ordering helper :func:`windows_by_image`).
- :mod:`~corticalrnn.data.batches`: :class:`WindowBatches` (chosen windows and neurons as sparse events
  or dense CPU tensors), :class:`TensorWindows` (in memory), :func:`subset_windows` (a neuron subset's
  windows as either), :func:`densify`.
- :mod:`~corticalrnn.data.ring`: reused dense buffers on the device (:class:`DenseRing`, with its
  ownership rule) and the prefetching iterator :func:`iter_dense`.
- :mod:`~corticalrnn.data.loader`: the one batch path: :func:`epoch_batches` (an epoch's order, DDP
  shards) and :func:`dense_batches` (batches on the device in that order), used by the trainer and by
  :func:`make_loader` / :class:`BatchLoader`.

:func:`open_store` (from :mod:`corticalrnn.store`) opens a store: ``.sheets``, ``.neuron_ids(s)``,
``.images()``, ``.trials()``, ``.windows`` (table), ``.read(sheet, windows, neurons)``.
"""

from __future__ import annotations

from typing import Any

from corticalrnn.data.windows import (
    TrialGroups,
    group_test_windows,
    group_trials,
    read_grouped,
    select_windows,
    test_window_candidates,
    windows_by_image,
)
from corticalrnn.store import open_store

#: names of the torch modules, imported on first use so that ``corticalrnn.data.windows`` (and this
#: package) stay importable without torch, like the evaluate CLI's parser
_LAZY = {
    "TensorWindows": "batches", "TrainingData": "batches", "WindowBatches": "batches", "densify": "batches",
    "has_events": "batches", "subset_windows": "batches",
    "BatchLoader": "loader", "dense_batches": "loader", "epoch_batches": "loader", "make_loader": "loader",
    "DenseRing": "ring", "iter_dense": "ring",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"corticalrnn.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BatchLoader",
    "DenseRing",
    "TensorWindows",
    "TrainingData",
    "TrialGroups",
    "WindowBatches",
    "dense_batches",
    "densify",
    "epoch_batches",
    "group_test_windows",
    "group_trials",
    "has_events",
    "iter_dense",
    "make_loader",
    "open_store",
    "read_grouped",
    "select_windows",
    "subset_windows",
    "test_window_candidates",
    "windows_by_image",
]
