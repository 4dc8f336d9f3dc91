"""Restricted unpickling of Mozaik datastore pickles: an allow-list of globals, nothing else resolved.

A pickle names the functions it calls. :class:`SafeUnpickler` resolves only the globals a
``PickledDataStore`` legitimately contains (neo core classes, quantities, numpy array
reconstruction under ``numpy.core`` and ``numpy._core``, builtins containers,
``collections.OrderedDict``, ``datetime``, Mozaik's segment wrapper) and refuses every other
global with :class:`ForbiddenGlobalError` naming the file and the global, before anything is
called.

Two modes:

* ``use_neo=False`` (default, and the only mode when neo is not installed): neo and quantities
  classes map to light stand-ins in this module that keep the pickled state (neo versions that
  keep lists in ``_items`` and older ones with plain lists; ``SpikeTrainList`` with ``_items`` or
  with ``_spike_time_array``/``_channel_id_array``). Fast, needs only numpy.
* ``use_neo=True``: the real neo and quantities classes are returned (still allow-listed).

Either way :func:`spiketrain_data` reads a spike train as plain numbers (ms).

Bounds and types (:class:`Limits`, every violation a :class:`PickleLimitError` naming the file):

* numpy arrays, scalars and dtypes only of plain kinds (bool, int, uint, float, complex, and
  fixed-width bytes/str): no structured, sub-array or object dtypes. A dtype is always built as a
  fresh copy from its type string; an array's state is checked (dtype plain, its item size the
  canonical one, raw data a bytes object of exactly ``prod(shape) * itemsize`` bytes) *before*
  numpy's own ``ndarray.__setstate__`` copies it, so nothing is ever read outside a buffer;
  ``_reconstruct`` only with the ``(0,)`` shape numpy itself pickles (no allocation from a shape).
* no ``slice``, ``bytearray``, ``range``; ``bytes`` never from an int; ``_codecs.encode`` only
  ``str -> latin1``; container constructors called from a pickle count the elements they copy.
* file size ``max_file_bytes``, one array ``max_array_bytes``, and, after loading, a walk of the
  object graph: nesting depth ``max_depth`` and objects as a tree (shared references counted
  every time they are reached, so a repeated-reference "bomb" is caught) ``max_objects``.
"""

from __future__ import annotations

import codecs
import collections
import contextvars
import copyreg
import datetime
import functools
import importlib
import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from corticalrnn.errors import CorticalRNNError, SchemaError
from extract.mozaik_types import MOZAIK_CLASSES


class ForbiddenGlobalError(CorticalRNNError):
    """A pickle referenced a global outside the allow-list; nothing was executed."""


# ---------------------------------------------------------------------------------------------
# light stand-ins for quantities


class LightDimensionality(dict):
    """quantities.Dimensionality: a dict unit -> power."""

    def __setstate__(self, state: Any) -> None:  # pickled as NEWOBJ + SETITEMS; tolerate a state
        if isinstance(state, dict):
            self.update(state)


class LightUnit:
    """quantities.UnitQuantity (and subclasses): name, definition (a quantity or None), symbol."""

    def __init__(self, name: str = "", definition: Any = None, symbol: Any = None, *rest: Any) -> None:
        self.name = name
        self.definition = definition
        self.symbol = symbol

    def __setstate__(self, state: Any) -> None:
        self._state = state

    def __hash__(self) -> int:
        return hash((self.name, self.symbol))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LightUnit) and (self.name, self.symbol) == (other.name, other.symbol)

    def seconds(self) -> float:
        """Size of this unit in seconds (raises for non-time units); cached."""
        cached = self.__dict__.get("_seconds")
        if cached is not None:
            return float(cached)
        if self.definition is None:
            if not (self.name in ("second", "s") or self.symbol == "s"):
                raise ValueError(f"unit {self.name!r} is not a time unit")
            value = 1.0
        else:
            value = _quantity_seconds(self.definition)
        self.__dict__["_seconds"] = value
        return value

    def __repr__(self) -> str:
        return f"<unit {self.symbol or self.name}>"


