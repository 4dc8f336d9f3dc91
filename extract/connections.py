"""Neuron identity in a Mozaik datastore: per-neuron annotations and the stored connectome.

Annotations: the block of ``datastore.recordings.pickle`` carries ``neuron_annotations`` (sheet ->
one dict per neuron, in population order; ``Sheet.get_neuron_annotations`` in
mozaik/sheets/__init__.py). :func:`numeric_annotations` keeps every numeric key as a float64
array (NaN where a neuron lacks it), named by :data:`corticalrnn.sheets.MOZAIK_ANNOTATIONS`
(``LGNAfferentOrientation`` -> ``ori`` ...) or by the Mozaik key itself.

Connectome: ``datastore.analysis.pickle`` is the pickled list of analysis data structures;
``Connections`` objects (see :mod:`extract.mozaik_types`) hold ``weights`` and ``delays`` as
(pre index, post index, value) rows. :func:`read_connections` loads the list through the same
allow-list as :class:`extract.safe_pickle.SafeUnpickler`, but with a streaming unpickler: any
bytes payload of at least ``lazy_bytes`` (numpy array data) is not read, only its place in the
file is kept (:class:`FileSlice`), and numpy arrays built on one become :class:`LazyArray`
objects that are read back in row chunks (:func:`iter_rows`). Memory therefore stays at one
chunk per array, whatever the number of synapses (measured: see ``docs/ARCHITECTURE.md``).
Rows given as Python lists of tuples (older Mozaik) are necessarily materialised.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from corticalrnn.errors import CorticalRNNError, DataMismatchError, SchemaError
from corticalrnn.sheets import MOZAIK_ANNOTATIONS
from extract import safe_pickle
from extract.mozaik_types import Connections

ANALYSIS = "datastore.analysis.pickle"
#: bytes payloads at least this large are left in the file (FileSlice) instead of being read
LAZY_BYTES = 1 << 20
#: synapses per chunk when streaming (6 MiB per float64 [n, 3] array)
CHUNK_ROWS = 1 << 18


# ---------------------------------------------------------------------------------------------
# annotations


def property_name(key: str) -> str:
    """Short property name of a Mozaik annotation key (the key itself when it has none)."""
    return MOZAIK_ANNOTATIONS.get(key, key)


def _numeric(value: Any) -> float | None:
    if isinstance(value, bool | np.bool_):
        return float(value)
    if isinstance(value, int | float | np.integer | np.floating):
        return float(value)
    if isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "biuf":
        return float(value.reshape(-1)[0])
    return None


def numeric_annotations(
    per_neuron: Sequence[Mapping[str, Any]],
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """One sheet's ``neuron_annotations`` (one dict per neuron) -> (name -> float64 [N], name -> key).

    Keys whose values are numeric for at least one neuron are kept; a neuron without the key (or
    with a non-numeric value) gets NaN. Order of names: first appearance.
    """
    n = len(per_neuron)
    cols: dict[str, np.ndarray] = {}
    keys: dict[str, str] = {}
    for i, ann in enumerate(per_neuron):
        if not isinstance(ann, Mapping):
            continue
        for key, value in ann.items():
            v = _numeric(value)
            if v is None:
                continue
            name = property_name(str(key))
            if name not in cols:
                if name in keys.values() and keys.get(name) != str(key):
                    continue
                cols[name] = np.full(n, np.nan)
                keys[name] = str(key)
            cols[name][i] = v
    return cols, keys


# ---------------------------------------------------------------------------------------------
# streaming, restricted unpickling


@dataclass(frozen=True)
class FileSlice:
    """A bytes payload left in the pickle file: ``length`` bytes at ``offset`` of ``path``."""

    path: str
    offset: int
    length: int

    def read(self, start: int = 0, stop: int | None = None) -> bytes:
        stop = self.length if stop is None else min(stop, self.length)
        with open(self.path, "rb") as fh:
            fh.seek(self.offset + start)
            data = fh.read(max(0, stop - start))
        if len(data) != max(0, stop - start):
            raise SchemaError(f"{self.path}: pickle is truncated (array data ends early)")
        return data


class LazyArray:
    """A numpy array unpickled without its data: dtype, shape, order and where the data lies."""

    def __init__(self) -> None:
        self.shape: tuple[int, ...] = (0,)
        self.dtype: np.dtype = np.dtype(np.float64)
        self.fortran = False
        self.data: FileSlice | None = None
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        # numpy's ndarray state: (version, shape, dtype, is_fortran, rawdata) or without version
        if len(state) == 5:
            state = state[1:]
        shape, dtype, fortran, raw = state
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.fortran = bool(fortran)
        if isinstance(raw, FileSlice):
            self.data = raw
        else:  # small arrays (and object arrays) are read at once, as numpy would
            arr = np.empty(0)
            arr.__setstate__((1, self.shape, self.dtype, self.fortran, raw))
            self.array = arr

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def materialize(self) -> np.ndarray:
        if self.array is None:
            assert self.data is not None
            flat = np.frombuffer(self.data.read(), dtype=self.dtype)
            self.array = flat.reshape(self.shape, order="F" if self.fortran else "C")
        return self.array


def _lazy_reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:
    """Stand-in for ``numpy.core.multiarray._reconstruct``: plain arrays become :class:`LazyArray`."""
    if subtype is np.ndarray:
        return LazyArray()
    return safe_pickle._PLAIN[("numpy.core.multiarray", "_reconstruct")](subtype, shape, dtype)


def _lazy_frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> Any:
    """Stand-in for ``numpy.core.numeric._frombuffer`` (protocol 5 pickles)."""
    if isinstance(buf, FileSlice):
        lazy = LazyArray()
        lazy.shape, lazy.dtype, lazy.fortran, lazy.data = tuple(shape), np.dtype(dtype), order == "F", buf
        return lazy
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)


class StreamingSafeUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """Pure-Python unpickler with :class:`SafeUnpickler`'s allow-list that leaves big payloads on disk."""

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(
        self, file: io.BufferedReader, source: str, use_neo: bool = False, lazy_bytes: int = LAZY_BYTES
    ):
        super().__init__(file, encoding="latin1")  # Python 2 array data: as numpy advises
        self._fh = file
        self.source = str(source)
        self.use_neo = use_neo
        self.lazy_bytes = lazy_bytes

    def find_class(self, module: str, name: str) -> Any:
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return _lazy_reconstruct
        if module in ("numpy.core.numeric", "numpy._core.numeric") and name == "_frombuffer":
            return _lazy_frombuffer
        return safe_pickle.SafeUnpickler.find_class(self, module, name)  # type: ignore[arg-type]

    # -- big payloads ------------------------------------------------------------------------
    def _payload(self, n: int, kind: type) -> Any:
        uf = self._unframer
        frame = uf.current_frame
        in_frame = False
        if frame is not None:
            with frame.getbuffer() as buf:
                in_frame = frame.tell() < buf.nbytes
        if n < self.lazy_bytes or in_frame:
            data = self.read(n)
            if len(data) != n:
                raise pickle.UnpicklingError("pickle data was truncated")
            return kind(data)
        uf.current_frame = None
        offset = self._fh.tell()
        self._fh.seek(n, io.SEEK_CUR)
        return FileSlice(self.source, offset, n)

    def _load_binbytes(self) -> None:
        (n,) = struct.unpack("<I", self.read(4))
        self.append(self._payload(n, bytes))

    def _load_binbytes8(self) -> None:
        (n,) = struct.unpack("<Q", self.read(8))
        self.append(self._payload(n, bytes))

    def _load_bytearray8(self) -> None:
        (n,) = struct.unpack("<Q", self.read(8))
        self.append(self._payload(n, bytearray))

    def _load_binstring(self) -> None:  # Python 2 str (array data of protocol 2 pickles)
        (n,) = struct.unpack("<i", self.read(4))
        if n < 0:
            raise pickle.UnpicklingError("BINSTRING pickle has negative byte count")
        data = self._payload(n, bytes)
        self.append(data if isinstance(data, FileSlice) else self._decode_string(data))

    dispatch[pickle.BINBYTES[0]] = _load_binbytes
    dispatch[pickle.BINBYTES8[0]] = _load_binbytes8
    dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8
    dispatch[pickle.BINSTRING[0]] = _load_binstring


