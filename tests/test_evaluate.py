"""Training on a real (tiny) Zarr store through the config path, then evaluation: report, table,
figures, bad input (missing neurons, single-trial test data, other bin size, other architecture)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from corticalrnn.binning import BinnedCSR
from corticalrnn.errors import CorticalRNNError, DataMismatchError
from corticalrnn.sheets import ALL_SHEETS, INPUT_SHEETS
from corticalrnn.store import SheetMeta, StoreMeta, StoreWriter
from corticalrnn.subsets import SubsetConfig, make_subset
from corticalrnn.train.config import load_config

SIZES = {"X_ON": 10, "X_OFF": 10, "V1_Exc_L4": 16, "V1_Inh_L4": 4, "V1_Exc_L2/3": 16, "V1_Inh_L2/3": 4}
T, BIN_MS = 16, 10


def _rates(image: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Image-dependent smooth LGN rates and V1 rates that follow them (a learnable mapping)."""
    g = np.random.default_rng(image)
    t = np.arange(T)[:, None]
    lgn = {s: 0.3 + 0.25 * (1 + np.sin(2 * np.pi * (t / T * g.uniform(0.5, 2) + g.uniform(0, 1, SIZES[s]))))
           for s in INPUT_SHEETS}
    x = np.concatenate([lgn["X_ON"], lgn["X_OFF"]], 1)
    mix = np.random.default_rng(7).uniform(0, 0.25, (x.shape[1], sum(SIZES[s] for s in SIZES if "V1" in s)))
    v1 = x @ mix
    out, a = dict(lgn), 0
    for s in ("V1_Exc_L4", "V1_Inh_L4", "V1_Exc_L2/3", "V1_Inh_L2/3"):
        out[s] = v1[:, a:a + SIZES[s]]
        a += SIZES[s]
    return out


def write_store(path: Path, images: list[int], trials: int | list[int], seed: int = 0,
                sizes: dict | None = None,
                bin_ms: int = BIN_MS, id_offset: int = 0) -> Path:
    sizes = sizes or SIZES
    rng = np.random.default_rng(seed)
    meta = StoreMeta(bin_ms, T, {"origin": "test"}, [
        SheetMeta(s, np.arange(sizes[s]) + 1000 * ALL_SHEETS.index(s) + id_offset,
                  np.random.default_rng(ALL_SHEETS.index(s)).uniform(0, 1, (sizes[s], 2))) for s in sizes])
    w = StoreWriter.create(path, meta)
    src = w.add_source(path=str(path), sha256="", kind="test")
    img_col, tr_col, events = [], [], {s: [] for s in sizes}
    per_image = [trials] * len(images) if isinstance(trials, int) else trials
    for img, n_trials in zip(images, per_image):
        rates = _rates(img, rng)
        for k in range(n_trials):
            img_col.append(img)
            tr_col.append(k)
            for s in sizes:
                events[s].append(rng.poisson(rates[s][:, :sizes[s]].T))  # [N, T]
    ev = {}
    for s in sizes:
        m = sp.csr_matrix(np.concatenate(events[s]))
        ev[s] = BinnedCSR(m.indptr.astype(np.int64), m.indices.astype(np.int32), m.data.astype(np.int32), T)
    from corticalrnn.store import WindowBlock

    w.append(WindowBlock(np.array(img_col), np.array(tr_col), ev), src)
    w.commit()
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from corticalrnn.store import open_store
    from corticalrnn.train.setup import train

    d = tmp_path_factory.mktemp("ev")
    train_store = write_store(d / "train.zarr", list(range(100, 108)), 1)
    write_store(d / "test.zarr", [200, 201, 202], 4, seed=1)
    subset = make_subset(open_store(train_store), SubsetConfig(fraction=0.5, observed=0.5, method="spatial"))
    subset.save(d / "subset.json")
    cfg = load_config(None, [f'data.store="{train_store}"', f'data.subset="{d / "subset.json"}"',
                             "train.max_steps=24", "train.batch_size=4", "train.eval_every=12",
                             "train.progress=false", "optim.lr=0.02", "objective.teacher.steps=20",
                             "train.threads=1"])
    res = train(cfg, d / "run")
    return d, res, subset


