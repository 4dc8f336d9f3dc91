"""Messages for common mistakes name the problem and the fix (issue 16's list)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from corticalrnn.cli import main
from corticalrnn.errors import CorticalRNNError, DataMismatchError, SchemaError


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    from test_evaluate import write_store

    from corticalrnn.store import open_store
    from corticalrnn.subsets import SubsetConfig, make_subset

    d = tmp_path_factory.mktemp("msg")
    a = open_store(write_store(d / "a.zarr", [1, 2], 1))
    b20 = open_store(write_store(d / "b20.zarr", [1, 2], 1, bin_ms=20))
    subset = make_subset(a, SubsetConfig(fraction=1.0, observed=0.5, method="random"))
    return d, a, b20, subset


def test_evaluate_with_store_and_checkpoint_swapped(stores, capsys) -> None:
    d, a, _, _ = stores
    run = d / "run"
    run.mkdir(exist_ok=True)
    (run / "best.pt").write_bytes(b"")
    assert main(["evaluate", str(a.path), str(run / "best.pt"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert f"{a.path}: a Zarr store, not a checkpoint; the checkpoint comes first" in err
    assert "checkpoint file not found" not in err


def test_run_folder_given_as_checkpoint_suggests_best_pt(tmp_path) -> None:
    from corticalrnn.train.checkpoint import load_checkpoint

    (tmp_path / "best.pt").write_bytes(b"")
    with pytest.raises(SchemaError, match=r"a run folder, not a checkpoint; give .*best\.pt"):
        load_checkpoint(tmp_path)
    with pytest.raises(SchemaError, match="checkpoint file not found; .*best.pt exists"):
        load_checkpoint(tmp_path / "bset.pt")


def test_trim_given_a_datastore_folder_says_run_extract_first(tmp_path, capsys) -> None:
    ds = tmp_path / "train_0"
    ds.mkdir()
    (ds / "datastore.recordings.pickle").write_bytes(b"")
    assert main(["trim", str(ds), "-o", str(tmp_path / "s.zarr"), "--bin-ms", "10"]) == 1
    err = capsys.readouterr().err
    assert "a Mozaik datastore, not an extracted spike file; run extract first" in err
    assert f"corticalrnn extract {ds} -o" in err


def test_bin_size_mismatch_names_the_trim_command(stores) -> None:
    from corticalrnn.train.spec import check_store_fits

    _, a, b20, subset = stores
    spec = {"bin_ms": 10.0, "positions": None}
    check_store_fits(spec, subset, a, "run/best.pt")
    with pytest.raises(DataMismatchError, match=r"trained on 10 ms bins; .*corticalrnn trim SPIKES/\*\.h5 "
                                                r"-o STORE_10ms\.zarr --bin-ms 10"):
        check_store_fits(spec, subset, b20, "run/best.pt")


def test_config_bin_size_mismatch_names_the_trim_command() -> None:
    from corticalrnn.train.config import load_config
    from corticalrnn.train.setup import model_config

    with pytest.raises(DataMismatchError, match="--bin-ms 5"):
        model_config(load_config(None, ["model.bin_ms=5"]), 20, "fp32")


def test_same_ids_other_positions_is_another_network(stores) -> None:
    from corticalrnn.train.spec import check_store_fits

    _, a, _, subset = stores
    pos = {s: torch.as_tensor(np.asarray(p)) for s, p in subset.positions(a).items() if p is not None}
    check_store_fits({"bin_ms": 10.0, "positions": pos}, subset, a, "ck.pt")
    moved = dict(pos)
    moved["V1_Exc_L4"] = pos["V1_Exc_L4"] + 0.05
    with pytest.raises(DataMismatchError, match=r"neuron ids match ck\.pt but the positions of 16 of 16 "
                                                r"V1_Exc_L4 neurons differ .* another network"):
        check_store_fits({"bin_ms": 10.0, "positions": moved}, subset, a, "ck.pt")


def test_config_errors_name_only_the_overrides_given(tmp_path) -> None:
    from corticalrnn.train.config import load_config

    cfg = tmp_path / "c.toml"
    cfg.write_text("[train]\nmax_step = 3\n")
    with pytest.raises(CorticalRNNError) as err:
        load_config(cfg, [])
    assert "overrides" not in str(err.value) and "with " not in str(err.value)
    with pytest.raises(CorticalRNNError) as err:
        load_config(cfg, ["optim.lr=0.1"])
    assert "(with optim.lr=0.1)" in str(err.value)
