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


def write_store(path: Path, images: list[int], trials: int, seed: int = 0, sizes: dict | None = None,
                bin_ms: int = BIN_MS, id_offset: int = 0) -> Path:
    sizes = sizes or SIZES
    rng = np.random.default_rng(seed)
    meta = StoreMeta(bin_ms, T, {"origin": "test"}, [
        SheetMeta(s, np.arange(sizes[s]) + 1000 * ALL_SHEETS.index(s) + id_offset,
                  np.random.default_rng(ALL_SHEETS.index(s)).uniform(0, 1, (sizes[s], 2))) for s in sizes])
    w = StoreWriter.create(path, meta)
    src = w.add_source(path=str(path), sha256="", kind="test")
    img_col, tr_col, events = [], [], {s: [] for s in sizes}
    for img in images:
        rates = _rates(img, rng)
        for k in range(trials):
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
                             "train.progress=false", "optim.lr=0.02", "model.teacher.steps=20",
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
    assert res.test.v1.shape == (3, 4, T, len(subset.v1_ids()))
    assert res.prediction.shape == res.test.v1.shape and (res.prediction >= 0).all()
    groups = {(r["population"], r["neurons"], r["predictor"]) for r in res.rows}
    assert ("L4 E", "hidden", "model") in groups and ("L2/3 I", "observed", "baseline") in groups
    assert res.skipped == {}
    rep = json.loads((d / "eval" / "report.json").read_text())
    assert rep["trials_per_image"] == 4 and rep["test_images"] == [200, 201, 202]
    for name in ("raster_psth.png", "hist_trial_avg_r.png", "hist_cc_norm.png", "learning_curves.png"):
        assert (d / "eval" / name).stat().st_size > 1000, name
    print_result(res)
    out = capsys.readouterr().out
    assert "CC_norm" in out and "thesis_CC_abs" in out and "baseline" in out


def test_evaluate_single_trial_store_says_what_is_skipped(trained):
    from corticalrnn.evaluate import evaluate

    d, _, _ = trained
    one = write_store(d / "one.zarr", [300, 301], 1, seed=2)
    res = evaluate(d / "run" / "best.pt", one, None, device="cpu", progress=False)
    assert "cc_norm" in res.skipped and "trials" in res.skipped["cc_norm"]
    assert "oracle_r" in res.skipped and "feve" in res.skipped


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
    cfg = load_config(d / "run" / "config.toml", ["model.neuron_model=mlp"])
    with pytest.raises(CorticalRNNError, match="another architecture.*neuron_model"):
        train(cfg, d / "run2", resume=d / "run" / "last.pt")


def test_cli_train_and_evaluate(trained, tmp_path):
    from corticalrnn.cli import main

    d, _, _ = trained
    rc = main(["train", "--config", str(d / "run" / "config.toml"), "--run-dir", str(tmp_path / "r"),
               "--set", "train.max_steps=3", "--set", "train.eval_every=3"])
    assert rc == 0 and (tmp_path / "r" / "best.pt").exists()
    rc = main(["evaluate", str(tmp_path / "r" / "best.pt"), str(d / "test.zarr"), "--out",
               str(tmp_path / "e"), "--device", "cpu", "--no-figures"])
    assert rc == 0 and (tmp_path / "e" / "report.json").exists()
    assert main(["train", "--run-dir", str(tmp_path / "r"), "--set", "optim.lrr=1"]) == 1