def test_training_through_config_writes_run_dir(trained):
    d, res, subset = trained
    assert res.status == "finished" and res.step == 24
    names = {p.name for p in (d / "run").iterdir()}
    assert {"last.pt", "best.pt", "config.toml", "subset.json", "split.json", "metrics.csv",
            "metrics.jsonl"} <= names
    split = json.loads((d / "run" / "split.json").read_text())
    assert len(split["validation"]) == 2 and len(split["train"]) == 6  # 20% of 8 training images


def test_evaluate_report_table_and_figures(trained, capsys):
    from corticalrnn.evaluate import evaluate, print_result

    d, _, subset = trained
    res = evaluate(d / "run" / "best.pt", d / "test.zarr", d / "eval", device="cpu", progress=False)
    # streamed: only the figure's image (the one with the most spikes) is kept in memory
    assert res.test.v1.shape == (1, 4, T, len(subset.v1_ids())) and len(res.test.image_ids) == 3
    assert res.prediction.shape == res.test.v1.shape and (res.prediction >= 0).all()
    assert res.test.kept_image_ids.tolist() == res.report["streaming"]["kept_images"]
    groups = {(r["population"], r["neurons"], r["predictor"]) for r in res.rows}
    assert ("L4 E", "hidden", "model") in groups and ("L2/3 I", "observed", "baseline") in groups
    assert res.skipped == {}
    rep = json.loads((d / "eval" / "report.json").read_text())
    assert rep["trials_per_image"] == 4 and rep["test_images"] == [200, 201, 202]
    for name in ("raster_psth.png", "hist_trial_avg_r.png", "hist_cc_norm.png", "population_time_course.png"):
        assert (d / "eval" / name).stat().st_size > 1000, name
    # learning curves belong to the run: in the run folder, named from the report relative to it
    assert (d / "run" / "learning_curves.png").stat().st_size > 1000
    assert not (d / "eval" / "learning_curves.png").exists()
    assert "../run/learning_curves.png" in rep["figures"] and "raster_psth.png" in rep["figures"]
    assert rep["window"] == {"origin": "test"} and rep["files"]["per_neuron_csv"] == "per_neuron.csv"
    print_result(res)
    out = capsys.readouterr().out
    assert "CC_norm" in out and "thesis_CC_abs" in out and "baseline" in out


def test_evaluate_single_trial_store_says_what_is_skipped(trained):
    from corticalrnn.evaluate import evaluate

    d, _, _ = trained
    one = write_store(d / "one.zarr", [300, 301], 1, seed=2)
    res = evaluate(d / "run" / "best.pt", one, None, device="cpu", progress=False)
    assert "cc_norm" in res.skipped and "trials" in res.skipped["cc_norm"]
    assert {"oracle_r_loo_mean", "oracle_r_jackknife", "feve"} <= set(res.skipped)


def test_evaluate_never_uses_training_images(trained):
    from corticalrnn.evaluate import evaluate

    d, _, _ = trained
    with pytest.raises(DataMismatchError, match="no test windows"):
        evaluate(d / "run" / "best.pt", d / "train.zarr", None, device="cpu", progress=False)


def test_store_without_the_subsets_neurons(trained):
    from corticalrnn.evaluate import evaluate

    d, _, _ = trained
    other = write_store(d / "other.zarr", [400], 3, id_offset=500)
    with pytest.raises(DataMismatchError, match=r"other\.zarr.*lacks"):
        evaluate(d / "run" / "best.pt", other, None, device="cpu", progress=False)


def test_store_with_other_bin_size(trained):
    from corticalrnn.evaluate import evaluate

    d, _, _ = trained
    other = write_store(d / "bins.zarr", [500], 3, bin_ms=20)
    with pytest.raises(DataMismatchError, match="20 ms bins"):
        evaluate(d / "run" / "best.pt", other, None, device="cpu", progress=False)


