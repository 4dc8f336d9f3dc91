"""Identity in the model: Gabor receptive fields (numpy = torch = a naive loop), identity-conditioned
input weights, connectivity rules (feature similarity, simulator connectome), the LSV1M-like generator,
and the time-course baselines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from modelconfigs import model_config

from corticalrnn.baselines import from_psth
from corticalrnn.errors import CorticalRNNError, DataMismatchError
from corticalrnn.evaluate import split_half_r
from corticalrnn.model import CorticalRNN, ModelConfig
from corticalrnn.model.connectivity import RULES, RuleContext, rule
from corticalrnn.model.identity import GaborInputWeight
from corticalrnn.model.reference import reference_forward
from corticalrnn.receptive_field import gabor
from corticalrnn.sheets import MOZAIK_ANNOTATIONS, V1_SHEETS

SIZES = {"X_ON": 16, "X_OFF": 16, "V1_Exc_L4": 8, "V1_Inh_L4": 4, "V1_Exc_L2/3": 6, "V1_Inh_L2/3": 3}


def identity(seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(np.arange(4.0), np.arange(4.0), indexing="xy"), -1).reshape(-1, 2)
    pos = {"X_ON": grid, "X_OFF": grid.copy()}
    props: dict[str, dict[str, np.ndarray]] = {}
    for s in V1_SHEETS:
        n = SIZES[s]
        pos[s] = rng.uniform(-0.3, 0.3, (n, 2))
        props[s] = {"ori": rng.uniform(0, np.pi, n), "phase": rng.uniform(0, 2 * np.pi, n)}
        if "L4" in s:
            props[s] |= {"frequency": rng.uniform(0.15, 0.3, n), "size": rng.uniform(0.8, 1.5, n),
                         "aspect_ratio": np.full(n, 0.7)}
    return pos, props


def assert_matches_reference(model: CorticalRNN, x: torch.Tensor, g: torch.Generator) -> None:
    """Outputs and every parameter gradient of the fast path against the float64 reference."""
    out, ref = model(x), reference_forward(model, x)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    gw = torch.rand(out.shape, generator=g, dtype=torch.float64)
    params = list(model.parameters())
    g1 = torch.autograd.grad((out * gw).sum(), params, allow_unused=True)
    g2 = torch.autograd.grad((reference_forward(model, x) * gw).sum(), params, allow_unused=True)
    for a, b in zip(g1, g2):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def naive_gabor(x: float, y: float, ori: float, phase: float, f: float, size: float, ar: float) -> float:
    u = x * math.cos(ori) + y * math.sin(ori)
    v = -x * math.sin(ori) + y * math.cos(ori)
    return math.exp(-(u * u + (ar * v) ** 2) / (2 * size * size)) * math.cos(2 * math.pi * f * u + phase)


def test_gabor_numpy_torch_and_naive_agree():
    rng = np.random.default_rng(1)
    args = [rng.normal(size=20), rng.normal(size=20), rng.uniform(0, np.pi, 20), rng.uniform(0, 6, 20),
            rng.uniform(0.1, 1, 20), rng.uniform(0.5, 2, 20), rng.uniform(0.5, 1, 20)]
    ref = np.array([naive_gabor(*a) for a in zip(*args)])
    np.testing.assert_allclose(gabor(*args, np), ref, rtol=1e-12, atol=1e-14)
    got = gabor(*[torch.as_tensor(a) for a in args], torch).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14)


def gabor_block(props=None, seed=0) -> GaborInputWeight:
    pos, p = identity(seed)
    rows = np.concatenate([pos["V1_Exc_L4"], pos["V1_Inh_L4"]])
    props = props or {k: np.concatenate([p["V1_Exc_L4"][k], p["V1_Inh_L4"][k]]) for k in p["V1_Exc_L4"]}
    lgn = np.concatenate([pos["X_ON"], pos["X_OFF"]])
    pol = np.r_[np.ones(16), -np.ones(16)]
    pops = np.r_[np.zeros(8), np.ones(4)].astype(int)
    return GaborInputWeight(rows, props, pops, 2, lgn, pol, 1.0, 1.2, 0.2)


def test_gabor_weights_follow_identity_and_train():
    w = gabor_block()
    u = w.weight().detach().double()
    assert u.shape == (12, 32) and bool((u >= 0).all()) and w.violations() == 0
    # ON minus OFF weights are the Gabor itself (plus the envelope's common part, cancelled here)
    c = w.centres().detach().double()
    d = w.lgn_xy.double()[None, :16] - c[:, None]
    g = gabor(d[..., 0], d[..., 1], w.ori.double()[:, None], w.phase.double()[:, None],
              w.freq0.double()[:, None], w.size0.double()[:, None], w.aspect.double()[:, None], torch)
    gains = torch.nn.functional.softplus(w.gain.detach().double())[w.row_pop]
    np.testing.assert_allclose((u[:, :16] - u[:, 16:]).numpy(), (gains[:, :1] * g).numpy(), rtol=1e-5,
                               atol=1e-7)
    # the shape parameters get gradients (what observed units teach hidden ones)
    w.weight().sum().backward()
    for name in ("log_size", "log_freq", "gain", "retino_scale", "retino_offset"):
        assert getattr(w, name).grad is not None and bool(getattr(w, name).grad.abs().sum() > 0), name


def test_same_identity_same_weights():
    pos, p = identity()
    props = {k: np.concatenate([p["V1_Exc_L4"][k], p["V1_Inh_L4"][k]]) for k in p["V1_Exc_L4"]}
    for k in props:
        props[k][1] = props[k][0]
    w = gabor_block(props)
    w.unit_xy[1] = w.unit_xy[0]
    u = w.weight().detach()
    torch.testing.assert_close(u[0], u[1])


def test_gabor_needs_orientation():
    _, p = identity()
    props = {"phase": np.r_[p["V1_Exc_L4"]["phase"], p["V1_Inh_L4"]["phase"]]}
    with pytest.raises(DataMismatchError, match="ori"):
        gabor_block(props)


@pytest.mark.parametrize("connectivity", ["feature", "distance"])
def test_identity_model_matches_float64_reference(connectivity):
    pos, props = identity()
    cfg = model_config(bin_ms=5.0, input_connectivity="gabor", connectivity=connectivity,
                       distance_sigma_mm={"exc": 0.3, "inh": 0.3})
    model = CorticalRNN(cfg, SIZES, pos, props).double()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 5, 32, generator=g, dtype=torch.float64)
    assert_matches_reference(model, x, g)


def test_identity_model_keeps_dale_after_steps():
    pos, props = identity()
    cfg = model_config(bin_ms=5.0, input_connectivity="gabor", connectivity="feature")
    model = CorticalRNN(cfg, SIZES, pos, props)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        x = torch.rand(2, 5, 32, generator=g)
        loss = (model(x) - 0.3).pow(2).mean() - model(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.project_()
    model.assert_constraints()


def test_feature_rule_prefers_similar_orientation():
    rng = np.random.default_rng(0)
    n = 400
    pos = {"V1_Exc_L4": rng.uniform(0, 0.5, (n, 2))}
    ori = rng.uniform(0, np.pi, n)
    props = {"V1_Exc_L4": {"ori": ori, "phase": rng.uniform(0, 2 * np.pi, n)}}
    cfg = model_config(distance_sigma_mm={"exc": 0.3, "inh": 0.3},
                       feature_affinity={"ori": 2.0, "phase": 0.0})
    ctx = RuleContext(cfg, pos, props, None, np.random.default_rng(1))
    m = rule("feature").mask(ctx, "V1_Exc_L4", "V1_Exc_L4", n, n)
    sim = np.cos(2 * (ori[:, None] - ori[None, :]))
    assert sim[m].mean() > sim[~m].mean() + 0.3
    r, c = rule("feature").pairs(ctx, "V1_Exc_L4", "V1_Exc_L4", n, n)
    assert sim[r, c].mean() > 0.3
    dist = RuleContext(cfg, pos, None, None, np.random.default_rng(1))
    with pytest.raises(DataMismatchError, match="ori"):
        rule("feature").mask(dist, "V1_Exc_L4", "V1_Exc_L4", n, n)


def test_simulator_rule_uses_the_connectome_exactly():
    post, pre = np.array([0, 2, 2, 1]), np.array([3, 0, 3, 3])
    ctx = RuleContext(ModelConfig(), None, None, {("V1_Exc_L4", "V1_Inh_L4"): (post, pre, np.ones(4))},
                      np.random.default_rng(0))
    m = rule("simulator").mask(ctx, "V1_Exc_L4", "V1_Inh_L4", 4, 3)
    expect = np.zeros((3, 4), bool)
    expect[post, pre] = True
    np.testing.assert_array_equal(m, expect)
    with pytest.raises(DataMismatchError, match="no projection"):
        rule("simulator").pairs(ctx, "V1_Inh_L4", "V1_Exc_L4", 3, 4)
    assert {"dense", "distance", "feature", "simulator"} <= set(RULES)
    with pytest.raises(DataMismatchError, match="unknown connectivity rule"):
        rule("nope")


def test_simulator_connectivity_model_has_exactly_the_stored_synapses():
    pos, props = identity()
    rng = np.random.default_rng(3)
    conn = {}
    for pre, post in [("V1_Exc_L4", "V1_Exc_L4"), ("V1_Exc_L4", "V1_Inh_L4"), ("V1_Inh_L4", "V1_Exc_L4"),
                      ("V1_Inh_L4", "V1_Inh_L4"), ("V1_Exc_L2/3", "V1_Exc_L4"), ("V1_Exc_L2/3", "V1_Inh_L4"),
                      ("V1_Exc_L4", "V1_Exc_L2/3"), ("V1_Exc_L4", "V1_Inh_L2/3"),
                      ("V1_Exc_L2/3", "V1_Exc_L2/3"), ("V1_Exc_L2/3", "V1_Inh_L2/3"),
                      ("V1_Inh_L2/3", "V1_Exc_L2/3"), ("V1_Inh_L2/3", "V1_Inh_L2/3")]:
        k = 10
        conn[(pre, post)] = (rng.integers(0, SIZES[post], k), rng.integers(0, SIZES[pre], k), np.ones(k))
    for storage in ("dense", "sparse"):
        cfg = model_config(connectivity="simulator", weight_storage=storage)
        model = CorticalRNN(cfg, SIZES, pos, props, conn)
        for (pre, post), (r, c, _) in conn.items():
            w = model.pathway_weight(pre, post, 0 if (pre, post) in {("V1_Exc_L4", "V1_Exc_L2/3"),
                                                                    ("V1_Exc_L4", "V1_Inh_L2/3")} else 1)
            expect = np.zeros(w.shape, bool)
            expect[r, c] = True
            assert not (w.detach().numpy() != 0)[~expect].any(), (storage, pre, post)


def test_lsv1m_generator_identity():
    from corticalrnn.synth.cortex import CortexConfig, build_network

    net = build_network(CortexConfig(scale=0.25, structure="lsv1m", lgn_density=2.0), seed=3)
    for s in ("V1_Exc_L4", "V1_Inh_L4"):
        assert set(net.annotations[s]) == set(MOZAIK_ANNOTATIONS)
    assert set(net.annotations["V1_Exc_L2/3"]) == {"LGNAfferentOrientation"}
    # the orientation map is smooth: nearest neighbours share orientation far above chance (0)
    xy, ori = net.positions_mm["V1_Exc_L4"], net.annotations["V1_Exc_L4"]["LGNAfferentOrientation"]
    d = ((xy[:, None] - xy[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nn = d.argmin(1)
    assert np.cos(2 * (ori - ori[nn])).mean() > 0.5
    # L4 afferents follow each cell's Gabor: ON - OFF weights correlate with it over the LGN grid
    n_on = net.sizes["X_ON"]
    lgn = net.positions_mm["X_ON"]
    a = net.annotations["V1_Exc_L4"]
    side = CortexConfig(scale=0.25).side_mm
    spacing = side / math.sqrt(n_on)
    rs = []
    for i in range(net.sizes["V1_Exc_L4"]):
        row = net.U[i].toarray().ravel()
        diff = row[:n_on] - row[n_on:]
        dx = lgn - xy[i]
        g = gabor(dx[:, 0], dx[:, 1], a["LGNAfferentOrientation"][i], a["LGNAfferentPhase"][i],
                  a["LGNAfferentFrequency"][i] / spacing, a["LGNAfferentSize"][i] * spacing,
                  a["LGNAfferentAspectRatio"][i], np)
        rs.append(np.corrcoef(diff, g)[0, 1])
    assert np.median(rs) > 0.6


def test_population_baseline_uses_observed_only():
    rng = np.random.default_rng(0)
    psth = rng.uniform(0.1, 1, (5, 6))
    labels = np.array(["A", "A", "A", "B", "B", "B"])
    observed = np.array([True, True, False, True, False, False])
    b = from_psth(psth, labels, observed, 10)
    shape_a = psth[:, :2].mean(1)
    np.testing.assert_allclose(b.population[:, 2], shape_a)
    np.testing.assert_allclose(b.population[:, 4], psth[:, 3])
    np.testing.assert_allclose(b.population[:, 0], shape_a * psth[:, 0].mean() / shape_a.mean())
    np.testing.assert_allclose(b.mean_rate, psth.mean(0))
    pred = b.predictions(3)
    assert pred["population"].shape == (3, 5, 6)


def test_split_half_r_against_naive():
    rng = np.random.default_rng(2)
    data = rng.poisson(1.0, (3, 4, 5, 2)).astype(float)
    got = split_half_r(data)
    for n in range(2):
        x = data[..., n]
        a = x[:, [0, 2]].mean(1).ravel()
        b = x[:, [1, 3]].mean(1).ravel()
        assert got[n] == pytest.approx(np.corrcoef(a, b)[0, 1], rel=1e-12)
    assert np.isnan(split_half_r(data[:, :1])).all()


@pytest.mark.parametrize("neuron_model", ["leaky", "gru"])
def test_rate_scale_matches_reference_with_teacher(neuron_model):
    pos, props = identity()
    cfg = model_config(bin_ms=5.0, rate_scale=20.0, neuron_model=neuron_model, input_connectivity="gabor",
                       connectivity="feature", distance_sigma_mm={"exc": 0.3, "inh": 0.3})
    model = CorticalRNN(cfg, SIZES, pos, props).double()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 5, 32, generator=g, dtype=torch.float64)
    y = torch.rand(2, 5, 21, generator=g, dtype=torch.float64) * 0.2
    mask = torch.rand(21, generator=g) < 0.5
    force = model.draw_force(2, mask, 0.7, torch.Generator().manual_seed(5))
    out = model(x, y, mask, 0.7, torch.Generator().manual_seed(5))
    torch.testing.assert_close(out, reference_forward(model, x, y, force), rtol=1e-12, atol=1e-12)
    # the initial rate is init_rate in data units whatever the scale (leaky units start at the bias)
    if neuron_model == "leaky":
        assert float(model(torch.zeros(1, 1, 32, dtype=torch.float64)).mean()) == pytest.approx(0.1, rel=0.2)


@pytest.mark.parametrize("kw", [{}, {"weight_storage": "sparse", "connectivity": "feature"},
                                {"input_connectivity": "gabor", "connectivity": "feature"}])
def test_centered_model_matches_reference(kw):
    pos, props = identity()
    cfg = model_config(bin_ms=5.0, centered=True, rate_scale=10.0, distance_sigma_mm={"exc": 0.3, "inh": 0.3},
                       **kw)
    model = CorticalRNN(cfg, SIZES, pos, props)
    model.set_input_center(np.linspace(0.1, 0.9, 32))
    model = model.double()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 5, 32, generator=g, dtype=torch.float64)
    assert_matches_reference(model, x, g)
    # centering moves only the constant current: b - W r0 - U x0
    plain = CorticalRNN(cfg.with_values({"architecture.centered": False}), SIZES, pos, props).double()
    plain.load_state_dict(model.state_dict(), strict=False)
    assert not torch.allclose(plain.effective_bias(), model.effective_bias())
    with pytest.raises(DataMismatchError, match="input centre"):
        model.set_input_center(np.zeros(3))


def test_sparse_gabor_input_equals_dense_on_its_footprint():
    pos, props = identity()
    kw = dict(bin_ms=5.0, input_connectivity="gabor", connectivity="feature",
              distance_sigma_mm={"exc": 0.3, "inh": 0.3})
    dense = CorticalRNN(model_config(**kw), SIZES, pos, props).double()
    sparse = CorticalRNN(model_config(input_storage="sparse", input_footprint=3.0, **kw), SIZES, pos, props)
    sparse = sparse.double()
    sparse.load_state_dict(dense.state_dict(), strict=False)
    ws, wd = sparse.weights["U0_stage0"], dense.weights["U0_stage0"]
    assert ws.stored_sparse and 0 < ws.n_synapses < wd.n_synapses
    ud, us = wd.dense().detach(), ws.dense().detach()
    on = us != 0
    torch.testing.assert_close(us[on], ud[on], rtol=1e-12, atol=1e-15)
    assert float(ud[~on].sum()) < 0.02 * float(ud.sum())  # the footprint holds the RF's mass
    # the sparse model against the float64 reference (outputs and gradients through the CSR product)
    g = torch.Generator().manual_seed(4)
    x = torch.rand(2, 5, 32, generator=g, dtype=torch.float64)
    assert_matches_reference(sparse, x, g)


def test_experiment_refuses_test_store_of_another_bin_size(tmp_path):
    from test_evaluate import write_store

    from corticalrnn.experiment import Experiment

    a = write_store(tmp_path / "a.zarr", [1, 2], 1, bin_ms=20)
    b = write_store(tmp_path / "b.zarr", [3], 2, bin_ms=10)
    with pytest.raises(DataMismatchError, match="trim --bin-ms|bin"):
        Experiment(a, test_store=b, workdir=tmp_path / "w")


@pytest.mark.parametrize("storage", ["dense", "sparse"])
def test_tied_hidden_rows_follow_observed_rows(storage):
    pos, props = identity()
    n_v1 = sum(SIZES[s] for s in V1_SHEETS)
    observed = np.arange(n_v1) % 3 == 0
    cfg = model_config(bin_ms=5.0, hidden_weights="tied", connectivity="feature", weight_storage=storage,
                       distance_sigma_mm={"exc": 0.3, "inh": 0.3})
    model = CorticalRNN(cfg, SIZES, pos, props, observed=observed).double()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 5, 32, generator=g, dtype=torch.float64)
    torch.testing.assert_close(model(x), reference_forward(model, x), rtol=1e-12, atol=1e-12)
    w = model.weights["W1_stage0"]
    before = w.dense().detach().clone()
    with torch.no_grad():
        w.inner.param.mul_(2.0)  # observed rows' weights double -> hidden rows' follow, by pathway
    after = w.dense().detach()
    rows = np.arange(model.graph.stage_rows[0][0], model.graph.stage_rows[0][1])
    hidden = torch.as_tensor(~observed[rows])
    nz = before[hidden] != 0
    ratio = after[hidden][nz] / before[hidden][nz]
    doubled = torch.isclose(ratio, torch.tensor(2.0, dtype=ratio.dtype))
    # a (post, pre) population pair without observed synapses keeps factor 1 (nothing to learn from)
    assert bool((doubled | torch.isclose(ratio, torch.tensor(1.0, dtype=ratio.dtype))).all())
    assert float(doubled.double().mean()) > 0.5
    assert model.sign_violations() == dict.fromkeys(model.weights, 0)
    with pytest.raises(DataMismatchError, match="observed"):
        CorticalRNN(cfg, SIZES, pos, props)


@pytest.mark.parametrize("storage", ["dense", "sparse"])
@pytest.mark.parametrize("reordered", [False, True])
def test_tied_sheets_ties_only_their_hidden_rows(storage, reordered):
    """``tied_sheets``: hidden rows of the listed sheets follow the observed rows' gain; the other hidden
    rows stay the inner block's free weights; the forward pass still matches the float64 reference."""
    pos, props = identity()
    n_v1 = sum(SIZES[s] for s in V1_SHEETS)
    observed = np.arange(n_v1) % 3 == 0
    from test_model import ODD_PATHWAYS  # L2/3 -> L4 in the same step: units reordered internally

    extra = {"pathways": ODD_PATHWAYS} if reordered else {}
    cfg = model_config(bin_ms=5.0, hidden_weights="tied", connectivity="feature", weight_storage=storage,
                       distance_sigma_mm={"exc": 0.3, "inh": 0.3}, **{"neurons.tied_sheets": ["V1_Exc_L23"]},
                       **extra)
    assert cfg.neurons.tied_sheets == ("V1_Exc_L2/3",)
    model = CorticalRNN(cfg, SIZES, pos, props, observed=observed).double()
    g = model.graph
    assert (g.internal_to_external is not None) == reordered
    ext = np.arange(n_v1) if g.internal_to_external is None else g.internal_to_external
    obs = observed[ext]
    sheet = np.concatenate([np.full(g.sizes[s], s, dtype=object) for s in g.v1_order])
    checked = 0
    for b in g.blocks:
        if b.source != "v1":
            continue
        w = model.weights[b.name]
        rows = np.arange(b.row0, b.row1)
        if not hasattr(w, "w0"):  # no tied hidden row in this block: not wrapped
            assert not ((sheet[rows] == "V1_Exc_L2/3") & ~obs[rows]).any()
            continue
        free_hidden = torch.as_tensor(~obs[rows] & (sheet[rows] != "V1_Exc_L2/3"))
        with torch.no_grad():
            w.inner.param.mul_(1.7)  # observed rows change by 1.7: tied rows follow by that gain
            if w.stored_sparse:  # free hidden rows change by more, and must not enter the gain
                w.inner.param[free_hidden[w.inner.pattern().entries()[0]]] *= 3.0
            else:
                w.inner.param[free_hidden] *= 3.0
        dense, inner = w.dense().detach(), w.inner.pattern().dense(w.inner.weight()) if w.stored_sparse \
            else w.inner.weight()
        free = obs[rows] | (sheet[rows] != "V1_Exc_L2/3")
        torch.testing.assert_close(dense[torch.as_tensor(free)], inner.detach()[torch.as_tensor(free)])
        tied = ~free
        if tied.any():
            w0 = w.inner.pattern().dense(w.w0) if w.stored_sparse else w.w0
            nz = w0[torch.as_tensor(tied)] != 0
            ratio = dense[torch.as_tensor(tied)][nz] / w0[torch.as_tensor(tied)][nz]
            assert torch.allclose(ratio, torch.tensor(1.7, dtype=ratio.dtype)), b.name
            checked += int(nz.sum())
    assert checked > 0
    x = torch.rand(2, 5, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(model(x), reference_forward(model, x), rtol=1e-12, atol=1e-12)
    with pytest.raises(CorticalRNNError, match="tied_sheets.*not a V1 sheet|tied_sheets.*unknown"):
        model_config(hidden_weights="tied", **{"neurons.tied_sheets": ["X_ON"]})


def test_gabor_without_lgn_positions_is_a_clear_error():
    pos, props = identity()
    del pos["X_ON"], pos["X_OFF"]
    with pytest.raises(DataMismatchError, match="positions of the LGN inputs"):
        CorticalRNN(model_config(input_connectivity="gabor"), SIZES, pos, props)


def test_neuron_units_registry_matches_config():
    from corticalrnn.model.config import NEURON_MODELS
    from corticalrnn.model.neurons import UNITS, make_unit

    assert set(UNITS) == set(NEURON_MODELS)
    fused = {k: make_unit(k, 20.0, 5.0, 3, True, torch.Generator().manual_seed(0)).fused for k in UNITS}
    assert fused == {"leaky": True, "mlp": False, "gru": False, "adaptive": False}


@pytest.mark.parametrize("kw,match", [
    ({"rate_scale": 0.0}, "rate_scale"), ({"rate_scale": float("nan")}, "rate_scale"),
    ({"hidden_weights": "shared"}, "hidden_weights"), ({"input_storage": "csr"}, "input_storage"),
    ({"input_storage": "sparse"}, "needs connectivity.input_rule='gabor'"),
    ({"input_footprint": 0.0}, "input_footprint"), ({"rf_size": -1.0}, "rf_size"),
    ({"feature_affinity": {"ori": -1.0}}, "feature_affinity"),
    ({"feature_affinity": {"size": 1.0}}, "feature_affinity"),
    ({"connectivity": "nearest"}, "connectivity.rule"), ({"input_connectivity": "learned"}, "input_rule"),
    ({"weight_storage": "sparse"}, "masked connectivity"),
])
def test_identity_config_errors_name_the_key(kw, match):
    from corticalrnn.errors import CorticalRNNError

    with pytest.raises(CorticalRNNError, match=match):
        model_config(**kw)


@pytest.mark.parametrize("kw,match", [({"structure": "lsv2"}, "structure"),
                                      ({"rf_size_mm": 0.0}, "rf_size_mm"),
                                      ({"ori_affinity": -1.0}, "ori_affinity")])
def test_cortex_config_errors_name_the_key(kw, match):
    from corticalrnn.errors import CorticalRNNError
    from corticalrnn.synth.cortex import CortexConfig

    with pytest.raises(CorticalRNNError, match=match):
        CortexConfig(**kw)


def test_simulator_rule_without_connectome_says_what_to_extract():
    ctx = RuleContext(ModelConfig(), None, None, None, np.random.default_rng(0))
    with pytest.raises(DataMismatchError, match="Connections"):
        rule("simulator").pairs(ctx, "V1_Exc_L4", "V1_Inh_L4", 4, 3)


def naive_neighbours(xy, ori, phase, pop, observed, k, sigma, kappa):
    """Hidden unit -> {observed unit: weight}, by loops (the reference for neighbour_kernel)."""
    out = {}
    for i in np.flatnonzero(~observed):
        cands = [o for o in np.flatnonzero(observed) if pop[o] == pop[i]]
        score = {o: -float(((xy[i] - xy[o]) ** 2).sum()) / (2 * sigma**2)
                 + kappa * math.cos(2 * (ori[i] - ori[o])) + kappa / 2 * math.cos(phase[i] - phase[o])
                 for o in cands}
        best = sorted(cands, key=lambda o: -score[o])[:k]
        z = sum(math.exp(score[o]) for o in best)
        out[int(i)] = {int(o): math.exp(score[o]) / z for o in best}
    return out


def test_neighbour_kernel_matches_naive_loops():
    from corticalrnn.model.tied import neighbour_kernel

    rng = np.random.default_rng(4)
    n = 40
    xy, ori, phase = rng.uniform(-1, 1, (n, 2)), rng.uniform(0, np.pi, n), rng.uniform(0, 2 * np.pi, n)
    pop, observed = np.arange(n) % 2, rng.random(n) < 0.4
    hid, src, w = neighbour_kernel(xy, ori, phase, pop, observed, 3, 0.5, 1.5, chunk=7)
    got: dict[int, dict[int, float]] = {}
    for h, s, v in zip(hid, src, w):
        got.setdefault(int(h), {})[int(s)] = float(v)
    ref = naive_neighbours(xy, ori, phase, pop, observed, 3, 0.5, 1.5)
    assert got.keys() == ref.keys()
    for i in ref:
        assert got[i].keys() == ref[i].keys()
        np.testing.assert_allclose([got[i][o] for o in ref[i]], list(ref[i].values()), rtol=1e-12)


def test_borrowed_hidden_units_are_their_neighbours_average():
    pos, props = identity()
    n_v1 = sum(SIZES[s] for s in V1_SHEETS)
    observed = np.arange(n_v1) % 3 == 0
    cfg = model_config(bin_ms=5.0, hidden_weights="borrowed", connectivity="feature", borrow_neighbours=2,
                       borrow_sigma_mm=0.2, borrow_kappa=1.0, borrow_recurrent=True,
                       distance_sigma_mm={"exc": 0.3, "inh": 0.3})
    model = CorticalRNN(cfg, SIZES, pos, props, observed=observed).double()
    assert type(CorticalRNN(cfg.with_values({"neurons.borrow_recurrent": False}), SIZES, pos, props,
                            observed=observed).weights["W1_stage0"]).__name__ == "SignedWeight"
    g = torch.Generator().manual_seed(3)
    assert_matches_reference(model, torch.rand(2, 5, 32, generator=g, dtype=torch.float64), g)
    assert model.sign_violations() == dict.fromkeys(model.weights, 0)
    # hidden rows and biases = the naive kernel's average of the observed rows (input block: no mask)
    g_ = model.graph
    xy = np.concatenate([pos[s] for s in g_.v1_order])
    ori = np.concatenate([props[s]["ori"] for s in g_.v1_order])
    ph = np.concatenate([props[s]["phase"] for s in g_.v1_order])
    pop = np.concatenate([np.full(SIZES[s], i) for i, s in enumerate(g_.v1_order)])
    obs = observed if g_.internal_to_external is None else observed[g_.internal_to_external]
    ref = naive_neighbours(xy, ori, ph, pop, obs, 2, 0.2, 1.0)
    raw_b, b = model.bias.detach(), model.unit_bias().detach()
    for i, nb in ref.items():
        assert float(b[i]) == pytest.approx(sum(v * float(raw_b[o]) for o, v in nb.items()), rel=1e-12)
    u = model.weights["U0_stage0"]
    raw, eff = u.inner.weight().detach(), u.weight().detach()
    r0 = g_.stage_rows[0][0]
    for i, nb in ref.items():
        if g_.stage_rows[0][0] <= i < g_.stage_rows[0][1]:
            want = sum(v * raw[o - r0] for o, v in nb.items())
            torch.testing.assert_close(eff[i - r0], want, rtol=1e-12, atol=1e-14)
    xs = torch.rand(32, 7, generator=g, dtype=torch.float64)
    torch.testing.assert_close(u.product(xs, torch.float64), eff @ xs, rtol=1e-12, atol=1e-14)
    # a masked recurrent block keeps the hidden unit's own mask and its neighbours' total per sign
    w = model.weights["W1_stage0"]
    eff = w.weight().detach()
    assert not bool(((eff != 0) & ~w.inner.mask).any())
    with pytest.raises(DataMismatchError, match="observed"):
        CorticalRNN(cfg, SIZES, pos, props)


@pytest.mark.parametrize("neuron_model", ["leaky", "adaptive"])
def test_centered_model_starts_at_the_given_rates(neuron_model):
    """start_at_rates: with inputs at their centres every unit rests at its rate (hidden units: the
    mean of their population's known rates), and the centres are saved with the weights."""
    pos, props = identity()
    cfg = model_config(bin_ms=5.0, centered=True, neuron_model=neuron_model, connectivity="feature",
                       distance_sigma_mm={"exc": 0.3, "inh": 0.3})
    model = CorticalRNN(cfg, SIZES, pos, props).double()
    n_v1 = sum(SIZES[s] for s in V1_SHEETS)
    rng = np.random.default_rng(5)
    rates = rng.uniform(0.02, 0.3, n_v1)
    rates[::4] = np.nan  # hidden
    x0 = torch.as_tensor(rng.uniform(0.0, 0.5, 32))
    model.set_input_center(x0)
    model.start_at_rates(rates)
    out = model(x0.double().expand(1, 400, 32).contiguous())[0, -1].detach().numpy()
    want, start = rates.copy(), 0
    for s in V1_SHEETS:
        part = want[start:start + SIZES[s]]
        part[np.isnan(part)] = np.nanmean(part)
        start += SIZES[s]
    np.testing.assert_allclose(out, want, rtol=1e-6)
    saved = model.state_dict()
    assert "rate_center" in saved
    fresh = CorticalRNN(cfg, SIZES, pos, props).double()
    fresh.load_state_dict(saved)
    torch.testing.assert_close(fresh.rate_center, model.rate_center)
    del saved["rate_center"]  # a checkpoint from before the centre was saved still loads
    CorticalRNN(cfg, SIZES, pos, props).double().load_state_dict(saved)


@pytest.mark.parametrize("kw", [
    {"connectivity": "feature", "input_connectivity": "gabor", "hidden_weights": "borrowed"},
    {"connectivity": "distance", "weight_storage": "sparse", "input_connectivity": "retinotopic",
     "lgn_extent_mm": 0.6},
    {"connectivity": "feature", "input_connectivity": "gabor", "input_storage": "sparse"},
])
def test_positions_with_a_depth_column_build_the_same_model(kw):
    """Positions pass through with all their columns; every spatial rule uses the cortical surface
    (x, y): a third column (Mozaik's depth in µm, here far larger than the sheet) changes nothing."""
    pos, props = identity()
    rng = np.random.default_rng(5)
    deep = {s: np.column_stack([p, rng.uniform(0, 1500.0, len(p))]) for s, p in pos.items()}
    observed = np.arange(sum(SIZES[s] for s in V1_SHEETS)) % 3 == 0
    cfg = model_config(bin_ms=5.0, distance_sigma_mm={"exc": 0.3, "inh": 0.3}, **kw)
    flat = CorticalRNN(cfg, SIZES, pos, props, observed=observed)
    three = CorticalRNN(cfg, SIZES, deep, props, observed=observed)
    for (k, a), (_, b) in zip(flat.state_dict().items(), three.state_dict().items()):
        assert torch.equal(a, b), k
    x = torch.rand(2, 4, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(three(x), flat(x), rtol=0, atol=0)
    with pytest.raises(DataMismatchError, match="D >= 2"):
        CorticalRNN(cfg, SIZES, {s: p[:, :1] for s, p in pos.items()}, props, observed=observed)


def test_input_rules_registry_matches_config():
    from corticalrnn.model.config import INPUT_MASK_KINDS
    from corticalrnn.model.input_rules import INPUT_RULES

    assert set(INPUT_RULES) == set(INPUT_MASK_KINDS)


@pytest.mark.parametrize("kw", [
    {},
    {"connectivity": "feature", "weight_storage": "sparse", "input_connectivity": "gabor",
     "input_storage": "sparse", "centered": True, "neuron_model": "adaptive"},
    {"connectivity": "feature", "hidden_weights": "borrowed", "borrow_neighbours": 2},
])
def test_model_built_without_initial_scaling_equals_it_after_loading_the_state(kw):
    """``initialize=False`` (checkpoint loading skips the spectral-radius estimate) gives the same model
    once the state is loaded: nothing outside the state depends on the initial scale."""
    pos, props = identity()
    n_v1 = sum(SIZES[s] for s in V1_SHEETS)
    observed = np.arange(n_v1) % 3 == 0
    cfg = model_config(bin_ms=5.0, distance_sigma_mm={"exc": 0.3, "inh": 0.3}, **kw)
    a = CorticalRNN(cfg, SIZES, pos, props, observed=observed)
    b = CorticalRNN(cfg, SIZES, pos, props, observed=observed, initialize=False)
    before = {k: v.clone() for k, v in b.state_dict().items()}
    assert any(not torch.equal(before[k], v) for k, v in a.state_dict().items())  # the scale was skipped
    b.load_state_dict(a.state_dict())
    x = torch.rand(2, 6, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_learned_lgn_positions_match_reference_and_train():
    """Gabor input on data without LGN positions: the positions are parameters, seeded, and get gradients."""
    pos, props = identity()
    del pos["X_ON"], pos["X_OFF"]
    cfg = model_config(bin_ms=5.0, input_connectivity="gabor").with_values(
        {"connectivity.lgn_positions": "learned"})
    model = CorticalRNN(cfg, SIZES, pos, props).double()
    again = CorticalRNN(cfg, SIZES, pos, props).double()
    blocks = [w for w in model.weights.values() if isinstance(w, GaborInputWeight)]
    assert blocks and all(isinstance(w.lgn_xy, torch.nn.Parameter) for w in blocks)
    for w, w2 in zip(blocks, [w for w in again.weights.values() if isinstance(w, GaborInputWeight)]):
        torch.testing.assert_close(w.lgn_xy, w2.lgn_xy)
        # drawn over the units' own bounding box, with the retinotopic map at the identity
        lo, hi = w.unit_xy.min(0).values, w.unit_xy.max(0).values
        assert bool((w.lgn_xy >= lo).all() and (w.lgn_xy <= hi).all())
        torch.testing.assert_close(w.retino_scale, torch.ones(2, dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 5, 32, generator=g, dtype=torch.float64)
    assert_matches_reference(model, x, g)
    model(x).sum().backward()
    assert all(float(w.lgn_xy.grad.abs().sum()) > 0 for w in blocks)
    model.assert_constraints()


@pytest.mark.parametrize("values,match", [
    ({"connectivity.lgn_positions": "guessed"}, "lgn_positions"),
    ({"connectivity.lgn_positions": "learned"}, "lgn_positions='learned' needs"),
    ({"connectivity.lgn_positions": "inferred"}, "lgn_positions='inferred' needs"),
    ({"connectivity.lgn_positions": "learned", "connectivity.input_rule": "gabor",
      "connectivity.input_storage": "sparse"}, "lgn_positions='learned' needs"),
])
def test_learned_lgn_positions_config_errors_name_the_key(values, match):
    from corticalrnn.errors import CorticalRNNError

    with pytest.raises(CorticalRNNError, match=match):
        model_config().with_values(values)


def test_learned_lgn_positions_refuse_a_fixed_footprint():
    pos, p = identity()
    rows = pos["V1_Exc_L4"]
    with pytest.raises(DataMismatchError, match="dense input storage"):
        GaborInputWeight(rows, p["V1_Exc_L4"], np.zeros(8, int), 1, np.zeros((32, 2)),
                         np.r_[np.ones(16), -np.ones(16)], 1.0, 1.2, 0.2, footprint=3.0, learn_positions=True)


def test_inferred_lgn_positions_are_fixed_and_in_the_units_frame():
    """lgn_positions = "inferred": the spec's LGN positions (laid out from data, cortical mm) are used as
    they are, with the retinotopic map at the identity, and the model matches the float64 reference."""
    pos, props = identity()
    rng = np.random.default_rng(3)
    for s in ("X_ON", "X_OFF"):
        pos[s] = rng.uniform(-0.2, 0.2, (len(pos[s]), 2))
    cfg = model_config(bin_ms=5.0, input_connectivity="gabor").with_values(
        {"connectivity.lgn_positions": "inferred"})
    model = CorticalRNN(cfg, SIZES, pos, props).double()
    blocks = [w for w in model.weights.values() if isinstance(w, GaborInputWeight)]
    assert blocks
    for w in blocks:
        assert not isinstance(w.lgn_xy, torch.nn.Parameter)
        torch.testing.assert_close(w.lgn_xy, torch.as_tensor(np.r_[pos["X_ON"], pos["X_OFF"]]))
        torch.testing.assert_close(w.retino_scale, torch.ones(2, dtype=torch.float64))
        torch.testing.assert_close(w.retino_offset, torch.zeros(2, dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    assert_matches_reference(model, torch.rand(2, 5, 32, generator=g, dtype=torch.float64), g)


def test_recorded_sizes_move_into_a_frame_without_store_positions():
    """Inferred / learned LGN positions are in cortical mm, recorded sizes and frequencies in the
    simulator's visual-field units: one factor rescales both (median size -> the default), keeping each
    unit's cycles per envelope and its size relative to the others."""
    from corticalrnn.model.identity import recorded_in_frame

    props = {"ori": np.zeros(3), "size": np.array([1.0, 2.0, 3.0]), "frequency": np.array([0.2, 0.1, np.nan])}
    out = recorded_in_frame(props, 0.05, 5.0)
    np.testing.assert_allclose(out["size"], [0.025, 0.05, 0.075])
    np.testing.assert_allclose(out["frequency"][:2], [8.0, 4.0])
    assert np.isnan(out["frequency"][2]) and out["ori"] is props["ori"]
    np.testing.assert_allclose(out["size"][:2] * out["frequency"][:2],
                               props["size"][:2] * props["frequency"][:2])
    only_freq = recorded_in_frame({"frequency": np.array([0.1, 0.3])}, 0.05, 5.0)  # median 0.2 -> 5.0
    np.testing.assert_allclose(only_freq["frequency"], [2.5, 7.5])
    assert set(recorded_in_frame({"ori": np.zeros(2)}, 0.05, 5.0)) == {"ori"}