class LightQuantity:
    """quantities.Quantity: ``magnitude`` (ndarray, built on first use) and ``dimensionality``."""

    __slots__ = ("_nd_state", "_magnitude", "dimensionality")

    def __init__(self, *args: Any) -> None:
        self._nd_state: Any = None
        self._magnitude: np.ndarray | None = None
        self.dimensionality: dict[Any, Any] = {}

    def __setstate__(self, state: Any) -> None:
        # quantities writes (version, shape, dtype, fortran, data, dimensionality); older: (nd_state, dim)
        if not isinstance(state, tuple) or len(state) not in (2, 5, 6):
            raise _Refused("quantity state is not a tuple of 2, 5 or 6 items")
        if len(state) == 2:
            self._nd_state, dim = state
        else:
            self._nd_state, dim = state[:-1], state[-1]
        if self._nd_state is not None:
            _check_array_state(self._nd_state)
        self._magnitude = None
        self.dimensionality = dim if isinstance(dim, dict) else {}

    @property
    def magnitude(self) -> np.ndarray:
        if self._magnitude is None:
            arr = np.empty(0)
            if self._nd_state is not None:  # checked when unpickled
                arr = np.ndarray.__new__(_SafeArray, (0,), "b")
                arr.__setstate__(self._nd_state)
                arr = arr.view(np.ndarray)
            self._magnitude = arr
        return self._magnitude

    def to_ms(self) -> np.ndarray:
        """Magnitude converted to milliseconds (float64)."""
        return np.asarray(self.magnitude, dtype=np.float64) * (1000.0 * _dimensionality_seconds(self))

    def scalar_ms(self) -> float:
        """The (first) value in milliseconds."""
        st = self._nd_state
        if self._magnitude is None and st is not None and len(st) == 5 and isinstance(st[4], bytes):
            value = float(np.frombuffer(st[4], dtype=st[2], count=1)[0])  # scalar fast path
        else:
            value = float(self.magnitude.reshape(-1)[0])
        return value * (1000.0 * _dimensionality_seconds(self))

    def __repr__(self) -> str:
        return f"<quantity {self.magnitude!r} {self.dimensionality!r}>"


#: stand-in for ``quantities.quantity._reconstruct_quantity(cls, base, shape, basetype)``: a bare
#: LightQuantity made in C (no Python call per quantity); BUILD then calls ``__setstate__``.
_reconstruct_quantity = functools.partial(object.__new__, LightQuantity)


def _dimensionality_seconds(q: Any) -> float:
    dim = q.dimensionality if not isinstance(q, dict) else q
    if len(dim) != 1:
        raise ValueError(f"not a time quantity: {dim!r}")
    ((unit, power),) = dim.items()
    if power != 1 or not isinstance(unit, LightUnit):
        raise ValueError(f"not a time quantity: {dim!r}")
    return unit.seconds()


def _quantity_seconds(q: Any) -> float:
    return float(np.asarray(q.magnitude).reshape(-1)[0]) * _dimensionality_seconds(q)


# ---------------------------------------------------------------------------------------------
# light stand-ins for neo


