"""`bench eval`'s synthetic store: the numpy CSR equals scipy's, and parallel drawing is reproducible."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from corticalrnn.bench.evaluate import _block_events, build_store
from corticalrnn.store import open_store


def test_block_events_csr_equals_scipy():
    lam = {"X_ON": np.array([0.0, 0.3, 2.0]), "V1_Exc_L4": np.array([0.5, 0.05])}
    ev = _block_events(lam, 4, 6, np.random.default_rng(0))
    again = np.random.default_rng(0)
    for s, rates in lam.items():
        counts = again.poisson(np.broadcast_to(rates[None, :, None], (4, rates.size, 6))).reshape(-1, 6)
        m = sp.csr_matrix(counts)
        np.testing.assert_array_equal(ev[s].indptr, m.indptr)
        np.testing.assert_array_equal(ev[s].bins, m.indices)
        np.testing.assert_array_equal(ev[s].counts, m.data)


def test_parallel_store_is_reproducible(tmp_path):
    sizes = {"X_ON": 5, "X_OFF": 5, "V1_Exc_L4": 6, "V1_Inh_L4": 2, "V1_Exc_L2/3": 6, "V1_Inh_L2/3": 2}
    stores = [open_store(build_store(tmp_path / f"s{k}.zarr", sizes, 3, 40, 2, 20, 4.5, workers=2))
              for k in range(2)]
    assert len(stores[0]) == 3 + 40 * 2
    w = np.arange(len(stores[0]))
    for s in sizes:
        a, b = stores[0].sparse(s, w, np.arange(sizes[s])), stores[1].sparse(s, w, np.arange(sizes[s]))
        for field in ("window", "bin", "column", "count"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert (np.asarray(stores[0].windows.split) == "test").sum() == 80


def test_local_checkpoint_is_sparse_and_evaluates(tmp_path):
    """``bench eval --model local``: the store carries positions and identity, the checkpoint's model
    stores its recurrent and input weights sparse, reloads to the same outputs and evaluates."""
    import torch

    from corticalrnn.bench.evaluate import build_checkpoint
    from corticalrnn.evaluate import evaluate
    from corticalrnn.train.checkpoint import load_checkpoint
    from corticalrnn.train.spec import build_model, model_from_checkpoint

    sizes = {"X_ON": 16, "X_OFF": 16, "V1_Exc_L4": 24, "V1_Inh_L4": 6, "V1_Exc_L2/3": 24, "V1_Inh_L2/3": 6}
    store = build_store(tmp_path / "s.zarr", sizes, 4, 3, 2, 20, 4.5, sheet_mm=0.5)
    st = open_store(store)
    assert all(st.positions(s) is not None for s in sizes)
    ckpt = build_checkpoint(tmp_path / "m.pt", store, 20, 4, "local")
    ck = load_checkpoint(ckpt)
    assert ck["spec"]["model_config"]["connectivity"]["storage"] == "sparse"
    assert ck["spec"]["model_config"]["connectivity"]["input_storage"] == "sparse"
    fresh = build_model(ck["spec"])
    loaded, _ = model_from_checkpoint(ckpt)
    assert loaded.n_synapses() < 0.5 * (loaded.n_v1 * (loaded.n_v1 + loaded.n_in))
    x = torch.rand(2, 5, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(fresh(x), loaded(x))
    res = evaluate(ckpt, store, None, device="cpu", figures=False, progress=False)
    assert len(res.test.image_ids) == 3
    assert any(r["predictor"] == "model" for r in res.rows)


def _bench_args(tmp_path):
    import argparse

    from corticalrnn.bench.evaluate import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(["--scale", "0.005", "--images", "1", "2", "--trials", "2", "--dir", str(tmp_path)])


def test_second_run_on_the_same_folder_is_refused(tmp_path):
    import pytest

    from corticalrnn.bench.evaluate import run_bench
    from corticalrnn.locking import LockedError, exclusive_lock

    with exclusive_lock(tmp_path / "bench-eval"), pytest.raises(LockedError, match="bench-eval"):
        run_bench(_bench_args(tmp_path))
    assert not list(tmp_path.glob("store-*"))


def test_store_build_that_fails_leaves_nothing_under_its_final_name(tmp_path, monkeypatch):
    """A build stopped half-way (here: an error after some windows) leaves no store that a later run
    would take for finished, and no temporary folder."""
    import pytest

    import corticalrnn.bench.evaluate as be

    def half(path, *a, **k):
        path.mkdir()
        (path / "zarr.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(be, "build_store", half)
    with pytest.raises(OSError, match="disk full"):
        be.run_bench(_bench_args(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == []
