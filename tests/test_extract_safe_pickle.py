"""extract.safe_pickle: allow-list, refusal without execution, light stand-ins for several neo layouts."""

from __future__ import annotations

import copyreg
import datetime
import importlib
import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from corticalrnn.errors import CorticalRNNError, SchemaError
from extract import safe_pickle
from extract.safe_pickle import ForbiddenGlobalError, LightSegment, loads, spiketrain_data

REPO = Path(__file__).resolve().parents[1]


class _Placeholder:
    """An object pickled as NEWOBJ of a named global + BUILD with ``state``."""

    def __init__(self, state):
        self.state = state

    def __reduce_ex__(self, protocol):
        return (copyreg.__newobj__, (type(self),), self.state)


def _fn_new_spiketrain(*args):  # placeholder for neo.core.spiketrain._new_spiketrain
    raise AssertionError("never called")


class _FakeSpikeTrainCls:
    pass


class _Call:
    """Pickled as REDUCE(func, args)."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def _make_class(name):
    return type(name, (_Placeholder,), {})


_Segment = _make_class("Segment")
_SpikeTrainList = _make_class("SpikeTrainList")
_NAMES = {
    _Segment: ("neo.core.segment", "Segment"),
    _SpikeTrainList: ("neo.core.spiketrainlist", "SpikeTrainList"),
    _fn_new_spiketrain: ("neo.core.spiketrain", "_new_spiketrain"),
    _FakeSpikeTrainCls: ("neo.core.spiketrain", "SpikeTrain"),
}


class _NamedPickler(pickle._Pickler):  # type: ignore[name-defined]
    """Pure-Python pickler that writes chosen objects under other global names."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]
    names: dict = _NAMES

    def save_global(self, obj, name=None):
        names = self.names.get(obj) if not isinstance(obj, np.ndarray) else None
        if names is None:
            super().save_global(obj, name)
        elif self.proto >= 4:
            self.save(names[0])
            self.save(names[1])
            self.write(pickle.STACK_GLOBAL)
            self.memoize(obj)
        else:
            self.write(pickle.GLOBAL + f"{names[0]}\n{names[1]}\n".encode())
            self.memoize(obj)


_NamedPickler.dispatch[type(_fn_new_spiketrain)] = _NamedPickler.save_global


def _dumps(obj, protocol: int = 4, extra_names: dict | None = None) -> bytes:
    buf = io.BytesIO()
    pickler = _NamedPickler(buf, protocol=protocol)
    pickler.names = {**_NAMES, **(extra_names or {})}
    pickler.dump(obj)
    return buf.getvalue()


def _train(times, units, t_stop, annotations, t_start, with_array_annotations=True):
    """A spike train pickled the way neo's ``SpikeTrain.__reduce__`` does (optionally pre-0.8 layout)."""
    head = [_FakeSpikeTrainCls, np.asarray(times), t_stop, units, np.dtype("f8"), None, None, t_start,
            None, None, None, None, None]  # fmt: skip
    tail = [annotations, None, None]
    args = head + ([{}] if with_array_annotations else []) + tail
    return _Call(_fn_new_spiketrain, tuple(args))


@pytest.mark.parametrize(
    "payload, forbidden",
    [
        (_Call(os.system, ("touch {marker}",)), r"(posix|os)\.system"),
        (_Call(eval, ("open({marker!r}, 'w')",)), r"builtins\.eval"),
        (_Call(subprocess.call, (["touch", "{marker}"],)), r"subprocess\.call"),
        (_Call(getattr, (dict, "fromkeys")), r"builtins\.getattr"),
    ],
)
@pytest.mark.parametrize("use_neo", [False, True])
def test_forbidden_globals_refused(tmp_path, payload, forbidden, use_neo):
    marker = tmp_path / "marker"
    args = tuple(
        a.format(marker=str(marker)) if isinstance(a, str) else
        [x.format(marker=str(marker)) for x in a] if isinstance(a, list) else a
        for a in payload.args
    )  # fmt: skip
    data = pickle.dumps({"ok": [1, 2], "evil": _Call(payload.func, args)}, protocol=4)
    with pytest.raises(ForbiddenGlobalError, match=forbidden) as info:
        loads(data, tmp_path / "Segment7.pickle", use_neo=use_neo)
    assert "Segment7.pickle" in str(info.value)
    assert not marker.exists()


def test_reconstructor_only_with_plain_bases(tmp_path):
    data = pickle.dumps(_Call(copyreg._reconstructor, (dict, datetime.datetime, None)), protocol=2)
    with pytest.raises(SchemaError, match="not allowed"):
        loads(data, tmp_path / "x.pickle")