def test_resume_with_other_architecture_is_refused(trained):
    from corticalrnn.train.setup import train

    d, _, _ = trained
    cfg = load_config(d / "run" / "config.toml", ["model.neurons.model=mlp"])
    with pytest.raises(CorticalRNNError, match="another architecture.*neurons.model"):
        train(cfg, d / "run2", resume=d / "run" / "last.pt")


def test_cli_train_and_evaluate(trained, tmp_path):
    from corticalrnn.cli import main

    d, _, _ = trained
    rc = main(["train", "--config", str(d / "run" / "config.toml"), "--run-dir", str(tmp_path / "r"),
               "--set", "train.max_steps=3", "--set", "train.eval_every=3"])
    assert rc == 0 and (tmp_path / "r" / "best.pt").exists()
    rc = main(["evaluate", str(tmp_path / "r" / "best.pt"), str(d / "test.zarr"), "--out",
               str(tmp_path / "e"), "--device", "cpu", "--no-figures", "--chunk-images", "2",
               "--save-predictions", str(tmp_path / "p.npy"), "--predictions-dtype", "float16"])
    assert rc == 0 and (tmp_path / "e" / "report.json").exists()
    assert np.load(tmp_path / "p.npy").shape[:3] == (3, 4, T) and (tmp_path / "p.json").exists()
    assert main(["train", "--run-dir", str(tmp_path / "r"), "--set", "optim.lrr=1"]) == 1


def test_streaming_evaluate_equals_in_memory_reference(trained, tmp_path):
    """evaluate (one image per chunk) against the in-memory path: load_test_data, predict,
    summarize, split_half_r, comparison_rows on the same predictions, to 1e-10."""
    import math

    from corticalrnn.evaluate import (
        _add_group_medians,
        _training_baselines,
        comparison_rows,
        evaluate,
        load_test_data,
        predict,
        split_half_r,
    )
    from corticalrnn.metrics import summarize
    from corticalrnn.predictions import open_predictions
    from corticalrnn.store import open_store
    from corticalrnn.subsets import NeuronSubset
    from corticalrnn.train.spec import model_from_checkpoint

    d, _, _ = trained
    ckpt = d / "run" / "best.pt"
    res = evaluate(ckpt, d / "test.zarr", None, device="cpu", progress=False, keep_images=None,
                   chunk_images=1, batch_size=3, save_predictions=tmp_path / "pred.npy")
    model, ck = model_from_checkpoint(ckpt, "cpu")
    subset = NeuronSubset.from_json_dict(ck["subset"])
    test = load_test_data(open_store(d / "test.zarr"), subset, ck["split"])
    np.testing.assert_array_equal(res.test.v1, test.v1)
    np.testing.assert_array_equal(res.test.image_ids, test.image_ids)
    ref_pred = predict(model, test.lgn, 16, "cpu", progress=False)
    np.testing.assert_allclose(res.prediction, ref_pred, rtol=1e-5, atol=1e-6)  # other batches: BLAS rounding
    base = _training_baselines(ck, subset, None, [])
    assert base is not None
    bp = base.predictions(len(test.image_ids))
    labels, observed = np.asarray(subset.v1_sheet_labels()), np.asarray(subset.observed_mask(), bool)
    # the model's own population mean (model_pop): each neuron's group of the same population and
    # observed / hidden status, averaged with explicit loops
    pop_mean = np.zeros(res.prediction.shape)
    for i in range(len(labels)):
        mates = (labels == labels[i]) & (observed == observed[i])
        pop_mean[..., i] = res.prediction[..., mates].astype(np.float64).mean(-1)
    ref = summarize(test.v1, res.prediction, labels, observed, progress=False, baseline_rates=base.mean_rate,
                    baselines={**{k: v for k, v in bp.items() if k != "mean_rate"}, "model_pop": pop_mean})
    rows = [dict(r) for r in ref]
    _add_group_medians(rows, split_half_r(test.v1), "split_half_r_median", labels, observed)
    assert len(rows) == len(res.rows)
    for a, b in zip(rows, res.rows):
        assert a.keys() == b.keys()
        for key, x in a.items():
            if isinstance(x, float) and math.isnan(x):
                assert math.isnan(b[key]), key
            elif isinstance(x, float):
                assert abs(x - b[key]) <= 1e-10 * max(1.0, abs(x)), (a["population"], a["predictor"], key)
            else:
                assert x == b[key], key
    for x, y in zip(comparison_rows(rows), comparison_rows(res.rows), strict=True):
        assert x.keys() == y.keys()
        assert all(np.isclose(x[c], y[c], rtol=1e-10, equal_nan=True) for c in x if isinstance(x[c], float))
    assert res.skipped == dict(ref.skipped)
    saved = open_predictions(tmp_path / "pred.npy")
    np.testing.assert_array_equal(saved.rates, res.prediction)
    assert saved.image_ids.tolist() == [200, 201, 202] and saved.rates.dtype == np.float32
    assert res.report["predictions"] == str(tmp_path / "pred.npy")