def load_streaming(path: str | os.PathLike[str], use_neo: bool = False, lazy_bytes: int = LAZY_BYTES) -> Any:
    """Load a datastore pickle safely, leaving payloads of ``lazy_bytes`` or more in the file."""
    path = Path(path)
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise CorticalRNNError(f"{path}: file is missing") from None
    except OSError as exc:
        raise CorticalRNNError(f"{path}: cannot read ({exc.strerror})") from None
    with fh:
        return safe_pickle._unpickle(
            StreamingSafeUnpickler(fh, str(path), use_neo, lazy_bytes), path, "datastore pickle"
        )


# ---------------------------------------------------------------------------------------------
# connections


def n_rows(rows: Any) -> int:
    if isinstance(rows, LazyArray):
        return rows.shape[0] if rows.ndim else 0
    if isinstance(rows, np.ndarray):
        return int(rows.shape[0]) if rows.ndim else 0
    return len(rows)


def iter_rows(rows: Any, chunk: int = CHUNK_ROWS, where: str = "") -> Iterator[np.ndarray]:
    """(pre, post, value) rows of a ``weights``/``delays`` entry as float64 ``[k, 3]`` chunks."""
    if isinstance(rows, LazyArray) and rows.array is None:
        if rows.ndim != 2 or rows.shape[1] < 3:
            raise SchemaError(f"{where}: connection rows have shape {rows.shape}, expected (n, 3)")
        n, m = rows.shape
        item = rows.dtype.itemsize
        assert rows.data is not None
        for a in range(0, n, chunk):
            b = min(n, a + chunk)
            if rows.fortran:  # column-major: read each of the first three columns' slice
                cols = [
                    np.frombuffer(rows.data.read((j * n + a) * item, (j * n + b) * item), dtype=rows.dtype)
                    for j in range(3)
                ]
                yield np.stack(cols, axis=1).astype(np.float64, copy=False)
            else:
                block = np.frombuffer(rows.data.read(a * m * item, b * m * item), dtype=rows.dtype)
                yield block.reshape(b - a, m)[:, :3].astype(np.float64, copy=False)
        return
    if isinstance(rows, LazyArray):
        rows = rows.array
    if isinstance(rows, np.ndarray):
        arr = rows
    else:
        arr = np.asarray([tuple(r)[:3] for r in rows], dtype=np.float64).reshape(-1, 3)
    if arr.ndim != 2 or arr.shape[1] < 3:
        if arr.size == 0:
            return
        raise SchemaError(f"{where}: connection rows have shape {arr.shape}, expected (n, 3)")
    for a in range(0, arr.shape[0], chunk):
        yield np.asarray(arr[a : a + chunk, :3], dtype=np.float64)