def test_garbage_and_truncation(tmp_path):
    good = pickle.dumps({"a": np.arange(10)}, protocol=4)
    with pytest.raises(SchemaError, match="truncated|not a readable"):
        loads(good[:20], tmp_path / "t.pickle")
    with pytest.raises(SchemaError, match="not a readable"):
        loads(b"\x00\x01garbage", tmp_path / "g.pickle")
    np.testing.assert_array_equal(loads(good, tmp_path / "ok.pickle")["a"], np.arange(10))


@pytest.mark.parametrize("core", ["numpy.core", "numpy._core"])
@pytest.mark.parametrize("protocol", [2, 4])
def test_numpy_core_and__core_paths(tmp_path, core, protocol):
    """Arrays and scalars pickled by numpy 1.x (numpy.core) and 2.x (numpy._core), old and new protocols."""
    current = "numpy._core" if hasattr(np, "_core") else "numpy.core"
    multiarray = importlib.import_module(f"{current}.multiarray")
    names = {multiarray._reconstruct: (f"{core}.multiarray", "_reconstruct"),
             multiarray.scalar: (f"{core}.multiarray", "scalar")}  # fmt: skip
    obj = {"a": np.arange(5, dtype=np.int32), "s": np.float64(2.5)}
    data = _dumps(obj, protocol, names)
    assert f"{core}.multiarray".encode() in data
    got = loads(data, tmp_path / "n.pickle")
    np.testing.assert_array_equal(got["a"], obj["a"])
    assert got["s"] == 2.5


def test_old_neo_layout_plain_list_seconds(tmp_path):
    """Segment with a plain ``spiketrains`` list, pre-0.8 _new_spiketrain, real quantities in seconds."""
    pq = pytest.importorskip("quantities")
    trains = [
        _train([0.0012, 0.5], pq.s, 0.56 * pq.s, {"source_id": 11}, 0.0 * pq.s, with_array_annotations=False),
        _train([], pq.s, 0.56 * pq.s, {"source_id": 12}, 0.0 * pq.s, with_array_annotations=False),
    ]
    seg = _Segment({"annotations": {"sheet_name": "X_ON"}, "spiketrains": trains})
    obj = loads(_dumps(seg), tmp_path / "Segment1.pickle")
    assert isinstance(obj, LightSegment)
    data = [spiketrain_data(st) for st in obj.spiketrains]
    np.testing.assert_allclose(data[0].times_ms, [1.2, 500.0], rtol=1e-12)
    assert data[1].times_ms.size == 0
    assert data[0].duration_ms == pytest.approx(560.0)
    assert [d.annotations["source_id"] for d in data] == [11, 12]


def test_new_neo_layout_items_with_t_start(tmp_path):
    pq = pytest.importorskip("quantities")
    trains = [_train([100.5, 660.0], pq.ms, 660.0 * pq.ms, {"channel_id": 5}, 100.0 * pq.ms)]
    stl = _SpikeTrainList({"_items": trains, "_spike_time_array": None})
    seg = _Segment({"_spiketrains": stl})
    obj = loads(_dumps(seg), tmp_path / "Segment2.pickle")
    (d,) = [spiketrain_data(st) for st in obj.spiketrains]
    np.testing.assert_allclose(d.times_ms, [0.5, 560.0])  # relative to t_start; t_stop spike kept
    assert d.duration_ms == 560.0


def test_multiplexed_spiketrainlist(tmp_path):
    pq = pytest.importorskip("quantities")
    stl = _SpikeTrainList({
        "_items": None,
        "_spike_time_array": np.array([5.0, 1.0, 7.0, 2.0]) * pq.ms,
        "_channel_id_array": np.array([20, 10, 20, 10]),
        "_all_channel_ids": [10, 20, 30],
        "_spiketrain_metadata": {"t_start": 0.0 * pq.ms, "t_stop": 10.0 * pq.ms},
        "_annotations": {"source_population": "X_OFF"},
    })  # fmt: skip
    obj = loads(_dumps(_Segment({"_spiketrains": stl})), tmp_path / "Segment3.pickle")
    data = [spiketrain_data(st) for st in obj.spiketrains]
    assert [d.annotations["channel_id"] for d in data] == [10, 20, 30]
    np.testing.assert_array_equal(data[0].times_ms, [1.0, 2.0])
    np.testing.assert_array_equal(data[1].times_ms, [5.0, 7.0])
    assert data[2].times_ms.size == 0 and data[2].duration_ms == 10.0


