"""`corticalrnn bench checkpoint`: sizes follow the real parameters (16 bytes each: weights, EMA, Adam)."""

from __future__ import annotations

import pytest

from corticalrnn.bench.checkpoint import measure


@pytest.mark.parametrize("kind", ["dense", "localdense", "localid"])
def test_checkpoint_bytes_per_real_parameter(kind):
    r = measure(0.005, kind)
    assert 15.5 < r["bytes per real parameter"] < 20
    if kind != "dense":
        assert r["real parameters"] < r["parameters"] or kind == "localid"
