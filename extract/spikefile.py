"""The HDF5 spike-time file, schema ``corticalrnn.spikes`` v2: the one module that writes and reads it.

One file per Mozaik datastore folder holds the exact spike times (float32 ms, relative to the
start of each recorded segment) of every neuron of every extracted sheet, for each NaturalImage
presentation and each of its three parts (blank before, stimulus, blank after)::

    /                       attrs: schema, schema_version, source, tool_version, created, n_presentations
    /presentations/         image_id, trial, order (int64); stimulus (JSON str);
                            blank_before_ms, stimulus_ms, blank_after_ms (float64)
    /sheets/<quoted name>/  attrs: name; neuron_ids int64 [N]; positions float64 [N, D] (optional)
        <part>/indptr int64 [P*N + 1]   CSR over (presentation, neuron): row = p*N + n
        <part>/times  float32 [nnz]     sorted within each row; spikes at t == duration kept
        properties/<quoted name>  float64 [N] (v2, optional) one per numeric Mozaik neuron
                                  annotation, in this sheet's neuron order; NaN where a neuron
                                  lacks it; attr mozaik_key (e.g. LGNAfferentOrientation, name ori)
    /connections/<quoted name>/   (v2, optional) one per stored Mozaik ``Connections`` projection;
                            attrs: name, source, target (sheet names), n_dropped (synapses onto or
                            from neurons not in the file), units ("as stored by the simulator")
        pre, post int64 [M]   indices into the source's / target's neuron order in this file
        weight float32 [M]    magnitude as the simulator stored it (sign: the source sheet's)
        delay  float32 [M]    ms (NaN when the simulator stored none)

``<part>`` is ``blank_before``, ``stimulus`` or ``blank_after``; a part of zero duration has
empty rows. Sheet names contain ``/`` and are quoted with ``urllib.parse.quote(name, safe="")``.
Version-1 files (no properties, no connections) are read as well.

Writing: :class:`SpikeFileWriter` takes one presentation at a time (memory stays at one
presentation), writes ``<name>.tmp`` and renames it to ``<name>`` only on success.
Reading: :func:`open_spikefile` validates the schema and returns a :class:`SpikeFile`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from corticalrnn.atomic import temporary_name
from corticalrnn.errors import CorticalRNNError, DataMismatchError, SchemaError
from corticalrnn.schema import check_schema, stamp, tool_version
from corticalrnn.sheets import ALL_SHEETS, sheet_key

SCHEMA = "corticalrnn.spikes"
SCHEMA_VERSION = 2
#: versions this reader accepts (v1: no properties, no connections)
READABLE_VERSIONS: tuple[int, ...] = (1, 2)
PARTS: tuple[str, ...] = ("blank_before", "stimulus", "blank_after")
#: presentation-table column -> numpy dtype (``stimulus`` is a variable-length UTF-8 string)
PRESENTATION_COLUMNS: dict[str, Any] = {
    "image_id": np.int64,
    "trial": np.int64,
    "order": np.int64,
    "stimulus": str,
    "blank_before_ms": np.float64,
    "stimulus_ms": np.float64,
    "blank_after_ms": np.float64,
}
#: part -> presentation column holding its duration
PART_DURATION: dict[str, str] = {
    "blank_before": "blank_before_ms",
    "stimulus": "stimulus_ms",
    "blank_after": "blank_after_ms",
}
_STR = h5py.string_dtype("utf-8")
_CHUNK = 1 << 13  # elements per HDF5 chunk (64 KiB of indptr, 32 KiB of times)




@dataclass(frozen=True)
class Presentation:
    """One row of the presentation table."""

    image_id: int
    trial: int
    order: int
    stimulus: str  # JSON of the stimulus parameters
    blank_before_ms: float
    stimulus_ms: float
    blank_after_ms: float

    def duration_ms(self, part: str) -> float:
        return float(getattr(self, PART_DURATION[part]))


@dataclass(frozen=True)
class SheetLayout:
    """Neurons of one sheet, fixed for the whole file."""

    name: str
    neuron_ids: np.ndarray  # int64 [N]
    positions: np.ndarray | None = None  # float64 [N, D]
    properties: Mapping[str, np.ndarray] = field(default_factory=dict)  # name -> float64 [N]
    property_keys: Mapping[str, str] = field(default_factory=dict)  # name -> Mozaik annotation key

    @property
    def n_neurons(self) -> int:
        return int(len(self.neuron_ids))


@dataclass(frozen=True)
class ConnectionInfo:
    """One projection of a spike file (synapses read with :meth:`SpikeFile.read_connections`)."""

    name: str
    source: str
    target: str
    n_synapses: int
    n_dropped: int = 0


@dataclass(frozen=True)
class PackedSpikes:
    """Spikes of one sheet and part of one presentation, grouped by neuron: ``counts`` int [N], ``times``."""

    counts: np.ndarray
    times: np.ndarray


#: spikes of one sheet and part of one presentation: one array of times (ms) per neuron, or packed
PartSpikes = Sequence[np.ndarray] | PackedSpikes


@dataclass
class WriterOptions:
    """HDF5 storage options (compression trades write speed for size; ``None`` is fastest)."""

    compression: str | None = None
    compression_opts: int | None = None
    chunk: int = _CHUNK
    tool_version: str = field(default_factory=tool_version)


def pack_part(spikes: PartSpikes, n_neurons: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Normalise one part's spikes to ``(counts int64 [N], times float32)`` sorted within each neuron."""
    if isinstance(spikes, PackedSpikes):
        counts = np.asarray(spikes.counts, dtype=np.int64)
        times = np.asarray(spikes.times, dtype=np.float32).ravel()
    else:
        arrays = [np.asarray(s, dtype=np.float32).ravel() for s in spikes]
        counts = np.fromiter((a.size for a in arrays), dtype=np.int64, count=len(arrays))
        times = np.concatenate(arrays) if arrays else np.zeros(0, np.float32)
    if counts.shape != (n_neurons,):
        raise DataMismatchError(f"{where}: {counts.size} neurons given, the file has {n_neurons}")
    if counts.sum() != times.size:
        raise DataMismatchError(f"{where}: counts sum to {counts.sum()} but {times.size} times given")
    if times.size > 1:
        decreasing = np.diff(times) < 0
        if decreasing.any():
            # a decrease is allowed only where a new neuron's row starts
            starts = np.cumsum(counts)[:-1]
            starts = starts[(starts > 0) & (starts < times.size)]
            boundary = np.zeros(times.size - 1, dtype=bool)
            boundary[starts - 1] = True
            if (decreasing & ~boundary).any():
                rows = np.repeat(np.arange(n_neurons), counts)
                order = np.lexsort((times, rows))
                times = times[order]
    if not np.all(np.isfinite(times)):
        raise DataMismatchError(f"{where}: non-finite spike times")
    return counts, times


