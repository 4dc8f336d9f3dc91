"""Ground-truth cortex: determinism, rates, sign structure, dynamics vs a naive float64 loop, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from synthdata import SMALL_SCALE, make_datastore, make_train_test, read_datastore_plain

from corticalrnn.cli import main
from corticalrnn.errors import CorticalRNNError, SchemaError
from corticalrnn.sheets import INPUT_SHEETS, SHEET_INFO, V1_SHEETS
from corticalrnn.synth import CortexConfig, build_network, generate, read_truth, truth_path
from corticalrnn.synth.cli import parse_image_ids
from corticalrnn.synth.cortex import simulate, stimulus_sequence


@pytest.fixture(scope="module")
def train_test(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_train_test(tmp_path_factory.mktemp("tt"), seed=5)


def test_network_determined_by_seed() -> None:
    cfg = CortexConfig(scale=SMALL_SCALE)
    a, b, c = build_network(cfg, 1), build_network(cfg, 1), build_network(cfg, 2)
    assert (a.W != b.W).nnz == 0 and (a.U != b.U).nnz == 0
    for s in a.sizes:
        np.testing.assert_array_equal(a.neuron_ids[s], c.neuron_ids[s])  # ids depend on sizes only
        np.testing.assert_array_equal(a.positions_mm[s], b.positions_mm[s])
    assert (a.W != c.W).nnz > 0


def test_simulation_deterministic_and_batch_independent() -> None:
    stims = stimulus_sequence([7, 8, 9], 2)
    runs = {}
    for batch in (1, 3, 32):
        net = build_network(CortexConfig(scale=SMALL_SCALE, batch=batch), 4)
        runs[batch] = list(simulate(net, stims))
    again = list(simulate(build_network(CortexConfig(scale=SMALL_SCALE, batch=3), 4), stims))
    for x, y in zip(runs[3], again):
        np.testing.assert_array_equal(x.v1_rates, y.v1_rates)
        for a, b in zip(x.v1_spikes + x.lgn_spikes, y.v1_spikes + y.lgn_spikes):
            np.testing.assert_array_equal(a, b)
    for batch in (1, 32):  # batching changes float sums only (and so, very rarely, a spike)
        for x, y in zip(runs[3], runs[batch]):
            np.testing.assert_allclose(x.v1_rates, y.v1_rates, atol=1e-3)
            np.testing.assert_array_equal(x.lgn_spikes[1], y.lgn_spikes[1])
            assert abs(len(x.v1_spikes[1]) - len(y.v1_spikes[1])) <= 2


def test_trials_differ_only_by_noise(train_test: tuple[Path, Path]) -> None:
    truth = read_truth(truth_path(train_test[1]))
    img, trial, rates = truth.image_id, truth.trial, truth.rates_v1
    a, b = rates[(img == 300050) & (trial == 0)][0], rates[(img == 300050) & (trial == 1)][0]
    other = rates[(img == 300051) & (trial == 0)][0]
    assert not np.array_equal(a, b)
    stim = slice(15, 71)  # image part of the 10 ms bins
    same = np.corrcoef(a[stim].mean(0), b[stim].mean(0))[0, 1]
    diff = np.corrcoef(a[stim].mean(0), other[stim].mean(0))[0, 1]
    assert same > diff and same > 0.5
    # LGN drive is the image's alone: identical rates across trials
    lgn = truth.rates_lgn
    np.testing.assert_array_equal(lgn[(img == 300050) & (trial == 0)], lgn[(img == 300050) & (trial == 2)])
    np.testing.assert_allclose(truth.avg_rates_v1[0], rates[img == truth.avg_image_id[0]].mean(0), rtol=1e-5)


def test_train_and_test_share_the_network(train_test: tuple[Path, Path]) -> None:
    tr, te = (read_truth(truth_path(p)) for p in train_test)
    assert (tr.W != te.W).nnz == 0 and (tr.U != te.U).nnz == 0
    a, b = (read_datastore_plain(p, max_stimuli=0) for p in train_test)
    for s in a.block_annotations["neuron_ids"]:
        np.testing.assert_array_equal(
            a.block_annotations["neuron_ids"][s], b.block_annotations["neuron_ids"][s]
        )
        np.testing.assert_array_equal(a.block_annotations["neuron_ids"][s], tr.neuron_ids[s])
    assert sorted(set(te.trial.tolist())) == [0, 1, 2] and set(tr.trial.tolist()) == {0}


def test_firing_rates_in_plausible_ranges() -> None:
    cfg = CortexConfig(scale=0.3)
    net = build_network(cfg, 0)
    res = [
        r for r in simulate(net, stimulus_sequence(list(range(100, 106)), 1)) if r.stim.kind == "NaturalImage"
    ]
    lgn_blank = np.mean([r.rates("pre", v1=False).mean() for r in res])
    lgn_img = np.mean([r.rates("stim", v1=False).mean() for r in res])
    assert 30 <= lgn_blank <= 50 and 40 <= lgn_img <= 80
    for s, sl in net.v1_slices.items():
        blank = np.mean([r.rates("post")[5:, sl].mean() for r in res])  # late blank: settled
        image = np.mean([r.rates("stim")[:, sl].mean() for r in res])
        assert 0.5 <= blank <= 20, (s, blank)
        assert 2 <= image <= 40 and image > 1.3 * blank, (s, image, blank)
        assert max(r.v1_rates[:, sl].max() for r in res) < 400, s  # no runaway
        # spikes follow the rates: counts over the image match the integrated rate (Poisson, pooled)
        n = sum(((r.spikes("stim")[0] >= sl.start) & (r.spikes("stim")[0] < sl.stop)).sum() for r in res)
        expected = sum(r.rates("stim")[:, sl].sum() * cfg.rate_bin_ms / 1000 for r in res)
        assert abs(n - expected) < 5 * np.sqrt(expected) + 0.02 * expected, (s, n, expected)


def test_sign_structure_of_ground_truth_weights(train_test: tuple[Path, Path]) -> None:
    t = read_truth(truth_path(train_test[0]))
    W = t.W.toarray()
    sl = {s: t.v1_slice(s) for s in V1_SHEETS}
    for pre in V1_SHEETS:
        block = W[:, sl[pre]]
        if SHEET_INFO[pre].excitatory:
            assert block.min() >= 0
        else:
            assert block.max() <= 0  # Dale: every inhibitory neuron's outgoing weights are <= 0
        for post in V1_SHEETS:
            sub = W[sl[post], sl[pre]]
            table = {
                ("V1_Inh_L4", "V1_Exc_L2/3"), ("V1_Inh_L4", "V1_Inh_L2/3"),
                ("V1_Inh_L2/3", "V1_Exc_L4"), ("V1_Inh_L2/3", "V1_Inh_L4"),
            }  # fmt: skip
            if (pre, post) in table:
                assert not sub.any(), (pre, post)  # inhibition stays within its layer
            else:
                assert (sub != 0).any(axis=1).all(), (pre, post)  # every post neuron gets this pathway
    assert not np.diag(W).any()
    U = t.U.toarray()
    assert U.min() >= 0
    l4 = slice(0, sl["V1_Inh_L4"].stop)
    assert (U[l4] > 0).any(axis=1).all() and not U[l4.stop :].any()  # LGN drives L4 only
    signs = t.signs()
    assert (signs[sl["V1_Exc_L4"]] == 1).all() and (signs[sl["V1_Inh_L2/3"]] == -1).all()
    n = {s: len(t.neuron_ids[s]) for s in V1_SHEETS}
    assert n["V1_Exc_L4"] == 4 * n["V1_Inh_L4"] and n["V1_Exc_L2/3"] == 4 * n["V1_Inh_L2/3"]
    assert set(t.positions_mm) == set(INPUT_SHEETS + V1_SHEETS)


def test_dynamics_match_naive_float64_loop() -> None:
    """With the noise current off and 1 ms truth bins, rates follow the documented equations exactly."""
    cfg = CortexConfig(scale=SMALL_SCALE, noise_hz=0.0, rate_bin_ms=1)
    net = build_network(cfg, 9)
    res = list(simulate(net, stimulus_sequence([11], 1)))[1]
    W, U, b, tau = net.W.toarray(), net.U.toarray(), net.bias, net.tau_ms
    x = np.zeros((res.n_steps, net.n_lgn))
    idx, t = res.lgn_spikes
    np.add.at(x, (np.ceil(t).astype(int) - 1, idx), 1.0)  # spike in (t, t+1] -> bin t
    # initial state: blank fixed point, by plain iteration
    r = np.zeros(net.n_v1)
    for _ in range(3000):
        r = 0.5 * r + 0.5 * np.maximum(W @ r + U @ np.full(net.n_lgn, cfg.lgn_baseline_hz / 1000) + b, 0)
    n4 = net.v1_slices["V1_Inh_L4"].stop
    out = np.empty((res.n_steps, net.n_v1))
    for k in range(res.n_steps):
        new = r.copy()
        i4 = W[:n4] @ r + U[:n4] @ x[k] + b[:n4]
        new[:n4] = r[:n4] + (np.maximum(i4, 0) - r[:n4]) / tau[:n4]
        i23 = W[n4:] @ np.concatenate([new[:n4], r[n4:]]) + b[n4:]
        new[n4:] = r[n4:] + (np.maximum(i23, 0) - r[n4:]) / tau[n4:]
        r = new
        out[k] = r
    np.testing.assert_allclose(res.v1_rates, out, rtol=2e-3, atol=2e-3)
    assert out[res.part_ms("stim")[0] : res.part_ms("stim")[1]].mean() > 1.0  # not a trivial all-zero test


def test_truth_file_roundtrip_and_schema_errors(tmp_path: Path, train_test: tuple[Path, Path]) -> None:
    folder = train_test[0]
    path = truth_path(folder)
    assert path.parent == folder.parent and path.name == folder.name + ".truth.h5"  # beside, not inside
    t = read_truth(path)
    assert t.rates_v1.shape == (4, 86, t.W.shape[0]) and t.rates_lgn.shape[2] == t.U.shape[1]
    assert t.window_ms == (150.0, 560.0, 150.0) and t.rate_bin_ms == 10
    bad = tmp_path / "bad.h5"
    import h5py

    with h5py.File(bad, "w") as f:
        f.attrs["schema"] = "something.else"
    with pytest.raises(SchemaError, match="bad.h5"):
        read_truth(bad)
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(SchemaError, match="junk.h5"):
        read_truth(tmp_path / "junk.h5")


def test_generated_spikes_are_the_written_spikes(tmp_path: Path) -> None:
    folder = make_datastore(tmp_path, images=(5,), trials=1, seed=2)
    ds = read_datastore_plain(folder)
    net = build_network(CortexConfig(scale=SMALL_SCALE), 2)
    res = list(simulate(net, stimulus_sequence([5], 1)))
    segs = {(s.sheet, s.null, s.params["name"]): s for s in ds.segments}
    img, nostim = res[1], res[0]
    for sheet, sl in net.v1_slices.items():
        ids = net.neuron_ids[sheet]
        for null, (elem, part) in ((False, (img, "stim")), (True, (nostim, "post"))):
            idx, t = elem.spikes(part)
            m = (idx >= sl.start) & (idx < sl.stop)
            seg = segs[(sheet, null, "NaturalImage")]
            for k in range(len(ids)):
                np.testing.assert_array_equal(seg.spikes[int(ids[k])], t[m][idx[m] - sl.start == k])


def test_parse_image_ids() -> None:
    assert parse_image_ids("50000-50002,7, 9") == [50000, 50001, 50002, 7, 9]
    for bad in ("", "a-b", "5-3", "1,1", "1-2,2"):
        with pytest.raises(CorticalRNNError):
            parse_image_ids(bad)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--scale", "0"], "scale"),
        (["--scale", "0.001"], "empty sheet"),
        (["--scale", "1e9"], "more than"),
        (["--trials", "0"], "trials"),
        (["--sheets", "V1_Exc_L5"], "unknown sheet"),
        (["--images", "10-5"], "empty range"),
    ],
)
def test_cli_bad_input_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    out = tmp_path / "ds"
    assert main(["synth", str(out), "--images", "1", "--quiet", *args]) == 1
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_nonempty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["synth", str(out), "--images", "1", "--scale", "0.1", "--quiet"]) == 1
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["ds"] and [p.name for p in out.iterdir()] == ["keep.txt"]


def test_cli_writes_and_summarises(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ds"
    out.mkdir()  # an empty folder is fine
    argv = ["synth", str(out), "--images", "3,4", "--trials", "2", "--scale", "0.1", "--seed", "1", "--quiet"]
    argv += ["--sheets", "X_ON,V1_Exc_L23"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "V1_Exc_L2/3" in text and "segments" in text and "size on disk" in text
    ds = read_datastore_plain(out, max_stimuli=1)
    assert list(ds.block_annotations["neuron_ids"]) == ["X_ON", "V1_Exc_L2/3"]
    assert len(ds.segments) == (2 * 2 + 2) * 2 * 2  # (images x trials + 2) stimuli x 2 parts x 2 sheets
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "ds.truth.h5"]
    stale = tmp_path / "ds2"
    truth_path(stale).write_text("old")
    with pytest.raises(CorticalRNNError, match="already exists"):
        generate(stale, [1], 1, config=CortexConfig(scale=0.1))
    assert not stale.exists() and truth_path(stale).read_text() == "old"
