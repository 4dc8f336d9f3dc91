"""corticalrnn.subsets: selection methods, id mapping, files, image splits, thesis import, CLI."""

from __future__ import annotations

import json
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from corticalrnn import subsets as S
from corticalrnn.cli import main as cli_main
from corticalrnn.errors import CorticalRNNError, DataMismatchError, SchemaError
from corticalrnn.sheets import ALL_SHEETS, V1_SHEETS

SIZES = {"X_ON": 50, "X_OFF": 50, "V1_Exc_L4": 400, "V1_Inh_L4": 100, "V1_Exc_L2/3": 400, "V1_Inh_L2/3": 100}


def make_table(seed: int = 0, sizes: dict[str, int] = SIZES, thesis_names: bool = False) -> dict:
    """Mapping sheet -> (ids, positions); ids shuffled, disjoint between sheets, positions in mm."""
    rng = np.random.default_rng(seed)
    table = {}
    for i, (sheet, n) in enumerate(sizes.items()):
        ids = rng.permutation(np.arange(n)) + 1000 * (i + 1)
        pos = rng.uniform(-2.0, 2.0, size=(n, 2))
        table[sheet.replace("L2/3", "L23") if thesis_names else sheet] = (ids, pos)
    return table


class FakeStore:
    """The part of the WindowStore API that subsets use."""

    def __init__(self, table: dict, path: str = "/data/fake.zarr", positions: bool = True) -> None:
        self.table = table
        self.path = path
        self.has_positions = positions
        self.windows = {
            "image_id": np.array([1, 1, 2, 3, 4, 5, 9, 9, 9]),
            "trial": np.array([0, 1, 0, 0, 0, 0, 0, 1, 2]),
        }

    @property
    def sheets(self) -> list[str]:
        return list(self.table)

    def neuron_ids(self, sheet: str) -> np.ndarray:
        return self.table[sheet][0]

    def positions(self, sheet: str) -> np.ndarray | None:
        return self.table[sheet][1] if self.has_positions else None


# ------------------------------------------------------------------ drawing subsets


def test_random_subset_counts_order_and_determinism() -> None:
    table = make_table()
    cfg = S.SubsetConfig(fraction=0.1, observed=0.25, method="random", seed=3)
    sub = S.make_subset(table, cfg)
    assert list(sub.sheets) == list(ALL_SHEETS)
    assert sub.sizes() == {
        "X_ON": 50,
        "X_OFF": 50,
        "V1_Exc_L4": 40,
        "V1_Inh_L4": 10,
        "V1_Exc_L2/3": 40,
        "V1_Inh_L2/3": 10,
    }
    for sheet in V1_SHEETS:
        part = sub.sheets[sheet]
        assert len(part.observed) == round(0.25 * len(part.modelled))
        assert np.isin(part.observed, part.modelled).all()
        assert np.isin(part.modelled, table[sheet][0]).all()
        assert (np.diff(part.modelled) > 0).all()  # ascending ids: the documented order
    for sheet in ("X_ON", "X_OFF"):  # inputs: all neurons, all "observed" (given)
        assert np.array_equal(sub.sheets[sheet].modelled, np.sort(table[sheet][0]))
    again = S.make_subset(table, cfg)
    other = S.make_subset(table, S.SubsetConfig(fraction=0.1, observed=0.25, seed=4))
    assert all(np.array_equal(again.sheets[s].observed, sub.sheets[s].observed) for s in sub.sheets)
    assert not np.array_equal(other.sheets["V1_Exc_L4"].modelled, sub.sheets["V1_Exc_L4"].modelled)
    # a sheet's draw does not depend on which other sheets are selected
    only = S.make_subset(table, S.SubsetConfig(fraction=0.1, observed=0.25, seed=3, sheets=("V1_Inh_L23",)))
    assert list(only.sheets) == ["V1_Inh_L2/3"]
    assert np.array_equal(only.sheets["V1_Inh_L2/3"].modelled, sub.sheets["V1_Inh_L2/3"].modelled)