class SpikeFileWriter:
    """Writes one spike file incrementally; use as a context manager.

    >>> with SpikeFileWriter(path, source, layouts) as w:      # doctest: +SKIP
    ...     w.append(presentation, {sheet: {part: per_neuron_times}})
    The file appears under ``path`` only when the ``with`` block ends without an exception;
    otherwise the temporary file is removed.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        source: str | os.PathLike[str],
        sheets: Sequence[SheetLayout],
        options: WriterOptions | None = None,
    ) -> None:
        self.path = Path(path)
        self.tmp = temporary_name(self.path)
        self.source = str(source)
        self.sheets = list(sheets)
        self.options = options or WriterOptions()
        self._rows: list[Presentation] = []
        self._nnz: dict[tuple[str, str], int] = {}
        self._ds: dict[tuple[str, str], tuple[h5py.Dataset, h5py.Dataset]] = {}
        self._h5: h5py.File | None = None
        self.n_spikes = 0
        names = [s.name for s in self.sheets]
        if len(set(names)) != len(names):
            raise DataMismatchError(f"{self.path}: duplicate sheet names {names}")

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> SpikeFileWriter:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp.unlink(missing_ok=True)
        h5 = h5py.File(self.tmp, "w")
        self._h5 = h5
        opts = self.options
        comp = {"compression": opts.compression, "compression_opts": opts.compression_opts}
        h5.attrs.update(stamp(SCHEMA, SCHEMA_VERSION))
        h5.attrs["source"] = self.source
        h5.attrs["tool_version"] = opts.tool_version
        h5.attrs["n_presentations"] = 0
        for layout in self.sheets:
            g = h5.create_group(f"sheets/{sheet_key(layout.name)}")
            g.attrs["name"] = layout.name
            ids = np.asarray(layout.neuron_ids, dtype=np.int64)
            if ids.ndim != 1:
                raise DataMismatchError(f"{self.path}: neuron ids of {layout.name} must be 1-D")
            g.create_dataset("neuron_ids", data=ids)
            if layout.positions is not None:
                pos = np.asarray(layout.positions, dtype=np.float64)
                if pos.ndim != 2 or pos.shape[0] != ids.size:
                    raise DataMismatchError(
                        f"{self.path}: positions of {layout.name} have shape {pos.shape}, "
                        f"expected ({ids.size}, D)"
                    )
                g.create_dataset("positions", data=pos)
            for prop, values in layout.properties.items():
                v = np.asarray(values, dtype=np.float64)
                if v.shape != ids.shape:
                    raise DataMismatchError(
                        f"{self.path}: property {prop} of {layout.name} has shape {v.shape}, "
                        f"expected {ids.shape}"
                    )
                ds = g.create_dataset(f"properties/{sheet_key(prop)}", data=v)
                ds.attrs["name"] = prop
                ds.attrs["mozaik_key"] = str(layout.property_keys.get(prop, prop))
            for part in PARTS:
                pg = g.create_group(part)
                pg.create_dataset(
                    "indptr", data=np.zeros(1, np.int64), maxshape=(None,), chunks=(opts.chunk,), **comp
                )
                pg.create_dataset(
                    "times", shape=(0,), dtype=np.float32, maxshape=(None,), chunks=(opts.chunk,), **comp
                )
                self._nnz[(layout.name, part)] = 0
                self._ds[(layout.name, part)] = (pg["indptr"], pg["times"])

    def append(
        self, presentation: Presentation, spikes: Mapping[str, Mapping[str, PartSpikes]]
    ) -> None:
        """Add one presentation: ``spikes[sheet][part]`` for every sheet of the file and every part.

        A part may be omitted only when its duration is 0 (it then gets empty rows).
        """
        self._require_open()
        where = f"{self.path} presentation {len(self._rows)} (image {presentation.image_id})"
        packed: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        for layout in self.sheets:
            if layout.name not in spikes:
                raise DataMismatchError(f"{where}: no spikes given for sheet {layout.name}")
            sheet_parts = spikes[layout.name]
            for part in PARTS:
                if part not in sheet_parts:
                    if presentation.duration_ms(part) != 0:
                        raise DataMismatchError(f"{where}: no {part} spikes given for sheet {layout.name}")
                    packed[(layout.name, part)] = (
                        np.zeros(layout.n_neurons, np.int64),
                        np.zeros(0, np.float32),
                    )
                    continue
                packed[(layout.name, part)] = pack_part(
                    sheet_parts[part], layout.n_neurons, f"{where} {layout.name}/{part}"
                )
        # everything validated: now write
        for (name, part), (counts, times) in packed.items():
            indptr, ds = self._ds[(name, part)]
            nnz = self._nnz[(name, part)]
            n0 = indptr.shape[0]
            indptr.resize((n0 + counts.size,))
            indptr[n0:] = nnz + np.cumsum(counts)
            if times.size:
                ds.resize((nnz + times.size,))
                ds[nnz:] = times
            self._nnz[(name, part)] = nnz + int(times.size)
            self.n_spikes += int(times.size)
        self._rows.append(presentation)

    def add_connections(
        self,
        name: str,
        source: str,
        target: str,
        chunks: Iterable[Any],
        n_dropped: int | Callable[[], int] = 0,
    ) -> int:
        """Write one projection from chunks with ``pre``, ``post``, ``weight``, ``delay`` (streamed).

        ``pre``/``post`` index the neuron order of ``source``/``target`` in this file (both must be
        sheets of the file). ``n_dropped`` (or a function giving it once the chunks are consumed)
        is recorded. Returns the number of synapses written.
        """
        h5 = self._require_open()
        sizes = {s.name: s.n_neurons for s in self.sheets}
        for sheet in (source, target):
            if sheet not in sizes:
                raise DataMismatchError(f"{self.path}: projection {name}: sheet {sheet!r} is not in the file")
        key = f"connections/{sheet_key(name)}"
        if key in h5:
            raise DataMismatchError(f"{self.path}: projection {name!r} written twice")
        g = h5.create_group(key)
        top = h5["connections"]
        top.attrs["order"] = [*[_attr_str(x) for x in top.attrs.get("order", [])], name]
        g.attrs.update(
            {"name": name, "source": source, "target": target, "units": "as stored by the simulator"}
        )
        opts = self.options
        comp = {"compression": opts.compression, "compression_opts": opts.compression_opts}
        chunk = max(opts.chunk, 1 << 16)
        spec = {"pre": np.int64, "post": np.int64, "weight": np.float32, "delay": np.float32}
        ds = {
            k: g.create_dataset(k, shape=(0,), dtype=t, maxshape=(None,), chunks=(chunk,), **comp)
            for k, t in spec.items()
        }
        n = 0
        where = f"{self.path} projection {name}"
        for c in chunks:
            cols = {k: np.asarray(getattr(c, k), dtype=t).ravel() for k, t in spec.items()}
            m = cols["pre"].size
            if any(v.size != m for v in cols.values()):
                raise DataMismatchError(f"{where}: pre, post, weight and delay differ in length")
            if m and (cols["pre"].min() < 0 or cols["pre"].max() >= sizes[source]):
                raise DataMismatchError(f"{where}: presynaptic index out of range for {source}")
            if m and (cols["post"].min() < 0 or cols["post"].max() >= sizes[target]):
                raise DataMismatchError(f"{where}: postsynaptic index out of range for {target}")
            for k, v in cols.items():
                ds[k].resize((n + m,))
                ds[k][n:] = v
            n += m
        g.attrs["n_dropped"] = int(n_dropped() if callable(n_dropped) else n_dropped)
        return n

    def close(self) -> None:
        """Write the presentation table, close and rename the temporary file into place."""
        h5 = self._require_open()
        try:
            g = h5.create_group("presentations")
            for col, dtype in PRESENTATION_COLUMNS.items():
                values = [getattr(r, col) for r in self._rows]
                if dtype is str:
                    g.create_dataset(col, data=np.array(values, dtype=object), dtype=_STR)
                else:
                    g.create_dataset(col, data=np.asarray(values, dtype=dtype).reshape(len(values)))
            h5.attrs["n_presentations"] = len(self._rows)
            h5.close()
            self._h5 = None
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Close and delete the temporary file (nothing appears under the final name)."""
        if self._h5 is not None:
            try:
                self._h5.close()
            finally:
                self._h5 = None
        self.tmp.unlink(missing_ok=True)

    def _require_open(self) -> h5py.File:
        if self._h5 is None:
            raise RuntimeError(f"{self.path}: writer is not open")
        return self._h5

    @property
    def n_presentations(self) -> int:
        return len(self._rows)


