"""HiddenRatePrior against a naive float64 reference; it uses observed data only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from corticalrnn.errors import CorticalRNNError
from corticalrnn.train.rate_prior import EPS, HiddenRatePrior

LABELS = np.array(["E4", "E4", "E4", "I4", "I4", "E23", "E23"])
OBSERVED = torch.tensor([True, False, False, True, False, False, False])  # E23 has no observed unit


def naive(rates: np.ndarray, target: np.ndarray) -> float:
    terms = []
    for h in range(len(LABELS)):
        if OBSERVED[h]:
            continue
        same = [o for o in range(len(LABELS)) if OBSERVED[o] and LABELS[o] == LABELS[h]]
        if not same:
            continue
        want = sum(target[:, :, o].mean() for o in same) / len(same)
        terms.append((math.log(rates[:, :, h].mean() + EPS) - math.log(want + EPS)) ** 2)
    return sum(terms) / len(terms)


def test_matches_naive_reference_and_ignores_hidden_data():
    g = torch.Generator().manual_seed(0)
    rates = torch.rand(3, 5, 7, generator=g, dtype=torch.float64) * 2
    target = torch.poisson(torch.rand(3, 5, 7, generator=g, dtype=torch.float64) * 3, generator=g)
    prior = HiddenRatePrior(LABELS, OBSERVED)
    got = prior(rates.float(), target.float())
    assert float(got) == pytest.approx(naive(rates.numpy(), target.numpy()), rel=1e-5)
    target[..., ~OBSERVED] = float("nan")  # hidden neurons' data is never read
    assert float(prior(rates.float(), target.float())) == pytest.approx(float(got), rel=1e-6)


def test_gradient_reaches_only_hidden_units_with_a_target():
    rates = torch.full((2, 4, 7), 0.5, requires_grad=True)
    target = torch.ones(2, 4, 7)
    HiddenRatePrior(LABELS, OBSERVED)(rates, target).backward()
    moved = rates.grad.abs().sum(dim=(0, 1)) > 0
    assert moved.tolist() == [False, True, True, False, True, False, False]


def test_wrong_label_count_is_an_error():
    with pytest.raises(CorticalRNNError, match="labels"):
        HiddenRatePrior(LABELS[:3], OBSERVED)