class LightNeo:
    """Any neo container/data object: keeps the pickled ``__dict__`` verbatim."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            nd_state, extra = state  # ndarray-based data objects (signals, events): keep both
            self.__dict__.update(extra)
            self.__dict__["_array_state"] = nd_state
        elif isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_state"] = state

    @property
    def annotations(self) -> dict[str, Any]:
        return self.__dict__.get("annotations") or {}


class LightObjectList(LightNeo):
    """neo ObjectList (neo >= 0.12): the list is in ``_items``."""

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.__dict__.get("_items") or [])

    def __len__(self) -> int:
        return len(self.__dict__.get("_items") or [])

    def __getitem__(self, i: int) -> Any:
        return (self.__dict__.get("_items") or [])[i]


class LightSegment(LightNeo):
    """neo Segment: ``spiketrains`` from ``_spiketrains`` (SpikeTrainList/ObjectList) or ``spiketrains``."""

    @property
    def spiketrains(self) -> list[Any]:
        d = self.__dict__
        st = d.get("_spiketrains", d.get("spiketrains"))
        if st is None:
            return []
        if isinstance(st, LightSpikeTrainList):
            return st.trains()
        return list(st)

    @property
    def rec_datetime(self) -> Any:
        return self.__dict__.get("rec_datetime")


class LightBlock(LightNeo):
    @property
    def segments(self) -> list[Any]:
        d = self.__dict__
        return list(d.get("_segments", d.get("segments")) or [])


@dataclass
class LightSpikeTrain:
    """A neo SpikeTrain as plain data; ``times`` are in ``units``."""

    times: np.ndarray
    units: Any
    t_start: Any
    t_stop: Any
    annotations: dict[str, Any]
    array_annotations: Any = None

    def __setstate__(self, state: Any) -> None:  # no BUILD is expected; tolerate one
        if isinstance(state, dict):
            self.__dict__.update(state)


def _new_spiketrain(cls: Any, signal: Any, t_stop: Any, units: Any = None, *args: Any, **kw: Any) -> Any:
    """Stand-in for ``neo.core.spiketrain._new_spiketrain`` (positional layout of neo 0.5 … 0.14).

    After ``units``: dtype, copy, sampling_rate, t_start, waveforms, left_sweep, name, file_origin,
    description, [array_annotations (neo >= 0.8)], annotations, segment, unit.
    """
    rest = list(args)
    t_start = rest[3] if len(rest) > 3 else kw.get("t_start", 0.0)
    if len(rest) >= 13:  # neo >= 0.8: ..., description, array_annotations, annotations, segment, unit
        array_annotations, annotations = rest[9], rest[10]
    elif len(rest) >= 10:  # older: ..., description, annotations[, segment, unit]
        array_annotations, annotations = None, rest[9]
    else:
        array_annotations, annotations = None, kw.get("annotations")
    if isinstance(signal, LightQuantity):  # times as a quantity: convert now, units become ms
        signal, units = signal.to_ms(), None
    elif not isinstance(signal, np.ndarray):
        raise _Refused(f"spike times must be an array or a quantity, not {type(signal).__name__}")
    return LightSpikeTrain(
        times=np.asarray(signal),
        units=units,
        t_start=t_start,
        t_stop=t_stop,
        annotations=dict(annotations or {}),
        array_annotations=array_annotations,
    )


class LightSpikeTrainList(LightNeo):
    """neo SpikeTrainList: trains in ``_items``, or multiplexed in ``_spike_time_array`` + ids."""

    def trains(self) -> list[Any]:
        d = self.__dict__
        items = d.get("_items")
        if items is not None:
            return list(items)
        stimes = d.get("_spike_time_array")
        if stimes is None:
            return []
        ids = np.asarray(d.get("_channel_id_array"))
        all_ids = d.get("_all_channel_ids")
        all_ids = list(np.unique(ids) if all_ids is None else all_ids)
        meta = d.get("_spiketrain_metadata") or {}
        # times as a quantity are converted to ms here; plain numbers are taken as ms
        magnitude = stimes.to_ms() if isinstance(stimes, LightQuantity) else np.asarray(stimes)
        units = None
        ann = d.get("_annotations") or {}
        out = []
        for i, cid in enumerate(all_ids):
            a = {k: (v[i] if _per_channel(v, len(all_ids)) else v) for k, v in ann.items()}
            a["channel_id"] = cid
            out.append(
                LightSpikeTrain(
                    magnitude[ids == cid], units, meta.get("t_start", 0.0), meta.get("t_stop"), a
                )
            )
        return out

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.trains())

    def __len__(self) -> int:
        return len(self.trains())


def _per_channel(value: Any, n: int) -> bool:
    return not isinstance(value, str) and hasattr(value, "__len__") and len(value) == n


class LightArrayDict(dict):
    """neo.core.dataobject.ArrayDict (a dict with extra state)."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):  # keep the length; the check function is never needed
            self.__dict__["length"] = state.get("length")


