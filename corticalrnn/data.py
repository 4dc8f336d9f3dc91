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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from corticalrnn.errors import CorticalRNNError, DataMismatchError
from corticalrnn.sheets import INPUT_SHEETS, V1_SHEETS, normalize_sheet_name, sort_sheets
from corticalrnn.store import WindowStore, open_store

__all__ = [
    "DenseRing",
    "TrialGroups",
    "WindowBatches",
    "densify",
    "group_trials",
    "iter_dense",
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


# ---------------------------------------------------------------------------------------------
# reused dense buffers and the prefetching iterator
#
# Ownership rule (the one every user of ``buffers > 0`` relies on): a batch yielded from a ring is
# *lent* to the consumer until the consumer asks for the next batch (``next()`` on the iterator,
# i.e. the next turn of a ``for`` loop). Asking for the next batch returns the previous one to the
# ring; its slot is then cleared and refilled, possibly by the prefetching thread while the consumer
# works on the new batch. So with ``k`` slots at most ``k - 1`` batches are filled ahead and the
# batch in the consumer's hands is never written to. A consumer that keeps a batch beyond the next
# ``next()`` (``list(loader)``, a cache, a deferred metric) must ``.clone()`` it, or use
# ``buffers=0`` (fresh tensors per batch, the old behaviour). On CUDA, returning a slot records an
# event on the consumer's current stream; the filler waits for that event on its own stream before
# clearing the slot, so kernels of the consumer's step still queued on the GPU see the old data.


class DenseRing:
    """``slots`` preallocated dense batches ``{"lgn": [B, T, N_in], "v1": [B, T, N_v1]}`` on ``device``
    that sparse events (:meth:`WindowBatches.sparse_batch`) are scattered into.

    Each slot is allocated and first-touched once. Filling a slot zeroes only the entries its previous
    batch set (the events are ~0.5 % of a 1 ms batch) and scatters the new events, so a batch costs
    O(events), not O(B * T * N). On CUDA the events travel through per-slot pinned staging buffers
    and are scattered on the GPU (on the filler's stream); the dense batch never exists on the host.
    A batch smaller than ``max_batch`` (an epoch's last) uses the leading part of a slot.
    """

    def __init__(self, max_batch: int, device: str | torch.device = "cpu", slots: int = 2,
                 n_bins: int | None = None, sizes: Mapping[str, int] | None = None) -> None:
        """``n_bins`` and ``sizes`` (``{"lgn": N_in, "v1": N_v1}``) default to the first batch's; each
        slot is allocated when first filled."""
        if slots < 1:
            raise CorticalRNNError(f"a ring needs at least one slot, got {slots}")
        if max_batch < 1:
            raise CorticalRNNError(f"a ring needs a batch size >= 1, got {max_batch}")
        self.device = torch.device(device)
        self.max_batch = int(max_batch)
        self.n_bins = None if n_bins is None else int(n_bins)
        self.sizes = None if sizes is None else {g: int(sizes[g]) for g in ("lgn", "v1")}
        self.cuda = self.device.type == "cuda"
        self._dense: list[dict[str, torch.Tensor] | None] = [None] * slots
        self._last: list[dict[str, torch.Tensor | None]] = [{"lgn": None, "v1": None} for _ in range(slots)]
        self._staging: list[dict[str, torch.Tensor]] = [{} for _ in range(slots)]
        self._copied: list[Any] = [None] * slots  # CUDA: event after the slot's staging was copied
        self._released: list[Any] = [None] * slots  # CUDA: event when the consumer returned the slot
        self._ready: list[Any] = [None] * slots  # CUDA: event when the slot's scatter was queued
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self._zero = torch.zeros((), dtype=torch.float32, device=self.device)

    @property
    def slots(self) -> int:
        return len(self._dense)

    @property
    def nbytes(self) -> int:
        """Bytes of the dense buffers allocated so far (all slots)."""
        return sum(b.numel() * 4 for slot in self._dense if slot for b in slot.values())

    def _slot(self, i: int) -> dict[str, torch.Tensor]:
        slot = self._dense[i]
        if slot is None:
            assert self.n_bins is not None and self.sizes is not None
            slot = {g: torch.zeros(self.max_batch * self.n_bins * n, dtype=torch.float32, device=self.device)
                    for g, n in self.sizes.items()}
            if not self.cuda:  # zeros may be lazily mapped pages: touch them once, here
                for buf in slot.values():
                    buf.fill_(0.0)
            self._dense[i] = slot
        return slot

    def _events(self, i: int, key: str, array: Any) -> torch.Tensor:
        """Events ``array`` as a tensor on the device (CUDA: through slot ``i``'s pinned staging)."""
        src = torch.as_tensor(array)
        if not self.cuda:
            return src
        buf = self._staging[i].get(key)
        if buf is None or buf.numel() < src.numel() or buf.dtype != src.dtype:
            cap = max(1024, int(src.numel() * 1.25))
            buf = self._staging[i][key] = torch.empty(cap, dtype=src.dtype, pin_memory=True)
        n = src.numel()
        buf[:n].copy_(src.reshape(-1))
        return buf[:n].to(self.device, non_blocking=True)

    def fill(self, i: int, sparse: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Scatter ``sparse`` into slot ``i`` (which the caller owns: see the ownership rule) and return
        its views ``{"lgn", "v1", "window"}``; equal to :func:`densify` of the same events."""
        shape = [int(x) for x in torch.as_tensor(sparse["shape"]).tolist()]
        B, T = shape[0], shape[1]
        if self.n_bins is None or self.sizes is None:
            self.n_bins, self.sizes = T, {"lgn": shape[2], "v1": shape[3]}
        fits = shape[2] == self.sizes["lgn"] and shape[3] == self.sizes["v1"]
        if B > self.max_batch or T != self.n_bins or not fits:
            raise DataMismatchError(
                f"batch of shape {shape} does not fit the ring ({self.max_batch} x {self.n_bins} x "
                f"{self.sizes['lgn']}/{self.sizes['v1']})")
        ctx = torch.cuda.stream(self.stream) if self.cuda else nullcontext()
        with ctx:
            if self.cuda:
                if self._copied[i] is not None:  # the previous H2D copy from this staging is done
                    self._copied[i].synchronize()
                if self._released[i] is not None:  # the consumer's kernels on the old batch are done
                    self.stream.wait_event(self._released[i])
            out: dict[str, torch.Tensor] = {}
            for g, n in (("lgn", shape[2]), ("v1", shape[3])):
                flat = self._slot(i)[g]
                idx = self._events(i, f"{g}_index", sparse[f"{g}_index"])
                val = self._events(i, f"{g}_count", sparse[f"{g}_count"])
                old = self._last[i][g]
                if old is not None and self.cuda:
                    flat.index_fill_(0, old, 0.0)
                elif old is not None:  # put_ is the fastest scatter measured on CPU (48 ms against
                    # 69-79 ms for index_fill_/index_put_/index_copy_, 1.9 M events into 2 GB)
                    flat.put_(old, self._zero.expand(old.numel()))
                idx = idx.long()
                flat.put_(idx, val.to(torch.float32))
                self._last[i][g] = idx
                out[g] = flat[: B * T * n].view(B, T, n)
            out["window"] = torch.as_tensor(np.asarray(sparse["window"], dtype=np.int64)).to(self.device)
            if self.cuda:
                self._copied[i] = torch.cuda.Event()
                self._copied[i].record(self.stream)
                self._ready[i] = self._copied[i]
        return out

    def lend(self, i: int) -> None:
        """The consumer receives slot ``i``: on CUDA its stream waits for the slot's scatter."""
        if self.cuda and self._ready[i] is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(self._ready[i])
            for buf in self._slot(i).values():
                buf.record_stream(stream)

    def release(self, i: int) -> None:
        """The consumer returns slot ``i`` (on CUDA: after the kernels queued so far on its stream)."""
        if self.cuda:
            ev = torch.cuda.Event()
            ev.record(torch.cuda.current_stream(self.device))
            self._released[i] = ev


class _Stopped(Exception):
    """The consumer closed the iterator; background threads wind down."""


def _ahead(items: Iterable[Any], depth: int, stop: Any, name: str) -> Iterator[Any]:
    """Iterate ``items`` in a daemon thread, at most ``depth`` items ahead; its exceptions are raised
    here. Setting ``stop`` (a ``threading.Event`` shared by a pipeline) or leaving this generator
    (closed, or an exception) ends the thread."""
    import queue
    import threading

    done = object()
    halt = threading.Event()  # this stage only: an error here must still reach the consumer
    out: queue.Queue[Any] = queue.Queue(maxsize=depth)

    def put(item: Any) -> None:
        while True:
            if stop.is_set() or halt.is_set():
                raise _Stopped
            try:
                out.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def run() -> None:
        try:
            for item in items:
                put((item, None))
            put((done, None))
        except _Stopped:
            return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            try:
                put((None, exc))
            except _Stopped:
                return

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while True:
            try:
                item, exc = out.get(timeout=0.05)
            except queue.Empty:
                if stop.is_set():
                    raise _Stopped from None
                continue
            if exc is not None:
                raise exc
            if item is done:
                return
            yield item
    finally:
        halt.set()
        thread.join()


def iter_dense(
    source: Iterable[Mapping[str, Any]],
    ring: DenseRing | None,
    device: str | torch.device = "cpu",
    prefetch: bool = True,
) -> Iterator[dict[str, torch.Tensor]]:
    """Dense batches on ``device`` from an iterable of sparse events (``WindowBatches.sparse_batch``).

    ``ring``: the reused buffers (None: fresh tensors per batch, :func:`densify`). ``prefetch``: one
    thread reads the events (up to 2 batches ahead) and another scatters them into the next free
    slot of the ring (or a fresh batch) while the consumer works, so reading, scattering and the
    consumer's step overlap; with a ring of ``k`` slots at most ``k - 1`` batches are filled ahead.
    Batches from a ring follow the ownership rule above (valid until the next ``next()``).
    Exceptions of either thread are raised in the consumer; closing the generator stops both.
    """
    if not prefetch:
        yield from _iter_serial(source, ring, device)
        return
    import queue
    import threading

    stop = threading.Event()
    free: queue.Queue[int] = queue.Queue()
    for i in range(ring.slots if ring is not None else 0):
        free.put(i)

    def take() -> int:
        while True:
            try:
                return free.get(timeout=0.05)
            except queue.Empty:
                if stop.is_set():
                    raise _Stopped from None

    def fill(events: Iterable[Mapping[str, Any]]) -> Iterator[tuple[int | None, dict[str, torch.Tensor]]]:
        for sparse in events:
            if ring is None:
                yield None, densify(sparse, device)
            else:
                i = take()
                yield i, ring.fill(i, sparse)

    events = _ahead(source, 2, stop, "corticalrnn-read")
    filled = _ahead(fill(events), max(1, ring.slots - 1) if ring is not None else 1, stop,
                    "corticalrnn-scatter")
    lent: int | None = None
    try:
        for lent, batch in filled:
            if lent is not None:
                ring.lend(lent)  # type: ignore[union-attr]
            yield batch
            if lent is not None:  # the consumer asked for the next batch: the previous one is returned
                ring.release(lent)  # type: ignore[union-attr]
                free.put(lent)
                lent = None
    except _Stopped:
        return
    finally:
        stop.set()
        filled.close()
        events.close()


def _iter_serial(source: Iterable[Mapping[str, Any]], ring: DenseRing | None,
                 device: str | torch.device) -> Iterator[dict[str, torch.Tensor]]:
    """:func:`iter_dense` without a thread (the slots are used in turn)."""
    k = 0
    for sparse in source:
        if ring is None:
            yield densify(sparse, device)
            continue
        i = k % ring.slots
        k += 1
        batch = ring.fill(i, sparse)
        ring.lend(i)
        yield batch
        ring.release(i)


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
    """Iterates dense batches on ``device``; workers (if any) read and ship sparse events.

    ``prefetch`` (without workers): a thread reads the next batches while the consumer works.
    ``buffers``: 0 gives every batch fresh tensors (safe to keep, e.g. ``list(loader)``); ``k >= 1``
    reuses a :class:`DenseRing` of ``k`` preallocated batches (2: one in the consumer's hands, one
    being filled), and each batch is valid only until the next one is requested (ownership rule above
    :class:`DenseRing`). Same values either way.
    """

    batches: WindowBatches
    batch_size: int = 32
    shuffle: bool = False
    seed: int = 0
    num_workers: int = 0
    device: str | torch.device = "cpu"
    drop_last: bool = False
    context: str = "spawn"
    epoch: int = 0
    prefetch: bool = False
    buffers: int = 0

    def __post_init__(self) -> None:
        self._ring: DenseRing | None = None

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

    def ring(self) -> DenseRing | None:
        """The reused buffers (built on first use; None with ``buffers=0``)."""
        if self.buffers > 0 and self._ring is None:
            self._ring = DenseRing(self.batch_size, self.device, self.buffers, self.batches.n_bins,
                                   self.batches.sizes)
        return self._ring

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        device = torch.device(self.device)
        plan = self.plan()
        self.epoch += 1
        ring = self.ring()
        if self.num_workers == 0:
            events = (self.batches.sparse_batch(b) for b in plan)
            yield from iter_dense(events, ring, device, prefetch=self.prefetch)
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
        yield from iter_dense(loader, ring, device, prefetch=False)


def make_loader(
    batches: WindowBatches,
    batch_size: int = 32,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    drop_last: bool = False,
    context: str = "spawn",
    prefetch: bool = False,
    buffers: int = 0,
) -> BatchLoader:
    """A re-iterable loader of dense batches on ``device`` (see :class:`BatchLoader`)."""
    if batch_size < 1:
        raise CorticalRNNError(f"batch size must be >= 1, got {batch_size}")
    if context not in ("spawn", "forkserver", "fork"):
        raise CorticalRNNError(f"unknown multiprocessing context {context!r}")
    if buffers < 0:
        raise CorticalRNNError(f"buffers must be >= 0, got {buffers}")
    return BatchLoader(batches, batch_size, shuffle, seed, num_workers, device, drop_last, context,
                       prefetch=prefetch, buffers=buffers)


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