def test_real_neo_pickle_light_equals_neo(tmp_path):
    neo = pytest.importorskip("neo")
    pq = pytest.importorskip("quantities")
    seg = neo.Segment()
    seg.spiketrains = [
        neo.SpikeTrain([1.5, 3.0] * pq.ms, t_stop=3.0 * pq.ms, source_id=1),
        neo.SpikeTrain([0.002] * pq.s, t_stop=0.003 * pq.s, channel_id=2),
    ]
    data = pickle.dumps(seg, protocol=4)
    light = [spiketrain_data(st) for st in loads(data, tmp_path / "s.pickle").spiketrains]
    real = [spiketrain_data(st) for st in loads(data, tmp_path / "s.pickle", use_neo=True).spiketrains]
    assert isinstance(loads(data, tmp_path / "s.pickle", use_neo=True), neo.Segment)
    for a, b in zip(light, real):
        np.testing.assert_allclose(a.times_ms, b.times_ms)
        assert a.duration_ms == pytest.approx(b.duration_ms)
    np.testing.assert_allclose(light[1].times_ms, [2.0])


def test_extract_without_neo_installed(tmp_path):
    """The light path needs neither neo, quantities nor torch (they are made unimportable)."""
    from corticalrnn.bench.extract import DatastoreSpec, write_datastore

    write_datastore(tmp_path / "ds", DatastoreSpec(sizes={"X_ON": 3, "V1_Inh_L4": 2}, images=(1, 2)))
    script = (
        "import sys\n"
        "for m in ('neo', 'quantities', 'torch'): sys.modules[m] = None\n"
        "from extract.datastore import extract_folder\n"
        "from extract import safe_pickle\n"
        "assert not safe_pickle.neo_available()\n"
        f"r = extract_folder({str(tmp_path / 'ds')!r}, {str(tmp_path / 'a.h5')!r})\n"
        "print(r.n_spikes)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    from extract.datastore import ExtractOptions, extract_folder
    from extract.spikefile import PARTS, open_spikefile

    extract_folder(tmp_path / "ds", tmp_path / "b.h5", ExtractOptions(use_neo=True))
    with open_spikefile(tmp_path / "a.h5") as a, open_spikefile(tmp_path / "b.h5") as b:
        assert int(out.stdout.split()[-1]) == a.n_spikes() == b.n_spikes()
        for sheet in a.sheets:
            for part in PARTS:
                x, y = a.read_part(sheet, part), b.read_part(sheet, part)
                np.testing.assert_array_equal(x.indptr, y.indptr)
                np.testing.assert_array_equal(x.times, y.times)


def test_use_neo_requires_neo(monkeypatch, tmp_path):
    monkeypatch.setattr(safe_pickle, "neo_available", lambda: False)
    p = tmp_path / "x.pickle"
    p.write_bytes(pickle.dumps([1]))
    with pytest.raises(Exception, match="neo/quantities are not installed"):
        safe_pickle.load(p, use_neo=True)


@pytest.mark.parametrize("use_neo", [False, True])
def test_quantities_of_other_units(tmp_path, use_neo):
    """Block annotations may hold quantities of any unit (mV, uS, nA, Hz); they load, values kept."""
    pq = pytest.importorskip("quantities")
    values = [1.5 * pq.mV, 2 * pq.uS, np.array([1.0, 2.0]) * pq.nA, 3 * pq.Hz]
    got = loads(pickle.dumps(values, protocol=4), tmp_path / "b.pickle", use_neo=use_neo)
    for g, v in zip(got, values):
        np.testing.assert_array_equal(np.asarray(g.magnitude), np.asarray(v.magnitude))


# ---------------------------------------------------------------------------------------------
# bounded, type-checked unpickling (issue 15): dtype abuse, resource bombs, forbidden builtins

from extract.safe_pickle import Limits, PickleLimitError, load_plain  # noqa: E402

_MA = "numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray"


def _raw_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _array_pickle_ops(dt_state, dtype_name, raw, shape) -> bytes:
    def ops(x):
        return pickle.dumps(x, protocol=3)[2:-1]

    return (
        b"\x80\x03"
        + _raw_global(_MA, "_reconstruct")
        + _raw_global("numpy", "ndarray")
        + ops((0,))
        + ops(b"b")
        + b"\x87R"
        + b"("
        + ops(1)
        + ops(shape)
        + _raw_global("numpy", "dtype")
        + ops((dtype_name, False, True))
        + b"R"
        + ops(dt_state)
        + b"b"
        + b"\x89"
        + ops(raw)
        + b"tb."
    )


def test_plain_array_through_the_checked_path() -> None:
    raw = np.arange(8, dtype="<f8").tobytes()
    arr = loads(_array_pickle_ops((3, "<", None, None, None, 64, 8, 0), "f8", raw, (8,)), "a.pickle")
    assert np.array_equal(np.asarray(arr), np.arange(8.0)) and arr.dtype.itemsize == 8  # 64 ignored


@pytest.mark.parametrize(
    "state",
    [
        # fields added by BUILD with an offset far outside the 8-byte item: out-of-bounds reads
        (3, "|", None, ("a",), {"a": (np.dtype("f8"), 1 << 30)}, 8, 1, 16),
        (3, "|", None, ("a",), {"a": (np.dtype("f8"), 56)}, 8, 1, 16),
    ],
)
def test_crafted_dtype_state_refused_before_any_cast(state) -> None:
    raw = b"\x11" * 64
    with pytest.raises((PickleLimitError, SchemaError), match="x.pickle"):
        loads(_array_pickle_ops(state, "f8", raw, (8,)), "x.pickle")
    assert np.dtype("f8").fields is None and np.dtype("f8").itemsize == 8  # global dtype untouched


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        (np.array([1, "a", None], dtype=object), "plain"),
        (np.zeros(3, dtype=[("a", "f8"), ("b", "i4")]), "plain"),
        (np.zeros(2, dtype=[("a", "f8", (2,))]), "plain"),
    ],
)
def test_object_and_structured_arrays_refused(obj, match) -> None:
    for protocol in (2, 4):
        with pytest.raises(SchemaError, match="o.pickle"):
            loads(pickle.dumps(obj, protocol=protocol), "o.pickle")


