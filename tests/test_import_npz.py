"""`corticalrnn import-npz`: the thesis .npz layout imports with exactly the original counts."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from corticalrnn.atomic import temporary_name as tmp_path_for
from corticalrnn.cli import main
from corticalrnn.errors import CorticalRNNError, DataMismatchError
from corticalrnn.import_npz import ImportConfig, import_npz
from corticalrnn.store import open_store

SHEETS = {"X_ON": 6, "V1_Exc_L4": 9, "V1_Inh_L23": 4}  # thesis spelling on disk


def make_folder(root: Path, n_bins: int = 35, seed: int = 0) -> dict:
    """train: images 1..3 one trial; test: images 7, 8 with trials 0..2. Returns the dense truth."""
    rng = np.random.default_rng(seed)
    truth = {}
    for split, keys in {
        "train": [(i, None) for i in (1, 2, 3)],
        "test": [(i, t) for i in (7, 8) for t in range(3)],
    }.items():
        for sheet, n in SHEETS.items():
            d = root / split / sheet
            d.mkdir(parents=True, exist_ok=True)
            for img, trial in keys:
                counts = rng.poisson(0.3, (n, n_bins)).astype(np.uint64)
                name = f"spikes_{img}.npz" if trial is None else f"spikes_trial_{trial}_{img}.npz"
                sp.save_npz(d / name, sp.csr_matrix(counts))
                truth[(split, sheet, img, trial or 0)] = counts
    (root / "neuron_ids").mkdir()
    for k, (sheet, n) in enumerate(SHEETS.items()):
        np.save(root / "neuron_ids" / f"neuron_ids_{sheet}_300050.npy", np.arange(n) + 1000 * k)
    pos = {}
    for sheet in ("V1_Exc_L4", "V1_Inh_L23"):
        n = SHEETS[sheet]
        for c in ("x", "y", "ori"):
            pos[f"{sheet}.{c}"] = rng.random(n)
    pos["V1_Exc_L4.phase"] = rng.random(SHEETS["V1_Exc_L4"])
    np.savez(root / "pos_ori_phase_dictionary.npz", **pos)
    return {"truth": truth, "pos": pos}


def test_generated_folder(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "in")
    st = open_store(import_npz(tmp_path / "in", tmp_path / "s.zarr", ImportConfig(progress=False)))
    assert st.sheets == ["X_ON", "V1_Exc_L4", "V1_Inh_L2/3"]
    assert (st.bin_ms, st.n_bins) == (20, 35) and st.window_def["bin_ms_inferred"] is True
    t = st.windows
    assert t.split.tolist() == ["test"] * 6 + ["train"] * 3  # splits sorted by name
    assert t.image_id.tolist() == [7, 7, 7, 8, 8, 8, 1, 2, 3]
    assert t.trial.tolist() == [0, 1, 2, 0, 1, 2, 0, 0, 0]
    for w in range(len(st)):
        for sheet in SHEETS:
            want = src["truth"][(t.split[w], sheet, int(t.image_id[w]), int(t.trial[w]))]
            assert np.array_equal(st.read(sheet, [w])[0].T, want)
    assert np.array_equal(st.neuron_ids("V1_Inh_L2/3"), np.arange(4) + 2000)
    pos = st.positions("V1_Exc_L4")
    assert np.array_equal(pos, np.column_stack([src["pos"]["V1_Exc_L4.x"], src["pos"]["V1_Exc_L4.y"]]))
    assert np.array_equal(st.neuron_property("V1_Exc_L4", "phase"), src["pos"]["V1_Exc_L4.phase"])
    assert st.neuron_property("V1_Inh_L2/3", "phase") is None and st.positions("X_ON") is None
    assert {s["kind"] for s in st.sources} == {"npz-folder"} and all(
        len(s["sha256"]) == 64 for s in st.sources
    )


def test_bin_size_given_and_inferred(tmp_path: Path) -> None:
    make_folder(tmp_path / "in", n_bins=142)
    assert (
        open_store(import_npz(tmp_path / "in", tmp_path / "a.zarr", ImportConfig(progress=False))).bin_ms == 5
    )
    st = open_store(import_npz(tmp_path / "in", tmp_path / "b.zarr", ImportConfig(bin_ms=4, progress=False)))
    assert st.bin_ms == 4 and st.window_def["length_ms"] == 568 and st.window_def["bin_ms_inferred"] is False
    with pytest.raises(CorticalRNNError, match="positive integer"):
        import_npz(tmp_path / "in", tmp_path / "c.zarr", ImportConfig(bin_ms=0, progress=False))


def _expect_failure(tmp_path: Path, match: str) -> None:
    out = tmp_path / "s.zarr"
    with pytest.raises(DataMismatchError, match=match):
        import_npz(tmp_path / "in", out, ImportConfig(progress=False))
    assert not out.exists() and not tmp_path_for(out).exists()


def test_missing_sheet(tmp_path: Path) -> None:
    make_folder(tmp_path / "in")
    shutil.rmtree(tmp_path / "in" / "test" / "V1_Exc_L4")
    _expect_failure(tmp_path, r"test: sheet V1_Exc_L4 is missing")


def test_missing_file(tmp_path: Path) -> None:
    make_folder(tmp_path / "in")
    (tmp_path / "in" / "test" / "X_ON" / "spikes_trial_1_8.npz").unlink()
    _expect_failure(tmp_path, r"image 8 trial 1 exists for V1_Exc_L4 but its file is missing for X_ON")


def test_mismatched_shapes(tmp_path: Path) -> None:
    make_folder(tmp_path / "in")
    sp.save_npz(tmp_path / "in" / "train" / "V1_Exc_L4" / "spikes_2.npz", sp.csr_matrix(np.ones((9, 34))))
    _expect_failure(tmp_path, r"spikes_2\.npz: matrix is 9 x 34, expected 9 neurons")
    make_folder(tmp_path / "in2")
    np.save(tmp_path / "in2" / "neuron_ids" / "neuron_ids_X_ON_300050.npy", np.arange(5))
    shutil.rmtree(tmp_path / "in")
    (tmp_path / "in2").rename(tmp_path / "in")
    _expect_failure(tmp_path, r"matrix is 6 x 35, expected 5 neurons")


def test_bad_counts_and_ids(tmp_path: Path) -> None:
    make_folder(tmp_path / "in")
    sp.save_npz(tmp_path / "in" / "train" / "X_ON" / "spikes_1.npz", sp.csr_matrix(np.full((6, 35), 0.5)))
    _expect_failure(tmp_path, "non-negative integers")
    shutil.rmtree(tmp_path / "in")
    make_folder(tmp_path / "in")
    (tmp_path / "in" / "neuron_ids" / "neuron_ids_V1_Inh_L23_300050.npy").unlink()
    _expect_failure(tmp_path, "no neuron_ids_V1_Inh_L23_")


def test_cli_rerun_is_noop_other_contents_refused(tmp_path: Path, capsys) -> None:
    make_folder(tmp_path / "in")
    out = tmp_path / "s.zarr"
    assert main(["import-npz", str(tmp_path / "in"), "-o", str(out), "--no-progress"]) == 0
    assert "9 windows (test: 6, train: 3)" in capsys.readouterr().out
    before = (out / "zarr.json").read_bytes()
    assert main(["import-npz", str(tmp_path / "in"), "-o", str(out), "--no-progress"]) == 0
    assert "9 windows (test: 6, train: 3)" in capsys.readouterr().out
    assert (out / "zarr.json").read_bytes() == before  # untouched
    make_folder(tmp_path / "other", seed=5)  # other counts: not a rerun
    assert main(["import-npz", str(tmp_path / "other"), "-o", str(out), "--no-progress"]) == 1
    assert "already exists" in capsys.readouterr().err


@pytest.fixture(scope="module")
def v1_store(shared_data: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("v1") / "v1.zarr"
    return import_npz(shared_data / "v1_sample", out, ImportConfig(progress=False))


def test_v1_sample_reproduces_npz_counts(shared_data: Path, v1_store: Path) -> None:
    root = shared_data / "v1_sample"
    st = open_store(v1_store)
    assert (st.bin_ms, st.n_bins, len(st)) == (20, 35, 110)
    assert st.sheets == ["X_ON", "X_OFF", "V1_Exc_L4", "V1_Inh_L4", "V1_Exc_L2/3", "V1_Inh_L2/3"]
    t = st.windows
    n_files = 0
    for w in range(len(st)):
        packed = st.read_packed([w])
        split, img, trial = t.split[w], int(t.image_id[w]), int(t.trial[w])
        for sheet in st.sheets:
            folder = root / split / sheet.replace("L2/3", "L23")
            name = f"spikes_{img}.npz" if split == "train" else f"spikes_trial_{trial}_{img}.npz"
            want = sp.load_npz(folder / name).tocsr()
            want.sum_duplicates()
            want.eliminate_zeros()
            ev = st.sparse(sheet, [w], packed=packed)  # events sorted by (neuron, bin)
            got = sp.csr_matrix((ev.count, (ev.column, ev.bin)), shape=want.shape)
            assert np.array_equal(got.indptr, want.indptr), (split, sheet, img, trial)
            assert np.array_equal(got.indices, want.indices) and np.array_equal(got.data, want.data)
            n_files += 1
    assert n_files == 660
    ids = np.load(root / "neuron_ids" / "neuron_ids_V1_Exc_L23_300050.npy")
    assert np.array_equal(st.neuron_ids("V1_Exc_L2/3"), ids)
    pos = np.load(root / "pos_ori_phase_dictionary.npz")
    assert np.array_equal(st.neuron_property("V1_Exc_L4", "ori"), pos["V1_Exc_L4.ori"])
    assert np.array_equal(st.positions("V1_Inh_L2/3")[:, 1], pos["V1_Inh_L23.y"])
