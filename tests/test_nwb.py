"""NWB export of an extracted spike file: exact spike times per unit, sheet, position and Mozaik
annotations, presentations as trials and epochs; passes nwbinspector and reads back with pynwb."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("pynwb")
pytest.importorskip("nwbinspector")

from corticalrnn.cli import main  # noqa: E402
from corticalrnn.nwb import export_nwb, inspect, read_units  # noqa: E402
from extract.spikefile import open_spikefile  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from synthdata import make_datastore

    d = tmp_path_factory.mktemp("nwb")
    folder = make_datastore(d, images=(50000, 50001), trials=2, image_ms=100.0)
    assert main(["extract", str(folder), "-o", str(d / "h5"), "--no-progress"]) == 0
    (h5,) = (d / "h5").glob("*.h5")
    out = d / "session.nwb"
    assert main(["export-nwb", str(h5), "-o", str(out), "--experimenter", "Doe, Jane",
                 "--institution", "Test Lab"]) == 0
    return h5, out


def test_passes_nwbinspector(exported) -> None:
    _, out = exported
    # suggestions that only a tiny test file triggers (two repeats look binary) are allowed
    small_data = {"check_column_binary_capability", "check_single_row"}
    messages = [m for m in inspect(out) if m.check_function_name not in small_data]
    assert messages == [], [f"{m.importance.name} {m.check_function_name}: {m.message}" for m in messages]


def test_units_hold_the_exact_spike_times_and_identity(exported) -> None:
    from pynwb import NWBHDF5IO

    h5, out = exported
    units = read_units(out)
    with NWBHDF5IO(str(out), "r") as io:
        trials = io.read().trials.to_dataframe()
    with open_spikefile(h5) as sf:
        assert len(units) == sum(sf.n_neurons(s) for s in sf.sheets)
        assert list(trials["image_id"]) == list(sf.presentations["image_id"])
        assert list(trials["repeat"]) == list(sf.presentations["trial"])
        assert trials["stim_name"].iloc[0] == "NaturalImage"
        by_key = {(u["sheet"], u["neuron_id"]): u for u in units}
        checked = 0
        for sheet in sf.sheets:
            ids, pos, props = sf.neuron_ids(sheet), sf.positions(sheet), sf.properties(sheet)
            for i in range(0, ids.size, max(1, ids.size // 5)):
                u = by_key[(sheet, int(ids[i]))]
                if pos is not None:
                    np.testing.assert_array_equal(u["position"][:pos.shape[1]], pos[i])
                for name, values in props.items():
                    np.testing.assert_equal(u[name], values[i])
                for p, tr in enumerate(trials.itertuples()):
                    for part, a in (("blank_before", tr.start_time), ("stimulus", tr.stimulus_start_time)):
                        want = a + sf.spike_times(sheet, part, p, i).astype(np.float64) / 1e3
                        t = u["spike_times"]
                        got = t[(t >= want.min() - 1e-12) & (t <= want.max() + 1e-12)] if want.size else []
                        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
                        checked += want.size
        assert checked > 100
        # presentations recorded back to back share their blank: written once
        total = sum(sf.n_spikes(s) for s in sf.sheets)
        shared = 0
        for p in range(sf.n_presentations - 1):
            if trials["order"].iloc[p + 1] == trials["order"].iloc[p] + 1:
                assert trials["start_time"].iloc[p + 1] == pytest.approx(trials["stimulus_stop_time"].iloc[p])
                shared += sum(sf.read_part(s, "blank_after", p, p + 1).times.size for s in sf.sheets)
        assert sum(u["spike_times"].size for u in units) == total - shared
    assert units[0]["population"] == "" and any(u["population"] == "L4 E" for u in units)


def test_epochs_mark_each_part(exported) -> None:
    from pynwb import NWBHDF5IO

    _, out = exported
    with NWBHDF5IO(str(out), "r") as io:
        epochs = io.read().epochs.to_dataframe()
    tags = [t[0] for t in epochs["tags"]]
    assert tags.count("stimulus") == 4 and "blank_before" in tags
    stim = epochs[[t[0] == "stimulus" for t in epochs["tags"]]]
    np.testing.assert_allclose(stim["stop_time"] - stim["start_time"], 0.1)


def test_unknown_sheet_and_suffix(exported, tmp_path) -> None:
    from corticalrnn.errors import CorticalRNNError

    h5, _ = exported
    with pytest.raises(CorticalRNNError, match="no sheet"):
        export_nwb(h5, tmp_path / "x.nwb", sheets=["V1_Exc_L5"])
    with pytest.raises(CorticalRNNError, match=r"end in \.nwb"):
        export_nwb(h5, tmp_path / "x.h5")
    assert json  # stimulus parameters are unpacked into columns, not stored as JSON dicts


@pytest.fixture(scope="module")
def evaluation(exported, tmp_path_factory):
    """An evaluation folder of the exported recording, written with the evaluation's own writers:
    per-neuron table (corticalrnn.results), saved predictions (corticalrnn.predictions), report."""
    from corticalrnn.jsonio import write_json
    from corticalrnn.predictions import PredictionWriter
    from corticalrnn.results import per_neuron_table, write_per_neuron
    from corticalrnn.sheets import V1_SHEETS
    from corticalrnn.store import open_store

    h5, _ = exported
    d = tmp_path_factory.mktemp("nwb-eval")
    assert main(["trim", str(h5), "-o", str(d / "s.zarr"), "--bin-ms", "10", "--no-progress"]) == 0
    st = open_store(d / "s.zarr")
    sheets = [s for s in V1_SHEETS if s in st.sheets]
    ids = np.concatenate([st.neuron_ids(s) for s in sheets])
    labels = np.concatenate([[s] * len(st.neuron_ids(s)) for s in sheets])
    observed = np.arange(ids.size) % 2 == 0
    w = st.windows
    imgs = np.unique(w.image_id)
    win = np.array([np.flatnonzero(np.asarray(w.image_id) == i) for i in imgs])  # [images, trials]
    trials = np.asarray(w.trial)[win]
    rng = np.random.default_rng(0)
    rates = rng.uniform(0, 0.1, (*win.shape, st.n_bins, ids.size)).astype(np.float32)
    with PredictionWriter(d / "eval" / "pred.npy", image_ids=imgs, trials=trials, windows=win,
                          n_bins=st.n_bins, neuron_ids=ids, sheets=labels, observed=observed,
                          bin_ms=st.bin_ms) as wr:
        wr.write(rates)
    res = SimpleNamespace(per_neuron={"trial_avg_r": rng.uniform(-1, 1, ids.size),
                                      "bits_per_spike": rng.normal(0, 1, ids.size)})
    pop = SimpleNamespace(per_neuron={k: v / 2 for k, v in res.per_neuron.items()})
    cols, desc = per_neuron_table(ids, labels, observed, {"model": res, "population": pop},
                                  spikes=np.arange(ids.size))
    files = {"report": "report.json", **write_per_neuron(d / "eval", cols),
             "predictions": "pred.npy", "predictions_index": "pred.json"}
    write_json(d / "eval" / "report.json", {"store": str(st.path), "window": st.window_def, "step": 1,
                                            "files": files, "per_neuron_columns": desc})
    out = d / "with-eval.nwb"
    assert main(["export-nwb", str(h5), "-o", str(out), "--evaluation", str(d / "eval"),
                 "--experimenter", "Doe, Jane", "--institution", "Test Lab"]) == 0
    return d, out, rates, cols


def test_evaluation_as_processed_data(exported, evaluation) -> None:
    """Per-neuron metrics (linked to the units) and predicted rates (spikes/s, on the session
    timeline from each window's image onset) as processed data; nwbinspector passes."""
    from pynwb import NWBHDF5IO

    d, out, rates, cols = evaluation
    small_data = {"check_column_binary_capability", "check_single_row"}
    messages = [m for m in inspect(out) if m.check_function_name not in small_data]
    assert messages == [], [f"{m.importance.name} {m.check_function_name}: {m.message}" for m in messages]
    from corticalrnn.store import open_store

    st = open_store(d / "s.zarr")
    t0 = st.window_def["t0_ms"] / 1e3
    with NWBHDF5IO(str(out), "r") as io:
        nwb = io.read()
        table = nwb.processing["misc"]["per_neuron_metrics"]
        units = nwb.units.to_dataframe()
        assert len(table) == cols["neuron_id"].size
        np.testing.assert_array_equal(table["neuron_id"].data[:], cols["neuron_id"])
        np.testing.assert_array_equal(table["model_trial_avg_r"].data[:], cols["model_trial_avg_r"])
        unit_rows = np.asarray(table["unit"].data[:])
        assert units["neuron_id"].to_numpy()[unit_rows].tolist() == cols["neuron_id"].tolist()
        assert list(units["sheet"].to_numpy()[unit_rows]) == list(cols["sheet"])
        ts = nwb.processing["misc"]["predicted_rates"]
        data = np.asarray(ts.data[:])
        t = (np.asarray(ts.timestamps[:]) if ts.timestamps is not None else
             ts.starting_time + np.arange(len(data)) / ts.rate)
        assert ts.unit == "Hz" and data.shape == (np.prod(rates.shape[:3]), rates.shape[3])
        trials = nwb.trials.to_dataframe()
        w = st.windows
        for a in range(rates.shape[0]):
            for b in range(rates.shape[1]):
                win = int(np.flatnonzero(np.asarray(w.image_id) == np.unique(w.image_id)[a])[b])
                tr = trials[(trials.image_id == int(w.image_id[win])) & (trials.repeat == int(w.trial[win]))]
                i = int(np.searchsorted(t, tr.stimulus_start_time.iloc[0] + t0 - 1e-9))
                assert t[i] == pytest.approx(tr.stimulus_start_time.iloc[0] + t0)
                np.testing.assert_allclose(data[i:i + rates.shape[2]], rates[a, b] / (st.bin_ms / 1e3),
                                           rtol=1e-6)


def test_evaluation_of_neurons_not_exported(exported, evaluation, tmp_path) -> None:
    from corticalrnn.errors import CorticalRNNError

    h5, _ = exported
    d, _, _, _ = evaluation
    with pytest.raises(CorticalRNNError, match="not among the exported units"):
        export_nwb(h5, tmp_path / "x.nwb", sheets=["X_ON", "V1_Exc_L4"], evaluation=d / "eval")
