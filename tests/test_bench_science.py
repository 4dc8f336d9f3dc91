"""`corticalrnn bench science --quick`: the whole science path (LSV1M-like data with annotations and the
connectome, extract, trim, identity and simulator variants, baselines, criteria) runs end to end."""

from __future__ import annotations

import argparse

import pytest

from corticalrnn.bench import science


@pytest.mark.slow
def test_bench_science_quick(tmp_path):
    p = argparse.ArgumentParser()
    science.add_arguments(p)
    # model overrides reach every variant: the adaptive unit and borrowed hidden biases run end to end
    args = p.parse_args(["--quick", "--out", str(tmp_path), "--observed", "0.5", "--variants", "identity",
                         "simulator", "inferred", "--set", 'neurons.model="adaptive"',
                         "--set", 'neurons.hidden_weights="borrowed"'])
    res = science.run_bench(args)
    assert [r["variant"] for r in res["runs"]] == ["identity", "simulator", "inferred"]
    for run in res["runs"]:
        pops = {(r["population"], r["neurons"]) for r in run["table"]}
        assert ("L4 E", "hidden") in pops and ("L2/3 I", "observed") in pops
        keys = [science._column("model", "trial_avg_r_median"),
                science._column("population", "trial_avg_r_median"),
                science._column("model", "bps_vs_population"), "imgspec r(true)", "r(true) ceiling",
                "imgspec ceiling", "r_avg of true rates"]
        assert all(k in run["table"][0] for k in keys)
        assert len(run["criteria"]) == sum(1 for r in run["table"] if r["neurons"] == "hidden")
    # the data's own limit, once per observed fraction: split-half r raw and beyond the population course
    ceiling = res["runs"][0]["beyond_course"]
    assert all(run["beyond_course"] is ceiling for run in res["runs"])
    hid = next(r for r in ceiling if (r["population"], r["neurons"]) == ("L4 E", "hidden"))
    assert -1 <= hid["beyond course mean"] <= hid["split-half r mean"] + 0.2 and hid["n defined"] > 0
    assert {n["sheet"] for n in res["neighbours"]} == {"V1_Exc_L4", "V1_Inh_L4", "V1_Exc_L2/3", "V1_Inh_L2/3"}
    # the inferred variant trained on LGN positions laid out from its training windows, in the checkpoint
    from corticalrnn.train.checkpoint import load_checkpoint

    run_dir = tmp_path / "work" / "runs" / "inferred-obs0.5-seed1"
    spec = load_checkpoint(run_dir / "best.pt")["spec"]
    assert (run_dir / "lgn_layout.png").stat().st_size > 10_000  # the layout figure
    assert spec["inferred_positions"] == ["X_OFF", "X_ON"]
    assert spec["positions"]["X_ON"].shape[1] == 2  # cortical mm, not the store's grid indices


def thesis_folder(root, seed: int = 0):
    """A small thesis-layout folder: every sheet, 6 single-trial training images, 5 test images x 3
    trials, V1 positions / orientation / phase (no LGN positions, as in the real sample)."""
    import numpy as np
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    sheets = {"X_ON": 12, "X_OFF": 12, "V1_Exc_L4": 16, "V1_Inh_L4": 6, "V1_Exc_L23": 16, "V1_Inh_L23": 6}
    keys = {"train": [(i, None) for i in range(1, 7)],
            "test": [(i, t) for i in range(7, 12) for t in range(3)]}
    for split, ks in keys.items():
        for sheet, n in sheets.items():
            d = root / split / sheet
            d.mkdir(parents=True, exist_ok=True)
            for img, trial in ks:
                name = f"spikes_{img}.npz" if trial is None else f"spikes_trial_{trial}_{img}.npz"
                sp.save_npz(d / name, sp.csr_matrix(rng.poisson(0.4, (n, 35)).astype(np.uint64)))
    (root / "neuron_ids").mkdir()
    pos = {}
    for k, (sheet, n) in enumerate(sheets.items()):
        np.save(root / "neuron_ids" / f"neuron_ids_{sheet}_1.npy", np.arange(n) + 1000 * k)
        if sheet.startswith("V1"):
            pos |= {f"{sheet}.x": rng.uniform(-0.3, 0.3, n), f"{sheet}.y": rng.uniform(-0.3, 0.3, n),
                    f"{sheet}.ori": rng.uniform(0, np.pi, n), f"{sheet}.phase": rng.uniform(0, 2 * np.pi, n)}
    np.savez(root / "pos_ori_phase_dictionary.npz", **pos)


