"""Dataset API: window selection, dense batches of chosen neurons, loaders with spawn workers, trials."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from corticalrnn.binning import BinnedCSR
from corticalrnn.data import (
    WindowBatches,
    densify,
    group_trials,
    make_loader,
    open_store,
    read_grouped,
    select_windows,
)
from corticalrnn.errors import CorticalRNNError, DataMismatchError, SchemaError
from corticalrnn.store import SheetMeta, StoreMeta, StoreWriter, WindowBlock

T = 10
SIZES = {"X_ON": 6, "X_OFF": 5, "V1_Exc_L4": 8, "V1_Inh_L4": 3, "V1_Exc_L2/3": 7}


def _csr(dense: np.ndarray) -> BinnedCSR:
    return BinnedCSR.from_dense(dense.reshape(-1, dense.shape[-1]))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """12 windows: images 0..3 x trials 0..2; images 0, 1 split train, 2, 3 test; window 11 padded."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "s.zarr"
    meta = StoreMeta(
        5,
        T,
        {"origin": "test"},
        [SheetMeta(s, np.arange(n) + 100 * k) for k, (s, n) in enumerate(SIZES.items())],
    )
    w = StoreWriter.create(path, meta)
    dense = {s: rng.poisson(0.5, (12, n, T)) for s, n in SIZES.items()}
    images, trials = np.repeat(np.arange(4), 3), np.tile(np.arange(3), 4)
    padded = np.zeros(12, bool)
    padded[11] = True
    src = w.add_source(path="x", sha256="x", kind="test")
    w.append(
        WindowBlock(
            images,
            trials,
            {s: _csr(d) for s, d in dense.items()},
            padded=padded,
            split=["train"] * 6 + ["test"] * 6,
        ),
        src,
    )
    w.commit()
    return path, {s: d.transpose(0, 2, 1) for s, d in dense.items()}  # [W, T, N]


def test_select_windows(tiny) -> None:
    st = open_store(tiny[0])
    assert select_windows(st).tolist() == list(range(11))
    assert select_windows(st, include_padded=True).tolist() == list(range(12))
    assert select_windows(st, images=[1, 3], trials=[0, 2]).tolist() == [3, 5, 9]
    assert select_windows(st, split="test").tolist() == [6, 7, 8, 9, 10]
    with pytest.raises(CorticalRNNError, match="no split"):
        select_windows(st, split="valid")
    assert st.images().tolist() == [0, 1, 2, 3] and st.trials().tolist() == [0, 1, 2]


def test_batches_of_chosen_neurons(tiny) -> None:
    path, dense = tiny
    neurons = {"V1_Exc_L2/3": np.array([6, 0, 3]), "X_OFF": np.array([4, 1]), "V1_Exc_L4": np.arange(8)[::-2]}
    wb = WindowBatches(path, windows=[2, 9, 4, 0], neurons=neurons)
    assert wb.sizes == {"lgn": 2, "v1": 7}
    b = wb.batch([1, 3, 2])
    win = np.array([9, 0, 4])
    assert b["window"].tolist() == win.tolist() and b["window"].dtype == torch.int64
    assert b["lgn"].dtype == torch.float32 and b["lgn"].shape == (3, T, 2)
    assert np.array_equal(b["lgn"].numpy(), dense["X_OFF"][win][:, :, [4, 1]])
    # V1 vector: canonical sheet order (L4 E before L2/3 E), each in the order given
    want_v1 = np.concatenate(
        [dense["V1_Exc_L4"][win][:, :, neurons["V1_Exc_L4"]], dense["V1_Exc_L2/3"][win][:, :, [6, 0, 3]]],
        axis=2,
    )
    assert np.array_equal(b["v1"].numpy(), want_v1)
    everything = WindowBatches(path)
    full = everything.batch(np.arange(len(everything)))
    assert full["lgn"].shape == (11, T, 11) and full["v1"].shape == (11, T, 18)
    assert np.array_equal(full["v1"][:, :, 8:11].numpy(), dense["V1_Inh_L4"][:11])