def test_v1_vector_order_and_observed_mask() -> None:
    table = make_table()
    sub = S.make_subset(table, S.SubsetConfig(fraction=0.05, observed=0.5, seed=1), name="t")
    ids = sub.v1_ids()
    expected = np.concatenate([sub.sheets[s].modelled for s in V1_SHEETS])
    assert np.array_equal(ids, expected)
    mask = sub.observed_mask()
    assert mask.dtype == bool and mask.shape == ids.shape
    observed = np.concatenate([sub.sheets[s].observed for s in V1_SHEETS])
    assert set(ids[mask]) == set(observed) and mask.sum() == len(observed)
    labels = sub.v1_sheet_labels()
    assert list(dict.fromkeys(labels)) == list(V1_SHEETS)
    assert np.array_equal(
        sub.input_ids(), np.concatenate([sub.sheets["X_ON"].modelled, sub.sheets["X_OFF"].modelled])
    )


def _grid_counts(points: np.ndarray, cells: int) -> np.ndarray:
    ij = np.clip(((points + 2.0) / 4.0 * cells).astype(int), 0, cells - 1)
    return np.bincount(ij[:, 0] * cells + ij[:, 1], minlength=cells * cells)


def _covering_radius(all_points: np.ndarray, chosen: np.ndarray) -> float:
    d = np.sqrt(((all_points[:, None, :] - chosen[None, :, :]) ** 2).sum(-1)).min(axis=1)
    return float(d.max())


def test_spatial_selection_covers_space_more_evenly_than_random() -> None:
    rng = np.random.default_rng(0)
    pos = rng.uniform(-2.0, 2.0, size=(3000, 2))
    k = 100  # 4 per cell of a 5 x 5 grid on average
    var_sp, var_rd, cov_sp, cov_rd = [], [], [], []
    for seed in range(20):
        g = np.random.default_rng(seed)
        sp = S.select_spatial(pos, k, g)
        rd = S.select_random(len(pos), k, g)
        assert len(np.unique(sp)) == k
        var_sp.append(_grid_counts(pos[sp], 5).var())
        var_rd.append(_grid_counts(pos[rd], 5).var())
        cov_sp.append(_covering_radius(pos, pos[sp]))
        cov_rd.append(_covering_radius(pos, pos[rd]))
    # random: binomial variance ~ 4 * (1 - 1/25) = 3.84 per cell
    assert np.mean(var_rd) > 2.5
    assert np.mean(var_sp) < 0.45 * np.mean(var_rd)
    assert np.mean(cov_sp) < 0.8 * np.mean(cov_rd)


def test_spatial_selection_keeps_inclusion_probability_uniform() -> None:
    rng = np.random.default_rng(1)
    pos = rng.uniform(-2.0, 2.0, size=(400, 2))
    hits = np.zeros(400)
    for seed in range(300):
        hits[S.select_spatial(pos, 40, np.random.default_rng(seed))] += 1
    freq = hits / 300
    edge = np.abs(pos).max(axis=1) > 1.6
    assert abs(freq.mean() - 0.1) < 1e-12
    assert abs(freq[edge].mean() - freq[~edge].mean()) < 0.02  # no boundary bias


def test_hilbert_index_is_a_continuous_curve() -> None:
    xs, ys = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    cells = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(float)
    d = S.hilbert_index(cells, order=3)
    assert sorted(d.tolist()) == list(range(64))
    walk = cells[np.argsort(d)]
    steps = np.abs(np.diff(walk, axis=0)).sum(axis=1)
    assert (steps == 1).all()  # consecutive curve positions are neighbouring cells


def test_spatial_needs_positions_and_checks_their_shape() -> None:
    store = FakeStore(make_table(), positions=False)
    with pytest.raises(CorticalRNNError, match="fake.zarr.*positions"):
        S.make_subset(store, S.SubsetConfig(method="spatial"))
    table = make_table()
    table["V1_Exc_L4"] = (table["V1_Exc_L4"][0], table["V1_Exc_L4"][1][:10])
    with pytest.raises(DataMismatchError, match="V1_Exc_L4.*shape"):
        S.make_subset(table, S.SubsetConfig(method="spatial"))
    # spatial modelled + random observed works with positions; spatial observed uses modelled positions
    sub = S.make_subset(FakeStore(make_table()), S.SubsetConfig(method="spatial", observed_method="spatial"))
    assert sub.method == {"modelled": "spatial", "observed": "spatial", "inputs": "random"}


