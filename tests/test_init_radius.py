"""The initial spectral radius above the exact-eigenvalue size: the estimate must find the E/I outlier
(its miss made dense models of more than 2,500 V1 neurons blow up after a step, on CPU and GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from modelconfigs import model_config

from corticalrnn.model import CorticalRNN
from corticalrnn.model import network as network_mod
from corticalrnn.model.dale import spectral_radius

SIZES = {"X_ON": 20, "X_OFF": 20, "V1_Exc_L4": 120, "V1_Inh_L4": 30, "V1_Exc_L2/3": 120, "V1_Inh_L2/3": 30}


def signed_v1(model: CorticalRNN) -> torch.Tensor:
    n = model.n_v1
    w = torch.zeros(n, n, dtype=torch.float64)
    for b in model.graph.blocks:
        if b.source == "v1":
            w[b.row0:b.row1, b.col0:b.col1] += model.weights[b.name].dense().detach().double()
    return w


@pytest.mark.parametrize("kw", [{}, {"connectivity": "distance", "weight_storage": "sparse"}])
def test_estimated_radius_matches_exact(monkeypatch, kw):
    rng = np.random.default_rng(0)
    pos = {s: rng.random((n, 2)) * 0.5 for s, n in SIZES.items()}
    exact = CorticalRNN(model_config(spectral_radius=0.9, **kw), SIZES, pos)
    monkeypatch.setattr(network_mod, "EXACT_RADIUS_MAX", 10)  # force the estimate
    estimated = CorticalRNN(model_config(spectral_radius=0.9, **kw), SIZES, pos)
    r_exact = spectral_radius(signed_v1(exact))
    r_est = spectral_radius(signed_v1(estimated))
    assert r_exact == pytest.approx(0.9, rel=1e-6)
    assert r_est == pytest.approx(0.9, rel=0.1)


def test_power_radius_finds_an_outlier_and_a_complex_pair():
    rng = np.random.default_rng(1)
    n = 300
    bulk = rng.normal(0, 0.3 / np.sqrt(n), (n, n))
    u = rng.normal(size=n)
    w = bulk + 5.0 * np.outer(u, u) / (u @ u)  # one outlier at about 5
    rot = np.zeros((n, n))
    rot[:2, :2] = [[0.0, -4.0], [4.0, 0.0]]  # a complex pair of modulus 4
    for m, expect in ((w, np.abs(np.linalg.eigvals(w)).max()), (bulk + rot, 4.0)):
        t = torch.as_tensor(m)
        assert network_mod.power_radius(lambda v, t=t: t @ v, n) == pytest.approx(expect, rel=0.02)