def test_bad_neuron_selection(tiny) -> None:
    with pytest.raises(SchemaError, match="no sheet 'V1_Inh_L2/3'"):
        WindowBatches(tiny[0], neurons={"V1_Inh_L2/3": np.arange(2)})
    with pytest.raises(CorticalRNNError, match="out of range"):
        WindowBatches(tiny[0], neurons={"X_ON": np.array([6])})
    with pytest.raises(CorticalRNNError, match="duplicate"):
        WindowBatches(tiny[0], neurons={"X_ON": np.array([1, 1])})


def test_loader_order_and_pickling(tiny) -> None:
    wb = WindowBatches(tiny[0], neurons={"X_ON": np.arange(3), "V1_Inh_L4": np.arange(3)})
    clone = pickle.loads(pickle.dumps(wb))
    assert clone._store is None and np.array_equal(clone.batch([0])["v1"], wb.batch([0])["v1"])
    loader = make_loader(wb, batch_size=4, shuffle=True, seed=3)
    first = [b["window"].tolist() for b in loader]
    second = [b["window"].tolist() for b in loader]
    assert sorted(sum(first, [])) == list(range(11)) and [len(x) for x in first] == [4, 4, 3]
    assert first != second  # a new permutation per epoch, reproducible from the seed
    again = make_loader(wb, batch_size=4, shuffle=True, seed=3)
    assert [b["window"].tolist() for b in again] == first
    assert [len(b["window"]) for b in make_loader(wb, batch_size=4, drop_last=True)] == [4, 4]


def test_spawn_workers_match_main_process(tiny) -> None:
    wb = WindowBatches(tiny[0], neurons={"X_OFF": np.arange(5), "V1_Exc_L4": np.array([7, 2])})
    main = list(make_loader(wb, batch_size=3, shuffle=True, seed=1))
    workers = list(make_loader(wb, batch_size=3, shuffle=True, seed=1, num_workers=2, context="spawn"))
    assert len(main) == len(workers) == 4
    for a, b in zip(main, workers):
        for key in ("lgn", "v1", "window"):
            assert torch.equal(a[key], b[key])


def test_densify_matches_numpy(tiny) -> None:
    wb = WindowBatches(tiny[0])
    sparse = wb.sparse_batch([0, 5])
    assert sparse["v1_index"].dtype == np.int32 and sparse["v1_count"].dtype == np.uint8
    d = densify({k: torch.as_tensor(v) for k, v in sparse.items()}, "cpu")
    ref = tiny[1]
    assert np.array_equal(d["lgn"][:, :, :6].numpy(), ref["X_ON"][[0, 5]])


def test_group_trials(tiny) -> None:
    path, dense = tiny
    st = open_store(path)
    g = group_trials(st, select_windows(st, images=[0, 2, 1]))
    assert g.images.tolist() == [0, 1, 2] and g.windows.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    arr = read_grouped(st, "V1_Exc_L4", g, np.array([5, 1]))
    assert arr.shape == (3, 3, T, 2) and arr.dtype == np.float32
    assert np.array_equal(arr[1, 2], dense["V1_Exc_L4"][5][:, [5, 1]])
    with pytest.raises(DataMismatchError, match="different numbers of trials"):
        group_trials(st)  # image 3 has only 2 non-padded trials