def test_explicit_ids_and_their_errors() -> None:
    table = make_table()
    l4 = table["V1_Exc_L4"][0]
    modelled = {"V1_Exc_L4": l4[:20].tolist(), "V1_Inh_L23": table["V1_Inh_L2/3"][0][:5].tolist()}
    observed = {"V1_Exc_L4": l4[:3].tolist()}
    sub = S.make_subset(
        table,
        S.SubsetConfig(method="explicit", observed_method="explicit"),
        modelled_ids=modelled,
        observed_ids=observed,
    )
    assert set(sub.sheets["V1_Exc_L4"].modelled) == set(l4[:20])
    assert set(sub.sheets["V1_Exc_L4"].observed) == set(l4[:3])
    assert len(sub.sheets["V1_Inh_L2/3"].observed) == 0
    assert len(sub.sheets["V1_Exc_L2/3"].modelled) == 0
    assert sub.fractions["modelled"] is None
    # explicit modelled, random observed
    sub2 = S.make_subset(table, S.SubsetConfig(method="explicit", observed=0.5), modelled_ids=modelled)
    assert len(sub2.sheets["V1_Exc_L4"].observed) == 10
    with pytest.raises(DataMismatchError, match=r"V1_Exc_L4.*missing 1 ids \[5\]"):
        S.make_subset(table, S.SubsetConfig(method="explicit"), modelled_ids={"V1_Exc_L4": [5]})
    with pytest.raises(DataMismatchError, match="not among the modelled"):
        S.make_subset(
            table,
            S.SubsetConfig(method="explicit", observed_method="explicit"),
            modelled_ids=modelled,
            observed_ids={"V1_Exc_L4": [int(l4[30])]},
        )
    with pytest.raises(CorticalRNNError, match="needs modelled_ids"):
        S.make_subset(table, S.SubsetConfig(method="explicit"))
    with pytest.raises(CorticalRNNError, match="method is 'random'"):
        S.make_subset(table, S.SubsetConfig(method="random"), modelled_ids=modelled)
    with pytest.raises(CorticalRNNError, match="observed method is 'random'"):
        S.make_subset(table, S.SubsetConfig(method="explicit"), modelled_ids=modelled, observed_ids=observed)
    x_on = table["X_ON"][0][:4].tolist()
    inputs = S.make_subset(
        table,
        S.SubsetConfig(method="explicit", input_method="explicit"),
        modelled_ids={**modelled, "X_ON": x_on},
    )
    assert set(inputs.sheets["X_ON"].modelled) == set(x_on) and len(inputs.sheets["X_OFF"].modelled) == 0
    with pytest.raises(CorticalRNNError, match="unknown method"):
        S.SubsetConfig(method="grid")
    with pytest.raises(CorticalRNNError, match="fraction"):
        S.SubsetConfig(fraction=1.5)


def test_subset_of_inputs() -> None:
    sub = S.make_subset(make_table(), S.SubsetConfig(input_fraction=0.2, input_method="spatial"))
    assert sub.sizes()["X_ON"] == 10 and sub.sizes()["X_OFF"] == 10
    assert np.array_equal(sub.sheets["X_ON"].modelled, sub.sheets["X_ON"].observed)


# ------------------------------------------------------------------ mapping to a store


def test_indices_map_ids_to_rows_of_any_store() -> None:
    table = make_table(seed=0)
    sub = S.make_subset(table, S.SubsetConfig(fraction=0.2, observed=0.3, seed=2))
    # another store of the same model with neurons in another order and extra neurons
    rng = np.random.default_rng(9)
    other = {}
    for sheet, (ids, _pos) in table.items():
        ids2 = rng.permutation(np.concatenate([ids, ids.max() + 1 + np.arange(7)]))
        other[sheet] = (ids2, None)
    for source in (other, FakeStore(other)):
        rows = sub.indices(source)
        obs = sub.indices(source, which="observed")
        hid = sub.indices(source, which="hidden")
        for sheet, part in sub.sheets.items():
            assert np.array_equal(other[sheet][0][rows[sheet]], part.modelled)
            assert np.array_equal(other[sheet][0][obs[sheet]], part.observed)
            assert len(hid[sheet]) == len(part.modelled) - len(part.observed)