@pytest.mark.slow
def test_bench_science_v1_sample_quick(tmp_path, capsys):
    """The real-sample mode on a generated thesis-layout folder: both variants train and evaluate on the
    multi-trial images the training did not use, and the L4 criterion is checked per population."""
    thesis_folder(tmp_path / "sample")
    p = argparse.ArgumentParser()
    science.add_arguments(p)
    args = p.parse_args(["--quick", "--out", str(tmp_path / "out"), "--v1-sample", str(tmp_path / "sample"),
                         "--observed", "0.5"])
    res = science.run_bench(args)
    assert [r["variant"] for r in res["runs"]] == ["config", "dense", "gabor"]
    for run in res["runs"]:
        pops = {(r["population"], r["neurons"]) for r in run["table"]}
        assert ("L4 E", "hidden") in pops and ("L4 I", "observed") in pops
        assert [c.split()[0:2] for c in run["criteria"]] == [["L4", "E"], ["L4", "I"]]
    out = capsys.readouterr().out
    assert "== v1 sample, dense, observed 0.5" in out and "r_1 pop med" in out
    assert out.count("raw and beyond the population course") == 1 and "beyond course mean" in out
    assert all("paired over neurons: r_avg" in c and "beyond the population course" in c
               for run in res["runs"] for c in run["criteria"])
    assert all(k in row for run in res["runs"] for row in run["table"]
               for k in (science.BEYOND_COLUMN, *science.COURSE_COLUMNS))
    import numpy as np

    hid = next(r for r in res["runs"][0]["table"] if (r["population"], r["neurons"]) == ("L4 E", "hidden"))
    assert all(np.isfinite(hid[k]) for k in (science.BEYOND_COLUMN, *science.COURSE_COLUMNS))
    assert all("course oracle (no identity)" in c for c in res["runs"][0]["criteria"])
    # the generator's variants do not apply to the sample
    from corticalrnn.errors import CorticalRNNError

    with pytest.raises(CorticalRNNError, match="identity.*v1-sample"):
        science.run_bench(p.parse_args(["--v1-sample", str(tmp_path / "sample"), "--variants", "identity",
                                        "--out", str(tmp_path / "out")]))


def test_paired_difference_matches_a_loop():
    """Hidden units of one population, model minus baseline per neuron: median, share won, count."""
    import numpy as np

    rng = np.random.default_rng(0)
    n = 41
    neurons = {"population": np.array(["L4 E"] * 30 + ["L4 I"] * 11, dtype=object),
               "observed": rng.random(n) < 0.3,
               "model_single_trial_r": rng.normal(0.05, 0.02, n),
               "population_single_trial_r": rng.normal(0.04, 0.02, n)}
    neurons["model_single_trial_r"][3] = np.nan
    keys = ("population", "observed", "model_single_trial_r", "population_single_trial_r")
    cols = [neurons[k] for k in keys]
    diffs = [m - b for pop, o, m, b in zip(*cols, strict=True)
             if pop == "L4 E" and not o and not (np.isnan(m) or np.isnan(b))]
    med, won, count = science.paired_difference(neurons, "L4 E", "single_trial_r")
    assert count == len(diffs) and med == float(np.median(diffs))
    assert won == sum(d > 0 for d in diffs) / len(diffs)
    assert science.paired_difference(neurons, "L2/3 E", "single_trial_r")[2] == 0