def _never_called(*args: Any, **kwargs: Any) -> None:
    """Stand-in for functions that are only stored (e.g. ArrayDict.check_function)."""


_LIGHT_NEO: dict[str, Any] = {
    "Block": LightBlock,
    "Segment": LightSegment,
    "ObjectList": LightObjectList,
    "SpikeTrainList": LightSpikeTrainList,
    "_new_spiketrain": _new_spiketrain,
    "ArrayDict": LightArrayDict,
    "_normalize_array_annotations": _never_called,
}
#: neo module -> names allowed from it
_NEO_NAMES: dict[str, tuple[str, ...]] = {
    "neo.core.block": ("Block",),
    "neo.core.segment": ("Segment",),
    "neo.core.group": ("Group",),
    "neo.core.objectlist": ("ObjectList",),
    "neo.core.spiketrainlist": ("SpikeTrainList",),
    "neo.core.spiketrain": ("SpikeTrain", "_new_spiketrain"),
    "neo.core.analogsignal": ("AnalogSignal", "_new_AnalogSignalArray"),
    "neo.core.irregularlysampledsignal": ("IrregularlySampledSignal", "_new_IrregularlySampledSignal"),
    "neo.core.event": ("Event", "_new_event"),
    "neo.core.epoch": ("Epoch", "_new_epoch"),
    "neo.core.view": ("ChannelView",),
    "neo.core.imagesequence": ("ImageSequence",),
    "neo.core.channelindex": ("ChannelIndex",),
    "neo.core.unit": ("Unit",),
    "neo.core.recordingchannelgroup": ("RecordingChannelGroup",),
    "neo.core.dataobject": ("ArrayDict", "_normalize_array_annotations"),
}
_QUANTITIES_NAMES: dict[str, tuple[str, ...]] = {
    "quantities.quantity": ("Quantity", "_reconstruct_quantity"),
    "quantities.dimensionality": ("Dimensionality",),
    "quantities.unitquantity": (
        "UnitQuantity",
        "UnitTime",
        "UnitLength",
        "UnitMass",
        "UnitCurrent",
        "UnitSubstance",
        "UnitTemperature",
        "UnitLuminousIntensity",
        "UnitInformation",
        "UnitAngle",
        "UnitCurrency",
        "CompoundUnit",
        "Dimensionless",
    ),
}
_LIGHT_QUANTITIES: dict[str, Any] = {
    "Quantity": LightQuantity,
    "_reconstruct_quantity": _reconstruct_quantity,
    "Dimensionality": LightDimensionality,
}