def test_indices_name_the_store_and_missing_ids() -> None:
    table = make_table()
    sub = S.make_subset(table, S.SubsetConfig(fraction=0.5, seed=0))
    wanted = sub.sheets["V1_Inh_L4"].modelled
    smaller = dict(table)
    keep = ~np.isin(table["V1_Inh_L4"][0], wanted[:2])
    smaller["V1_Inh_L4"] = (table["V1_Inh_L4"][0][keep], None)
    with pytest.raises(DataMismatchError) as err:
        sub.indices(FakeStore(smaller, path="/data/run7.zarr"))
    msg = str(err.value)
    assert "/data/run7.zarr" in msg and "V1_Inh_L4" in msg and "lacks 2" in msg
    assert str(int(wanted[0])) in msg and str(int(wanted[1])) in msg
    smaller["V1_Inh_L4"] = table["V1_Inh_L4"]
    del smaller["V1_Exc_L2/3"]
    with pytest.raises(DataMismatchError, match="run7.zarr: has no sheet 'V1_Exc_L2/3'"):
        sub.indices(FakeStore(smaller, path="/data/run7.zarr"))


def test_thesis_sheet_spelling_in_mapping_and_positions() -> None:
    table = make_table(thesis_names=True)
    sub = S.make_subset(table, S.SubsetConfig(method="spatial", fraction=0.1, seed=0))
    assert "V1_Exc_L2/3" in sub.sheets
    pos = sub.positions(table)
    rows = sub.indices(table)
    assert np.array_equal(pos["V1_Exc_L2/3"], table["V1_Exc_L23"][1][rows["V1_Exc_L2/3"]])


# ------------------------------------------------------------------ files


def test_save_load_roundtrip(tmp_path: Path) -> None:
    sub = S.make_subset(
        FakeStore(make_table()), S.SubsetConfig(fraction=0.1, observed=0.2, seed=5, method="spatial")
    )
    path = sub.save(tmp_path / "sub" / "subset.json")
    assert not list(path.parent.glob("*.tmp"))
    assert len(path.read_text().splitlines()) < 60  # id lists on one line each (not one id per line)
    doc = json.loads(path.read_text())
    assert doc["schema"] == "corticalrnn.subset" and doc["schema_version"] == 1
    assert doc["seed"] == 5 and doc["method"]["modelled"] == "spatial"
    assert doc["fractions"] == {"modelled": 0.1, "observed": 0.2, "inputs": 1.0}
    assert doc["info"]["source"] == "/data/fake.zarr"
    back = S.NeuronSubset.load(path)
    assert back.seed == 5 and back.method == sub.method and back.fractions == sub.fractions
    for sheet in sub.sheets:
        assert np.array_equal(back.sheets[sheet].modelled, sub.sheets[sheet].modelled)
        assert np.array_equal(back.sheets[sheet].observed, sub.sheets[sheet].observed)
    assert np.array_equal(back.observed_mask(), sub.observed_mask())
    assert back.sheets == sub.sheets and back.sheets["V1_Exc_L4"] != back.sheets["V1_Inh_L4"]