def write_spikefile(
    path: str | os.PathLike[str],
    source: str | os.PathLike[str],
    sheets: Sequence[SheetLayout],
    presentations: Sequence[tuple[Presentation, Mapping[str, Mapping[str, PartSpikes]]]],
    options: WriterOptions | None = None,
) -> Path:
    """Write a whole file at once (convenience for tests and small data); returns the path."""
    with SpikeFileWriter(path, source, sheets, options) as w:
        for pres, spikes in presentations:
            w.append(pres, spikes)
    return Path(path)


# ---------------------------------------------------------------------------------------------
# reading


@dataclass(frozen=True)
class PartCSR:
    """Spikes of one sheet and part for consecutive presentations, as CSR over (presentation, neuron).

    ``indptr`` has ``n_presentations * n_neurons + 1`` entries starting at 0; row ``p*N + n`` holds
    neuron ``n`` of the ``p``-th selected presentation; ``times`` are float32 ms.
    """

    indptr: np.ndarray
    times: np.ndarray
    n_neurons: int

    @property
    def n_presentations(self) -> int:
        return (self.indptr.size - 1) // max(self.n_neurons, 1) if self.n_neurons else 0

    def row(self, presentation: int, neuron: int) -> np.ndarray:
        r = presentation * self.n_neurons + neuron
        return self.times[self.indptr[r] : self.indptr[r + 1]]


