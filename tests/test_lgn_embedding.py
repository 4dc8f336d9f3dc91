"""LGN input through a learned embedding (``input_rule = "embedding"``): the weight formula against a
naive float64 computation, identity (same labels -> same weights, no per-unit parameters), the model
against the float64 reference, and hidden units learning their input through observed units."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from modelconfigs import model_config
from test_identity_model import SIZES, assert_matches_reference, identity

from corticalrnn.errors import CorticalRNNError, DataMismatchError
from corticalrnn.model import CorticalRNN
from corticalrnn.model.lgn_embedding import EmbeddingInputWeight


def block(xy, ori, phase, pop, n_in=12, seed=0, **kw) -> EmbeddingInputWeight:
    args = {"input_gain": 0.5, "dim": 4, "n_frequencies": 5, "scale_mm": 0.2, "hidden": 6} | kw
    return EmbeddingInputWeight(xy, ori, phase, pop, int(np.max(pop)) + 1, n_in,
                                gen=torch.Generator().manual_seed(seed), **args)


def random_labels(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(-1, 1, (n, 2)), rng.uniform(0, np.pi, n), rng.uniform(0, 2 * np.pi, n),
            rng.integers(0, 2, n))


def test_weights_equal_a_naive_float64_computation():
    xy, ori, phase, pop = random_labels(9)
    phase[2] = np.nan  # not recorded: its harmonics are 0
    w = block(xy, ori, phase, pop)
    feats = w.features.double().numpy()
    n_f = 5
    lin1, lin2 = (m for m in w.label_net if isinstance(m, torch.nn.Linear))
    a1, b1 = lin1.weight.detach().double().numpy(), lin1.bias.detach().double().numpy()
    a2, b2 = lin2.weight.detach().double().numpy(), lin2.bias.detach().double().numpy()
    e, c = w.embedding.detach().double().numpy(), w.offset.detach().double().numpy()
    gain = np.log1p(np.exp(w.gain.detach().double().numpy()))
    expect = np.zeros((9, 12))
    for i in range(9):
        # independent features: harmonics and one-hot from the labels, Fourier part checked separately
        ph = [0.0, 0.0] if np.isnan(phase[i]) else [np.cos(phase[i]), np.sin(phase[i])]
        harm = [np.cos(2 * ori[i]), np.sin(2 * ori[i]), *ph]
        f = np.r_[feats[i, :2 * n_f], harm, [1.0 * (pop[i] == 0), 1.0 * (pop[i] == 1)]]
        h = a2 @ np.tanh(a1 @ f + b1) + b2
        for j in range(12):
            expect[i, j] = gain[pop[i]] * np.log1p(np.exp(h @ e[j] + c[j]))
    np.testing.assert_allclose(w.dense().detach().double().numpy(), expect, rtol=1e-5, atol=1e-7)
    # the Fourier part: a cos / sin pair per frequency
    np.testing.assert_allclose(feats[:, :n_f] ** 2 + feats[:, n_f:2 * n_f] ** 2, 1.0, atol=1e-6)


def test_same_labels_same_weights_and_rows_start_at_the_input_gain():
    xy, ori, phase, pop = random_labels(10)
    xy[7], ori[7], phase[7], pop[7] = xy[2], ori[2], phase[2], pop[2]
    w = block(xy, ori, phase, pop, n_in=30, input_gain=0.5)
    d = w.dense().detach()
    torch.testing.assert_close(d[7], d[2])
    assert not torch.allclose(d[3], d[2])
    assert (d >= 0).all()
    means = [float(d[torch.as_tensor(pop == p)].sum(1).mean()) for p in (0, 1)]
    np.testing.assert_allclose(means, 0.5, rtol=1e-5)
    # nothing per unit: the parameter count does not grow with the number of units
    n_params = sum(p.numel() for p in w.parameters())
    xy2, ori2, phase2, pop2 = random_labels(200, seed=1)
    assert sum(p.numel() for p in block(xy2, ori2, phase2, pop2, n_in=30).parameters()) == n_params


def test_hidden_units_learn_their_input_through_observed_units():
    """Target input rows are a smooth function of position (a retinotopic bump over a hidden LGN
    coordinate). Fitting only the observed rows makes the hidden rows follow their own targets: their
    correlation with the target is far above that of the initial weights and of a shuffled control."""
    rng = np.random.default_rng(0)
    n, n_in = 240, 40
    xy = rng.uniform(-1, 1, (n, 2))
    lgn = rng.uniform(-1, 1, (n_in, 2))
    target = np.exp(-((xy[:, None] - lgn[None]) ** 2).sum(-1) / (2 * 0.3 ** 2))
    target = torch.as_tensor(target / target.sum(1, keepdims=True), dtype=torch.float32)
    observed = rng.random(n) < 0.3
    w = block(xy, np.zeros(n), np.zeros(n), np.zeros(n, int), n_in=n_in, dim=8, n_frequencies=32,
              scale_mm=0.5, hidden=32, input_gain=1.0)

    def hidden_r(d: torch.Tensor) -> float:
        a, b = d[~observed], target[~observed]
        a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
        return float(((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).median())

    before = hidden_r(w.dense().detach())
    opt = torch.optim.Adam(w.parameters(), lr=0.01)
    for _ in range(400):
        loss = (w.dense()[observed] - target[observed]).pow(2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = hidden_r(w.dense().detach())
    shuffled = hidden_r(w.dense().detach()[torch.as_tensor(rng.permutation(n))])
    assert after > 0.8 and after > before + 0.5 and shuffled < 0.3, (before, after, shuffled)


@pytest.mark.parametrize("kw", [{}, {"connectivity": "feature", "neuron_model": "adaptive", "centered": True,
                                     "hidden_weights": "borrowed", "borrow_neighbours": 2}])
def test_embedding_model_matches_float64_reference(kw):
    pos, props = identity()
    cfg = model_config(bin_ms=5.0, input_connectivity="embedding", **kw).with_values(
        {"connectivity.embedding_dim": 3, "connectivity.embedding_frequencies": 4})
    observed = np.arange(sum(SIZES[s] for s in SIZES if s.startswith("V1"))) % 2 == 0
    model = CorticalRNN(cfg, SIZES, pos, props, observed=observed).double()
    assert isinstance(model.weights[next(iter(model.weights))], EmbeddingInputWeight) or any(
        isinstance(w, EmbeddingInputWeight) for w in model.weights.values())
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 5, 32, generator=g, dtype=torch.float64)
    assert_matches_reference(model, x, g)
    model.assert_constraints()


def test_embedding_model_is_seeded_and_needs_positions():
    pos, props = identity()
    cfg = model_config(bin_ms=5.0, input_connectivity="embedding")
    a, b = CorticalRNN(cfg, SIZES, pos, props), CorticalRNN(cfg, SIZES, pos, props)
    for (na, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(pa, pb, msg=na)
    with pytest.raises(DataMismatchError, match="embedding.*positions"):
        CorticalRNN(cfg, SIZES, None, props)


@pytest.mark.parametrize("key,value", [("embedding_dim", 0), ("embedding_frequencies", 0),
                                       ("embedding_hidden", 0), ("embedding_scale_mm", 0.0)])
def test_embedding_config_errors_name_the_key(key, value):
    with pytest.raises(CorticalRNNError, match=key):
        model_config().with_values({f"connectivity.{key}": value})
