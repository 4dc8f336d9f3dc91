"""Dataset API over a ``corticalrnn.windows`` store: window selection, batches, trial grouping.

- :func:`open_store` (from :mod:`corticalrnn.store`) opens a store: ``.sheets``, ``.neuron_ids(s)``,
  ``.images()``, ``.trials()``, ``.windows`` (table), ``.read(sheet, windows, neurons)``.
- :func:`select_windows` picks window indices by image, trial, split and padding.
- :class:`WindowBatches` reads chosen windows and chosen neurons (row indices per sheet, e.g. from
  ``NeuronSubset.indices(store)``) as ``{"lgn": [B, T, N_in], "v1": [B, T, N_v1], "window": [B]}``;
  ``batch(idx)`` gives dense CPU tensors (the trainer's ``WindowBatches`` protocol),
  ``sparse_batch(idx)`` the events only (what DataLoader workers ship).
- :func:`make_loader` iterates batches with optional ``spawn``/``forkserver`` workers that ship
  sparse events; the densification (a scatter) runs on the target device, so only ~0.5 % of a
  1 ms batch crosses process and PCIe boundaries.
- :func:`group_trials` / :func:`read_grouped` arrange repeated trials as ``[images, trials, T, N]``.

The model's input vector is the concatenation of the chosen ``X_ON``, ``X_OFF`` neurons, the V1
vector that of the chosen V1 sheets, both in canonical sheet order (ARCHITECTURE.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from corticalrnn.errors import CorticalRNNError, DataMismatchError
from corticalrnn.sheets import INPUT_SHEETS, V1_SHEETS, normalize_sheet_name, sort_sheets
from corticalrnn.store import WindowStore, open_store

__all__ = [
    "TrialGroups",
    "WindowBatches",
    "densify",
    "group_trials",
    "make_loader",
    "open_store",
    "read_grouped",
    "select_windows",
]

GROUPS: dict[str, tuple[str, ...]] = {"lgn": INPUT_SHEETS, "v1": V1_SHEETS}


def select_windows(
    store: WindowStore,
    images: Sequence[int] | np.ndarray | None = None,
    trials: Sequence[int] | np.ndarray | None = None,
    split: str | Sequence[str] | None = None,
    include_padded: bool = False,
) -> np.ndarray:
    """Indices (ascending) of the windows matching all given criteria; padded windows excluded by default."""
    t = store.windows
    keep = np.ones(len(t), dtype=bool)
    if images is not None:
        keep &= np.isin(t.image_id, np.asarray(images, dtype=np.int64))
    if trials is not None:
        keep &= np.isin(t.trial, np.asarray(trials, dtype=np.int64))
    if split is not None:
        names = [split] if isinstance(split, str) else list(split)
        unknown = [s for s in names if s not in store.splits]
        if unknown:
            raise CorticalRNNError(
                f"{store.path}: no split {unknown} (splits: {[s for s in store.splits if s]})"
            )
        keep &= np.isin(t.split.astype(str), names)
    if not include_padded:
        keep &= ~t.padded
    return np.flatnonzero(keep)


# ---------------------------------------------------------------------------------------------
# batches


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


class _SparseSet(torch.utils.data.Dataset):
    """Map-style dataset whose items are whole batches (a list of positions -> sparse events)."""

    def __init__(self, batches: WindowBatches) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        return self.batches.sparse_batch(indices)


@dataclass
class BatchLoader:
    """Iterates dense batches on ``device``; workers (if any) read and ship sparse events."""

    batches: WindowBatches
    batch_size: int = 32
    shuffle: bool = False
    seed: int = 0
    num_workers: int = 0
    device: str | torch.device = "cpu"
    drop_last: bool = False
    context: str = "spawn"
    epoch: int = 0

    def plan(self) -> list[list[int]]:
        """Batches of positions for the current epoch (deterministic in ``seed`` and ``epoch``)."""
        n = len(self.batches)
        order = (
            np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle else np.arange(n)
        )
        stop = n - n % self.batch_size if self.drop_last else n
        return [order[i : i + self.batch_size].tolist() for i in range(0, stop, self.batch_size)]

    def __len__(self) -> int:
        return len(self.plan())

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        device = torch.device(self.device)
        plan = self.plan()
        self.epoch += 1
        if self.num_workers == 0:
            for b in plan:
                yield densify(self.batches.sparse_batch(b), device)
            return
        loader = torch.utils.data.DataLoader(
            _SparseSet(self.batches),
            batch_size=None,
            sampler=plan,
            num_workers=self.num_workers,
            multiprocessing_context=self.context,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
        )
        for sparse in loader:
            yield densify(sparse, device)


def make_loader(
    batches: WindowBatches,
    batch_size: int = 32,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    drop_last: bool = False,
    context: str = "spawn",
) -> BatchLoader:
    """A re-iterable loader of dense batches on ``device`` (see :class:`BatchLoader`)."""
    if batch_size < 1:
        raise CorticalRNNError(f"batch size must be >= 1, got {batch_size}")
    if context not in ("spawn", "forkserver", "fork"):
        raise CorticalRNNError(f"unknown multiprocessing context {context!r}")
    return BatchLoader(batches, batch_size, shuffle, seed, num_workers, device, drop_last, context)


# ---------------------------------------------------------------------------------------------
# repeated trials


@dataclass(frozen=True)
class TrialGroups:
    """Repeated trials: ``windows[i, r]`` is the window of image ``images[i]``, trial ``trials[i, r]``."""

    images: np.ndarray  # int64 [I]
    trials: np.ndarray  # int64 [I, R]
    windows: np.ndarray  # int64 [I, R]


def group_trials(store: WindowStore, windows: Sequence[int] | np.ndarray | None = None) -> TrialGroups:
    """Group windows by image (ascending), trials ascending; every image needs the same trial count."""
    w = select_windows(store) if windows is None else np.asarray(windows, dtype=np.int64).ravel()
    t = store.windows
    if w.size == 0:
        raise DataMismatchError(f"{store.path}: no windows to group")
    img, trial = t.image_id[w], t.trial[w]
    order = np.lexsort((trial, img))
    w, img, trial = w[order], img[order], trial[order]
    images, counts = np.unique(img, return_counts=True)
    if np.any(counts != counts[0]):
        bad = {int(i): int(c) for i, c in zip(images, counts) if c != counts[0]}
        raise DataMismatchError(
            f"{store.path}: images have different numbers of trials ({int(counts[0])} for image "
            f"{int(images[0])}, but {bad}); select windows with equal trials"
        )
    R = int(counts[0])
    return TrialGroups(images, trial.reshape(-1, R), w.reshape(-1, R))


def read_grouped(
    store: WindowStore,
    sheet: str,
    groups: TrialGroups,
    neurons: np.ndarray | None = None,
    dtype: np.dtype | type = np.float32,
) -> np.ndarray:
    """Counts ``[images, trials, T, n]`` of one sheet for the grouped windows."""
    n_images, n_trials = groups.windows.shape
    dense = store.read(sheet, groups.windows.ravel(), neurons, dtype=dtype)
    return dense.reshape(n_images, n_trials, *dense.shape[1:])
