"""The binned-window store, schema ``corticalrnn.windows`` v1 (Zarr v3): the one module for it.

A store holds fixed-length windows (``n_bins`` bins of ``bin_ms`` ms) of spike counts for every
neuron of every sheet, as sparse events (layout chosen by measurement; see ``corticalrnn bench
load``: at 1 ms a window is ~0.5 % occupied, so dense chunks decompress ~100x more bytes)::

    STORE.zarr/                  group; attributes:
      schema            "corticalrnn.windows"
      schema_version    1
      tool_version      "corticalrnn X.Y.Z"
      created           ISO 8601 UTC
      bin_ms            int   bin size (ms)
      n_bins            int   bins per window (T)
      window            dict  how windows were cut: origin ("trim" | "import-npz"), t0_ms (window
                              start relative to image onset), length_ms (= n_bins * bin_ms), and for
                              trim before_ms, after_ms, stimulus_ms, incomplete ("drop" | "pad")
      sheets            list  sheet names (Mozaik spelling) in canonical order; S = len(sheets)
      splits            list  split names; windows/split holds indices into it ("" = none)
      sources           list  provenance, one dict per input: path, sha256, kind, first_window,
                              n_windows (windows [first_window, first_window + n_windows))
      layout            "events-u64-v1"
      committed         {"n_windows": W, "n_events": E}: the commit point. Arrays may be longer
                              (an interrupted append); readers use only the first W / W*S+1 / E.
    windows/                     one entry per window, [W] each (chunks of 65536)
      image_id int64, trial int64, source int32 (index into attrs.sources),
      presentation int64 (row in the source's presentation table, -1 if none),
      padded bool (part of the window had no recording: zero counts there),
      valid_bins int32 (bins wholly inside the recording; n_bins unless padded),
      split int8 (index into attrs.splits)
    sheets/<quoted name>/        quoted with urllib.parse.quote(name, safe=""); attribute name
      neuron_ids int64 [N]; positions float64 [N, D] (optional, x, y[, z] in mm);
      ori float64 [N], phase float64 [N] (optional, imported preferred orientation / phase)
    events/ptr   int64 [W*S + 1]  CSR over (window, sheet): row w*S + s; ptr[0] = 0
    events/data  uint64 [E]       (neuron << 32) | (bin << 16) | count, count >= 1; neuron is the
                                  row in that sheet's neuron_ids; sorted ascending within a row
                                  (by neuron, then bin). Chunks of 2**17 events in shards of
                                  2**23, Blosc-zstd(3) byte-shuffled, CRC32C per chunk.

    connections/                 optional: the simulator's connectome (from spike files v2);
                                  attributes complete (bool, set once every projection is
                                  written) and order (projection names, in stored order)
      <quoted name>/             one per projection; attributes name, source, target (sheet
                                  names), n_dropped, units
        pre, post int64 [M]      rows in the source's / target's neuron_ids
        weight float32 [M]       magnitude as the simulator stored it (sign: the source sheet's)
        delay float32 [M]        ms

Limits: N < 2**32, n_bins < 2**16, count < 2**16.

Writes go through :class:`StoreWriter`: events are appended shard-aligned, and
:meth:`StoreWriter.commit` rewrites the (small) window table and ``ptr`` and then the root
attributes. The commit point is that one document: ``sources``, ``splits`` and ``committed`` are
written together as the root ``zarr.json`` in one atomic replace (never key by key), and every chunk
write is itself a whole-file atomic replace (zarr's local store), so data below the commit point is
never touched. ``create`` likewise writes all root attributes at once, last: a folder without the
``schema`` attribute is an unfinished creation (:func:`is_uncreated`). Each source records
``content_sha256`` (its events and window rows), checked by :meth:`StoreWriter.verify_source` when a
resumed ``trim`` skips an input already in the store. Leftover ``*.partial`` files (zarr's
temporary names of a killed write) are removed when a writer opens the store.
A store is therefore always readable at its last commit, which is what makes ``trim`` resumable and
appending safe.
Reading: :func:`open_store` validates and returns a :class:`WindowStore`; reads that meet a
corrupt chunk raise :class:`SchemaError` naming the store and array.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from corticalrnn.binning import BinnedCSR
from corticalrnn.errors import CorticalRNNError, DataMismatchError, SchemaError
from corticalrnn.schema import check_schema, stamp
from corticalrnn.sheets import NEURON_PROPERTIES, normalize_sheet_name, sheet_key, sort_sheets

SCHEMA = "corticalrnn.windows"
SCHEMA_VERSION = 1
LAYOUT = "events-u64-v1"
EVENT_CHUNK = 1 << 17
EVENT_SHARD = 1 << 23
TABLE_CHUNK = 1 << 16
MAX_BINS = (1 << 16) - 1
WINDOW_COLUMNS: dict[str, Any] = {
    "image_id": np.int64,
    "trial": np.int64,
    "source": np.int32,
    "presentation": np.int64,
    "padded": np.bool_,
    "valid_bins": np.int32,
    "split": np.int8,
}
SHEET_PROPERTIES: tuple[str, ...] = NEURON_PROPERTIES
CONNECTION_CHUNK = 1 << 20
_CONNECTION_ARRAYS: dict[str, Any] = {
    "pre": np.int64,
    "post": np.int64,
    "weight": np.float32,
    "delay": np.float32,
}


@dataclass(frozen=True)
class Projection:
    """One projection of the simulator's connectome, indexed in the store's neuron order.

    ``pre`` / ``post``: int64 rows of ``source`` / ``target`` (canonical sheet names) in the
    store's ``neuron_ids``; ``weight``: float32 magnitude (sign given by the source sheet);
    ``delay``: float32 ms.
    """

    name: str
    source: str
    target: str
    pre: np.ndarray
    post: np.ndarray
    weight: np.ndarray
    delay: np.ndarray

    @property
    def n_synapses(self) -> int:
        return int(self.pre.size)




def sha256_file(path: str | os.PathLike[str], block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# metadata


@dataclass(frozen=True)
class SheetMeta:
    """Neurons of one sheet: ids, optional positions and per-neuron properties (ori, phase)."""

    name: str
    neuron_ids: np.ndarray
    positions: np.ndarray | None = None
    properties: Mapping[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_neurons(self) -> int:
        return int(len(self.neuron_ids))


@dataclass(frozen=True)
class StoreMeta:
    """What fixes a store's shape: bins, window definition, sheets and their neurons."""

    bin_ms: int
    n_bins: int
    window: Mapping[str, Any]
    sheets: Sequence[SheetMeta]

    def __post_init__(self) -> None:
        if not 1 <= self.n_bins <= MAX_BINS:
            raise CorticalRNNError(f"a window must have 1..{MAX_BINS} bins, got {self.n_bins}")

    @property
    def sheet_names(self) -> list[str]:
        return [s.name for s in self.sheets]