def test_evaluate_without_training_store_uses_test_means(trained, tmp_path):
    """No training windows: the mean-rate baseline is the test data's own mean (a first pass over the
    counts), as the in-memory path's default."""
    from corticalrnn.data import subset_windows
    from corticalrnn.evaluate import _mean_counts, evaluate, load_test_data
    from corticalrnn.metrics import summarize
    from corticalrnn.store import open_store
    from corticalrnn.subsets import NeuronSubset
    from corticalrnn.train.checkpoint import load_checkpoint, save_checkpoint

    d, _, _ = trained
    ck = load_checkpoint(d / "run" / "best.pt")
    ck["config"]["data"]["store"] = str(tmp_path / "gone.zarr")
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run / "best.pt", {k: v for k, v in ck.items() if k not in ("format", "version")})
    res = evaluate(run / "best.pt", d / "test.zarr", None, device="cpu", progress=False, keep_images=None,
                   save_predictions=tmp_path / "p16", predictions_dtype="float16")
    assert any("baselines left out" in n for n in res.test.notes)
    assert {r["predictor"] for r in res.rows} == {"model", "baseline", "model_pop"}
    subset = NeuronSubset.from_json_dict(ck["subset"])
    st = open_store(d / "test.zarr")
    test = load_test_data(st, subset, ck["split"])
    means = _mean_counts(subset_windows(st, subset, test.windows.ravel()), test.v1.shape[-1])
    np.testing.assert_allclose(means, test.v1.mean(axis=(0, 1, 2), dtype=np.float64), rtol=1e-12)
    labels, observed = np.asarray(subset.v1_sheet_labels()), np.asarray(subset.observed_mask(), bool)
    ref = summarize(test.v1, res.prediction, labels, observed, progress=False)
    for a, b in zip(ref, [r for r in res.rows if r["predictor"] != "model_pop"], strict=True):
        for key in ("trial_avg_r_median", "co_bps", "thesis_cc_abs", "feve_median", "bits_per_spike_mean"):
            assert np.isclose(a[key], b[key], rtol=1e-10, atol=1e-12, equal_nan=True), (a["predictor"], key)
    from corticalrnn.predictions import open_predictions

    saved = open_predictions(tmp_path / "p16.npy")
    assert saved.rates.dtype == np.float16
    np.testing.assert_allclose(saved.rates, res.prediction, rtol=1e-3, atol=1e-4)