def test_failed_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sub = S.make_subset(make_table(), S.SubsetConfig())
    target = tmp_path / "subset.json"
    target.write_text("old")

    def boom(*args, **kwargs):
        assert (tmp_path / "subset.json.tmp").exists()  # fails after the temporary file is written
        raise OSError("disk full")

    monkeypatch.setattr(S.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        sub.save(target)
    assert target.read_text() == "old"
    assert not list(tmp_path.glob("*.tmp"))


def test_load_rejects_bad_files(tmp_path: Path) -> None:
    sub = S.make_subset(make_table(), S.SubsetConfig())
    doc = sub.to_json_dict()
    cases = {
        "version.json": dict(doc, schema_version=2),
        "schema.json": dict(doc, schema="corticalrnn.image_split"),
        "malformed.json": dict(doc, sheets={"V1_Exc_L4": {"modelled": [1, 2]}}),
        "subset_violation.json": dict(doc, sheets={"V1_Exc_L4": {"modelled": [1, 2], "observed": [3]}}),
        "badsheet.json": dict(doc, sheets={"V1_Exc_L5": {"modelled": [1], "observed": []}}),
    }
    for name, content in cases.items():
        (tmp_path / name).write_text(json.dumps(content))
        with pytest.raises(SchemaError, match=name):
            S.NeuronSubset.load(tmp_path / name)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(SchemaError, match="broken.json: not valid JSON"):
        S.NeuronSubset.load(tmp_path / "broken.json")
    with pytest.raises(CorticalRNNError, match="no such file"):
        S.NeuronSubset.load(tmp_path / "absent.json")


# ------------------------------------------------------------------ image splits


def test_image_split_random_and_repeats(tmp_path: Path) -> None:
    images = np.repeat(np.arange(100, 140), 2)
    split = S.make_image_split(images, validation=0.25, test=0.2, seed=1)
    assert (len(split.train), len(split.validation), len(split.test)) == (24, 8, 8)
    assert set(split.train) | set(split.validation) | set(split.test) == set(range(100, 140))
    assert np.array_equal(S.make_image_split(images, validation=0.25, test=0.2, seed=1).test, split.test)
    store = FakeStore(make_table())
    rep = S.make_image_split(
        store.windows["image_id"], trials=store.windows["trial"], validation=0.25, test="repeats"
    )
    assert rep.test.tolist() == [1, 9] and rep.method == "repeats"
    assert len(rep.validation) == 1 and len(rep.train) == 3
    assert list(rep.part_of([1, 2, 3, 4, 5, 9, 77])).count("test") == 2
    path = rep.save(tmp_path / "split.json")
    back = S.ImageSplit.load(path)
    assert back == rep and back != split
    assert back.method == "repeats" and np.array_equal(back.train, rep.train)
    assert np.array_equal(back.validation, rep.validation) and np.array_equal(back.test, rep.test)
    doc = json.loads(path.read_text())
    assert doc["schema"] == "corticalrnn.image_split" and doc["schema_version"] == 1
    (tmp_path / "v9.json").write_text(json.dumps(dict(doc, schema_version=9)))
    with pytest.raises(SchemaError, match="v9.json"):
        S.ImageSplit.load(tmp_path / "v9.json")


def test_image_split_errors() -> None:
    with pytest.raises(CorticalRNNError, match="train and test share"):
        S.ImageSplit(train=[1, 2], validation=[], test=[2])
    with pytest.raises(CorticalRNNError, match="needs the trial"):
        S.make_image_split([1, 2], test="repeats")
    with pytest.raises(CorticalRNNError, match="fraction or 'repeats'"):
        S.make_image_split([1, 2], test="later")


# ------------------------------------------------------------------ thesis pickles


def _dump(path: Path, obj: object, protocol: int = pickle.HIGHEST_PROTOCOL) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def test_thesis_dict_pickles_relative_to_sheet(tmp_path: Path) -> None:
    table = make_table()
    ids = {s.replace("L2/3", "L23"): v[0] for s, v in table.items()}
    rng = np.random.default_rng(0)
    model = {s: np.sort(rng.choice(len(v), 40, replace=False)) for s, v in ids.items() if s.startswith("V1")}
    visible = {s: rng.choice(m, 4, replace=False) for s, m in model.items()}
    # protocol 2 exercises numpy's older reduce path (_codecs.encode)
    mp = _dump(tmp_path / "model_subsets" / "subset_10.pkl", model, protocol=2)
    vp = _dump(tmp_path / "visible_neurons" / "visible_10.pkl", visible)
    sub = S.subset_from_thesis([mp], [vp], ids)
    for sheet in V1_SHEETS:
        fname = sheet.replace("L2/3", "L23")
        assert set(sub.sheets[sheet].modelled) == set(ids[fname][model[fname]])
        assert set(sub.sheets[sheet].observed) == set(ids[fname][visible[fname]])
    assert np.array_equal(sub.sheets["X_ON"].modelled, np.sort(ids["X_ON"]))
    assert sub.info["visible_relative_to"]["V1_Exc_L4"] == "sheet"
    sub.save(tmp_path / "imported.json")  # and it is a normal subset
    assert S.NeuronSubset.load(tmp_path / "imported.json").sizes() == sub.sizes()


def test_thesis_per_sheet_lists_relative_to_model(tmp_path: Path) -> None:
    table = make_table()
    ids = {s: v[0] for s, v in table.items()}
    models, visibles = [], []
    rng = np.random.default_rng(1)
    expected = {}
    for sheet in V1_SHEETS:
        fname = sheet.replace("L2/3", "L23")
        m = sorted(rng.choice(len(ids[sheet]), 30, replace=False).tolist())  # a plain list
        v = np.array([0, 1, 2, 29])  # positions inside the model subset
        models.append(_dump(tmp_path / f"model_subsets/{fname}_0.1.pkl", m))
        visibles.append(_dump(tmp_path / f"visible_neurons/{fname}_0.1.pkl", v))
        expected[sheet] = (ids[sheet][m], ids[sheet][np.array(m)[v]])
    sub = S.subset_from_thesis(models, visibles, ids, include_inputs=False)
    assert sub.input_sheets == []
    for sheet, (mod, obs) in expected.items():
        assert set(sub.sheets[sheet].modelled) == set(mod)
        assert set(sub.sheets[sheet].observed) == set(obs)
        assert sub.info["visible_relative_to"][sheet] == "model"


def test_thesis_ambiguous_and_bad_pickles(tmp_path: Path) -> None:
    ids = {"V1_Exc_L4": np.arange(100, 200)}
    mp = _dump(tmp_path / "m.pkl", {"V1_Exc_L4": np.arange(10)})
    vp = _dump(tmp_path / "v.pkl", {"V1_Exc_L4": np.array([1, 2])})
    with pytest.raises(DataMismatchError, match="v.pkl.*fit both"):
        S.subset_from_thesis([mp], [vp], ids)
    sub = S.subset_from_thesis([mp], [vp], ids, visible_relative_to="model")
    assert sub.sheets["V1_Exc_L4"].observed.tolist() == [101, 102]
    bad_range = _dump(tmp_path / "m2.pkl", {"V1_Exc_L4": np.array([5, 100])})
    with pytest.raises(DataMismatchError, match="m2.pkl.*out of range"):
        S.subset_from_thesis([bad_range], [vp], ids)
    as_ids = _dump(tmp_path / "m_ids.pkl", {"V1_Exc_L4": np.array([150, 151])})
    with pytest.raises(DataMismatchError, match="m_ids.pkl.*seems to hold ids, not row indices"):
        S.subset_from_thesis([as_ids], [vp], ids)
    nameless = _dump(tmp_path / "indices.pkl", [1, 2, 3])
    with pytest.raises(SchemaError, match="indices.pkl.*names no single sheet"):
        S.subset_from_thesis([nameless], [vp], ids)
    no_ids = _dump(tmp_path / "m3.pkl", {"V1_Inh_L4": np.arange(3)})
    with pytest.raises(DataMismatchError, match="m3.pkl: no neuron ids given for sheet 'V1_Inh_L4'"):
        S.subset_from_thesis([no_ids], [_dump(tmp_path / "v3.pkl", {"V1_Inh_L4": [0]})], ids)
    with pytest.raises(DataMismatchError, match="v.pkl: visible neurons of 'V1_Exc_L4' but no model subset"):
        S.subset_from_thesis([no_ids], [vp], ids)


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path(_Evil.target),))


