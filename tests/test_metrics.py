"""corticalrnn.metrics: hand-computed examples, naive-loop references, properties, degenerate input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from corticalrnn.errors import DataMismatchError
from corticalrnn.metrics import (
    PER_NEURON_METRICS,
    compute_metrics,
    mean_rate_prediction,
    pooled_image_cc,
    population_course_oracle,
    population_label,
    split_half_beyond_course,
    summarize,
)

# ------------------------------------------------------------------ naive references (loops, float64


def _r(a: list[float], b: list[float]) -> float:
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    va = sum((x - ma) ** 2 for x in a)
    vb = sum((y - mb) ** 2 for y in b)
    return cov / math.sqrt(va * vb) if va > 0 and vb > 0 else float("nan")


def _var(a: list[float], ddof: int = 0) -> float:
    m = sum(a) / len(a)
    return sum((x - m) ** 2 for x in a) / (len(a) - ddof)


def _schoppe(trials: list[list[float]], pred: list[float], sp_ddof: int = 1) -> tuple[float, float, float]:
    """CC_abs, CC_max, CC_norm for N trials of one response vector as Schoppe et al.'s reference code
    computes them, line by line (calc_CCnorm.m, github.com/OSchoppe/CCnorm): Vy, Vyhat, Cyyhat divide by
    T; SP uses MATLAB's ``var`` (divides by T - 1); CCnorm = Cyyhat / sqrt(SP * Vyhat).
    ``sp_ddof=0``: the same formula with one normalisation throughout (our definition before)."""
    n = len(trials)
    t = len(trials[0])
    y = [sum(tr[j] for tr in trials) / n for j in range(t)]
    ey, eyhat = sum(y) / t, sum(pred) / t
    vy = sum((a - ey) ** 2 for a in y) / t
    vyhat = sum((b - eyhat) ** 2 for b in pred) / t
    cyyhat = sum((a - ey) * (b - eyhat) for a, b in zip(y, pred)) / t
    total = [sum(tr[j] for tr in trials) for j in range(t)]
    sp = (_var(total, sp_ddof) - sum(_var(tr, sp_ddof) for tr in trials)) / (n * (n - 1))
    cc_abs = cyyhat / math.sqrt(vy * vyhat)
    cc_norm = cyyhat / math.sqrt(sp * vyhat)
    cc_max = math.sqrt(sp / vy)
    return cc_abs, cc_max, cc_norm


def _np_oracle_jackknife(y: np.ndarray, j: int, eps: float = 0.0) -> float:
    """neuralpredictors' ``compute_oracle_corr`` (``oracle_corr_jackknife``) for neuron j, naively: per
    image the rows (trials x time bins) and their leave-one-out means, stacked over images, one
    ``corr`` (std with ddof 0 plus ``eps``, mean of the standardised product)."""
    n_img, k, n_t, _ = y.shape
    rows, oracle = [], []
    for i in range(n_img):
        for kk in range(k):
            for t in range(n_t):
                rows.append(float(y[i, kk, t, j]))
                oracle.append(sum(float(y[i, o, t, j]) for o in range(k) if o != kk) / (k - 1))
    m = len(rows)
    ma, mb = sum(rows) / m, sum(oracle) / m
    sa = math.sqrt(sum((a - ma) ** 2 for a in rows) / m) + eps
    sb = math.sqrt(sum((b - mb) ** 2 for b in oracle) / m) + eps
    return sum((a - ma) / sa * (b - mb) / sb for a, b in zip(rows, oracle)) / m


def _naive_neuron(y: np.ndarray, p: np.ndarray, j: int) -> dict[str, float]:
    """All per-neuron metrics of neuron j by explicit loops; p per trial [I, K, T, n]."""
    n_img, k, n_t, _ = y.shape
    trial = [[float(y[i, kk, t, j]) for i in range(n_img) for t in range(n_t)] for kk in range(k)]
    ptrial = [[float(p[i, kk, t, j]) for i in range(n_img) for t in range(n_t)] for kk in range(k)]
    pmean = [sum(pt[m] for pt in ptrial) / k for m in range(len(ptrial[0]))]
    out = {"single_trial_r": sum(_r(trial[kk], ptrial[kk]) for kk in range(k)) / k}
    cc_abs, cc_max, cc_norm = _schoppe(trial, pmean)
    out.update(trial_avg_r=cc_abs, cc_max=cc_max, cc_norm=cc_norm)
    noise = sum(
        _var([float(y[i, kk, t, j]) for kk in range(k)], ddof=1) for i in range(n_img) for t in range(n_t)
    ) / (n_img * n_t)
    allv = [x for tr in trial for x in tr]
    total = _var(allv, ddof=1)
    mse = sum((a - b) ** 2 for tr, pt in zip(trial, ptrial) for a, b in zip(tr, pt)) / len(allv)
    out["fev"] = (total - noise) / total
    out["feve"] = 1 - (mse - noise) / (total - noise)
    oracle = []
    for kk in range(k):
        others = [sum(trial[o][m] for o in range(k) if o != kk) / (k - 1) for m in range(len(trial[kk]))]
        oracle.append(_r(trial[kk], others))
    out["oracle_r_loo_mean"] = sum(oracle) / k
    out["oracle_r_jackknife"] = _np_oracle_jackknife(y, j)
    lam0 = sum(allv) / len(allv)
    gain = 0.0
    for tr, pt in zip(trial, ptrial):
        for a, b in zip(tr, pt):
            gain += a * math.log(max(b, 1e-9)) - max(b, 1e-9) - (a * math.log(lam0) - lam0)
    out["bits_per_spike"] = gain / (sum(allv) * math.log(2))
    return out


def _poisson_data(rng: np.random.Generator, n_img=3, k=6, n_t=8, n=5, scale=2.0):
    rate = rng.gamma(2.0, scale / 2, size=(n_img, n_t, n)) + 0.05
    y = rng.poisson(np.broadcast_to(rate[:, None], (n_img, k, n_t, n))).astype(np.int64)
    return rate, y


# ------------------------------------------------------------------ hand-computed example
#
# One image, two trials of three bins, one neuron: R1 = [1, 2, 3], R2 = [1, 0, 2].
# Schoppe's reference code (MATLAB var: ddof 1 in SP): Sum = [2, 2, 5]: var = 3; var(R1) = var(R2) = 1;
# SP = (3 - 2) / (2*1) = 1/2. Mean = [1, 1, 2.5]: Vy (over T) = 0.5. CC_max = sqrt(0.5 / 0.5) = 1.
# (ddof 0 throughout would give SP = 1/3, CC_max = sqrt(2/3): the factor sqrt(T / (T - 1)).)
# Prediction P = [0, 1, 2]: r(mean, P) = 1.5 / sqrt(1.5 * 2) = sqrt(3)/2 = CC_abs = CC_norm.
# single-trial r: r(R1, P) = 1, r(R2, P) = 0.5 -> 0.75.  Oracle: r(R1, R2) = 0.5 both ways -> 0.5;
# pooled over both trials (neuralpredictors): r([1,2,3,1,0,2], [1,0,2,1,2,3]) = 0.5 / 5.5 = 1/11.
# FEVE: per-bin trial variances (ddof 1) 0, 2, 0.5 -> noise 5/6; total variance of the six values
# (ddof 1) 5.5/5 = 1.1; MSE = (1+1+1+1+1+0)/6 = 5/6 -> FEVE = 1 - 0/(1.1 - 5/6) = 1;
# FEV = (1.1 - 5/6)/1.1 = 8/33. With P = 0: MSE = 19/6 -> FEVE = 1 - (14/6)/(4/15) = -7.75.

HAND_Y = np.array([[1, 2, 3], [1, 0, 2]], dtype=np.int64).reshape(1, 2, 3, 1)


def test_hand_example_correlations_and_ccnorm() -> None:
    pred = np.array([0.0, 1.0, 2.0]).reshape(1, 3, 1)
    res = compute_metrics(HAND_Y, pred)
    m = {k: float(v[0]) for k, v in res.per_neuron.items()}
    assert m["single_trial_r"] == pytest.approx(0.75, abs=1e-12)
    assert m["trial_avg_r"] == pytest.approx(math.sqrt(3) / 2, abs=1e-12)
    assert m["cc_max"] == pytest.approx(1.0, abs=1e-12)
    assert m["cc_norm"] == pytest.approx(math.sqrt(3) / 2, abs=1e-12)
    assert m["oracle_r_loo_mean"] == pytest.approx(0.5, abs=1e-12)
    assert m["oracle_r_jackknife"] == pytest.approx(1 / 11, abs=1e-12)
    assert m["feve"] == pytest.approx(1.0, abs=1e-12)
    assert m["fev"] == pytest.approx(8 / 33, abs=1e-12)
    zero = compute_metrics(HAND_Y, np.zeros((1, 3, 1)))
    assert zero.per_neuron["feve"][0] == pytest.approx(-7.75, abs=1e-12)
    # one neuron, one image: the thesis' pooled CC is the per-neuron CC
    assert res.per_image["thesis_cc_norm"][0] == pytest.approx(math.sqrt(3) / 2, abs=1e-12)
    assert res.per_image["thesis_cc_max"][0] == pytest.approx(1.0, abs=1e-12)


def test_hand_example_bits_per_spike() -> None:
    # P = [0.5, 1, 2] in both trials; mean rate 9 spikes / 6 bins = 1.5.
    # LL(P) - LL(1.5) = (2 ln .5 - 1) + (2 ln 1 - 2) + (5 ln 2 - 4) - (9 ln 1.5 - 9)   [log y! cancels]
    gain = (2 * math.log(0.5) - 1) + (0 - 2) + (5 * math.log(2) - 4) - (9 * math.log(1.5) - 9)
    res = compute_metrics(HAND_Y, np.array([0.5, 1.0, 2.0]).reshape(1, 3, 1))
    assert res.per_neuron["bits_per_spike"][0] == pytest.approx(gain / (9 * math.log(2)), abs=1e-12)
    assert res.pooled["co_bps"] == pytest.approx(gain / (9 * math.log(2)), abs=1e-12)


# ------------------------------------------------------------------ against naive loops


@pytest.mark.parametrize("per_trial", [False, True])
def test_per_neuron_metrics_match_naive_loops(per_trial: bool) -> None:
    rng = np.random.default_rng(1)
    rate, y = _poisson_data(rng)
    if per_trial:
        pred = rate[:, None] * rng.uniform(0.5, 1.5, size=y.shape)
        full = pred
    else:
        pred = rate * rng.uniform(0.5, 1.5, size=rate.shape)
        full = np.broadcast_to(pred[:, None], y.shape)
    res = compute_metrics(y, pred, chunk=2)  # chunks of 2 neurons exercise the accumulation
    for j in range(y.shape[-1]):
        ref = _naive_neuron(y, full, j)
        for name in PER_NEURON_METRICS:
            assert res.per_neuron[name][j] == pytest.approx(ref[name], rel=1e-9, abs=1e-12), (name, j)


def test_pooled_thesis_cc_matches_naive() -> None:
    rng = np.random.default_rng(2)
    rate, y = _poisson_data(rng, n_img=2, k=4, n_t=5, n=7)
    pred = rate * rng.uniform(0.5, 1.5, size=rate.shape)
    got = pooled_image_cc(y, pred)
    for i in range(y.shape[0]):
        trials = [[float(v) for v in y[i, k].ravel()] for k in range(y.shape[1])]
        cc_abs, cc_max, cc_norm = _schoppe(trials, [float(v) for v in pred[i].ravel()])
        assert got["thesis_cc_abs"][i] == pytest.approx(cc_abs, rel=1e-9)
        assert got["thesis_cc_max"][i] == pytest.approx(cc_max, rel=1e-9)
        assert got["thesis_cc_norm"][i] == pytest.approx(cc_norm, rel=1e-9)
    # chunked accumulation over neurons inside compute_metrics gives the same numbers
    res = compute_metrics(y, pred, chunk=3)
    np.testing.assert_allclose(res.per_image["thesis_cc_norm"], got["thesis_cc_norm"], rtol=1e-10)
    assert res.pooled["thesis_cc_norm"] == pytest.approx(float(np.mean(got["thesis_cc_norm"])))


# ------------------------------------------------------------------ properties


def test_perfect_prediction() -> None:
    rng = np.random.default_rng(3)
    _, y = _poisson_data(rng)
    res = compute_metrics(y, y.astype(float))
    np.testing.assert_allclose(res.per_neuron["single_trial_r"], 1.0, atol=1e-12)
    np.testing.assert_allclose(res.per_neuron["trial_avg_r"], 1.0, atol=1e-12)
    # deterministic responses (identical trials) predicted exactly: FEVE = 1, FEV = 1
    rep = np.repeat(y[:, :1], 3, axis=1)
    det = compute_metrics(rep, rep[:, 0].astype(float))
    np.testing.assert_allclose(det.per_neuron["feve"], 1.0, atol=1e-12)
    np.testing.assert_allclose(det.per_neuron["fev"], 1.0, atol=1e-12)


def test_trial_mean_prediction_feve_formula() -> None:
    # predicting the trial mean: MSE = (K-1)/K * noise, so FEVE = 1 + noise / (K (total - noise))
    rng = np.random.default_rng(4)
    _, y = _poisson_data(rng, k=5)
    k = y.shape[1]
    res = compute_metrics(y, y.mean(axis=1))
    noise = y.var(axis=1, ddof=1).mean(axis=(0, 1))
    total = y.reshape(-1, y.shape[-1]).var(axis=0, ddof=1)
    np.testing.assert_allclose(res.per_neuron["feve"], 1 + noise / (k * (total - noise)), rtol=1e-10)


def test_mean_rate_prediction_scores_zero_bits() -> None:
    rng = np.random.default_rng(5)
    _, y = _poisson_data(rng)
    res = compute_metrics(y, mean_rate_prediction(y))
    assert res.pooled["co_bps"] == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(res.per_neuron["bits_per_spike"], 0.0, atol=1e-12)
    # the constant prediction has no correlation; it is reported as undefined, not as an error
    assert np.isnan(res.per_neuron["trial_avg_r"]).all()
    assert res.undefined["trial_avg_r"] == {"constant prediction": y.shape[-1]}
    # the model's and the baseline's thesis scores coincide when the model is the baseline
    assert res.pooled["thesis_cc_abs"] == pytest.approx(res.pooled["baseline_thesis_cc_abs"])


def test_true_rate_reaches_ceilings() -> None:
    rng = np.random.default_rng(6)
    rate, y = _poisson_data(rng, n_img=10, k=30, n_t=20, n=6, scale=3.0)
    res = compute_metrics(y, rate)
    cc = res.per_neuron["cc_norm"]
    assert np.all(np.abs(cc - 1) < 0.05), cc
    assert np.all(np.abs(res.per_neuron["feve"] - 1) < 0.1)
    # the leave-one-out mean is a noisy estimate of the rate: its r is a lower bound on the truth's
    assert np.all(res.per_neuron["oracle_r_loo_mean"] <= res.per_neuron["single_trial_r"] + 1e-9)
    assert res.pooled["co_bps"] > 0
    # predicting each trial with the mean of the other trials gives exactly the oracle correlation
    loo = (y.sum(axis=1, keepdims=True) - y) / (y.shape[1] - 1)
    res_loo = compute_metrics(y, loo)
    np.testing.assert_allclose(res_loo.per_neuron["single_trial_r"], res.per_neuron["oracle_r_loo_mean"],
                               rtol=1e-12)


def test_thesis_pooled_cc_rewards_mean_rate() -> None:
    # heterogeneous mean rates across neurons make the pooled correlation of a constant baseline high
    rng = np.random.default_rng(7)
    base = rng.gamma(1.0, 3.0, size=40) + 0.1
    rate = base * (1 + 0.3 * rng.standard_normal((3, 10, 40))).clip(0.1)
    y = rng.poisson(np.broadcast_to(rate[:, None], (3, 5, 10, 40)))
    res = compute_metrics(y, rate)
    assert res.pooled["baseline_thesis_cc_abs"] > 0.8
    assert res.pooled["thesis_cc_abs"] > res.pooled["baseline_thesis_cc_abs"]
    assert np.nanmedian(res.per_neuron["trial_avg_r"]) > 0.5


# ------------------------------------------------------------------ degenerate input


def test_single_trial_skips_repeat_metrics() -> None:
    rng = np.random.default_rng(8)
    rate, y = _poisson_data(rng, k=1)
    res = compute_metrics(y, rate)
    for name in ("cc_max", "cc_norm", "fev", "feve", "oracle_r_loo_mean", "oracle_r_jackknife",
                 "thesis_cc_max", "thesis_cc_norm"):
        assert "2 trials" in res.skipped[name]
    for name in ("cc_max", "cc_norm", "feve", "oracle_r_loo_mean", "oracle_r_jackknife"):
        assert np.isnan(res.per_neuron[name]).all()
        assert name not in res.undefined
    assert np.isfinite(res.per_neuron["single_trial_r"]).all()
    assert np.isfinite(res.per_neuron["bits_per_spike"]).all()
    assert np.isfinite(res.pooled["thesis_cc_abs"])


def test_silent_and_constant_neurons_are_reported() -> None:
    rng = np.random.default_rng(9)
    rate, y = _poisson_data(rng, n=4)
    y[..., 0] = 0  # silent
    y[..., 1] = 2  # constant, not silent
    pred = rate.copy()
    pred[..., 2] = 1.0  # constant prediction
    res = compute_metrics(y, pred)
    assert res.undefined["trial_avg_r"] == {
        "silent neuron (no spikes)": 1,
        "constant response": 1,
        "constant prediction": 1,
    }
    assert np.isnan(res.per_neuron["bits_per_spike"][0])
    assert np.isfinite(res.per_neuron["trial_avg_r"][3])
    assert res.undefined["cc_norm"]["silent neuron (no spikes)"] == 1
    # the silent neuron still counts in the pooled likelihood (predicting spikes for it costs)
    assert res.co_bps(np.array([0, 3])) < res.co_bps(np.array([3]))


def test_all_silent_data() -> None:
    y = np.zeros((2, 3, 4, 2), dtype=np.int64)
    res = compute_metrics(y, np.ones((2, 4, 2)))
    assert "co_bps" in res.skipped and math.isnan(res.pooled["co_bps"])
    assert all(np.isnan(v).all() for v in res.per_neuron.values())


def test_bad_shapes_and_values() -> None:
    y = np.zeros((2, 3, 4, 5))
    with pytest.raises(DataMismatchError, match="fits neither"):
        compute_metrics(y, np.zeros((2, 4, 4)))
    with pytest.raises(DataMismatchError, match=r"\[images, trials, time, neurons\]"):
        compute_metrics(y[0], np.zeros((3, 4, 5)))
    bad = np.zeros((2, 4, 5))
    bad[0, 0, 0] = np.nan
    with pytest.raises(DataMismatchError, match="NaN"):
        compute_metrics(y, bad)
    with pytest.raises(DataMismatchError, match="baseline rates"):
        mean_rate_prediction(y, np.ones(3))


# ------------------------------------------------------------------ summary table


def test_summary_table_per_population_and_group() -> None:
    rng = np.random.default_rng(10)
    rate, y = _poisson_data(rng, n=12)
    sheets = ["V1_Exc_L4"] * 4 + ["V1_Inh_L4"] * 2 + ["V1_Exc_L23"] * 4 + ["V1_Inh_L2/3"] * 2
    observed = np.zeros(12, dtype=bool)
    observed[[0, 1, 4, 6, 10]] = True
    pred = rate * rng.uniform(0.8, 1.2, size=rate.shape)
    rows = summarize(y, pred, sheets, observed, progress=False)
    keys = {(r["population"], r["neurons"], r["predictor"]) for r in rows}
    for pop in ("L4 E", "L4 I", "L2/3 E", "L2/3 I"):
        for group in ("observed", "hidden", "all"):
            assert (pop, group, "model") in keys and (pop, group, "baseline") in keys
    assert ("all", "all", "model") in keys
    assert [r["population"] for r in rows][:6] == ["L4 E"] * 6
    full = compute_metrics(y, pred)
    row = next(
        r for r in rows if (r["population"], r["neurons"], r["predictor"]) == ("L2/3 E", "hidden", "model")
    )
    idx = np.array([7, 8, 9])
    assert row["n"] == 3
    assert row["trial_avg_r_median"] == pytest.approx(float(np.median(full.per_neuron["trial_avg_r"][idx])))
    above = idx[full.per_neuron["fev"][idx] > 0.15]
    assert row["feve_n"] == above.size
    assert row["feve_mean"] == pytest.approx(float(np.mean(full.per_neuron["feve"][above])))
    assert row["co_bps"] == pytest.approx(full.co_bps(idx))
    thesis = pooled_image_cc(y[..., idx], pred[..., idx])
    assert row["thesis_cc_norm"] == pytest.approx(float(np.mean(thesis["thesis_cc_norm"])))
    base = next(
        r for r in rows if (r["population"], r["neurons"], r["predictor"]) == ("all", "all", "baseline")
    )
    assert base["co_bps"] == pytest.approx(0.0, abs=1e-12)
    assert base["trial_avg_r_n"] == 0  # undefined for a constant prediction
    assert population_label("V1_Inh_L23") == "L2/3 I"
    np.testing.assert_array_equal(rows.results["model"].per_neuron["feve"], full.per_neuron["feve"])
    assert json.loads(json.dumps(list(rows)))[0]["population"] == "L4 E"


def test_summary_rejects_mismatched_labels() -> None:
    y = np.zeros((1, 2, 3, 4))
    with pytest.raises(DataMismatchError, match="one entry per neuron"):
        summarize(y, np.zeros((1, 3, 4)), ["V1_Exc_L4"] * 3, np.ones(4, bool), progress=False)


def test_negative_prediction_is_noted_and_clipped() -> None:
    y = HAND_Y
    res = compute_metrics(y, np.array([-1.0, 1.0, 2.0]).reshape(1, 3, 1))
    assert any("negative" in n for n in res.notes)
    assert np.isfinite(res.per_neuron["bits_per_spike"][0])  # clipped at 1e-9: very bad, but finite
    assert res.per_neuron["bits_per_spike"][0] < -1


# ------------------------------------------------------------------ citable definitions


def test_cc_max_is_schoppes_reference_code_not_one_ddof() -> None:
    """CC_max / CC_norm equal calc_CCnorm.m (naive transliteration) to rounding; the one-ddof formula
    (our definition before) is sqrt((T - 1) / T) of it: 0.24 % low for T = 208 bins."""
    rng = np.random.default_rng(11)
    rate, y = _poisson_data(rng, n_img=26, k=5, n_t=8, n=4)
    res = compute_metrics(y, rate)
    t = 26 * 8
    for j in range(y.shape[-1]):
        trials = [[float(v) for v in y[:, kk, :, j].ravel()] for kk in range(y.shape[1])]
        pred = [float(v) for v in rate[..., j].ravel()]
        cc_abs, cc_max, cc_norm = _schoppe(trials, pred)
        assert res.per_neuron["cc_max"][j] == pytest.approx(cc_max, rel=1e-12)
        assert res.per_neuron["cc_norm"][j] == pytest.approx(cc_norm, rel=1e-12)
        assert res.per_neuron["trial_avg_r"][j] == pytest.approx(cc_abs, rel=1e-12)
        one_ddof = _schoppe(trials, pred, sp_ddof=0)[1]
        assert one_ddof / cc_max == pytest.approx(math.sqrt((t - 1) / t), rel=1e-12)
        assert 100 * (1 - one_ddof / cc_max) == pytest.approx(0.2407, abs=1e-4)


def test_oracle_variants_named_for_their_definitions() -> None:
    """oracle_r_jackknife is neuralpredictors' compute_oracle_corr (naive loops; with its eps=1e-8 on the
    standard deviations to 1e-7), oracle_r_loo_mean the per-trial LOO r averaged; they differ."""
    rng = np.random.default_rng(12)
    rate, y = _poisson_data(rng, n_img=6, k=4, n_t=5, n=3)
    y[:, 1] += rng.poisson(0.7, size=y[:, 1].shape)  # one trial with a higher rate: pooling differs
    res = compute_metrics(y, rate)
    for j in range(y.shape[-1]):
        assert res.per_neuron["oracle_r_jackknife"][j] == pytest.approx(_np_oracle_jackknife(y, j), rel=1e-12)
        assert res.per_neuron["oracle_r_jackknife"][j] == pytest.approx(
            _np_oracle_jackknife(y, j, eps=1e-8), abs=1e-7)
    diff = res.per_neuron["oracle_r_loo_mean"] - res.per_neuron["oracle_r_jackknife"]
    assert np.all(np.abs(diff) > 1e-4), diff


def test_feve_summary_uses_sensorium_fev_threshold() -> None:
    """Summary FEVE statistics cover only neurons with FEV > 0.15 (count in feve_n); FEV over all."""
    from corticalrnn.metrics import FEV_THRESHOLD

    assert FEV_THRESHOLD == 0.15
    rng = np.random.default_rng(13)
    rate, y = _poisson_data(rng, n_img=8, k=6, n_t=6, n=6, scale=4.0)
    y[..., 4:] = rng.poisson(1.0, size=y[..., 4:].shape)  # pure noise: FEV ~ 0, FEVE of noise
    pred = rate * rng.uniform(0.8, 1.2, size=rate.shape)
    rows = summarize(y, pred, ["V1_Exc_L4"] * 6, np.ones(6, bool), progress=False)
    full = rows.results["model"].per_neuron
    above = full["fev"] > 0.15
    assert above[:4].all() and not above[4:].any()
    row = next(r for r in rows if (r["population"], r["neurons"], r["predictor"]) == ("all", "all", "model"))
    assert row["feve_n"] == 4 and row["fev_n"] == int(np.isfinite(full["fev"]).sum())
    assert row["feve_median"] == pytest.approx(float(np.median(full["feve"][:4])))
    assert row["feve_mean"] == pytest.approx(float(np.mean(full["feve"][:4])))
    assert row["fev_mean"] == pytest.approx(float(np.nanmean(full["fev"])))


def test_split_half_beyond_course_matches_naive_and_separates_identity() -> None:
    """Against a per-neuron loop (np.polyfit residuals, np.corrcoef), and on data where some hidden
    neurons follow only their population's course and others add a reliable response of their own."""
    rng = np.random.default_rng(3)
    n_img, k, n_t, n = 4, 10, 20, 40
    labels = np.array(["L4 E"] * 24 + ["L4 I"] * 16, dtype=object)
    observed = rng.random(n) < 0.4
    observed[[0, 24]] = True
    course = {p: rng.gamma(2.0, 1.0, (n_img, 1, n_t)) for p in ("L4 E", "L4 I")}
    own = (rng.random(n) < 0.5) & ~observed  # an own response in an observed unit would enter the course
    rate = np.stack([course[p] * (0.5 + rng.random()) for p in labels], -1)  # [I, 1, T, N]
    rate[..., own] += 3.0 * rng.gamma(2.0, 1.0, (n_img, 1, n_t, int(own.sum())))
    data = rng.poisson(np.broadcast_to(rate, (n_img, k, n_t, n))).astype(float)
    data[..., 5] = 0.0  # a silent neuron: undefined
    got = split_half_beyond_course(data, labels, observed)

    halves = [data[:, h::2].mean(1).reshape(-1, n) for h in (0, 1)]
    for j in range(n):
        if j == 5:
            assert np.isnan(got["raw"][j]) and np.isnan(got["beyond"][j])
            continue
        src = (labels == labels[j]) & observed
        src[j] = False  # an observed neuron is left out of its own course
        res = []
        for h in halves:
            c = h[:, src].mean(1)
            slope, icpt = np.polyfit(c, h[:, j], 1)
            res.append(h[:, j] - (slope * c + icpt))
        assert got["raw"][j] == pytest.approx(np.corrcoef(halves[0][:, j], halves[1][:, j])[0, 1], abs=1e-12)
        assert got["beyond"][j] == pytest.approx(np.corrcoef(res[0], res[1])[0, 1], abs=1e-9)
    ok = np.isfinite(got["beyond"])
    assert np.mean(got["beyond"][own & ok]) > 0.5 > 0.1 > abs(np.mean(got["beyond"][~own & ok]))
    assert np.isnan(split_half_beyond_course(data[:, :1], labels, observed)["beyond"]).all()
    # undefined, not rounding noise: a constant half, and a lone observed neuron (no other source)
    const = data.copy()
    const[:, 0::2, :, 7] = 0.3
    assert np.isnan(split_half_beyond_course(const, labels, observed)["beyond"][7])
    lone = np.zeros(n, bool)
    lone[0] = True
    got = split_half_beyond_course(data, labels, lone)
    assert np.isnan(got["beyond"][0]) and np.isfinite(got["beyond"][1:5]).all()


def test_population_course_oracle_matches_a_loop() -> None:
    """Each neuron's predictor is the mean of the other (non-silent) members' z-scored trial averages."""
    rng = np.random.default_rng(4)
    n_img, k, n_t, n = 3, 4, 7, 9
    labels = np.array(["a"] * 5 + ["b"] * 3 + ["c"], dtype=object)
    data = rng.poisson(1.5, (n_img, k, n_t, n)).astype(float)
    data[..., 2] = 0.0  # silent: left out of the others' course
    data[..., 3] = 0.3  # constant, not silent: left out too
    got = population_course_oracle(data, labels)
    assert got.shape == (n_img, n_t, n) and got.min() >= 0
    avg = data.mean(1).reshape(-1, n)
    for j in range(n):
        others = [i for i in range(n) if labels[i] == labels[j] and i != j and np.ptp(avg[:, i]) > 0]
        if not others:
            assert np.ptp(got[..., j]) == 0
            continue
        want = np.mean([(avg[:, i] - avg[:, i].mean()) / avg[:, i].std() for i in others], axis=0)
        assert np.corrcoef(got[..., j].ravel(), want)[0, 1] == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose(got[..., j].ravel() - want, (got[..., j].ravel() - want)[0], atol=1e-12)