@pytest.mark.parametrize("prefetch", [False, True])
def test_reused_buffers_equal_fresh_batches_and_never_alias(tiny, prefetch) -> None:
    """A ring of 2 reused buffers gives exactly the fresh path's batches (last batch smaller); a lent
    batch keeps its values while the filler runs ahead, and consecutive batches never share storage."""
    import time

    wb = WindowBatches(tiny[0], neurons={"X_OFF": np.arange(5), "V1_Exc_L4": np.array([7, 2, 5]),
                                         "V1_Exc_L2/3": np.arange(7)})
    fresh = [{k: v.clone() for k, v in b.items()}
             for b in make_loader(wb, batch_size=3, shuffle=True, seed=4)]
    ring = make_loader(wb, batch_size=3, shuffle=True, seed=4, prefetch=prefetch, buffers=2)
    assert len(fresh) == 4 and [len(b["window"]) for b in fresh] == [3, 3, 3, 2]
    previous = None
    for epoch in range(2):  # the ring is kept across epochs: slots are cleared, not reallocated
        ring.epoch = 0
        for k, batch in enumerate(ring):
            snapshot = {g: batch[g].clone() for g in ("lgn", "v1")}
            time.sleep(0.05)  # give the prefetching thread time to fill the other slot
            for g in ("lgn", "v1", "window"):
                assert torch.equal(batch[g], fresh[k][g]), (epoch, k, g)
            for g in ("lgn", "v1"):
                assert torch.equal(batch[g], snapshot[g])  # not overwritten while lent
                if previous is not None:
                    assert batch[g].untyped_storage().data_ptr() != previous[g]
            previous = {g: batch[g].untyped_storage().data_ptr() for g in ("lgn", "v1")}
    assert ring.ring().slots == 2 and sum(s is not None for s in ring.ring()._dense) == 2


def test_ring_with_spawn_workers_and_reader_errors(tiny) -> None:
    from corticalrnn.data import DenseRing, iter_dense

    wb = WindowBatches(tiny[0])
    fresh = [{k: v.clone() for k, v in b.items()} for b in make_loader(wb, batch_size=4)]
    ring = make_loader(wb, batch_size=4, num_workers=1, buffers=2)
    for a, b in zip(fresh, ring):
        for g in ("lgn", "v1", "window"):
            assert torch.equal(a[g], b[g])

    def broken():
        yield wb.sparse_batch([0, 1])
        raise RuntimeError("corrupt chunk")

    it = iter_dense(broken(), DenseRing(2, slots=2), "cpu", prefetch=True)
    assert torch.equal(next(it)["v1"], fresh[0]["v1"][:2])
    with pytest.raises(RuntimeError, match="corrupt chunk"):
        next(it)
    with pytest.raises(DataMismatchError, match="does not fit"):
        DenseRing(1).fill(0, wb.sparse_batch([0, 1]))
    early = iter_dense((wb.sparse_batch([i]) for i in range(11)), DenseRing(1, slots=2), "cpu")
    next(early)
    early.close()  # stops both threads without reading the rest


def test_group_test_windows_drops_short_images_and_trims_long_ones() -> None:
    """Evaluation's grouping shares group_trials' order (image, then trial; ties in the given order) but
    keeps the most common trial count: shorter images are dropped, longer ones cut, with notes."""
    from corticalrnn.data import group_test_windows

    ids = np.array([7, 5, 5, 7, 9, 5, 7, 11, 7, 11, 11], dtype=np.int64)
    trials = np.array([1, 2, 0, 0, 0, 1, 2, 2, 3, 0, 1], dtype=np.int64)
    images, tr, win, notes = group_test_windows(ids, trials, np.arange(11))
    assert images.tolist() == [5, 7, 11] and win.tolist() == [[2, 5, 1], [3, 0, 6], [9, 10, 7]]
    assert tr.tolist() == [[0, 1, 2]] * 3
    assert notes == ["dropped images [9] with fewer than 3 trials",
                     "used the first 3 trials of images with more"]


def test_epoch_batches_in_order_and_drop_last() -> None:
    from corticalrnn.data import epoch_batches

    assert epoch_batches(7, 3, epoch=4, seed=1, shuffle=False) == [[0, 1, 2], [3, 4, 5], [6]]
    assert epoch_batches(7, 3, epoch=4, seed=1, shuffle=False, drop_last=True) == [[0, 1, 2], [3, 4, 5]]
    shuffled = epoch_batches(7, 3, epoch=4, seed=1, drop_last=True)
    assert shuffled == epoch_batches(7, 3, epoch=4, seed=1)[:2] and epoch_batches(0, 3, 0, 0) == []