@pytest.mark.parametrize(
    "payload",
    [
        _raw_global("builtins", "bytearray") + b"J\x00\x00\x00\x80\x85R.",  # bytearray(2 GiB)
        _raw_global("builtins", "range") + b"J\x80\xf0\xfa\x02\x85R.",  # range(5e7)
        _raw_global("builtins", "slice") + b"NNN\x87R.",
        _raw_global("builtins", "bytes") + b"J\x00\x00\x00\x80\x85R.",  # bytes(2 GiB)
        _raw_global("_codecs", "encode") + b"X\x01\x00\x00\x00xX\x04\x00\x00\x00zlib\x86R.",
        _raw_global(_MA, "_reconstruct") + _raw_global("numpy", "ndarray")
        + b"J\x00\x00\x00@\x85C\x01b\x87R.",  # _reconstruct(ndarray, (2**30,), b'b'): allocation
        _raw_global(_MA, "scalar") + _raw_global("numpy", "dtype")
        + b"X\x02\x00\x00\x00f8\x89\x88\x87RC\x01x\x86R.",  # scalar with 1 byte for 8
    ],
)
def test_resource_and_builtin_abuse_refused(payload) -> None:
    with pytest.raises(CorticalRNNError, match="p.pickle.*(refused|not a readable)"):
        loads(b"\x80\x02" + payload, "p.pickle")


def test_repeated_reference_bomb_and_deep_nesting_refused(tmp_path) -> None:
    # x = (); 40 times: x = (x, x) -- 2 opcodes per level, 2**40 objects as a tree
    ops = b"\x80\x02)q\x00"
    for _ in range(40):
        ops += b"h\x00h\x00\x86q\x00"
    with pytest.raises(PickleLimitError, match="b.pickle.*more than"):
        loads(ops + b".", "b.pickle")
    deep = b"\x80\x02" + b"]" * 5000 + b"a" * 4999 + b"."  # [[[...]]] 5000 deep, 2 bytes a level
    with pytest.raises(PickleLimitError, match="d.pickle.*deeper"):
        loads(deep, "d.pickle")
    assert len(loads(deep, "d.pickle", limits=Limits(max_depth=6000))) == 1
    path = tmp_path / "big.pkl"
    path.write_bytes(pickle.dumps(np.arange(1000)))
    with pytest.raises(PickleLimitError, match="big.pkl.*exceeds"):
        load_plain(path, limits=Limits(max_file_bytes=100))
    with pytest.raises(PickleLimitError, match="big.pkl.*exceeds"):
        load_plain(path, limits=Limits(max_array_bytes=100))
    assert np.array_equal(load_plain(path), np.arange(1000))


def test_thesis_loader_refuses_the_same(tmp_path) -> None:
    from corticalrnn.subsets import load_index_pickle

    p = tmp_path / "idx.pkl"
    p.write_bytes(pickle.dumps({"V1_Exc_L4": np.array([1, "a"], dtype=object)}))
    with pytest.raises(SchemaError, match="idx.pkl"):
        load_index_pickle(p)
    p.write_bytes(b"\x80\x02" + _raw_global("builtins", "bytearray") + b"J\x00\x00\x00\x80\x85R.")
    with pytest.raises(CorticalRNNError, match="idx.pkl"):
        load_index_pickle(p)