class SpikeFile:
    """A validated, open spike file. Use :func:`open_spikefile`; close it (or use ``with``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self._h5 = h5py.File(self.path, "r")
        except FileNotFoundError:
            raise CorticalRNNError(f"{self.path}: no such spike file") from None
        except OSError as exc:
            raise SchemaError(f"{self.path}: not a readable HDF5 file ({exc})") from None
        try:
            self._validate()
        except BaseException:
            self._h5.close()
            raise

    # -- validation ------------------------------------------------------------------------
    def _fail(self, problem: str) -> SchemaError:
        return SchemaError(f"{self.path}: {problem}")

    def _validate(self) -> None:
        h5 = self._h5
        self.schema_version = check_schema(h5.attrs, SCHEMA, READABLE_VERSIONS, self.path)
        if "presentations" not in h5:
            raise self._fail("missing group /presentations")
        cols: dict[str, np.ndarray] = {}
        for col, dtype in PRESENTATION_COLUMNS.items():
            if col not in h5["presentations"]:
                raise self._fail(f"missing dataset /presentations/{col}")
            ds = h5["presentations"][col]
            cols[col] = ds.asstr()[()] if dtype is str else ds[()].astype(dtype)
        n = {len(v) for v in cols.values()}
        if len(n) != 1:
            raise self._fail("presentation columns have different lengths")
        self.n_presentations = n.pop()
        if int(h5.attrs.get("n_presentations", self.n_presentations)) != self.n_presentations:
            raise self._fail("attribute n_presentations does not match the presentation table")
        self.presentations: dict[str, np.ndarray] = cols
        if "sheets" not in h5:
            raise self._fail("missing group /sheets")
        self._groups: dict[str, h5py.Group] = {}
        self._ids: dict[str, np.ndarray] = {}
        for key, g in h5["sheets"].items():
            name = _attr_str(g.attrs.get("name", key))
            if "neuron_ids" not in g:
                raise self._fail(f"missing dataset /sheets/{key}/neuron_ids")
            ids = g["neuron_ids"][()].astype(np.int64)
            for part in PARTS:
                for ds in ("indptr", "times"):
                    if f"{part}/{ds}" not in g:
                        raise self._fail(f"missing dataset /sheets/{key}/{part}/{ds}")
                expected = self.n_presentations * ids.size + 1
                got = g[f"{part}/indptr"].shape[0]
                if got != expected:
                    raise self._fail(f"/sheets/{key}/{part}/indptr has {got} entries, expected {expected}")
            self._groups[name] = g
            self._ids[name] = ids
        self.sheets: list[str] = sorted(
            self._groups, key=lambda s: (ALL_SHEETS.index(s) if s in ALL_SHEETS else len(ALL_SHEETS), s)
        )

    # -- metadata --------------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        return {k: _attr_str(v) if isinstance(v, bytes | str) else v for k, v in self._h5.attrs.items()}

    @property
    def source(self) -> str:
        return str(_attr_str(self._h5.attrs.get("source", "")))

    def _group(self, sheet: str) -> h5py.Group:
        try:
            return self._groups[sheet]
        except KeyError:
            raise DataMismatchError(
                f"{self.path}: sheet {sheet!r} is not in this file (sheets: {', '.join(self.sheets)})"
            ) from None

    def neuron_ids(self, sheet: str) -> np.ndarray:
        self._group(sheet)
        return self._ids[sheet]

    def n_neurons(self, sheet: str) -> int:
        return int(self.neuron_ids(sheet).size)

    def positions(self, sheet: str) -> np.ndarray | None:
        g = self._group(sheet)
        if "positions" not in g:
            return None
        pos = g["positions"][()]
        if pos.size and not np.isfinite(pos).all():
            raise self._fail(f"/sheets/{sheet_key(sheet)}/positions: NaN or infinite neuron positions")
        return pos

    def properties(self, sheet: str) -> dict[str, np.ndarray]:
        """Per-neuron properties (name -> float64 [N], this file's neuron order); empty for v1 files."""
        g = self._group(sheet)
        if "properties" not in g:
            return {}
        return {_attr_str(ds.attrs.get("name", k)): ds[()] for k, ds in g["properties"].items()}

    def property_keys(self, sheet: str) -> dict[str, str]:
        """Property name -> the Mozaik annotation key it came from."""
        g = self._group(sheet)
        if "properties" not in g:
            return {}
        return {
            _attr_str(ds.attrs.get("name", k)): _attr_str(ds.attrs.get("mozaik_key", k))
            for k, ds in g["properties"].items()
        }

    @property
    def connections(self) -> list[ConnectionInfo]:
        """Projections stored in the file (v2), in stored order; empty when none."""
        if "connections" not in self._h5:
            return []
        out = []
        for key, g in self._h5["connections"].items():
            for ds in ("pre", "post", "weight", "delay"):
                if ds not in g:
                    raise self._fail(f"missing dataset /connections/{key}/{ds}")
            n = g["pre"].shape[0]
            if any(g[ds].shape[0] != n for ds in ("post", "weight", "delay")):
                raise self._fail(f"/connections/{key}: pre, post, weight and delay differ in length")
            out.append(
                ConnectionInfo(
                    name=_attr_str(g.attrs.get("name", key)),
                    source=_attr_str(g.attrs["source"]),
                    target=_attr_str(g.attrs["target"]),
                    n_synapses=int(n),
                    n_dropped=int(g.attrs.get("n_dropped", 0)),
                )
            )
        order = {name: i for i, name in enumerate(self._h5["connections"].attrs.get("order", []))}
        return sorted(out, key=lambda c: order.get(c.name, len(order)))

    def read_connections(
        self, name: str, start: int = 0, stop: int | None = None
    ) -> dict[str, np.ndarray]:
        """Synapses ``start:stop`` of one projection: pre, post (int64), weight, delay (float32)."""
        key = f"connections/{sheet_key(name)}"
        if key not in self._h5:
            raise DataMismatchError(f"{self.path}: no projection {name!r} in this file")
        g = self._h5[key]
        return {ds: g[ds][start:stop] for ds in ("pre", "post", "weight", "delay")}

    def presentation(self, p: int) -> Presentation:
        if not 0 <= p < self.n_presentations:
            raise IndexError(f"{self.path}: presentation {p} out of range (0..{self.n_presentations - 1})")
        return Presentation(**{c: _scalar(v[p]) for c, v in self.presentations.items()})

    def iter_presentations(self) -> Iterator[Presentation]:
        for p in range(self.n_presentations):
            yield self.presentation(p)

    def stimulus_params(self, p: int) -> dict[str, Any]:
        return json.loads(self.presentations["stimulus"][p])

    # -- spikes ----------------------------------------------------------------------------
    def _part(self, sheet: str, part: str) -> h5py.Group:
        if part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, not {part!r}")
        return self._group(sheet)[part]

    def spike_times(self, sheet: str, part: str, presentation: int, neuron: int) -> np.ndarray:
        """Spike times (float32 ms from the part's start) of one neuron (index, not id)."""
        n = self.n_neurons(sheet)
        if not 0 <= neuron < n:
            raise IndexError(f"{self.path}: neuron index {neuron} out of range for {sheet} ({n})")
        if not 0 <= presentation < self.n_presentations:
            raise IndexError(f"{self.path}: presentation {presentation} out of range")
        g = self._part(sheet, part)
        r = presentation * n + neuron
        a, b = g["indptr"][r : r + 2]
        return g["times"][a:b]

    def read_part(self, sheet: str, part: str, start: int = 0, stop: int | None = None) -> PartCSR:
        """CSR of presentations ``start:stop`` (bulk read, two HDF5 slices; indptr rebased to 0)."""
        stop = self.n_presentations if stop is None else stop
        if not 0 <= start <= stop <= self.n_presentations:
            raise IndexError(f"{self.path}: presentations {start}:{stop} out of range")
        n = self.n_neurons(sheet)
        g = self._part(sheet, part)
        indptr = g["indptr"][start * n : stop * n + 1]
        times = g["times"][indptr[0] : indptr[-1]] if indptr[-1] > indptr[0] else np.zeros(0, np.float32)
        if indptr.size and indptr[0]:
            indptr = indptr - indptr[0]
        where = f"/sheets/{sheet_key(sheet)}/{part}"
        if indptr.size != (stop - start) * n + 1 or (indptr.size and np.any(np.diff(indptr) < 0)):
            raise self._fail(f"{where}: indptr is truncated or not monotone (corrupt file)")
        if indptr[-1] != times.size:
            raise self._fail(f"{where}: indptr points past the end of times")
        if times.size and not np.isfinite(times).all():
            raise self._fail(f"{where}: spike times include NaN or infinite values (corrupt file)")
        return PartCSR(indptr=indptr, times=times, n_neurons=n)

    def n_spikes(self, sheet: str | None = None, part: str | None = None) -> int:
        sheets = [sheet] if sheet is not None else self.sheets
        parts = [part] if part is not None else list(PARTS)
        return sum(int(self._part(s, q)["times"].shape[0]) for s in sheets for q in parts)

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> SpikeFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SpikeFile {self.path} presentations={self.n_presentations} sheets={self.sheets}>"


def open_spikefile(path: str | os.PathLike[str]) -> SpikeFile:
    """Open and validate a spike file; raises :class:`SchemaError` naming the file and the problem."""
    return SpikeFile(path)


def is_complete(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a readable spike file of this schema (used to skip finished work)."""
    try:
        with open_spikefile(path):
            return True
    except CorticalRNNError:
        return False


def _attr_str(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.ndarray) and v.shape == ():
        return _attr_str(v[()])
    return v


def _scalar(v: Any) -> Any:
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    if isinstance(v, bytes):
        return v.decode("utf-8")
    return v