def test_thesis_pickle_loader_executes_nothing(tmp_path: Path) -> None:
    _Evil.target = str(tmp_path / "pwned")
    evil = _dump(tmp_path / "model_subsets" / "V1_Exc_L4.pkl", {"V1_Exc_L4": _Evil()})
    with pytest.raises(CorticalRNNError, match=r"V1_Exc_L4.pkl.*forbidden global pathlib"):
        S.load_index_pickle(evil)
    assert not (tmp_path / "pwned").exists()
    assert (
        S.load_index_pickle(_dump(tmp_path / "ok.pkl", {"a": np.arange(3, dtype=np.int32)}))["a"].sum() == 3
    )


def test_read_neuron_id_dir(tmp_path: Path) -> None:
    d = tmp_path / "neuron_ids"
    d.mkdir()
    np.save(d / "neuron_ids_V1_Exc_L23_300050.npy", np.arange(5))
    np.save(d / "neuron_ids_X_ON_300050.npy", np.arange(10, 13))
    np.save(d / "neuron_ids_X_OFF_300050.npy", np.arange(20, 23))
    got = S.read_neuron_id_dir(d)
    assert set(got) == {"V1_Exc_L2/3", "X_ON", "X_OFF"}
    assert got["X_OFF"].tolist() == [20, 21, 22]
    np.save(d / "neuron_ids_X_ON_99.npy", np.arange(3))
    with pytest.raises(DataMismatchError, match="disagree on X_ON"):
        S.read_neuron_id_dir(d)


# ------------------------------------------------------------------ CLI


