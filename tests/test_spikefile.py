"""The HDF5 spike-time file (extract.spikefile): round trip, bulk reads, atomic writes, schema checks."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from corticalrnn.atomic import temporary_name as tmp_path_for
from corticalrnn.errors import DataMismatchError, SchemaError
from extract.spikefile import (
    PARTS,
    PackedSpikes,
    Presentation,
    SheetLayout,
    SpikeFileWriter,
    is_complete,
    open_spikefile,
    write_spikefile,
)

SHEETS = {"X_ON": 5, "V1_Exc_L2/3": 7}


def _random_data(seed: int = 0, n_pres: int = 4):
    rng = np.random.default_rng(seed)
    layouts = [
        SheetLayout("X_ON", np.arange(100, 105), rng.random((5, 2))),
        SheetLayout("V1_Exc_L2/3", rng.permutation(1000)[:7].astype(np.int64), None),
    ]
    pres = []
    record = {}  # (sheet, part, p, n) -> float64 times
    for p in range(n_pres):
        durs = {"blank_before": 150.0, "stimulus": 560.0, "blank_after": 0.0 if p == n_pres - 1 else 150.0}
        row = Presentation(
            image_id=50000 + p,
            trial=p % 2,
            order=2 * p + 1,
            stimulus=json.dumps({"name": "NaturalImage", "trial": p % 2}),
            blank_before_ms=durs["blank_before"],
            stimulus_ms=durs["stimulus"],
            blank_after_ms=durs["blank_after"],
        )
        spikes = {}
        for layout in layouts:
            spikes[layout.name] = {}
            for part in PARTS:
                trains = []
                for n in range(layout.n_neurons):
                    k = rng.integers(0, 6) if durs[part] else 0
                    t = np.sort(rng.uniform(0, durs[part], k))
                    if k and n == 0:
                        t[-1] = durs[part]  # a spike exactly at t_stop is kept
                    trains.append(t)
                    record[(layout.name, part, p, n)] = t
                if durs[part] == 0:
                    continue  # zero-length part may be omitted
                spikes[layout.name][part] = trains
        pres.append((row, spikes))
    return layouts, pres, record


def test_round_trip_matches_reference(tmp_path):
    layouts, pres, record = _random_data()
    path = write_spikefile(tmp_path / "a.h5", "/data/ds", layouts, pres)
    assert not tmp_path_for(path).exists()
    with open_spikefile(path) as f:
        assert f.sheets == ["X_ON", "V1_Exc_L2/3"]
        assert f.n_presentations == 4
        assert f.source == "/data/ds"
        assert f.attrs["schema"] == "corticalrnn.spikes"
        np.testing.assert_array_equal(f.neuron_ids("X_ON"), layouts[0].neuron_ids)
        np.testing.assert_array_equal(f.positions("X_ON"), layouts[0].positions)
        assert f.positions("V1_Exc_L2/3") is None
        np.testing.assert_array_equal(f.presentations["image_id"], [50000, 50001, 50002, 50003])
        assert f.presentation(3).blank_after_ms == 0.0
        assert f.stimulus_params(1) == {"name": "NaturalImage", "trial": 1}
        total = 0
        for (sheet, part, p, n), t in record.items():
            got = f.spike_times(sheet, part, p, n)
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, t.astype(np.float32))
            total += t.size
        assert f.n_spikes() == total
        # bulk read of a slice equals the per-row reads
        csr = f.read_part("V1_Exc_L2/3", "stimulus", 1, 3)
        assert csr.indptr[0] == 0 and csr.indptr.size == 2 * 7 + 1
        for p in range(2):
            for n in range(7):
                np.testing.assert_array_equal(
                    csr.row(p, n), record[("V1_Exc_L2/3", "stimulus", p + 1, n)].astype(np.float32)
                )
    with h5py.File(path) as h5:  # the sheet name with "/" is quoted
        assert "V1_Exc_L2%2F3" in h5["sheets"]
        assert h5["sheets/V1_Exc_L2%2F3"].attrs["name"] == "V1_Exc_L2/3"


def test_unsorted_and_packed_input(tmp_path):
    layout = SheetLayout("X_ON", np.array([3, 1, 2]))
    row = Presentation(1, 0, 0, "{}", 10.0, 20.0, 0.0)
    unsorted = [np.array([5.0, 1.0, 3.0]), np.array([]), np.array([2.0, 0.0])]
    packed = PackedSpikes(np.array([1, 0, 2]), np.array([4.0, 9.0, 8.0]))
    path = write_spikefile(
        tmp_path / "b.h5", "src", [layout], [(row, {"X_ON": {"blank_before": packed, "stimulus": unsorted}})]
    )
    with open_spikefile(path) as f:
        np.testing.assert_array_equal(f.spike_times("X_ON", "stimulus", 0, 0), [1, 3, 5])
        np.testing.assert_array_equal(f.spike_times("X_ON", "stimulus", 0, 2), [0, 2])
        np.testing.assert_array_equal(f.spike_times("X_ON", "blank_before", 0, 2), [8, 9])
        assert f.spike_times("X_ON", "blank_after", 0, 0).size == 0


def test_failed_write_leaves_nothing(tmp_path):
    layouts, pres, _ = _random_data()
    path = tmp_path / "c.h5"
    with pytest.raises(RuntimeError), SpikeFileWriter(path, "src", layouts) as w:
        w.append(*pres[0])
        assert tmp_path_for(path).exists()
        raise RuntimeError("killed")
    assert not path.exists() and not tmp_path_for(path).exists()


def test_wrong_neuron_count_rejected_before_writing(tmp_path):
    layouts, pres, _ = _random_data()
    row, spikes = pres[0]
    spikes["X_ON"]["stimulus"] = spikes["X_ON"]["stimulus"][:-1]
    with pytest.raises(DataMismatchError, match="4 neurons given, the file has 5"):
        with SpikeFileWriter(tmp_path / "d.h5", "src", layouts) as w:
            w.append(row, spikes)
    assert list(tmp_path.iterdir()) == []


def test_missing_part_with_duration_rejected(tmp_path):
    layouts, pres, _ = _random_data()
    row, spikes = pres[0]
    del spikes["X_ON"]["blank_after"]
    with pytest.raises(DataMismatchError, match="no blank_after spikes"):
        write_spikefile(tmp_path / "e.h5", "src", layouts, [(row, spikes)])


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda h5: h5.attrs.__setitem__("schema", "other.schema"), "schema is 'other.schema'"),
        (lambda h5: h5.attrs.__setitem__("schema_version", 3), "schema version 3"),
        (lambda h5: h5.__delitem__("presentations/trial"), "missing dataset /presentations/trial"),
        (lambda h5: h5.__delitem__("sheets/X_ON/stimulus/times"), "missing dataset /sheets/X_ON/stimulus/"),
        (lambda h5: h5.__delitem__("sheets/X_ON/neuron_ids"), "missing dataset /sheets/X_ON/neuron_ids"),
    ],
)
def test_reader_rejects_damaged_files(tmp_path, damage, message):
    layouts, pres, _ = _random_data()
    path = write_spikefile(tmp_path / "f.h5", "src", layouts, pres)
    with h5py.File(path, "a") as h5:
        damage(h5)
    with pytest.raises(SchemaError, match=message) as info:
        open_spikefile(path)
    assert str(path) in str(info.value)
    assert not is_complete(path)


def test_not_hdf5_and_missing(tmp_path):
    bad = tmp_path / "x.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(SchemaError, match="x.h5"):
        open_spikefile(bad)
    assert not is_complete(tmp_path / "missing.h5")


def test_unknown_sheet_named(tmp_path):
    layouts, pres, _ = _random_data()
    path = write_spikefile(tmp_path / "g.h5", "src", layouts, pres)
    with open_spikefile(path) as f, pytest.raises(DataMismatchError, match="V1_Inh_L4.*not in this file"):
        f.neuron_ids("V1_Inh_L4")


def _set(name, index, value):
    def damage(h5):
        h5[name][index] = value

    return damage


@pytest.mark.parametrize(
    "damage, read, message",
    [
        (_set("sheets/X_ON/stimulus/times", 0, np.nan), "part", "NaN or infinite values"),
        (_set("sheets/X_ON/stimulus/times", 1, np.inf), "part", "NaN or infinite values"),
        (_set("sheets/X_ON/stimulus/indptr", 3, 10**6), "part", "not monotone"),
        (_set("sheets/X_ON/positions", (0, 0), np.nan), "positions", "NaN or infinite neuron positions"),
    ],
)
def test_reader_rejects_non_finite_and_non_monotone(tmp_path, damage, read, message):
    """Verified reads (issue 15): never silently dropped or a raw traceback."""
    layouts, pres, _ = _random_data()
    path = write_spikefile(tmp_path / "f.h5", "src", layouts, pres)
    with h5py.File(path, "a") as h5:
        damage(h5)
    with open_spikefile(path) as f, pytest.raises(SchemaError, match=message) as info:
        f.read_part("X_ON", "stimulus") if read == "part" else f.positions("X_ON")
    assert str(path) in str(info.value)