def test_evaluate_saves_per_neuron_results_and_loads_them_back(trained, tmp_path):
    """per_neuron.csv (and .parquet with pyarrow) beside report.json: one row per neuron with every
    per-neuron metric of the model and of each baseline; the report names the files (and the saved
    predictions); load_results reads them back; the table's medians are the report's."""
    from corticalrnn.evaluate import evaluate, load_results
    from corticalrnn.metrics import PER_NEURON_METRICS

    d, _, subset = trained
    out = tmp_path / "e"
    res = evaluate(d / "run" / "best.pt", d / "test.zarr", out, device="cpu", progress=False, figures=False,
                   save_predictions=out / "pred.npy")
    files = res.report["files"]
    assert files["per_neuron_csv"] == "per_neuron.csv" and files["predictions"] == "pred.npy"
    assert files["predictions_index"] == "pred.json"
    saved = load_results(out, frame=False)
    report, table = saved
    assert report["files"] == files and set(report["per_neuron_columns"]) == set(table)
    n = len(subset.v1_ids())
    assert all(len(v) == n for v in table.values())
    np.testing.assert_array_equal(table["neuron_id"], subset.v1_ids())
    np.testing.assert_array_equal(table["observed"], subset.observed_mask())
    assert set(table["population"]) == {"L4 E", "L4 I", "L2/3 E", "L2/3 I"}
    of_data = {"cc_max", "fev"} | {m for m in PER_NEURON_METRICS if m.startswith("oracle")}
    for metric in PER_NEURON_METRICS:
        for predictor in ("model", "psth", "population"):
            # properties of the recording (same for every predictor) appear once, unprefixed
            assert (metric in table) if metric in of_data else (f"{predictor}_{metric}" in table), metric
    assert "baseline_bits_per_spike" in table and "baseline_trial_avg_r" not in table  # constant: r undefined
    for key, v in res.neurons.items():
        if v.dtype.kind == "f":
            np.testing.assert_array_equal(table[key], v)  # round trip exact
        else:
            assert table[key].tolist() == v.tolist(), key
    for row in res.rows:
        if row["population"] == "all":
            continue
        sel = (table["population"] == row["population"])
        sel &= table["observed"] if row["neurons"] == "observed" else ~table["observed"]
        v = table[f"{row['predictor']}_cc_norm"] if f"{row['predictor']}_cc_norm" in table else None
        if v is not None and row["neurons"] != "all":
            v = v[sel & np.isfinite(v)]
            want = np.median(v) if v.size else np.nan
            assert np.isclose(want, row["cc_norm_median"], rtol=1e-12, equal_nan=True)
    assert saved.predictions().rates.shape == (3, 4, T, n)
    pd = pytest.importorskip("pandas")
    frame = load_results(out).per_neuron
    assert isinstance(frame, pd.DataFrame) and len(frame) == n and frame["observed"].dtype == bool
    none = load_results(d / "eval") if (d / "eval" / "report.json").exists() else None
    assert none is None or none.file("predictions") is None


def test_per_neuron_parquet_when_pyarrow_is_present(trained, tmp_path):
    pytest.importorskip("pyarrow")
    pd = pytest.importorskip("pandas")
    from corticalrnn.evaluate import evaluate, load_results

    d, _, _ = trained
    res = evaluate(d / "run" / "best.pt", d / "test.zarr", tmp_path, device="cpu", progress=False,
                   figures=False)
    assert res.report["files"]["per_neuron_parquet"] == "per_neuron.parquet"
    frame = load_results(tmp_path).per_neuron
    csv = pd.read_csv(tmp_path / "per_neuron.csv")
    assert list(frame.columns) == list(csv.columns)
    pd.testing.assert_frame_equal(frame, csv, check_dtype=False)


def test_per_neuron_table_truth_columns():
    from types import SimpleNamespace

    from corticalrnn.results import per_neuron_table

    r = SimpleNamespace(per_neuron={"trial_avg_r": np.array([0.1, np.nan]), "cc_max": np.full(2, np.nan)})
    cols, desc = per_neuron_table(np.array([5, 6]), np.array(["V1_Exc_L4", "V1_Inh_L2/3"]),
                                  np.array([True, False]), {"model": r},
                                  truth_r={"model": np.array([0.5, 0.6]), "baseline": np.full(2, np.nan),
                                           "model_imgspec": np.array([0.2, 0.3])})
    assert list(cols) == ["index", "neuron_id", "sheet", "population", "observed", "model_trial_avg_r",
                          "model_r_truth", "model_r_truth_imgspec"]
    assert cols["population"].tolist() == ["L4 E", "L2/3 I"] and "image" in desc["model_r_truth_imgspec"]