@dataclass(frozen=True)
class ConnectionChunk:
    """Synapses of one projection: indices into the source/target populations, weight, delay."""

    pre: np.ndarray  # int64
    post: np.ndarray  # int64
    weight: np.ndarray  # float32
    delay: np.ndarray  # float32

    def __len__(self) -> int:
        return int(self.pre.size)


@dataclass(frozen=True)
class StoredProjection:
    """One ``Connections`` structure found in the analysis pickle (data not yet read)."""

    name: str
    source: str
    target: str
    ads: Connections
    where: str

    @property
    def n_synapses(self) -> int:
        return n_rows(self.ads.weights)

    def chunks(self, chunk: int = CHUNK_ROWS) -> Iterator[ConnectionChunk]:
        """Synapses in the stored order, ``chunk`` at a time; weights and delays paired row by row."""
        weights, delays = self.ads.weights, self.ads.delays
        nw = n_rows(weights)
        if delays is not None and n_rows(delays) != nw:
            raise DataMismatchError(
                f"{self.where}: projection {self.name} has {nw} weights but {n_rows(delays)} delays"
            )
        w_it = iter_rows(weights, chunk, self.where) if weights is not None else iter(())
        d_it = iter_rows(delays, chunk, self.where) if delays is not None else None
        for w in w_it:
            d = next(d_it) if d_it is not None else None
            pre = w[:, 0].astype(np.int64)
            post = w[:, 1].astype(np.int64)
            if np.any(pre != w[:, 0]) or np.any(post != w[:, 1]):
                raise SchemaError(f"{self.where}: projection {self.name} has non-integer neuron indices")
            if d is not None and (np.any(d[:, 0] != w[:, 0]) or np.any(d[:, 1] != w[:, 1])):
                raise DataMismatchError(
                    f"{self.where}: projection {self.name}: delays are not listed in the order of the weights"
                )
            delay = d[:, 2] if d is not None else np.full(pre.size, np.nan)
            yield ConnectionChunk(pre, post, w[:, 2].astype(np.float32), delay.astype(np.float32))


def read_connections(folder: str | os.PathLike[str], use_neo: bool = False) -> list[StoredProjection]:
    """The ``Connections`` structures of a datastore folder (empty when none are stored)."""
    path = Path(folder) / ANALYSIS
    if not path.is_file():
        return []
    results = load_streaming(path, use_neo)
    if results is None:
        return []
    if not isinstance(results, list | tuple):
        raise SchemaError(f"{path}: root object is {type(results).__name__}, not a list of analysis results")
    out: list[StoredProjection] = []
    seen: set[str] = set()
    for ads in results:
        if not isinstance(ads, Connections):
            continue
        name = ads.proj_name
        if name in seen:
            raise DataMismatchError(f"{path}: projection {name!r} is stored twice")
        seen.add(name)
        out.append(StoredProjection(name, ads.source_name, ads.target_name, ads, str(path)))
    return out
