"""Chosen windows and neurons of a store as batches: sparse events and dense tensors.

- :class:`WindowBatches` reads chosen windows and chosen neurons (row indices per sheet, e.g. from
  ``NeuronSubset.indices(store)``) as ``{"lgn": [B, T, N_in], "v1": [B, T, N_v1], "window": [B]}``;
  ``batch(idx)`` gives dense CPU tensors, ``sparse_batch(idx)`` the events only (what DataLoader
  workers ship, scattered on the target device by :func:`densify` or a
  :class:`~corticalrnn.data.ring.DenseRing`).
- :class:`TensorWindows`: windows already in memory as dense tensors (``batch`` only).
- :func:`subset_windows`: a neuron subset's windows as one or the other (what training, evaluation
  and the baselines read).

Anything with ``len()`` and ``batch(indices)`` is :data:`TrainingData`; data that also has
``sparse_batch`` (:func:`has_events`) travels as events.

The model's input vector is the concatenation of the chosen ``X_ON``, ``X_OFF`` neurons, the V1
vector that of the chosen V1 sheets, both in canonical sheet order (ARCHITECTURE.md).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from corticalrnn.data.windows import select_windows
from corticalrnn.errors import CorticalRNNError
from corticalrnn.sheets import INPUT_SHEETS, V1_SHEETS, normalize_sheet_name, sort_sheets
from corticalrnn.store import WindowStore, open_store

GROUPS: dict[str, tuple[str, ...]] = {"lgn": INPUT_SHEETS, "v1": V1_SHEETS}


class TrainingData(Protocol):
    """Windows as dense batches: what the trainer and :func:`~corticalrnn.data.loader.dense_batches`
    take (:class:`WindowBatches`, :class:`TensorWindows`)."""

    def __len__(self) -> int: ...

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """``{"lgn": [B, T, N_in], "v1": [B, T, N_v1]}`` float32 for the given window positions."""
        ...


def has_events(data: Any) -> bool:
    """Whether ``data`` offers sparse events (``sparse_batch``, as :class:`WindowBatches` does)."""
    return callable(getattr(data, "sparse_batch", None))


def _resolve_neurons(store: WindowStore, neurons: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """sheet (canonical, canonical order) -> int64 row indices; None means every neuron of every sheet."""
    if neurons is None:
        return {s: np.arange(store.n_neurons(s)) for s in store.sheets}
    out: dict[str, np.ndarray] = {}
    for sheet, idx in neurons.items():
        name = normalize_sheet_name(sheet)
        n = store.n_neurons(name)  # raises SchemaError for a missing sheet
        idx = np.asarray(idx, dtype=np.int64).ravel()
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise CorticalRNNError(f"{store.path}: neuron index out of range for {name} ({n} neurons)")
        if np.unique(idx).size != idx.size:
            raise CorticalRNNError(f"{store.path}: duplicate neuron indices for {name}")
        out[name] = idx
    return {s: out[s] for s in sort_sheets(list(out))}


class WindowBatches:
    """Chosen windows and neurons of a store as batches; picklable (opens the store lazily per process).

    ``windows``: store window indices (default all non-padded); ``neurons``: sheet -> row indices
    (default all neurons of all sheets). ``batch(idx)`` takes positions ``0..len-1`` into ``windows``.
    """

    def __init__(
        self,
        store: str | os.PathLike[str] | WindowStore,
        windows: Sequence[int] | np.ndarray | None = None,
        neurons: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        st = store if isinstance(store, WindowStore) else open_store(store)
        self.path = Path(st.path)
        self._store: WindowStore | None = st
        self.windows = select_windows(st) if windows is None else np.asarray(windows, dtype=np.int64).ravel()
        if self.windows.size and (self.windows.min() < 0 or self.windows.max() >= len(st)):
            raise IndexError(f"{self.path}: window index out of range ({len(st)} windows)")
        self.neurons = _resolve_neurons(st, neurons)
        self.n_bins = st.n_bins
        self.bin_ms = st.bin_ms
        self.group_sheets = {g: [s for s in self.neurons if s in members] for g, members in GROUPS.items()}
        self.sizes = {
            g: int(sum(self.neurons[s].size for s in sheets)) for g, sheets in self.group_sheets.items()
        }

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_store"] = None
        return state

    @property
    def store(self) -> WindowStore:
        if self._store is None:
            self._store = open_store(self.path)
        return self._store

    def __len__(self) -> int:
        return int(self.windows.size)

    def sparse_batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """Events of a batch: ``{g}_index`` (flat index into ``[B, T, N_g]``), ``{g}_count``, ``window``."""
        idx = np.asarray(indices, dtype=np.int64).ravel()
        win = self.windows[idx]
        st = self.store
        packed = st.read_packed(win)
        out: dict[str, np.ndarray] = {"window": win}
        B, T = int(win.size), self.n_bins
        for g, sheets in self.group_sheets.items():
            n_g = self.sizes[g]
            flat, counts, offset = [], [], 0
            for s in sheets:
                sw = st.sparse(s, win, self.neurons[s], packed=packed)
                flat.append((sw.window * T + sw.bin) * n_g + offset + sw.column)
                counts.append(sw.count)
                offset += self.neurons[s].size
            index = np.concatenate(flat) if flat else np.zeros(0, np.int64)
            small = B * T * n_g < 2**31
            out[f"{g}_index"] = index.astype(np.int32) if small else index
            out[f"{g}_count"] = (np.concatenate(counts) if counts else np.zeros(0)).astype(
                np.uint8 if _fits_u8(counts) else np.int32
            )
        out["shape"] = np.array([B, T, self.sizes["lgn"], self.sizes["v1"]], dtype=np.int64)
        return out

    def batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        """Dense CPU float32 tensors ``{"lgn", "v1"}`` and int64 ``"window"``."""
        return densify(self.sparse_batch(indices), torch.device("cpu"))


def _fits_u8(counts: list[np.ndarray]) -> bool:
    return all(c.size == 0 or int(c.max()) < 256 for c in counts)


def densify(sparse: Mapping[str, Any], device: torch.device | str) -> dict[str, torch.Tensor]:
    """Scatter a :meth:`WindowBatches.sparse_batch` (numpy or tensors) into dense float32 on ``device``."""
    device = torch.device(device)
    shape = torch.as_tensor(sparse["shape"]).tolist()
    B, T = int(shape[0]), int(shape[1])
    out: dict[str, torch.Tensor] = {}
    for g, n in (("lgn", int(shape[2])), ("v1", int(shape[3]))):
        idx = torch.as_tensor(sparse[f"{g}_index"]).to(device, non_blocking=True).long()
        val = torch.as_tensor(sparse[f"{g}_count"]).to(device, non_blocking=True).to(torch.float32)
        dense = torch.zeros(B * T * n, dtype=torch.float32, device=device)
        dense[idx] = val
        out[g] = dense.view(B, T, n)
    out["window"] = torch.as_tensor(sparse["window"]).to(device=device, dtype=torch.int64)
    return out



class TensorWindows:
    """Windows held in memory as float32 tensors; ``batch(indices)`` gives the trainer's dict."""

    def __init__(self, lgn: torch.Tensor, v1: torch.Tensor) -> None:
        self.lgn, self.v1 = lgn, v1

    def __len__(self) -> int:
        return int(self.lgn.shape[0])

    def batch(self, indices: Any) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return {"lgn": self.lgn[idx], "v1": self.v1[idx], "window": idx}


def subset_windows(store: Any, subset: Any, windows: np.ndarray,
                   cache_mb: float = 0.0) -> WindowBatches | TensorWindows:
    """The subset's neurons in ``windows`` as batches (:class:`WindowBatches`), read once into memory
    (:class:`TensorWindows`) when their dense float32 size is below ``cache_mb``.

    Raises DataMismatchError naming the store when it lacks some of the subset's neurons."""
    rows = subset.indices(store, "modelled", name=str(store.path))
    wb = WindowBatches(store, np.asarray(windows, dtype=np.int64), rows)
    dense_mb = len(wb) * wb.n_bins * (wb.sizes["lgn"] + wb.sizes["v1"]) * 4 / 2**20
    if len(wb) and dense_mb <= cache_mb:
        b = wb.batch(np.arange(len(wb)))
        return TensorWindows(b["lgn"], b["v1"])
    return wb