def _crafted_checkpoint(src: Path, dst: Path, n: int, consistent_subset: bool) -> Path:
    """``src`` with V1_Exc_L4 declared as ``n`` neurons (ids 10**6 ..), the subset changed too or not."""
    import torch

    from corticalrnn.train.checkpoint import load_checkpoint, save_checkpoint

    ck = load_checkpoint(src)
    ids = np.arange(n, dtype=np.int64) + 10**6
    ck["spec"]["sizes"]["V1_Exc_L4"] = n
    ck["spec"]["neuron_ids"]["V1_Exc_L4"] = torch.as_tensor(ids)
    if consistent_subset:
        ck["subset"]["sheets"]["V1_Exc_L4"] = {"modelled": ids.tolist(), "observed": ids[:10].tolist()}
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(dst, {k: v for k, v in ck.items() if k not in ("format", "version")})
    return dst


@pytest.mark.parametrize("consistent_subset", [False, True])
def test_crafted_checkpoint_sizes_refused_before_the_model_is_built(trained, tmp_path, monkeypatch,
                                                                     consistent_subset):
    """A checkpoint declaring 60,000 L4 E neurons (a 13.4 GiB dense model) fails on the store / its own
    subset before anything is allocated, through evaluate and through Experiment.evaluate."""
    import corticalrnn.train.spec as setup
    from corticalrnn.evaluate import evaluate
    from corticalrnn.experiment import Experiment

    d, _, _ = trained
    bad = _crafted_checkpoint(d / "run" / "best.pt", tmp_path / "run" / "best.pt", 60_000, consistent_subset)

    def never(*a, **k):
        raise AssertionError("the model was built from an unchecked checkpoint")

    monkeypatch.setattr(setup, "build_model", never)
    match = r"test\.zarr.*lacks" if consistent_subset else "differ from its neuron subset"
    with pytest.raises(DataMismatchError, match=match):
        evaluate(bad, d / "test.zarr", None, device="cpu", progress=False)
    exp = Experiment(d / "train.zarr", test_store=d / "test.zarr", workdir=tmp_path / "exp",
                     config=d / "run" / "config.toml")
    with pytest.raises(DataMismatchError, match=match):
        exp.evaluate(bad, figures=False, progress=False)


def test_checkpoint_spec_checks_and_memory_bound(trained, tmp_path):
    from corticalrnn.errors import SchemaError
    from corticalrnn.store import open_store
    from corticalrnn.train.checkpoint import load_checkpoint
    from corticalrnn.train.spec import check_checkpoint, model_bytes_lower_bound

    d, _, subset = trained
    ck = load_checkpoint(d / "run" / "best.pt")
    assert check_checkpoint(ck, "best.pt", open_store(d / "test.zarr")).sizes() == subset.sizes()
    # 2,000,000 neurons: at least 4 * (2e6)^2 bytes = 14.6 TiB, more than any machine here
    huge = load_checkpoint(_crafted_checkpoint(d / "run" / "best.pt", tmp_path / "huge.pt", 2_000_000, True))
    assert model_bytes_lower_bound(huge["spec"]) >= 4 * 2_000_000**2
    with pytest.raises(DataMismatchError, match=r"huge\.pt: the model it declares .* needs at least .*TiB"):
        check_checkpoint(huge, "huge.pt")
    for value in (-1, 1.5, "10", True, 10**9):
        ck["spec"]["sizes"]["V1_Inh_L4"] = value
        with pytest.raises(SchemaError, match="neurons for V1_Inh_L4"):
            check_checkpoint(ck, "x.pt")
    ck["spec"]["sizes"]["V1_Inh_L4"] = subset.sizes()["V1_Inh_L4"] + 1
    with pytest.raises(DataMismatchError, match="lists .* neuron ids"):
        check_checkpoint(ck, "x.pt")
    ck["spec"]["sizes"] = {"V1_Foo": 3}
    with pytest.raises(SchemaError, match="x.pt: checkpoint spec"):
        check_checkpoint(ck, "x.pt")



