"""StreamingSummary (image chunks, sufficient statistics) against the in-memory reference functions:
summarize / compute_metrics, split_half_r, truth_comparison; equal to 1e-10."""

from __future__ import annotations

import math

import numpy as np
import pytest

from corticalrnn.evaluate import split_half_r, truth_comparison, truth_rows
from corticalrnn.metrics import StreamingSummary, summarize

TOL = 1e-10
LABELS = np.array(["V1_Exc_L4"] * 6 + ["V1_Inh_L4"] * 3 + ["V1_Exc_L2/3"] * 5 + ["V1_Inh_L2/3"] * 2)


def _data(k: int, per_trial: bool, seed: int = 0, n_img: int = 7, n_t: int = 9):
    rng = np.random.default_rng(seed)
    n = len(LABELS)
    rate = rng.uniform(0.05, 2, (n_img, 1, n_t, n))
    data = rng.poisson(rate, (n_img, k, n_t, n)).astype(np.float32)
    data[..., 3] = 0  # silent
    data[..., 5] = 1  # constant
    shape = (n_img, k, n_t, n) if per_trial else (n_img, n_t, n)
    pred = (rng.uniform(0.1, 2, shape) * (rate if per_trial else rate[:, 0])).astype(np.float32)
    pred[..., 7] = 0.5  # constant prediction
    observed = np.arange(n) % 2 == 0
    return data, pred, observed, rng


def _same_rows(ref, got):
    assert len(ref) == len(got)
    for a, b in zip(ref, got):
        assert a.keys() == b.keys(), set(a) ^ set(b)
        for key, x in a.items():
            y = b[key]
            if isinstance(x, float) and math.isnan(x):
                assert math.isnan(y), (a.get("predictor"), key, y)
            elif isinstance(x, float):
                assert abs(x - y) <= TOL * max(1.0, abs(x)), (a["population"], a.get("predictor"), key, x, y)
            else:
                assert x == y, (key, x, y)


def _stream(data, pred, observed, chunks, **kw):
    n_img, k, n_t, _ = data.shape
    s = StreamingSummary(LABELS, observed, k, n_t, **kw)
    a = 0
    for c in chunks:
        s.update(data[a:a + c], pred[a:a + c], None if "truth" not in kw else kw["_truth"][a:a + c])
        a += c
    assert a == n_img
    return s


@pytest.mark.parametrize("k,per_trial", [(4, True), (5, False), (1, True), (2, False)])
@pytest.mark.parametrize("chunks", [(7,), (1, 2, 4), (3, 1, 1, 1, 1)])
def test_streaming_equals_summarize(k, per_trial, chunks):
    data, pred, observed, rng = _data(k, per_trial)
    n_img, _, n_t, n = data.shape
    rates = rng.uniform(0.1, 1, n)
    bl = {"psth": rng.uniform(0.1, 1, (n_t, n)), "population": rng.uniform(0.1, 1, (n_t, n))}
    ref = summarize(data, pred, LABELS, observed, baseline_rates=rates, progress=False,
                    baselines={name: np.broadcast_to(v, (n_img, n_t, n)) for name, v in bl.items()})
    s = _stream(data, pred, observed, chunks, baseline_rates=rates, baselines=bl)
    got = s.summary()
    _same_rows(ref, got)
    assert got.skipped == ref.skipped and got.undefined == ref.undefined
    for name, res in ref.results.items():
        g = got.results[name]
        for metric, v in res.per_neuron.items():
            np.testing.assert_allclose(g.per_neuron[metric], v, rtol=TOL, atol=TOL,
                                       err_msg=f"{name} {metric}")
        np.testing.assert_allclose(g.ll_gain, res.ll_gain, rtol=TOL, atol=TOL)
        assert g.notes == res.notes
    for key, v in ref.results["model"].per_image.items():
        np.testing.assert_allclose(got.results["model"].per_image[key], v, rtol=TOL, atol=TOL, err_msg=key)
    np.testing.assert_allclose(s.split_half_r(), split_half_r(data), rtol=TOL, atol=TOL)
    np.testing.assert_allclose(s.spike_rates(), data.mean(axis=(0, 1, 2), dtype=np.float64), rtol=TOL)


def test_streaming_default_baseline_is_the_data_mean():
    """summarize's default mean-rate baseline (the test data's own means) from a first pass."""
    data, pred, observed, _ = _data(3, True, seed=3)
    ref = summarize(data, pred, LABELS, observed, progress=False)
    s = _stream(data, pred, observed, (2, 2, 3), baseline_rates=data.mean(axis=(0, 1, 2), dtype=np.float64))
    _same_rows(ref, s.summary())


