"""Python API: subset -> train -> evaluate -> reobserve -> fine-tune -> sweep, on a tiny store."""

from __future__ import annotations

import json

import numpy as np
import pytest

from corticalrnn.errors import CorticalRNNError, DataMismatchError
from corticalrnn.experiment import Experiment, write_csv
from corticalrnn.train.runlog import read_log

FAST = {"train.batch_size": 4, "train.eval_every": 5, "train.progress": False, "train.threads": 1,
        "optim.lr": 0.02, "objective.teacher.steps": 5}


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    from test_evaluate import write_store

    d = tmp_path_factory.mktemp("exp")
    write_store(d / "train.zarr", list(range(100, 106)), 1)
    write_store(d / "test.zarr", [200, 201], 3, seed=1)
    return Experiment(d / "train.zarr", test_store=d / "test.zarr", workdir=d / "work", overrides=FAST)


def test_subset_train_evaluate_finetune(exp):
    subset = exp.make_subset(fraction=0.5, observed=0.5, method="spatial", seed=0)
    assert exp.subset_path("m0.5-o0.5-spatial-s0").exists()
    again = exp.load_subset("m0.5-o0.5-spatial-s0")
    assert np.array_equal(again.v1_ids(), subset.v1_ids())
    run = exp.train(subset, steps=6, name="a")
    assert run.best.exists() and run.result.step == 6
    res = exp.evaluate(run, figures=False, progress=False)
    assert any(r["neurons"] == "hidden" and r["predictor"] == "model" for r in res.rows)
    assert (run.run_dir / "eval-test" / "report.json").exists()

    other = exp.reobserve(subset, observed=0.5, seed=5)
    assert np.array_equal(other.v1_ids(), subset.v1_ids())
    assert not np.array_equal(other.observed_mask(), subset.observed_mask())
    tuned = exp.finetune(run, other, steps=3)
    assert tuned.result.step == 3 and tuned.name == "a-finetune"

    different = exp.make_subset(fraction=0.5, observed=0.5, seed=9)
    with pytest.raises(DataMismatchError, match="same modelled neurons"):
        exp.finetune(run, different, steps=2)


def test_sweep_observed_table(exp):
    rows = exp.sweep_observed([0.25, 0.75], fraction=0.5, steps=4)
    assert {r["observed_fraction"] for r in rows} == {0.25, 0.75}
    assert {r["neurons"] for r in rows} == {"observed", "hidden"}
    assert all("trial_avg_r_median" in r and "co_bps" in r for r in rows)
    assert (exp.workdir / "sweep_observed.csv").exists()
    assert len(json.loads((exp.workdir / "sweep_observed.json").read_text())) == len(rows)


def test_unknown_override_is_named(tmp_path, exp):
    with pytest.raises(CorticalRNNError, match="optim.learning_rate"):
        Experiment(exp.store_path, workdir=tmp_path, overrides={"optim.learning_rate": 1})


def test_write_csv_union_of_columns(tmp_path):
    p = write_csv([{"a": 1}, {"b": 2}], tmp_path / "t.csv")
    assert p.read_text().splitlines() == ["a,b", "1,", ",2"]


def test_loader_workers_ship_sparse_batches_and_train_identically(exp):
    """num_workers=1 (spawned worker, sparse events densified in the main process) == in-process."""
    subset = exp.make_subset(fraction=0.5, observed=0.5, method="spatial", seed=0, name="workers")
    losses = {}
    for nw in (0, 1):
        run = exp.train(subset, steps=3, name=f"workers{nw}", data__num_workers=nw, data__cache_mb=0.0,
                        train__log_every=1)
        losses[nw] = [r["loss"] for r in read_log(run.run_dir) if r["split"] == "train"]
    assert len(losses[0]) == 3 and losses[0] == losses[1]


def test_prepare_takes_store_and_subset_objects(tmp_path, exp):
    """prepare(cfg, run_dir, store=, subset=) needs no data.store / data.subset paths; the run dir
    records the subset as trained and the config where store and subset are."""
    from corticalrnn.store import open_store
    from corticalrnn.train.config import load_config
    from corticalrnn.train.setup import prepare

    subset = exp.make_subset(fraction=0.5, observed=0.5, method="spatial", seed=0, name="objects")
    cfg = exp.config_for(steps=2)
    cfg.data.store = cfg.data.subset = ""
    run_dir = tmp_path / "run"
    trainer = prepare(cfg, run_dir, store=open_store(exp.store_path), subset=subset)
    assert trainer.fit().step == 2
    assert json.loads((run_dir / "subset.json").read_text()) == json.loads(json.dumps(subset.to_json_dict()))
    saved = load_config(run_dir / "config.toml")
    assert saved.data.store == str(exp.store_path) and saved.data.subset == str(run_dir / "subset.json")
    assert cfg.data.store == cfg.data.subset == ""  # the caller's config is left as it was
    assert not list(exp.workdir.glob("runs/*/subset.input.json"))


def test_trainer_starts_the_time_drive_at_the_training_population_course(tmp_path, exp):
    from corticalrnn.baselines import training_baselines
    from corticalrnn.store import open_store
    from corticalrnn.train.setup import prepare, split_training_windows

    subset = exp.make_subset(fraction=0.5, observed=0.5, method="spatial", seed=0, name="drive")
    cfg = exp.config_for(steps=1, **{"model.architecture.time_drive": True})
    store = open_store(exp.store_path)
    model = prepare(cfg, tmp_path / "run", store=store, subset=subset).raw_model
    assert model.time_drive.shape == (4, store.n_bins)  # sized to the store's window by the trainer
    train_w = split_training_windows(store, cfg)[0]
    course = training_baselines(store, subset, train_w).population
    lab = np.asarray(subset.v1_sheet_labels())
    for k, sheet in enumerate(model.config.architecture.time_drive):
        c = np.nanmean(course[:, lab == sheet], axis=1)
        inv = lambda r: np.log(np.expm1(r))  # noqa: E731
        np.testing.assert_allclose(model.time_drive[k].detach().numpy(), inv(c) - inv(c.mean()), rtol=1e-5,
                                   atol=1e-6)