@dataclass
class WindowTable:
    """Per-window metadata (see module docstring); ``split`` as strings, ``source_path`` resolved."""

    image_id: np.ndarray
    trial: np.ndarray
    source: np.ndarray
    presentation: np.ndarray
    padded: np.ndarray
    valid_bins: np.ndarray
    split: np.ndarray  # str objects
    source_path: np.ndarray  # str objects

    def __len__(self) -> int:
        return int(self.image_id.size)


@dataclass
class WindowBlock:
    """Windows to append: per-window columns and, per sheet, binned counts with rows ``w*N + n``."""

    image_id: np.ndarray
    trial: np.ndarray
    events: Mapping[str, BinnedCSR | PackedEvents]
    presentation: np.ndarray | None = None
    padded: np.ndarray | None = None
    valid_bins: np.ndarray | None = None
    split: str | Sequence[str] = ""

    def __len__(self) -> int:
        return int(np.asarray(self.image_id).size)


@dataclass(frozen=True)
class PackedEvents:
    """Events of one sheet for ``w`` windows: ``data[win_ptr[i]:win_ptr[i+1]]`` packed (see docstring)."""

    win_ptr: np.ndarray  # int64 [w+1], starts at 0
    data: np.ndarray  # uint64 [E]


def pack_events(counts: BinnedCSR, n_neurons: int, n_windows: int, where: str) -> PackedEvents:
    """BinnedCSR with rows ``w*N + n`` -> packed events per window."""
    if counts.n_rows != n_windows * n_neurons:
        raise DataMismatchError(
            f"{where}: {counts.n_rows} rows of counts, expected {n_windows} windows x {n_neurons} neurons"
        )
    if counts.counts.size and int(counts.counts.max()) >= 1 << 16:
        raise DataMismatchError(f"{where}: a bin holds {int(counts.counts.max())} spikes (limit 65535)")
    if counts.counts.size and int(counts.counts.min()) < 1:
        raise DataMismatchError(f"{where}: event counts must be >= 1")
    per_row = np.diff(counts.indptr)
    neuron_bits = np.arange(n_neurons, dtype=np.uint64) << np.uint64(32)
    packed = np.repeat(np.tile(neuron_bits, n_windows), per_row)
    packed |= counts.bins.astype(np.uint64) << np.uint64(16)
    packed |= counts.counts.astype(np.uint64)
    if n_neurons:
        win_ptr = counts.indptr[::n_neurons]
    else:
        win_ptr = np.zeros(n_windows + 1, np.int64)
    return PackedEvents(np.ascontiguousarray(win_ptr, dtype=np.int64), packed)


def _check_packed(ev: PackedEvents, w: int, n_neurons: int, where: str) -> None:
    if ev.win_ptr.shape != (w + 1,) or ev.win_ptr[0] != 0 or ev.win_ptr[-1] != ev.data.size:
        raise DataMismatchError(f"{where}: packed events do not match {w} windows")
    if ev.data.size and int(ev.data.max() >> np.uint64(32)) >= n_neurons:
        raise DataMismatchError(f"{where}: packed events name neurons beyond the sheet's {n_neurons}")


def _column(values: np.ndarray | None, w: int, default: object, dtype: type) -> np.ndarray:
    return np.full(w, default, dtype) if values is None else np.asarray(values, dtype)