def test_streaming_truth_equals_truth_comparison():
    data, pred, observed, rng = _data(4, True, seed=5)
    n_img, _, n_t, n = data.shape
    truth = rng.uniform(0.05, 2, (n_img, n_t, n))
    bl = {"psth": rng.uniform(0.1, 1, (n_t, n)), "population": rng.uniform(0.1, 1, (n_t, n))}
    rates = rng.uniform(0.1, 1, n)
    ref = truth_comparison(pred, data, truth, LABELS, observed,
                           {"mean_rate": np.broadcast_to(rates, (n_img, n_t, n)),
                            **{k: np.broadcast_to(v, (n_img, n_t, n)) for k, v in bl.items()}})
    s = StreamingSummary(LABELS, observed, 4, n_t, baseline_rates=rates, baselines=bl, truth=True)
    for a, b in ((0, 3), (3, 4), (4, 7)):
        s.update(data[a:b], pred[a:b], truth[a:b])
    got = truth_rows(s.truth_r(), LABELS, observed)
    _same_rows(ref, got)


def test_streaming_rejects_bad_chunks():
    from corticalrnn.errors import DataMismatchError

    data, pred, observed, _ = _data(3, True)
    s = StreamingSummary(LABELS, observed, 3, data.shape[2], baseline_rates=np.ones(len(LABELS)))
    with pytest.raises(DataMismatchError):
        s.update(data[:, :2], pred[:, :2])
    bad = pred.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(DataMismatchError, match="NaN"):
        s.update(data, bad)
    with pytest.raises(DataMismatchError, match="no images"):
        StreamingSummary(LABELS, observed, 3, 9, baseline_rates=np.ones(len(LABELS))).summary()


@pytest.mark.parametrize("per_trial", [True, False])
def test_streaming_new_definitions_equal_summarize(per_trial):
    """CC_max (Schoppe's reference code), both oracles and the FEV-thresholded FEVE statistics, with
    pure-noise neurons below the threshold and trials of different mean rate (pooled oracle differs)."""
    data, pred, observed, rng = _data(5, per_trial, seed=9, n_img=8, n_t=6)
    data[..., 10:13] = rng.poisson(1.0, size=data[..., 10:13].shape)  # pure noise: FEV below 0.15
    louder = [0, 1, 2, 4, 6, 8]  # not the silent / constant neurons (SP would be exactly 0: rounding)
    data[:, 2, :, louder] += rng.poisson(0.5, size=data[:, 2, :, louder].shape)  # one louder trial
    rates = data.mean(axis=(0, 1, 2), dtype=np.float64)
    ref = summarize(data, pred, LABELS, observed, progress=False)
    fev = ref.results["model"].per_neuron["fev"]
    assert not (fev[10:13] > 0.15).any() and (fev > 0.15).sum() >= 8  # NaN: no explainable variance
    got = _stream(data, pred, observed, (3, 1, 4), baseline_rates=rates).summary()
    _same_rows(ref, got)
    for metric in ("cc_max", "cc_norm", "oracle_r_loo_mean", "oracle_r_jackknife", "fev", "feve"):
        np.testing.assert_allclose(got.results["model"].per_neuron[metric],
                                   ref.results["model"].per_neuron[metric], rtol=TOL, atol=TOL,
                                   err_msg=metric)
    row = next(r for r in got if (r["population"], r["neurons"], r["predictor"]) == ("all", "all", "model"))
    assert row["feve_n"] == int((fev > 0.15).sum()) < row["fev_n"]


@pytest.mark.parametrize("per_trial", [True, False])
def test_model_population_mean_predictor_equals_a_naive_group_average(per_trial):
    """``group_mean=True``: "model_pop" scores, per neuron, the mean of the model's prediction over its
    population's observed (or hidden) neurons, built here with explicit loops and streamed as "model"."""
    data, pred, observed, _ = _data(4, per_trial, seed=3)
    naive = np.zeros(pred.shape, dtype=np.float64)
    for i in range(len(LABELS)):
        mates = [j for j in range(len(LABELS)) if LABELS[j] == LABELS[i] and observed[j] == observed[i]]
        naive[..., i] = sum(pred[..., j].astype(np.float64) for j in mates) / len(mates)
    rates = np.full(len(LABELS), 0.5)
    s = _stream(data, pred, observed, (2, 5), baseline_rates=rates, group_mean=True)
    ref = _stream(data, naive, observed, (7,), baseline_rates=rates)
    assert s.predictors == ["model", "baseline", "model_pop"]
    got, want = s.result("model_pop"), ref.result("model")
    for metric in ("trial_avg_r", "single_trial_r", "bits_per_spike", "cc_norm"):
        np.testing.assert_allclose(got.per_neuron[metric], want.per_neuron[metric], rtol=1e-9, atol=1e-12,
                                   equal_nan=True, err_msg=metric)
    # the model itself is unchanged by the extra predictor
    plain = _stream(data, pred, observed, (7,), baseline_rates=rates).result("model")
    np.testing.assert_allclose(s.result("model").per_neuron["trial_avg_r"], plain.per_neuron["trial_avg_r"],
                               rtol=1e-9, equal_nan=True)