def test_cli_from_thesis(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "neuron_ids"
    d.mkdir()
    table = make_table()
    for sheet, (ids, _) in table.items():
        np.save(d / f"neuron_ids_{sheet.replace('L2/3', 'L23')}_300050.npy", ids)
    mp = _dump(tmp_path / "model.pkl", {"V1_Exc_L23": np.arange(0, 200, 2), "V1_Inh_L4": np.arange(50)})
    vp = _dump(
        tmp_path / "visible.pkl", {"V1_Exc_L23": np.arange(0, 200, 20), "V1_Inh_L4": np.arange(0, 50, 5)}
    )
    out = tmp_path / "subset.json"
    rc = cli_main(["subset", "-o", str(out), "--from-thesis", str(mp), str(vp), "--neuron-ids", str(d)])
    assert rc == 1  # model.pkl's V1_Inh_L4 rows 0..49 also read as positions 0..49 of the model
    assert "fit both" in capsys.readouterr().err
    args = ["subset", "-o", str(out), "--from-thesis", str(mp), str(vp), "--neuron-ids", str(d)]
    rc = cli_main([*args, "--visible-relative", "sheet"])
    assert rc == 0
    sub = S.NeuronSubset.load(out)
    assert sub.sizes()["V1_Exc_L2/3"] == 100 and len(sub.sheets["V1_Inh_L4"].observed) == 10
    assert "V1_Exc_L2/3" in capsys.readouterr().out
    rc = cli_main(
        [
            "subset",
            "-o",
            str(out),
            "--from-thesis",
            str(mp),
            str(tmp_path / "nope.pkl"),
            "--neuron-ids",
            str(d),
        ]
    )
    assert rc == 1
    assert "nope.pkl: file is missing" in capsys.readouterr().err


@pytest.fixture
def fake_store_module(monkeypatch: pytest.MonkeyPatch) -> dict[str, FakeStore]:
    """Stand-in ``corticalrnn.store`` so the CLI can be tested on its own."""
    stores: dict[str, FakeStore] = {}
    mod = types.ModuleType("corticalrnn.store")
    mod.open_store = lambda path: stores[str(path)]
    monkeypatch.setitem(sys.modules, "corticalrnn.store", mod)
    return stores


def test_cli_from_store_with_split(tmp_path: Path, fake_store_module: dict[str, FakeStore]) -> None:
    fake_store_module["S.zarr"] = FakeStore(make_table(), path="S.zarr")
    out, split = tmp_path / "s.json", tmp_path / "split.json"
    rc = cli_main(
        [
            "subset",
            "S.zarr",
            "-o",
            str(out),
            "--fraction",
            "0.1",
            "--observed",
            "0.1",
            "--method",
            "spatial",
            "--seed",
            "0",
            "--split",
            str(split),
        ]
    )
    assert rc == 0
    sub = S.NeuronSubset.load(out)
    assert sub.method["modelled"] == "spatial" and sub.sizes()["V1_Exc_L4"] == 40
    assert len(sub.sheets["V1_Exc_L4"].observed) == 4
    assert S.ImageSplit.load(split).test.tolist() == [1, 9]
    ids_json = tmp_path / "ids.json"
    ids_json.write_text(json.dumps({"V1_Exc_L4": [int(i) for i in sub.sheets["V1_Exc_L4"].modelled[:2]]}))
    rc = cli_main(
        [
            "subset",
            "S.zarr",
            "-o",
            str(out),
            "--method",
            "explicit",
            "--modelled-ids",
            str(ids_json),
            "--observed",
            "0.5",
        ]
    )
    assert rc == 0 and S.NeuronSubset.load(out).sizes()["V1_Exc_L4"] == 2
    assert cli_main(["subset", "-o", str(out)]) == 1  # neither store nor thesis files


def _write_real_store(path: Path) -> Path:
    """A tiny real store (no spikes): train images 1-3 (one trial), test images 7-8 (three trials)."""
    from corticalrnn.binning import BinnedCSR
    from corticalrnn.store import SheetMeta, StoreMeta, StoreWriter, WindowBlock

    table = make_table(seed=3)
    meta = StoreMeta(10, 4, {"origin": "test"}, [SheetMeta(s, ids, pos) for s, (ids, pos) in table.items()])
    w = StoreWriter.create(path, meta)
    src = w.add_source(path="generated", sha256="", kind="test")
    for images, trials, split in (
        ([1, 2, 3], [0, 0, 0], "train"),
        ([7, 7, 7, 8, 8, 8], [0, 1, 2] * 2, "test"),
    ):
        empty = {
            s: BinnedCSR(
                np.zeros(len(images) * len(ids) + 1, np.int64),
                np.zeros(0, np.int32),
                np.zeros(0, np.int32),
                4,
            )
            for s, (ids, _) in table.items()
        }
        w.append(WindowBlock(np.array(images), np.array(trials), empty, split=split), src)
    w.commit()
    return path


def test_cli_with_real_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("zarr")
    from corticalrnn.store import open_store

    path = _write_real_store(tmp_path / "S.zarr")
    out, split = tmp_path / "sub.json", tmp_path / "split.json"
    args = [
        "subset",
        str(path),
        "-o",
        str(out),
        "--fraction",
        "0.1",
        "--observed",
        "0.1",
        "--method",
        "spatial",
        "--seed",
        "0",
        "--split",
        str(split),
        "--validation",
        "0.4",
    ]
    assert cli_main(args) == 0
    sub = S.NeuronSubset.load(out)
    store = open_store(path)
    rows = sub.indices(store)
    for sheet, part in sub.sheets.items():
        assert np.array_equal(store.neuron_ids(sheet)[rows[sheet]], part.modelled)
    assert sub.info["source"] == str(path)
    assert S.ImageSplit.load(split).test.tolist() == [7, 8]
    assert cli_main([*args[:-4], "--split", str(split), "--test", "store"]) == 0
    stored = S.ImageSplit.load(split)
    assert stored.method == "store" and stored.test.tolist() == [7, 8] and len(stored.validation) == 1
    # a subset made on another model's store does not fit this one
    other = {s: (ids + 100_000, pos) for s, (ids, pos) in make_table(seed=3).items()}
    foreign = S.make_subset(other, S.SubsetConfig(fraction=0.1, seed=0))
    with pytest.raises(DataMismatchError, match=f"{path}: sheet 'X_ON': lacks 50"):
        foreign.indices(store)
    assert cli_main(["subset", str(tmp_path / "absent.zarr"), "-o", str(out)]) == 1
    assert "absent.zarr" in capsys.readouterr().err


def test_spatial_subset_of_v1_sample(shared_data: Path) -> None:
    """Real neuron ids and cortical positions of the thesis sample (37,500 L4 E neurons)."""
    root = shared_data / "v1_sample"
    ids = S.read_neuron_id_dir(root / "neuron_ids")
    pos = np.load(root / "pos_ori_phase_dictionary.npz")
    table = {
        sheet: (
            ids[sheet],
            np.stack([pos[f"{sheet.replace('L2/3', 'L23')}.x"], pos[f"{sheet.replace('L2/3', 'L23')}.y"]], 1),
        )
        for sheet in V1_SHEETS
    }
    sub = S.make_subset(table, S.SubsetConfig(fraction=0.1, observed=0.1, method="spatial", seed=0))
    assert sub.sizes() == {"V1_Exc_L4": 3750, "V1_Inh_L4": 938, "V1_Exc_L2/3": 3750, "V1_Inh_L2/3": 938}
    assert len(sub.sheets["V1_Exc_L4"].observed) == 375
    xy = table["V1_Exc_L4"][1]
    lo, hi = xy.min(0), xy.max(0)

    def grid_var(rows: np.ndarray) -> float:
        ij = np.clip(((xy[rows] - lo) / (hi - lo) * 10).astype(int), 0, 9)
        return float(np.bincount(ij[:, 0] * 10 + ij[:, 1], minlength=100).var())

    spatial = sub.indices(table)["V1_Exc_L4"]
    random = S.make_subset(table, S.SubsetConfig(fraction=0.1, seed=0)).indices(table)["V1_Exc_L4"]
    assert grid_var(spatial) < 0.5 * grid_var(random)


def test_mapping_of_plain_id_lists() -> None:
    table = {"V1_Exc_L4": [5, 3, 9, 7], "V1_Inh_L4": np.array([11, 12])}
    sub = S.make_subset(table, S.SubsetConfig(fraction=0.5, observed=0.5, seed=0))
    assert sub.sizes() == {"V1_Exc_L4": 2, "V1_Inh_L4": 1}
    assert set(sub.sheets["V1_Exc_L4"].modelled) <= {3, 5, 7, 9}
    with pytest.raises(CorticalRNNError, match="needs neuron positions"):
        S.make_subset(table, S.SubsetConfig(method="spatial"))