def _safe_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` limited to plain bases (object, dict, list)."""
    if base not in (object, dict, list):
        raise pickle.UnpicklingError(f"copyreg._reconstructor with base {base!r} is not allowed")
    return copyreg._reconstructor(cls, base, state)  # type: ignore[attr-defined]


class PickleLimitError(SchemaError):
    """A pickle exceeds a resource bound or holds a type that is not plain data; nothing unsafe ran."""


@dataclass(frozen=True)
class Limits:
    """Bounds applied to every pickle (see the module docstring)."""

    max_file_bytes: int = 8 << 30
    max_array_bytes: int = 4 << 30
    max_depth: int = 200
    max_objects: int = 50_000_000


DEFAULT_LIMITS = Limits()
_PLAIN_KINDS = "biufcSU"


class _Refused(Exception):
    """Raised inside unpickling callables; turned into PickleLimitError naming the file."""


def _plain_dtype(dt: Any) -> np.dtype:
    """``dt`` if it is a plain dtype (no fields, sub-array, objects; canonical item size)."""
    if not isinstance(dt, np.dtype):
        raise _Refused(f"expected a numpy dtype, got {type(dt).__name__}")
    if dt.fields is not None or dt.names is not None or dt.subdtype is not None or dt.hasobject:
        raise _Refused(f"dtype {dt!r} is structured, a sub-array or holds objects (only plain dtypes)")
    if dt.kind not in _PLAIN_KINDS or dt.itemsize < 1:
        raise _Refused(f"dtype {dt!r} is not a plain numeric or string dtype")
    canon = np.dtype(dt.str)
    if canon.itemsize != dt.itemsize or canon.kind != dt.kind or canon.fields is not None:
        raise _Refused(f"dtype {dt!r} has an item size that does not match its type")
    return dt


def _safe_dtype(obj: Any, align: Any = False, copy: Any = False) -> np.dtype:
    """``numpy.dtype`` for pickles: a plain type string only, always a fresh copy (BUILD may then
    set its byte order; it is checked again when an array or scalar uses it)."""
    if not isinstance(obj, str) or len(obj) > 16:
        raise _Refused(f"dtype from {type(obj).__name__} {str(obj)[:40]!r} (only plain type strings)")
    try:
        base = np.dtype(obj)
    except TypeError as exc:
        raise _Refused(f"dtype {obj!r}: {exc}") from None
    _plain_dtype(base)
    return np.dtype(obj, align=False, copy=True)


class _SafeArray(np.ndarray):
    """What ``_reconstruct`` returns: its ``__setstate__`` checks the state before numpy's copies it."""

    def __setstate__(self, state: Any) -> None:
        _check_array_state(state)
        super().__setstate__(state)


def _check_array_state(state: Any) -> None:
    """An ndarray state ``([version,] shape, dtype, fortran, raw)`` of a plain dtype and exact size."""
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        raise _Refused("array state is not a 4- or 5-tuple")
    shape, dtype, fortran, raw = state[-4:]
    dt = _plain_dtype(dtype)
    if not isinstance(raw, bytes):
        raise _Refused(f"array data must be bytes, got {type(raw).__name__}")
    n = _checked_size(shape, dt)
    if len(raw) != n:
        raise _Refused(f"array data has {len(raw)} bytes, shape {shape} x {dt.itemsize} needs {n}")


def _checked_size(shape: Any, dt: np.dtype) -> int:
    if isinstance(shape, int):
        shape = (shape,)
    if not isinstance(shape, tuple) or len(shape) > 32 or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 40 for d in shape
    ):
        raise _Refused(f"bad array shape {str(shape)[:80]}")
    n = dt.itemsize
    for d in shape:
        n *= d
    limit = _LIMITS.get().max_array_bytes
    if n > limit:
        raise _Refused(f"an array of {n} bytes exceeds the limit of {limit} bytes")
    return n


def _safe_reconstruct(cls: Any, shape: Any, typecode: Any) -> np.ndarray:
    """``numpy.core.multiarray._reconstruct`` as numpy pickles use it: an empty plain ndarray."""
    if cls is not np.ndarray or shape not in ((0,), 0, [0]) or typecode not in (b"b", "b"):
        raise _Refused(f"_reconstruct({getattr(cls, '__name__', cls)}, {str(shape)[:40]}, {typecode!r})")
    return np.ndarray.__new__(_SafeArray, (0,), "b")


def _safe_scalar(dtype: Any, data: Any = None) -> Any:
    dt = _plain_dtype(dtype)
    if not isinstance(data, bytes) or len(data) != dt.itemsize:
        raise _Refused(f"numpy scalar of {dt} needs {dt.itemsize} bytes")
    return np.frombuffer(data, dtype=dt, count=1)[0]


def _safe_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    dt = _plain_dtype(dtype)
    if not isinstance(buf, bytes | bytearray | memoryview | pickle.PickleBuffer) or order not in ("C", "F"):
        raise _Refused("_frombuffer with an unexpected buffer or order")
    n = _checked_size(shape, dt)
    raw = bytes(buf)
    if len(raw) != n:
        raise _Refused(f"buffer has {len(raw)} bytes, shape {shape} needs {n}")
    return np.frombuffer(raw, dtype=dt).reshape(shape, order=order).copy()


def _safe_bytes(*args: Any) -> bytes:
    if args and not isinstance(args[0], bytes | str):
        raise _Refused(f"bytes({type(args[0]).__name__}) (only from bytes or str)")
    return bytes(*args)


def _safe_encode(obj: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    if not isinstance(obj, str) or str(encoding).lower().replace("-", "") not in ("latin1", "iso88591"):
        raise _Refused(f"_codecs.encode of {type(obj).__name__} with {encoding!r} (only str -> latin1)")
    return codecs.encode(obj, "latin1", errors if errors in ("strict",) else "strict")


_LIMITS: contextvars.ContextVar[Limits] = contextvars.ContextVar("safe_pickle_limits", default=DEFAULT_LIMITS)


def check_graph(obj: Any, source: str | os.PathLike[str], limits: Limits | None = None) -> None:
    """Walk a loaded object graph: nesting depth and objects counted as a tree (a shared object
    once per reference) within ``limits``; raises :class:`PickleLimitError` naming ``source``."""
    limits = limits or _LIMITS.get()
    max_objects, max_depth = limits.max_objects, limits.max_depth
    size: dict[int, int] = {}  # id -> objects in its subtree (as a tree), once finished
    kids_of: dict[int, list[Any]] = {}
    stack: list[tuple[Any, int]] = [(obj, 1)]
    leaf = _LEAF_TYPES
    while stack:
        o, depth = stack.pop()
        i = id(o)
        if depth < 0:  # post-order: children are finished
            total = 1
            for c in kids_of.pop(i):
                total += size.get(id(c), 1)
            if total > max_objects:
                raise PickleLimitError(
                    f"{source}: refused to load: more than {max_objects} objects (counted as a tree; "
                    "repeated references?)"
                )
            size[i] = total
            continue
        if i in size or i in kids_of:  # done, or on the current path (a cycle)
            continue
        if depth > max_depth:
            raise PickleLimitError(f"{source}: refused to load: nesting deeper than {max_depth}")
        kids = [c for c in _children(o) if type(c) not in leaf]
        kids_of[i] = kids
        stack.append((o, -1))
        for c in kids:
            stack.append((c, depth + 1))


_LEAF = (str, bytes, int, float, complex, bool, type(None), np.ndarray, np.generic, np.dtype)
_LEAF_TYPES = frozenset({str, bytes, int, float, complex, bool, type(None), np.ndarray, _SafeArray})


def _children(o: Any) -> list[Any]:
    if isinstance(o, _LEAF) or isinstance(o, type):
        return []
    if isinstance(o, dict):
        out = [*o, *o.values()]
        extra = getattr(o, "__dict__", None)
        return [*out, extra] if extra else out
    if isinstance(o, list | tuple | set | frozenset):
        return list(o)
    if isinstance(o, LightQuantity):
        return [o._nd_state, o.dimensionality]
    d = getattr(o, "__dict__", None)
    return [d] if isinstance(d, dict) else []


#: numpy arrays/scalars and builtin containers: all a plain data pickle (e.g. an index file) needs
_PLAIN: dict[tuple[str, str], Any] = {
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "int"): int,
    ("builtins", "float"): float,
    ("builtins", "bool"): bool,
    ("builtins", "str"): str,
    ("builtins", "bytes"): _safe_bytes,
    ("builtins", "complex"): complex,
    ("__builtin__", "dict"): dict,
    ("__builtin__", "list"): list,
    ("__builtin__", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _safe_encode,  # bytes in protocol-2 pickles: encode(str, "latin1")
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _safe_dtype,
}
try:  # numpy >= 2 (and 1.26 pickles written by numpy 2 name numpy._core)
    _np_multiarray = importlib.import_module("numpy._core.multiarray")
    _np_numeric = importlib.import_module("numpy._core.numeric")
except ImportError:  # pragma: no cover - numpy < 2
    _np_multiarray = importlib.import_module("numpy.core.multiarray")
    _np_numeric = importlib.import_module("numpy.core.numeric")
for _mod in ("numpy.core", "numpy._core"):
    _PLAIN[(f"{_mod}.multiarray", "_reconstruct")] = _safe_reconstruct
    _PLAIN[(f"{_mod}.multiarray", "scalar")] = _safe_scalar
    _PLAIN[(f"{_mod}.numeric", "_frombuffer")] = _safe_frombuffer

#: what a datastore pickle may contain besides neo/quantities/Mozaik classes
_BASE: dict[tuple[str, str], Any] = {
    **_PLAIN,
    ("builtins", "object"): object,
    ("__builtin__", "object"): object,
    ("collections", "defaultdict"): collections.defaultdict,
    ("datetime", "datetime"): datetime.datetime,
    ("datetime", "date"): datetime.date,
    ("datetime", "time"): datetime.time,
    ("datetime", "timedelta"): datetime.timedelta,
    ("datetime", "timezone"): datetime.timezone,
    ("copyreg", "_reconstructor"): _safe_reconstructor,
    ("copy_reg", "_reconstructor"): _safe_reconstructor,
}


def neo_available() -> bool:
    try:
        importlib.import_module("neo")
        importlib.import_module("quantities")
    except ImportError:
        return False
    return True


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` resolves only allow-listed globals."""

    def __init__(self, file: Any, source: str | os.PathLike[str], use_neo: bool = False) -> None:
        super().__init__(file)
        self.source = str(source)
        self.use_neo = use_neo

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in MOZAIK_CLASSES:
            return MOZAIK_CLASSES[key]
        if key in _BASE:
            return _BASE[key]
        if name in _NEO_NAMES.get(module, ()):
            if self.use_neo:
                return getattr(importlib.import_module(module), name)
            return _LIGHT_NEO.get(name, LightNeo)
        if name in _QUANTITIES_NAMES.get(module, ()) or (
            module == "quantities.unitquantity" and name.startswith("Unit") and name.isidentifier()
        ):  # every UnitQuantity subclass (UnitTime, UnitMass, ...) only stores a definition
            if self.use_neo:
                return getattr(importlib.import_module(module), name)
            return _LIGHT_QUANTITIES.get(name, LightUnit)
        raise ForbiddenGlobalError(
            f"{self.source}: refused to load: the pickle references the forbidden global "
            f"{module}.{name} (not a Mozaik datastore class); nothing was executed"
        )


def _read_bytes(path: Path, limits: Limits | None = None) -> bytes:
    limit = (limits or DEFAULT_LIMITS).max_file_bytes
    try:
        size = path.stat().st_size
    except OSError:
        size = 0
    if size > limit:
        raise PickleLimitError(f"{path}: refused to load: {size} bytes exceeds the limit of {limit} bytes")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CorticalRNNError(f"{path}: file is missing") from None
    except OSError as exc:
        raise CorticalRNNError(f"{path}: cannot read ({exc.strerror})") from None


def _unpickle(
    unpickler: pickle.Unpickler, source: str | os.PathLike[str], what: str, limits: Limits | None = None
) -> Any:
    """Run ``unpickler`` within ``limits``; every failure becomes an error that names ``source``."""
    token = _LIMITS.set(limits or DEFAULT_LIMITS)
    try:
        obj = unpickler.load()
        check_graph(obj, source)
        return obj
    except CorticalRNNError:
        raise
    except _Refused as exc:
        raise PickleLimitError(f"{source}: refused to load: {exc}; nothing was executed") from None
    except RecursionError:
        raise PickleLimitError(f"{source}: refused to load: nesting too deep") from None
    except MemoryError:
        raise PickleLimitError(f"{source}: refused to load: out of memory while unpickling") from None
    except EOFError:
        raise SchemaError(f"{source}: pickle is truncated (ran out of data)") from None
    except Exception as exc:  # corrupt data raises many types (UnpicklingError, ValueError, ...)
        raise SchemaError(f"{source}: not a readable {what} ({type(exc).__name__}: {exc})") from None
    finally:
        _LIMITS.reset(token)


def load(path: str | os.PathLike[str], use_neo: bool = False, limits: Limits | None = None) -> Any:
    """Load one datastore pickle safely; errors name the file and the problem."""
    path = Path(path)
    if use_neo and not neo_available():
        raise CorticalRNNError(f"{path}: use_neo=True but neo/quantities are not installed")
    return loads(_read_bytes(path, limits), path, use_neo, limits)


def loads(
    data: bytes, source: str | os.PathLike[str], use_neo: bool = False, limits: Limits | None = None
) -> Any:
    return _unpickle(SafeUnpickler(io.BytesIO(data), source, use_neo), source, "datastore pickle", limits)


class PlainUnpickler(pickle.Unpickler):
    """Unpickler for plain data files: numpy arrays/scalars and builtin containers, nothing else."""

    def __init__(self, file: Any, source: str | os.PathLike[str]) -> None:
        super().__init__(file)
        self.source = str(source)

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PLAIN:
            return _PLAIN[(module, name)]
        raise ForbiddenGlobalError(
            f"{self.source}: refused to load: the pickle references the forbidden global "
            f"{module}.{name} (only numpy arrays and builtin containers are allowed); nothing was executed"
        )


def load_plain(path: str | os.PathLike[str], limits: Limits | None = None) -> Any:
    """Load a pickle of numpy arrays and builtin containers safely (same bounds as datastore
    pickles: :class:`Limits`); errors name the file."""
    path = Path(path)
    return _unpickle(PlainUnpickler(io.BytesIO(_read_bytes(path, limits)), path), path, "pickle", limits)


# ---------------------------------------------------------------------------------------------
# reading spike trains as numbers, from light or real neo objects


@dataclass(frozen=True)
class TrainData:
    """One spike train as plain numbers: times relative to t_start, in ms."""

    times_ms: np.ndarray  # float64
    duration_ms: float
    annotations: dict[str, Any]


def _scalar_ms(q: Any) -> float:
    if isinstance(q, LightQuantity):
        return q.scalar_ms()
    if isinstance(q, LightUnit):
        return 1000.0 * q.seconds()
    if hasattr(q, "rescale"):  # real quantities
        return float(np.asarray(q.rescale("ms").magnitude).reshape(-1)[0])
    return float(np.asarray(q, dtype=np.float64).reshape(-1)[0])  # plain number: taken as ms


def spiketrain_data(st: Any) -> TrainData:
    """Spike times of a (light or real neo) SpikeTrain in ms relative to its ``t_start``."""
    if isinstance(st, LightSpikeTrain):
        scale = _scalar_ms(st.units) if st.units is not None else 1.0
        times = np.asarray(st.times, dtype=np.float64)
        if scale != 1.0:
            times = times * scale
        annotations = st.annotations
    else:
        times = np.asarray(st.rescale("ms").magnitude, dtype=np.float64)
        annotations = dict(st.annotations)
    t_start = _scalar_ms(st.t_start) if st.t_start is not None else 0.0
    t_stop = _scalar_ms(st.t_stop)
    if t_start:
        times = times - t_start
    return TrainData(times_ms=times.reshape(-1), duration_ms=t_stop - t_start, annotations=annotations)