def test_train_test_images_moves_test_images_into_training(tmp_path):
    """data.train_test_images: K repeat-trial (test) images train; the rest stay the test set, which
    evaluation then uses and training never sees."""
    from corticalrnn.data import test_window_candidates
    from corticalrnn.store import open_store
    from corticalrnn.train.setup import split_training_windows

    path = write_store(tmp_path / "both.zarr", [100, 101, 102, 103, 104, 200, 201, 202], [1] * 5 + [4] * 3)
    st = open_store(path)
    ids = np.asarray(st.windows.image_id)

    def split(k: int):
        cfg = load_config(None, [f'data.store="{path}"', f"data.train_test_images={k}"])
        return split_training_windows(st, cfg)

    train_w, val_w, sp_ = split(2)
    moved = np.asarray(sp_.info["train_test_images"])
    assert sp_.test.size == 1 and moved.size == 2 and set(moved) <= {200, 201, 202}
    assert set(moved) <= set(sp_.train.tolist())
    assert np.isin(ids[train_w], moved).sum() == 8  # every trial of both moved images trains
    assert not np.isin(ids[np.r_[train_w, val_w]], sp_.test).any()
    assert set(ids[test_window_candidates(st, sp_.to_json_dict())]) == set(sp_.test.tolist())
    assert split(0)[2].test.tolist() == [200, 201, 202]
    with pytest.raises(CorticalRNNError, match="train_test_images = 3 would leave no test image"):
        split(3)


def _naive_ceiling(per_trial: np.ndarray, imgspec: bool) -> np.ndarray:
    """Independent reference of TruthCeiling: np.corrcoef per neuron on the half averages."""
    a, b = per_trial[:, 0::2].mean(1), per_trial[:, 1::2].mean(1)
    if imgspec:
        a, b = a - a.mean(0), b - b.mean(0)
    out = []
    for j in range(a.shape[-1]):
        r = np.corrcoef(a[..., j].ravel(), b[..., j].ravel())[0, 1]
        out.append(np.sqrt(max(0.0, 2 * r / (1 + r))))
    return np.array(out)


def test_truth_ceiling_streams_equal_the_naive_formula_and_the_theory():
    from corticalrnn.metrics import TruthCeiling

    rng = np.random.default_rng(0)
    n_img, k, n_t, n = 200, 10, 20, 4
    course = rng.normal(0, 1.0, (1, n_t, n))  # the mean time course, the same for every image
    specific = rng.normal(0, 1.0, (n_img, n_t, n))  # what each image drives (trial-invariant)
    sigma = np.array([0.5, 2.0, 4.0, 6.0])  # per-trial noise of each neuron
    per_trial = (course + specific)[:, None] + rng.normal(0, 1, (n_img, k, n_t, n)) * sigma
    one = TruthCeiling(n_t, n)
    one.update(per_trial)
    chunks = TruthCeiling(n_t, n)
    for a in range(0, n_img, 7):
        chunks.update(per_trial[a:a + 7])
    got, streamed = one.result(), chunks.result()
    for key, imgspec in (("total", False), ("imgspec", True)):
        np.testing.assert_allclose(streamed[key], got[key], rtol=1e-12)
        np.testing.assert_allclose(got[key], _naive_ceiling(per_trial, imgspec), rtol=1e-10)
    # theory: r of the k-trial average with its trial-invariant part = sqrt(var S / (var S + sigma^2 / k))
    want_spec = np.sqrt(1 / (1 + sigma ** 2 / k))
    want_total = np.sqrt(2 / (2 + sigma ** 2 / k))
    np.testing.assert_allclose(got["imgspec"], want_spec, atol=0.03)
    np.testing.assert_allclose(got["total"], want_total, atol=0.03)
    assert np.all(np.diff(got["imgspec"]) < 0)  # noisier neurons, lower ceiling
    single = TruthCeiling(n_t, n)
    single.update(per_trial[:, :1])
    assert np.isnan(single.result()["total"]).all()  # one trial: no ceiling to estimate