def unpack_events(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """packed uint64 -> (neuron int64, bin int32, count int32)."""
    neuron = (packed >> np.uint64(32)).astype(np.int64)
    bins = ((packed >> np.uint64(16)) & np.uint64(0xFFFF)).astype(np.int32)
    count = (packed & np.uint64(0xFFFF)).astype(np.int32)
    return neuron, bins, count


# ---------------------------------------------------------------------------------------------
# reading


@dataclass
class SparseWindows:
    """Counts of chosen windows and neurons of one sheet as events: ``(window position, bin, column)``.

    ``window`` indexes the requested window list, ``column`` the requested neuron list.
    """

    window: np.ndarray  # int64 [E]
    bin: np.ndarray  # int32 [E]
    column: np.ndarray  # int64 [E]
    count: np.ndarray  # int32 [E]
    shape: tuple[int, int, int]  # (W, T, n)

    def flat_index(self) -> np.ndarray:
        """Index into the flattened dense ``[W, T, n]`` array."""
        _, t, n = self.shape
        return (self.window * t + self.bin) * n + self.column

    def to_dense(self, dtype: np.dtype | type = np.uint16) -> np.ndarray:
        out = np.zeros(int(np.prod(self.shape)), dtype=dtype)
        out[self.flat_index()] = self.count
        return out.reshape(self.shape)


class WindowStore:
    """A validated store opened for reading. Use :func:`open_store`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import zarr

        self.path = Path(path)
        if not self.path.exists():
            raise CorticalRNNError(f"{self.path}: no such store")
        try:
            self._root = zarr.open_group(str(self.path), mode="r")
        except Exception as exc:  # zarr raises several types for a non-store
            raise SchemaError(f"{self.path}: not a readable Zarr v3 store ({exc})") from None
        self._validate()
        self._ptr_cache: np.ndarray | None = None
        self._table: WindowTable | None = None

    def _fail(self, problem: str) -> SchemaError:
        return SchemaError(f"{self.path}: {problem}")

    def _validate(self) -> None:
        attrs = dict(self._root.attrs)
        check_schema(attrs, SCHEMA, SCHEMA_VERSION, self.path)
        if attrs.get("layout") != LAYOUT:
            raise self._fail(f"layout {attrs.get('layout')!r} is not supported (expected {LAYOUT!r})")
        for key in ("bin_ms", "n_bins", "window", "sheets", "splits", "sources", "committed"):
            if key not in attrs:
                raise self._fail(f"missing root attribute {key!r}")
        self.attrs = attrs
        self.bin_ms: int = int(attrs["bin_ms"])
        self.n_bins: int = int(attrs["n_bins"])
        self.window_def: dict[str, Any] = dict(attrs["window"])
        self.sources: list[dict[str, Any]] = list(attrs["sources"])
        self.splits: list[str] = list(attrs["splits"])
        self.n_windows: int = int(attrs["committed"]["n_windows"])
        self.n_events: int = int(attrs["committed"]["n_events"])
        self._sheets: list[str] = list(attrs["sheets"])
        self._arrays: dict[str, Any] = {}
        for name in [f"windows/{c}" for c in WINDOW_COLUMNS] + ["events/ptr", "events/data"]:
            self._arrays[name] = self._array(name)
        S = len(self._sheets)
        need = {"events/ptr": self.n_windows * S + 1, "events/data": self.n_events}
        need.update({f"windows/{c}": self.n_windows for c in WINDOW_COLUMNS})
        for name, n in need.items():
            if self._arrays[name].shape[0] < n:
                raise self._fail(f"array {name} has {self._arrays[name].shape[0]} entries, needs {n}")
        if attrs.get("complete_chunks"):
            self._check_chunks(need)
        self._ids: dict[str, np.ndarray] = {}
        for sheet in self._sheets:
            self._ids[sheet] = self._read_all(f"sheets/{sheet_key(sheet)}/neuron_ids").astype(np.int64)

    def _check_chunks(self, need: Mapping[str, int]) -> None:
        """Stores written with every chunk present (``complete_chunks``): a missing chunk or shard
        file within the committed extent is an error, never read as fill values (zeros)."""
        names = dict(need)
        for sheet in self._sheets:
            try:
                g = self._root[f"sheets/{sheet_key(sheet)}"]
            except KeyError:
                continue  # reported below as a missing array
            for name in ("neuron_ids", "positions", *SHEET_PROPERTIES):
                if name in g:
                    names[f"sheets/{sheet_key(sheet)}/{name}"] = int(g[name].shape[0])
        for name, n in names.items():
            arr = self._arrays.get(name) or self._array(name)
            if n == 0 or 0 in arr.shape:
                continue
            grid = arr.shards or arr.chunks
            counts = [-(-n // grid[0])] + [-(-d // c) for d, c in zip(arr.shape[1:], grid[1:])]
            base = self.path / name / "c"
            for idx in np.ndindex(*counts):
                if not base.joinpath(*map(str, idx)).is_file():
                    raise self._fail(
                        f"array {name} is missing its chunk {'/'.join(map(str, idx))} (deleted or not "
                        "written); refusing to read it as zeros"
                    )

    def _array(self, name: str) -> Any:
        try:
            return self._root[name]
        except KeyError:
            raise self._fail(f"missing array {name}") from None

    def _read_all(self, name: str, stop: int | None = None) -> np.ndarray:
        arr = self._array(name)
        try:
            return np.asarray(arr[:stop] if stop is not None else arr[...])
        except Exception as exc:
            raise self._fail(f"cannot read array {name} (corrupt chunk?): {exc}") from None

    # -- metadata --------------------------------------------------------------------------
    @property
    def sheets(self) -> list[str]:
        return list(self._sheets)

    def _sheet(self, sheet: str) -> str:
        try:
            name = normalize_sheet_name(sheet)
        except ValueError:
            name = sheet
        if name not in self._ids:
            raise SchemaError(
                f"{self.path}: no sheet {sheet!r} in this store (sheets: {', '.join(self._sheets)})"
            )
        return name

    def neuron_ids(self, sheet: str) -> np.ndarray:
        return self._ids[self._sheet(sheet)]

    def n_neurons(self, sheet: str) -> int:
        return int(self.neuron_ids(sheet).size)

    def positions(self, sheet: str) -> np.ndarray | None:
        g = self._root[f"sheets/{sheet_key(self._sheet(sheet))}"]
        return (
            self._read_all(f"sheets/{sheet_key(self._sheet(sheet))}/positions") if "positions" in g else None
        )

    def neuron_property(self, sheet: str, name: str) -> np.ndarray | None:
        """Imported per-neuron property (``ori``, ``phase``) or None."""
        key = f"sheets/{sheet_key(self._sheet(sheet))}"
        return self._read_all(f"{key}/{name}") if name in self._root[key] else None

    @property
    def has_connections(self) -> bool:
        """True when the store holds a complete connectome (``connections/``)."""
        return "connections" in self._root and bool(self._root["connections"].attrs.get("complete", False))

    def projection_names(self) -> list[str]:
        if not self.has_connections:
            return []
        return [str(n) for n in self._root["connections"].attrs.get("order", [])]

    def projection_info(self) -> list[tuple[str, str, str, int]]:
        """(name, source, target, number of synapses) per stored projection, without reading them."""
        out = []
        for name in self.projection_names():
            g = self._root[f"connections/{sheet_key(name)}"]
            out.append((name, str(g.attrs["source"]), str(g.attrs["target"]), int(g["pre"].shape[0])))
        return out

    def projection(self, name: str) -> Projection:
        """One projection of the stored connectome (see :class:`Projection`)."""
        if name not in self.projection_names():
            raise DataMismatchError(
                f"{self.path}: no projection {name!r} in this store "
                f"(projections: {', '.join(self.projection_names()) or 'none'})"
            )
        key = f"connections/{sheet_key(name)}"
        g = self._root[key]
        cols = {c: self._read_all(f"{key}/{c}").astype(t, copy=False) for c, t in _CONNECTION_ARRAYS.items()}
        n = cols["pre"].size
        if any(v.size != n for v in cols.values()):
            raise self._fail(f"{key}: pre, post, weight and delay differ in length")
        source, target = self._sheet(str(g.attrs["source"])), self._sheet(str(g.attrs["target"]))
        if n and (cols["pre"].min() < 0 or cols["pre"].max() >= self.n_neurons(source)):
            raise self._fail(f"{key}: presynaptic index out of range for {source}")
        if n and (cols["post"].min() < 0 or cols["post"].max() >= self.n_neurons(target)):
            raise self._fail(f"{key}: postsynaptic index out of range for {target}")
        return Projection(name, source, target, cols["pre"], cols["post"], cols["weight"], cols["delay"])

    def projections(self) -> list[Projection]:
        """The simulator's connectome, one :class:`Projection` per stored projection (empty if none)."""
        return [self.projection(n) for n in self.projection_names()]

    @property
    def window_ms(self) -> int:
        return self.bin_ms * self.n_bins

    @property
    def windows(self) -> WindowTable:
        if self._table is None:
            cols = {c: self._read_all(f"windows/{c}", self.n_windows) for c in WINDOW_COLUMNS}
            for c, n in (("source", len(self.sources)), ("split", len(self.splits))):
                v = cols[c]
                if v.size and (int(v.min()) < 0 or int(v.max()) >= max(n, 1)):
                    raise self._fail(f"array windows/{c} holds indices outside 0..{n - 1} (corrupt?)")
            vb = cols["valid_bins"]
            if vb.size and (int(vb.min()) < 0 or int(vb.max()) > self.n_bins):
                raise self._fail(f"array windows/valid_bins holds values outside 0..{self.n_bins} (corrupt?)")
            split_names = np.array(self.splits + [""], dtype=object)
            source_paths = np.array([s["path"] for s in self.sources] + [""], dtype=object)
            self._table = WindowTable(
                image_id=cols["image_id"],
                trial=cols["trial"],
                source=cols["source"],
                presentation=cols["presentation"],
                padded=cols["padded"].astype(bool),
                valid_bins=cols["valid_bins"],
                split=split_names[cols["split"]],
                source_path=source_paths[cols["source"]],
            )
        return self._table

    def images(self) -> np.ndarray:
        return np.unique(self.windows.image_id)

    def trials(self) -> np.ndarray:
        return np.unique(self.windows.trial)

    def __len__(self) -> int:
        return self.n_windows

    def __repr__(self) -> str:
        return (
            f"<WindowStore {self.path} windows={self.n_windows} bin_ms={self.bin_ms} sheets={self._sheets}>"
        )

    # -- counts ----------------------------------------------------------------------------
    @property
    def _ptr(self) -> np.ndarray:
        if self._ptr_cache is None:
            ptr = self._read_all("events/ptr", self.n_windows * len(self._sheets) + 1)
            if ptr[0] != 0 or np.any(np.diff(ptr) < 0) or ptr[-1] != self.n_events:
                raise self._fail("array events/ptr is not a valid index into events/data (corrupt?)")
            self._ptr_cache = ptr
        return self._ptr_cache

    def _window_indices(self, windows: Iterable[int] | np.ndarray | None) -> np.ndarray:
        w = np.arange(self.n_windows) if windows is None else np.asarray(windows, dtype=np.int64).ravel()
        if w.size and (w.min() < 0 or w.max() >= self.n_windows):
            raise IndexError(f"{self.path}: window index out of range (store has {self.n_windows} windows)")
        return w

    def read_packed(self, windows: Sequence[int] | np.ndarray) -> list[np.ndarray]:
        """Packed events of all sheets for each requested window (one array per window)."""
        w = self._window_indices(windows)
        S = len(self._sheets)
        ptr = self._ptr
        data = self._arrays["events/data"]
        order = np.argsort(w, kind="stable")
        out: list[np.ndarray] = [np.zeros(0, np.uint64)] * w.size
        i = 0
        sw = w[order]
        while i < sw.size:  # read runs of consecutive windows with one slice
            j = i + 1
            while j < sw.size and sw[j] - sw[j - 1] <= 1:
                j += 1
            a, b = int(ptr[sw[i] * S]), int(ptr[(sw[j - 1] + 1) * S])
            try:
                block = np.asarray(data[a:b]) if b > a else np.zeros(0, np.uint64)
            except Exception as exc:
                raise self._fail(f"cannot read array events/data[{a}:{b}] (corrupt chunk?): {exc}") from None
            if block.size != b - a:
                raise self._fail(
                    f"array events/data is shorter than events/ptr says ({block.size} < {b - a})"
                )
            for k in range(i, j):
                lo, hi = int(ptr[sw[k] * S]) - a, int(ptr[(sw[k] + 1) * S]) - a
                out[order[k]] = block[lo:hi]
            i = j
        return out

    def sparse(
        self,
        sheet: str,
        windows: Sequence[int] | np.ndarray,
        neurons: np.ndarray | None = None,
        packed: list[np.ndarray] | None = None,
    ) -> SparseWindows:
        """Events of chosen windows and neurons (``neurons``: row indices, output column order)."""
        name = self._sheet(sheet)
        s = self._sheets.index(name)
        S = len(self._sheets)
        w = self._window_indices(windows)
        n_all = self.n_neurons(name)
        lookup = _column_lookup(neurons, n_all, f"{self.path} sheet {name}")
        n_out = n_all if neurons is None else int(np.asarray(neurons).size)
        packed = self.read_packed(w) if packed is None else packed
        ptr = self._ptr
        pieces, wins = [], []
        for i, (wi, block) in enumerate(zip(w, packed)):
            base = int(ptr[wi * S])
            lo, hi = int(ptr[wi * S + s]) - base, int(ptr[wi * S + s + 1]) - base
            pieces.append(block[lo:hi])
            wins.append(np.full(hi - lo, i, np.int64))
        ev = np.concatenate(pieces) if pieces else np.zeros(0, np.uint64)
        win = np.concatenate(wins) if wins else np.zeros(0, np.int64)
        neuron, bins, count = unpack_events(ev)
        if neuron.size and (neuron.max() >= n_all or bins.max() >= self.n_bins or count.min() < 1):
            raise self._fail(
                f"array events/data holds invalid events for sheet {name} (neuron or bin out of range, "
                "or a count of 0; corrupt?)"
            )
        if lookup is not None:
            col = lookup[neuron]
            keep = col >= 0
            win, bins, col, count = win[keep], bins[keep], col[keep], count[keep]
        else:
            col = neuron
        return SparseWindows(win, bins, col.astype(np.int64), count, (int(w.size), self.n_bins, n_out))

    def read(
        self,
        sheet: str,
        windows: Sequence[int] | np.ndarray,
        neurons: np.ndarray | None = None,
        dtype: np.dtype | type = np.uint16,
    ) -> np.ndarray:
        """Dense counts ``[W, T, n]`` of chosen windows and neurons (row indices) of one sheet."""
        return self.sparse(sheet, windows, neurons).to_dense(dtype)


def _column_lookup(neurons: np.ndarray | None, n_all: int, where: str) -> np.ndarray | None:
    if neurons is None:
        return None
    idx = np.asarray(neurons, dtype=np.int64).ravel()
    if idx.size and (idx.min() < 0 or idx.max() >= n_all):
        raise IndexError(f"{where}: neuron index out of range (sheet has {n_all} neurons)")
    lookup = np.full(n_all, -1, np.int64)
    lookup[idx] = np.arange(idx.size)
    if idx.size and np.unique(idx).size != idx.size:
        raise CorticalRNNError(f"{where}: neuron indices contain duplicates")
    return lookup


def open_store(path: str | os.PathLike[str]) -> WindowStore:
    """Open and validate a store; raises :class:`SchemaError` naming the store and the problem."""
    return WindowStore(path)


def check_compatible(a: WindowStore | StoreMeta, b: WindowStore | StoreMeta, where: str) -> None:
    """Raise :class:`DataMismatchError` unless two stores/metadata have equal bins, windows, neurons."""

    def info(x: WindowStore | StoreMeta) -> tuple[int, int, dict[str, Any], dict[str, np.ndarray]]:
        if isinstance(x, WindowStore):
            return x.bin_ms, x.n_bins, x.window_def, {s: x.neuron_ids(s) for s in x.sheets}
        return x.bin_ms, x.n_bins, dict(x.window), {s.name: np.asarray(s.neuron_ids) for s in x.sheets}

    ba, na, wa, ia = info(a)
    bb, nb, wb, ib = info(b)
    if ba != bb:
        raise DataMismatchError(
            f"{where}: bin sizes differ ({ba} ms vs {bb} ms); stores of different bin sizes cannot be mixed"
        )
    if na != nb or _window_key(wa) != _window_key(wb):
        raise DataMismatchError(f"{where}: window definitions differ ({wa} vs {wb})")
    if list(ia) != list(ib):
        raise DataMismatchError(f"{where}: sheets differ ({list(ia)} vs {list(ib)})")
    for s in ia:
        if not np.array_equal(ia[s], ib[s]):
            raise DataMismatchError(f"{where}: neuron ids of sheet {s} differ")


def _window_key(w: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in w.items() if k not in ("incomplete",)}


# ---------------------------------------------------------------------------------------------
# writing


class StoreWriter:
    """Creates a store or appends to one; nothing counts until :meth:`commit`.

    >>> w = StoreWriter.create(path, meta)          # doctest: +SKIP
    >>> src = w.add_source(path=..., sha256=..., kind="spikes-h5")
    >>> w.append(block, src); w.commit()
    """

    def __init__(self, path: Path, root: Any) -> None:
        self.path = path
        self._root = root
        attrs = dict(root.attrs)
        self.attrs = attrs
        self.sheets: list[str] = list(attrs["sheets"])
        self.n_bins = int(attrs["n_bins"])
        self._n_neurons = {s: int(root[f"sheets/{sheet_key(s)}/neuron_ids"].shape[0]) for s in self.sheets}
        committed = attrs["committed"]
        W, E = int(committed["n_windows"]), int(committed["n_events"])
        S = len(self.sheets)
        self.sources: list[dict[str, Any]] = list(attrs["sources"])
        self.splits: list[str] = list(attrs["splits"])
        self._table = {c: np.asarray(root[f"windows/{c}"][:W]) for c in WINDOW_COLUMNS}
        self._table_new: dict[str, list[np.ndarray]] = {c: [] for c in WINDOW_COLUMNS}
        self._ptr = [np.asarray(root["events/ptr"][: W * S + 1])]
        self._n_events = E
        self._written = E  # events/data[:_written] is on disk
        self._pending: list[np.ndarray] = []
        self._pending_n = 0
        self._data = root["events/data"]
        self._hashers: dict[int, Any] = {}  # source -> sha256 of its events (sources added now)
        self._touched: set[int] = set()
        self._hashed: dict[int, bool] = {}
        self._last_source: int | None = None

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike[str], meta: StoreMeta) -> StoreWriter:
        """Create an empty store at ``path`` (which must not exist)."""
        import zarr
        from zarr.codecs import BloscCodec

        path = Path(path)
        _write_every_chunk()
        if path.exists():
            raise CorticalRNNError(f"{path}: already exists")
        names = [normalize_sheet_name(s.name) for s in meta.sheets]
        if names != sort_sheets(names) or len(set(names)) != len(names):
            raise CorticalRNNError(f"{path}: sheets must be unique and in canonical order, got {names}")
        root = zarr.open_group(str(path), mode="w-", zarr_format=3)
        comp = [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")]
        for sm in meta.sheets:
            g = root.create_group(f"sheets/{sheet_key(sm.name)}")
            g.attrs["name"] = sm.name
            ids = np.asarray(sm.neuron_ids, dtype=np.int64)
            if ids.ndim != 1 or np.unique(ids).size != ids.size:
                raise DataMismatchError(f"{path}: neuron ids of {sm.name} must be 1-D and unique")
            if ids.size >= 1 << 32:
                raise CorticalRNNError(f"{path}: sheet {sm.name} has too many neurons")
            _write_array(g, "neuron_ids", ids, comp)
            if sm.positions is not None:
                pos = np.asarray(sm.positions, dtype=np.float64)
                if pos.ndim != 2 or pos.shape[0] != ids.size:
                    raise DataMismatchError(f"{path}: positions of {sm.name} have shape {pos.shape}")
                _write_array(g, "positions", pos, comp)
            for prop, values in sm.properties.items():
                if prop not in SHEET_PROPERTIES:
                    raise CorticalRNNError(f"{path}: unknown neuron property {prop!r}")
                v = np.asarray(values, dtype=np.float64)
                if v.shape != ids.shape:
                    raise DataMismatchError(
                        f"{path}: {prop} of {sm.name} has shape {v.shape}, expected {ids.shape}"
                    )
                _write_array(g, prop, v, comp)
        for col, dtype in WINDOW_COLUMNS.items():
            root.create_array(
                f"windows/{col}", shape=(0,), chunks=(TABLE_CHUNK,), dtype=dtype, compressors=comp
            )
        from zarr.codecs import Crc32cCodec

        root.create_array("events/ptr", shape=(1,), chunks=(TABLE_CHUNK,), dtype=np.int64, compressors=comp)
        root.create_array(
            "events/data",
            shape=(0,),
            chunks=(EVENT_CHUNK,),
            shards=(EVENT_SHARD,),
            dtype=np.uint64,
            compressors=[*comp, Crc32cCodec()],
        )
        root["events/ptr"][:] = np.zeros(1, np.int64)
        root.attrs.put(  # one atomic document, written last: the creation's commit point
            {
                **stamp(SCHEMA, SCHEMA_VERSION),
                "bin_ms": int(meta.bin_ms),
                "n_bins": int(meta.n_bins),
                "window": dict(meta.window),
                "sheets": names,
                "splits": [""],
                "sources": [],
                "layout": LAYOUT,
                "complete_chunks": True,  # every chunk is written, even all-zero ones
                "committed": {"n_windows": 0, "n_events": 0},
            }
        )
        return cls(path, root)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> StoreWriter:
        """Open an existing store for appending (validated like a read)."""
        import zarr

        store = open_store(path)  # validation
        remove_partial_files(store.path)
        _write_every_chunk()
        return cls(store.path, zarr.open_group(str(store.path), mode="r+"))

    # -- verification and rollback (resume) -----------------------------------------------
    def verify_source(self, index: int) -> str | None:
        """None when source ``index``'s committed windows are all there and match its recorded
        ``content_sha256`` (when it has one); else what is wrong. Reads that source's events."""
        src = self.sources[index]
        try:
            a, n = int(src["first_window"]), int(src["n_windows"])
        except (KeyError, TypeError, ValueError):
            return "its record has no valid first_window / n_windows"
        W = int(self._table["image_id"].size)
        if a < 0 or n < 0 or a + n > W:
            return f"it records windows {a}..{a + n} but the store commits {W}"
        if n and not np.all(self._table["source"][a : a + n] == index):
            return f"windows {a}..{a + n} belong to another source"
        want = src.get("content_sha256")
        if want is None:
            return None
        S = len(self.sheets)
        ptr = self._ptr[0] if len(self._ptr) == 1 else np.concatenate(self._ptr)
        lo, hi = int(ptr[a * S]), int(ptr[(a + n) * S])
        try:
            events = np.asarray(self._data[lo:hi])
        except Exception as exc:
            return f"its events cannot be read ({type(exc).__name__}: {exc})"
        got = _content_digest(
            hashlib.sha256(_le_bytes(events)), {c: v[a : a + n] for c, v in self._table.items()}
        )
        return None if got == want else "its windows do not match the recorded content_sha256"

    def rollback_to(self, index: int) -> None:
        """Forget sources ``index..`` and their windows (they must be the last ones) and commit."""
        if self._pending_n or any(v for v in self._table_new.values()):
            raise CorticalRNNError(f"{self.path}: rollback with uncommitted windows")
        W = int(self.sources[index]["first_window"]) if index < len(self.sources) else self.n_windows
        S = len(self.sheets)
        ptr = np.concatenate(self._ptr)[: W * S + 1]
        self._table = {c: v[:W] for c, v in self._table.items()}
        self._ptr = [ptr]
        self._n_events = self._written = int(ptr[-1])
        self.sources = self.sources[:index]
        self._hashers = {k: v for k, v in self._hashers.items() if k < index}
        self._touched = {k for k in self._touched if k < index}
        self.commit()

    # -- connectome ------------------------------------------------------------------------
    @property
    def has_connections(self) -> bool:
        return "connections" in self._root and bool(self._root["connections"].attrs.get("complete", False))

    def write_connections(self, projections: Iterable[tuple[str, str, str, Iterable[Any], Any]]) -> int:
        """Write the connectome: ``(name, source, target, chunks, n_dropped)`` per projection.

        ``n_dropped`` is an int or a function called once the chunks are consumed.

        Each chunk has ``pre``, ``post``, ``weight``, ``delay`` (rows of the store's neuron order);
        chunks are written as they come (bounded memory). Any earlier partial connectome is
        replaced; ``complete`` is set only at the end. Returns the number of synapses.
        """
        from zarr.codecs import BloscCodec

        comp = [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")]
        if "connections" in self._root:
            del self._root["connections"]
        top = self._root.create_group("connections")
        top.attrs.update({"complete": False, "order": []})
        names: list[str] = []
        total = 0
        for name, source, target, chunks, n_dropped in projections:
            source, target = normalize_sheet_name(source), normalize_sheet_name(target)
            for sheet in (source, target):
                if sheet not in self._n_neurons:
                    raise DataMismatchError(f"{self.path}: projection {name}: no sheet {sheet} in the store")
            if name in names:
                raise DataMismatchError(f"{self.path}: projection {name!r} given twice")
            g = top.create_group(sheet_key(name))
            g.attrs.update(
                {"name": name, "source": source, "target": target, "units": "as stored by the simulator"}
            )
            arrays = {
                c: g.create_array(c, shape=(0,), chunks=(CONNECTION_CHUNK,), dtype=t, compressors=comp)
                for c, t in _CONNECTION_ARRAYS.items()
            }
            n = 0
            for ch in chunks:
                get = ch.__getitem__ if isinstance(ch, Mapping) else lambda c, ch=ch: getattr(ch, c)
                cols = {c: np.asarray(get(c), t).ravel() for c, t in _CONNECTION_ARRAYS.items()}
                m = cols["pre"].size
                if any(v.size != m for v in cols.values()):
                    raise DataMismatchError(f"{self.path}: projection {name}: columns differ in length")
                if m and (cols["pre"].min() < 0 or cols["pre"].max() >= self._n_neurons[source]):
                    raise DataMismatchError(f"{self.path}: projection {name}: pre index out of range")
                if m and (cols["post"].min() < 0 or cols["post"].max() >= self._n_neurons[target]):
                    raise DataMismatchError(f"{self.path}: projection {name}: post index out of range")
                for c, v in cols.items():
                    arrays[c].resize((n + m,))
                    arrays[c][n:] = v
                n += m
            g.attrs["n_dropped"] = int(n_dropped() if callable(n_dropped) else n_dropped)
            names.append(name)
            total += n
        top.attrs.update({"complete": True, "order": names})
        return total

    # -- appending -------------------------------------------------------------------------
    @property
    def n_windows(self) -> int:
        return int(self._table["image_id"].size + sum(a.size for a in self._table_new["image_id"]))

    def committed_sha256(self) -> set[str]:
        return {s["sha256"] for s in self.sources if s.get("sha256")}

    def add_source(self, **info: Any) -> int:
        """Register an input (path, sha256, kind, ...); returns its index for :meth:`append`."""
        info = dict(info)
        info.setdefault("first_window", self.n_windows)
        info.setdefault("n_windows", 0)
        self.sources.append(info)
        self._hashers[len(self.sources) - 1] = hashlib.sha256()
        self._hashed[len(self.sources) - 1] = False
        self._touched.add(len(self.sources) - 1)
        return len(self.sources) - 1

    def _split_code(self, name: str) -> int:
        if name not in self.splits:
            self.splits.append(name)
        if len(self.splits) > 127:
            raise CorticalRNNError(f"{self.path}: too many split names")
        return self.splits.index(name)

    def append(self, block: WindowBlock, source: int) -> None:
        """Append windows (held in memory / shard-aligned buffers until :meth:`commit`)."""
        w = len(block)
        if w == 0:
            return
        missing = set(self.sheets) - set(block.events)
        if missing:
            raise DataMismatchError(f"{self.path}: block lacks sheets {sorted(missing)}")
        splits = [block.split] * w if isinstance(block.split, str) else list(block.split)
        if len(splits) != w:
            raise DataMismatchError(f"{self.path}: {len(splits)} split names for {w} windows")
        cols = {
            "image_id": np.asarray(block.image_id, np.int64),
            "trial": np.asarray(block.trial, np.int64),
            "source": np.full(w, source, np.int32),
            "presentation": _column(block.presentation, w, -1, np.int64),
            "padded": _column(block.padded, w, False, np.bool_),
            "valid_bins": _column(block.valid_bins, w, self.n_bins, np.int32),
        }
        for c, v in cols.items():
            if v.shape != (w,):
                raise DataMismatchError(
                    f"{self.path}: window column {c} has shape {v.shape}, expected ({w},)"
                )
        win_ptrs, packed = [], []
        for s in self.sheets:
            ev = block.events[s]
            where = f"{self.path} sheet {s}"
            if isinstance(ev, BinnedCSR):
                if ev.n_bins != self.n_bins:
                    raise DataMismatchError(f"{where}: counts have {ev.n_bins} bins, the store {self.n_bins}")
                ev = pack_events(ev, self._n_neurons[s], w, where)
            _check_packed(ev, w, self._n_neurons[s], where)
            win_ptrs.append(ev.win_ptr)
            packed.append(ev.data)
        # window-major, then sheet order: row w*S + s of events/ptr
        merged = np.concatenate(
            [packed[k][win_ptrs[k][i] : win_ptrs[k][i + 1]] for i in range(w) for k in range(len(packed))]
        )
        # everything validated: update state
        cols["split"] = np.array([self._split_code(x) for x in splits], dtype=np.int8)
        for c, v in cols.items():
            self._table_new[c].append(v)
        sizes = np.stack([np.diff(ip) for ip in win_ptrs], axis=1)  # [w, S]: row w*S + s
        self._ptr.append(np.cumsum(sizes.ravel()) + self._n_events)
        self._n_events += int(merged.size)
        self._pending.append(merged)
        self._pending_n += merged.size
        self.sources[source]["n_windows"] = int(self.sources[source]["n_windows"]) + w
        self._touched.add(source)
        if source in self._hashers and self._last_source not in (None, source) and self._hashed[source]:
            del self._hashers[source]  # interleaved with another source: its events are not contiguous
        if source in self._hashers:
            self._hashers[source].update(_le_bytes(merged))
            self._hashed[source] = True
        self._last_source = source
        if self._pending_n >= EVENT_SHARD:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if not self._pending_n:
            return
        buf = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        start = self._written
        # write whole shards only, unless final (then the tail shard is rewritten once)
        end = start + buf.size if final else ((start + buf.size) // EVENT_SHARD) * EVENT_SHARD
        if end <= start:
            self._pending, self._pending_n = [buf], buf.size
            return
        if self._data.shape[0] != end:
            self._data.resize((end,))
        self._data[start:end] = buf[: end - start]
        rest = buf[end - start :]
        self._pending, self._pending_n = ([rest], rest.size) if rest.size else ([], 0)
        self._written = end

    def commit(self) -> None:
        """Write everything appended so far and move the commit point."""
        self._flush(final=True)
        if self._data.shape[0] != self._n_events:
            self._data.resize((self._n_events,))
        table = {c: np.concatenate([self._table[c], *self._table_new[c]]) for c in WINDOW_COLUMNS}
        ptr = np.concatenate(self._ptr)
        for c, v in table.items():
            arr = self._root[f"windows/{c}"]
            arr.resize(v.shape)
            if v.size:
                arr[:] = v
        arr = self._root["events/ptr"]
        arr.resize(ptr.shape)
        arr[:] = ptr
        self._table = table
        self._table_new = {c: [] for c in WINDOW_COLUMNS}
        self._ptr = [ptr]
        for i in self._touched:
            src = self.sources[i]
            if i in self._hashers:
                a, n = int(src["first_window"]), int(src["n_windows"])
                src["content_sha256"] = _content_digest(
                    self._hashers[i].copy(), {c: v[a : a + n] for c, v in table.items()}
                )
            else:  # appended to a source of an earlier session: no digest over all of it
                src.pop("content_sha256", None)
        self._touched.clear()
        # the commit point: one atomic write of the whole root document (zarr's attrs.update
        # would write it once per key, leaving a state where sources and committed disagree)
        self._root.attrs.put(
            {
                **dict(self._root.attrs),
                "sources": self.sources,
                "splits": self.splits,
                "committed": {"n_windows": int(table["image_id"].size), "n_events": int(self._n_events)},
            }
        )


def _le_bytes(values: np.ndarray) -> bytes | memoryview:
    v = np.ascontiguousarray(values)
    return v.astype(v.dtype.newbyteorder("<"), copy=False).data


def _content_digest(events_hash: Any, columns: Mapping[str, np.ndarray]) -> str:
    """sha256 of a source's events (already in ``events_hash``) and its window rows."""
    for c in WINDOW_COLUMNS:
        events_hash.update(c.encode())
        events_hash.update(_le_bytes(np.asarray(columns[c], WINDOW_COLUMNS[c])))
    return str(events_hash.hexdigest())


def _write_every_chunk() -> None:
    """Make zarr write all-fill chunks too, so that a missing chunk file always means damage."""
    import zarr

    zarr.config.set({"array.write_empty_chunks": True})


def is_uncreated(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a folder that :meth:`StoreWriter.create` began but did not finish
    (no root ``zarr.json``, or one without the ``schema`` attribute, which is written last)."""
    import json

    p = Path(path)
    if not p.is_dir():
        return False
    meta = p / "zarr.json"
    if not meta.exists():
        return True
    try:
        doc = json.loads(meta.read_text())
    except (OSError, ValueError):
        return True
    return "schema" not in (doc.get("attributes") or {})


def remove_partial_files(path: str | os.PathLike[str]) -> int:
    """Delete zarr's temporary ``*.partial`` files of killed writes inside a store; returns how many.
    Call only while holding the store's write lock."""
    n = 0
    for f in Path(path).rglob("*.partial"):
        if f.is_file():
            f.unlink(missing_ok=True)
            n += 1
    return n


def _write_array(group: Any, name: str, values: np.ndarray, compressors: list[Any]) -> None:
    arr = group.create_array(name, shape=values.shape, dtype=values.dtype, compressors=compressors)
    arr[...] = values
