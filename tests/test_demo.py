"""`corticalrnn demo --quick`: the whole pipeline end to end at tiny size."""

from __future__ import annotations

import json

import numpy as np

from corticalrnn.cli import main
from corticalrnn.demo import format_headline


def test_quick_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress", "--no-figures", "--steps", "4"]) == 0
    text = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    report = json.loads((out / "runs" / "run" / "eval-test_20ms" / "report.json").read_text())
    assert summary["steps"] == 4 and report["trials_per_image"] == 3
    assert report["truth"] and {r["neurons"] for r in report["truth"]} == {"observed", "hidden"}
    assert all(0 < r["r_ceiling_truth_median"] <= 1 for r in report["truth"])
    # each trial's true rates (the ceiling's input) average to the file's trial average
    from corticalrnn.evaluate import truth_reader
    from corticalrnn.store import open_store
    from corticalrnn.subsets import NeuronSubset

    store = open_store(out / "data" / "test_20ms.zarr")
    subset = NeuronSubset.load(out / "runs" / "run" / "subset.json")
    read = truth_reader(out / "data" / "test.truth.h5", subset, store)
    ids = np.unique(np.asarray(store.windows.image_id))
    per_trial = read(ids, per_trial=True)
    assert per_trial.shape[:2] == (len(ids), 3)
    np.testing.assert_allclose(per_trial.mean(1), read(ids), rtol=1e-5, atol=1e-9)
    assert {r["neurons"] for r in summary["headline"]} == {"observed", "hidden"}
    for word in ("CC_norm", "bits/spike", "true rates", "headline", "oracle"):
        assert word in text
    assert format_headline(summary["headline"]) in text  # the printed numbers are the run's summary.json
    assert summary["seconds"]["cpu_total"] > 0
    # data is reused by a second run; the training run is new
    assert main(["demo", "--quick", "--out", str(out), "--no-progress", "--no-figures", "--steps", "2"]) == 0
    assert "reusing" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["steps"] == 2
