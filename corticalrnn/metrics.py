"""Per-neuron and pooled metrics of predicted against recorded spike counts (numpy, float64).

Torch-free. Data are spike counts shaped ``[images, trials, time, neurons]``; a prediction is either
per trial (same shape; e.g. a free-running model driven by each trial's LGN input) or trial-averaged
``[images, time, neurons]`` (used for every trial). Time bins of different images are concatenated
("images × time" below). All arithmetic is float64, in chunks of neurons so that full-size
populations fit in memory.

Per-neuron metrics (:func:`compute_metrics`, NaN where undefined, reasons counted):

``single_trial_r``
    Pearson r between one trial's response and the prediction for that trial over images × time,
    computed per trial and averaged over the trials where it is defined.
``trial_avg_r``
    Pearson r between the trial-averaged response and the trial-averaged prediction over
    images × time. This is also Schoppe et al.'s CC_abs.
``cc_max``, ``cc_norm``
    Schoppe et al. (2016), exactly as their reference code ``calc_CCnorm.m``
    (github.com/OSchoppe/CCnorm): with N trials R_n (vectors of T entries, here images × time),
    SP = (Var₁(Σ_n R_n) − Σ_n Var₁(R_n)) / (N (N − 1)) with MATLAB's ``var`` (Var₁: divides by
    T − 1), Var(ȳ) of the trial mean dividing by T, CC_max = sqrt(SP / Var(ȳ)),
    CC_norm = CC_abs / CC_max (= Cov(ȳ, ŷ) / sqrt(SP Var(ŷ)), as the reference computes it).
    The reference's two normalisations make CC_max sqrt(T / (T − 1)) larger (0.24 % for T = 208)
    than the same formula with one ddof throughout. Undefined (NaN) when SP ≤ 0, where the
    reference prints a warning and returns CC_max = 0, CC_norm = NaN.
``fev``, ``feve``
    Sensorium 2022 (neuralpredictors ``get_FEV``), with each (image, time bin) a repeated
    condition: noise variance σ² = mean over conditions of the across-trial variance (ddof 1),
    total variance V = variance over all images, trials and bins (ddof 1), MSE = mean squared error
    over the same; FEV = (V − σ²)/V, FEVE = 1 − (MSE − σ²)/(V − σ²). Undefined when V ≤ σ².
    The ceiling 1 holds for trial-independent predictions; a per-trial prediction that tracks
    trial-to-trial variability (the data itself, or a model driven by each trial's input) can
    exceed it, and the trial mean of the data scores 1 + σ²/(K (V − σ²)). Per neuron both are
    reported for every neuron; the summary's FEVE statistics (``feve_median``, ``feve_mean``,
    ``feve_n``) cover only neurons with FEV > :data:`FEV_THRESHOLD` (0.15), as Sensorium 2022 and
    neuralpredictors' ``get_FEV(threshold=...)`` average FEVE (a neuron of pure noise would otherwise
    enter with FEVE of −100s); the FEV itself is summarised over every neuron (``fev_*``).
``bits_per_spike``
    Poisson log-likelihood gain of the prediction over the neuron's constant mean rate (measured on
    the same data), in bits per recorded spike (Pei et al. 2021, NLB): (LL(pred) − LL(mean)) /
    (n_spikes · ln 2). Rates are clipped at 1e-9 as NLB does. ``co_bps`` pools over neurons
    (sum of gains / sum of spikes).
``oracle_r_loo_mean``
    Leave-one-trial-out oracle, r per trial then averaged: r between each trial and the mean of
    the other trials over images × time, averaged over trials (defined like ``single_trial_r``, so
    they compare).
``oracle_r_jackknife``
    neuralpredictors' oracle (``compute_oracle_corr``, later ``oracle_corr_jackknife`` in
    ``neuralpredictors.measures.np_functions``; Sensorium's "oracle correlation"): the same
    leave-one-trial-out means, but one r over all trials pooled (images × trials × time), i.e.
    ``corr(vstack(responses), vstack(oracles))``; neuralpredictors adds 1e-8 to each standard
    deviation, left out here (relative effect ~1e-8 / std). It differs from ``oracle_r_loo_mean`` by
    up to a few 0.001 (trial-to-trial differences in mean rate enter the pooled r).

Pooled per-image metrics of the earlier thesis (:func:`pooled_image_cc`): the thesis reported one
correlation over all neurons and time bins per image. We reconstruct it by applying Schoppe's
formulas to the pooled vector: for image i and trial n, R_n is the image's response flattened
over (time bins × neurons); CC_abs = r(mean_n R_n, prediction), SP and CC_max as above with
variances over the pooled entries, CC_norm = CC_abs / CC_max; the metrics are reported per image
and averaged over images. Because the pooled vector's variance is dominated by differences in
mean rate between neurons, a constant per-neuron mean rate already scores high; that baseline is
always computed beside the model (``baseline_thesis_*``).

Degenerate input never raises: metrics that need repeated trials are listed in
``MetricResult.skipped`` with the reason when the data has one trial; per-neuron NaNs are
counted by reason in ``MetricResult.undefined`` (silent neuron, constant response, constant
prediction, no signal power, no explainable variance).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from corticalrnn.errors import DataMismatchError
from corticalrnn.sheets import V1_SHEETS, population_label

PER_NEURON_METRICS: tuple[str, ...] = (
    "single_trial_r",
    "trial_avg_r",
    "cc_max",
    "cc_norm",
    "fev",
    "feve",
    "bits_per_spike",
    "oracle_r_loo_mean",
    "oracle_r_jackknife",
)
NEEDS_REPEATS: tuple[str, ...] = ("cc_max", "cc_norm", "fev", "feve", "oracle_r_loo_mean",
                                  "oracle_r_jackknife")
FEV_THRESHOLD = 0.15  # Sensorium 2022: FEVE is averaged over neurons with FEV above this
THESIS_METRICS: tuple[str, ...] = ("thesis_cc_abs", "thesis_cc_max", "thesis_cc_norm")
MIN_RATE = 1e-9  # NLB's floor for zero predicted rates
_REL_ZERO = 1e-20  # variance below this fraction of the sum of squares counts as zero
_CHUNK_ELEMENTS = 4_000_000  # float64 elements of one data chunk (~32 MB)


@dataclass
class MetricResult:
    """Metrics of one prediction. ``per_neuron[name]`` is float64 ``[neurons]`` (NaN: undefined)."""

    per_neuron: dict[str, np.ndarray]
    pooled: dict[str, float]
    per_image: dict[str, np.ndarray]
    n_spikes: np.ndarray  # recorded spikes per neuron
    ll_gain: np.ndarray  # Poisson log-likelihood gain over the mean rate per neuron, nats
    skipped: dict[str, str] = field(default_factory=dict)
    undefined: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    pooled_stats: PooledStats | None = None  # thesis pooled CC of the prediction, per neuron group
    baseline_pooled_stats: PooledStats | None = None  # same for the mean-rate baseline

    def thesis_cc(self, neurons: np.ndarray | None = None, baseline: bool = False) -> dict[str, float]:
        """Thesis pooled CC over ``neurons`` (default all), averaged over images where defined."""
        stats = self.baseline_pooled_stats if baseline else self.pooled_stats
        if stats is None:
            raise ValueError("this result holds no pooled statistics")
        return {name: _finite_mean(v) for name, v in stats.cc(neurons).items()}

    def co_bps(self, neurons: np.ndarray | None = None) -> float:
        """Pooled bits per spike over ``neurons`` (index or bool mask; default all)."""
        gain = self.ll_gain if neurons is None else self.ll_gain[neurons]
        spikes = self.n_spikes if neurons is None else self.n_spikes[neurons]
        total = float(spikes.sum())
        return float(gain.sum() / (total * math.log(2))) if total > 0 else float("nan")


def _pooled_and_skipped(per_image: dict[str, np.ndarray], ll_gain: np.ndarray, n_spikes: np.ndarray,
                        k: int) -> tuple[dict[str, float], dict[str, str]]:
    """Pooled co-bps and image means of the per-image metrics; metrics skipped and why (shared by the
    in-memory and the streaming paths)."""
    total = float(n_spikes.sum())
    pooled = {"co_bps": float(ll_gain.sum() / (total * math.log(2))) if total else math.nan}
    pooled.update({name: _finite_mean(values) for name, values in per_image.items()})
    skipped: dict[str, str] = {}
    if k < 2:
        why = f"needs at least 2 trials per image; the data has {k}"
        skipped.update(dict.fromkeys(NEEDS_REPEATS + ("thesis_cc_max", "thesis_cc_norm"), why))
    if total == 0:
        skipped["co_bps"] = "no spikes in the data"
    return pooled, skipped


def _finite_mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


# --------------------------------------------------------------------------------------------
# input checks


def _check(data: np.ndarray, prediction: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Validate shapes; returns (data, prediction, per_trial)."""
    data = np.asarray(data)
    prediction = np.asarray(prediction)
    if data.ndim != 4:
        raise DataMismatchError(f"data must be [images, trials, time, neurons], got shape {data.shape}")
    n_img, _, n_t, n_n = data.shape
    if prediction.shape == data.shape:
        per_trial = True
    elif prediction.shape == (n_img, n_t, n_n):
        per_trial = False
    else:
        raise DataMismatchError(
            f"prediction shape {prediction.shape} fits neither the data {data.shape} nor its trial "
            f"average {(n_img, n_t, n_n)}"
        )
    return data, prediction, per_trial


def _check_finite(y: np.ndarray, p: np.ndarray) -> None:
    """Per chunk (no full-size temporary): NaN/inf in data or prediction is a caller's bug."""
    if not np.isfinite(y).all():
        raise DataMismatchError("data contains NaN or infinite values")
    if not np.isfinite(p).all():
        raise DataMismatchError("prediction contains NaN or infinite values")


def mean_rate_prediction(data: np.ndarray, rates: np.ndarray | None = None) -> np.ndarray:
    """Constant per-neuron mean-rate prediction ``[images, time, neurons]`` (a read-only view).

    ``rates`` (per neuron, counts per bin) default to each neuron's mean over all images, trials
    and bins of ``data``.
    """
    data = np.asarray(data)
    n_img, _, n_t, n_n = data.shape
    if rates is None:
        rates = data.mean(axis=(0, 1, 2), dtype=np.float64)
    rates = np.asarray(rates, dtype=np.float64)
    if rates.shape != (n_n,):
        raise DataMismatchError(f"baseline rates have shape {rates.shape}, expected ({n_n},)")
    return np.broadcast_to(rates, (n_img, n_t, n_n))


# --------------------------------------------------------------------------------------------
# kernels on float64 chunks


def _corr(a: np.ndarray, b: np.ndarray, axis: int) -> np.ndarray:
    """Pearson r along ``axis``; NaN where either side has (numerically) zero variance."""
    am = a - a.mean(axis=axis, keepdims=True)
    bm = b - b.mean(axis=axis, keepdims=True)
    va = (am * am).sum(axis=axis)
    vb = (bm * bm).sum(axis=axis)
    cov = (am * bm).sum(axis=axis)
    zero = (va <= _REL_ZERO * (a * a).sum(axis=axis)) | (vb <= _REL_ZERO * (b * b).sum(axis=axis))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cov / np.sqrt(va * vb)
    r[zero] = np.nan
    return r


def _nanmean0(x: np.ndarray) -> np.ndarray:
    """Mean over axis 0 ignoring NaN; NaN (no warning) where every entry is NaN."""
    ok = ~np.isnan(x)
    n = ok.sum(axis=0)
    s = np.where(ok, x, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def _is_const(x: np.ndarray, axis: tuple[int, ...]) -> np.ndarray:
    var = x.var(axis=axis)
    return var <= _REL_ZERO * (x * x).mean(axis=axis)


def _corr_trials(yt: np.ndarray, pbar: np.ndarray) -> np.ndarray:
    """Pearson r of each trial ``yt[k]`` [M, n] with one shared prediction ``pbar`` [M, n] -> [K, n]."""
    yc = yt - yt.mean(axis=1, keepdims=True)
    pc = pbar - pbar.mean(axis=0)
    cov = np.einsum("kmn,mn->kn", yc, pc)
    vy = np.einsum("kmn,kmn->kn", yc, yc)
    vp = np.einsum("mn,mn->n", pc, pc)
    zero = (vy <= _REL_ZERO * np.einsum("kmn,kmn->kn", yt, yt)) | (vp <= _REL_ZERO * (pbar * pbar).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cov / np.sqrt(vy * vp)
    r[zero] = np.nan
    return r


def _signal_power(var_sum: np.ndarray, sum_trial_var: np.ndarray, k: int, m: int) -> np.ndarray:
    """Schoppe's SP from ddof-0 variances over ``m`` entries, rescaled to MATLAB's ``var`` (ddof 1)
    as ``calc_CCnorm.m`` computes it; NaN for ``m < 2``."""
    if m < 2:
        return np.full(np.shape(var_sum), np.nan)
    return (var_sum - sum_trial_var) * (m / (m - 1)) / (k * (k - 1))


def _cc_max(sp: np.ndarray, var_mean: np.ndarray) -> np.ndarray:
    """sqrt(SP / Var(mean)); NaN where SP <= 0 (or undefined) or the mean is constant."""
    with np.errstate(invalid="ignore", divide="ignore"):
        cc_max = np.sqrt(sp / var_mean)
    cc_max[~(sp > 0) | ~(var_mean > 0)] = np.nan
    return cc_max


def _chunk_metrics(y: np.ndarray, p: np.ndarray, per_trial: bool, null: np.ndarray) -> dict[str, np.ndarray]:
    """All per-neuron metrics for one chunk. ``y`` [I, K, T, n]; ``p`` [I, K, T, n] or [I, T, n].

    A trial-averaged prediction is never broadcast over trials: sums over trials are formed
    from the trial sum of the data instead (same numbers, K times less work).
    """
    n_img, k, n_t, n = y.shape
    m = n_img * n_t
    yt = y.transpose(1, 0, 2, 3).reshape(k, m, n)  # [K, I*T, n]
    ysum = yt.sum(axis=0)
    ybar = ysum / k
    if per_trial:
        pt = p.transpose(1, 0, 2, 3).reshape(k, m, n)
        pbar = pt.mean(axis=0)
    else:
        pbar = p.reshape(m, n)
    out: dict[str, np.ndarray] = {}
    out["single_trial_r"] = _nanmean0(_corr(yt, pt, axis=1) if per_trial else _corr_trials(yt, pbar))
    out["trial_avg_r"] = _corr(ybar, pbar, axis=0)

    if k >= 2:
        # Schoppe et al. 2016 as calc_CCnorm.m: SP from variances over T - 1, Var(mean) over T
        trial_var = yt.var(axis=1)  # [K, n], over m (ddof 0)
        var_sum = ysum.var(axis=0)
        sp = _signal_power(var_sum, trial_var.sum(axis=0), k, m)
        var_mean = var_sum / (k * k)
        out["cc_max"] = _cc_max(sp, var_mean)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["cc_norm"] = out["trial_avg_r"] / out["cc_max"]

        # Sensorium FEV / FEVE; conditions are (image, time bin), repeats are trials
        sq = np.einsum("kmn,kmn->n", yt, yt)
        noise = (sq - np.einsum("mn,mn->n", ysum, ysum) / k) / ((k - 1) * m)
        total = yt.reshape(-1, n).var(axis=0, ddof=1)
        if per_trial:
            mse = ((yt - pt) ** 2).reshape(-1, n).mean(axis=0)
        else:
            mse = (sq - 2 * np.einsum("mn,mn->n", ysum, pbar) + k * np.einsum("mn,mn->n", pbar, pbar)) / (
                k * m
            )
        explainable = total - noise
        ok = explainable > _REL_ZERO * np.maximum(total, 1e-300)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["fev"] = np.where(ok, explainable / total, np.nan)
            out["feve"] = np.where(ok, 1.0 - (mse - noise) / explainable, np.nan)

        loo = (ysum - yt) / (k - 1)
        out["oracle_r_loo_mean"] = _nanmean0(_corr(yt, loo, axis=1))
        out["oracle_r_jackknife"] = _corr(yt.reshape(k * m, n), loo.reshape(k * m, n), axis=0)
    else:
        for name in NEEDS_REPEATS:
            out[name] = np.full(n, np.nan)

    # Poisson log-likelihood gain over the per-neuron mean rate (log y! cancels)
    if per_trial:
        lam = np.maximum(pt, MIN_RATE)
        ll_model = (yt * np.log(lam) - lam).sum(axis=(0, 1))
    else:
        lam = np.maximum(pbar, MIN_RATE)
        ll_model = (ysum * np.log(lam)).sum(axis=0) - k * lam.sum(axis=0)
    lam0 = np.maximum(null, MIN_RATE)
    spikes = ysum.sum(axis=0)
    ll_null = spikes * np.log(lam0) - lam0 * (k * m)
    out["ll_gain"] = ll_model - ll_null
    out["n_spikes"] = spikes
    with np.errstate(invalid="ignore", divide="ignore"):
        out["bits_per_spike"] = np.where(spikes > 0, out["ll_gain"] / (spikes * math.log(2)), np.nan)

    out["_silent"] = spikes == 0
    out["_const_data"] = _is_const(yt, (0, 1))
    out["_const_pred_avg"] = _is_const(pbar, (0,))
    out["_const_pred"] = _is_const(pt, (0, 1)) if per_trial else out["_const_pred_avg"]
    return out


class PooledStats:
    """Per-neuron sufficient statistics of the thesis' pooled per-image CC.

    Sums over time bins per (image, neuron) — and per trial for the data — so that the pooled
    CC of any group of neurons is a sum over that group's columns, without another pass over
    the data. Memory: 8 (K + 6) I N bytes.
    """

    def __init__(self, n_img: int, k: int, n_t: int, n_neurons: int) -> None:
        self.k, self.n_t = k, n_t
        shape = (n_img, n_neurons)
        self.s = np.zeros(shape)  # Σ_t S, S = Σ_k R_k
        self.s2 = np.zeros(shape)  # Σ_t S²
        self.r = np.zeros((n_img, k, n_neurons))  # Σ_t R_k
        self.r2 = np.zeros(shape)  # Σ_k Σ_t R_k²
        self.p = np.zeros(shape)  # Σ_t P̄
        self.p2 = np.zeros(shape)
        self.sp = np.zeros(shape)  # Σ_t S·P̄

    def update(self, sl: slice, y: np.ndarray, pbar: np.ndarray) -> None:
        """Neurons ``sl``: ``y`` [I, K, T, n] counts; ``pbar`` [I, T, n] trial-averaged prediction."""
        s = y.sum(axis=1)
        self.s[:, sl] = s.sum(axis=1)
        self.s2[:, sl] = np.einsum("itn,itn->in", s, s)
        self.r[:, :, sl] = y.sum(axis=2)
        self.r2[:, sl] = np.einsum("iktn,iktn->in", y, y)
        self.p[:, sl] = pbar.sum(axis=1)
        self.p2[:, sl] = np.einsum("itn,itn->in", pbar, pbar)
        self.sp[:, sl] = np.einsum("itn,itn->in", s, pbar)

    def cc(self, neurons: np.ndarray | slice | None = None) -> dict[str, np.ndarray]:
        """``thesis_cc_abs``, ``thesis_cc_max``, ``thesis_cc_norm`` per image over ``neurons``."""
        sel = slice(None) if neurons is None else neurons
        return pooled_cc_from_sums(
            self.k, self.n_t * self.s[:, sel].shape[1], self.s[:, sel].sum(1), self.s2[:, sel].sum(1),
            self.r[:, :, sel].sum(2), self.r2[:, sel].sum(1), self.p[:, sel].sum(1),
            self.p2[:, sel].sum(1), self.sp[:, sel].sum(1))


def pooled_cc_from_sums(k: int, n: int, s: np.ndarray, s2: np.ndarray, r: np.ndarray, r2: np.ndarray,
                        p: np.ndarray, p2: np.ndarray, sp_: np.ndarray) -> dict[str, np.ndarray]:
    """Thesis pooled CCs per image from sums over a neuron group's ``n`` (bin, neuron) entries:
    ``s``, ``s2`` Σ S, Σ S² (S = trial sum), ``r`` [images, K] Σ R_k, ``r2`` Σ_k Σ R_k², ``p``, ``p2``,
    ``sp_`` Σ P̄, Σ P̄², Σ S·P̄."""
    n = float(n)
    with np.errstate(invalid="ignore", divide="ignore"):
        var_s = s2 / n - (s / n) ** 2
        var_m = var_s / k**2
        var_p = p2 / n - (p / n) ** 2
        cov = (sp_ / n - (s / n) * (p / n)) / k
        cc_abs = cov / np.sqrt(var_m * var_p)
        flat = ~(var_m > _REL_ZERO * s2 / n / k**2) | ~(var_p > _REL_ZERO * p2 / n)
        cc_abs[flat] = np.nan
        if k >= 2:
            sum_var = r2 / n - ((r / n) ** 2).sum(axis=1)
            cc_max = _cc_max(_signal_power(var_s, sum_var, k, int(n)), var_m)
        else:
            cc_max = np.full_like(cc_abs, np.nan)
        cc_norm = cc_abs / cc_max
    return {"thesis_cc_abs": cc_abs, "thesis_cc_max": cc_max, "thesis_cc_norm": cc_norm}


# --------------------------------------------------------------------------------------------
# public API


def _chunks(n_neurons: int, per_neuron_elements: int, chunk: int | None) -> list[slice]:
    size = chunk or max(1, _CHUNK_ELEMENTS // max(1, per_neuron_elements))
    return [slice(a, min(a + size, n_neurons)) for a in range(0, n_neurons, size)] or [slice(0, 0)]


def compute_metrics(
    data: np.ndarray,
    prediction: np.ndarray,
    *,
    null_rates: np.ndarray | None = None,
    baseline_rates: np.ndarray | None = None,
    chunk: int | None = None,
    progress: bool = True,
) -> MetricResult:
    """Every metric of ``prediction`` against ``data`` (see the module docstring).

    ``null_rates``: per-neuron rates of the bits-per-spike null model (default: each neuron's mean
    over ``data``, the NLB definition). ``baseline_rates``: rates of the constant per-neuron
    baseline whose thesis pooled CC is reported beside the model's (default: same as the null).
    """
    data, prediction, per_trial = _check(data, prediction)
    n_img, k, n_t, n_n = data.shape
    means = data.mean(axis=(0, 1, 2), dtype=np.float64)
    null = means if null_rates is None else np.asarray(null_rates, dtype=np.float64)
    base = null if baseline_rates is None else np.asarray(baseline_rates, dtype=np.float64)
    for name, arr in (("null_rates", null), ("baseline_rates", base)):
        if arr.shape != (n_n,):
            raise DataMismatchError(f"{name} have shape {arr.shape}, expected ({n_n},)")

    parts: dict[str, list[np.ndarray]] = {}
    pooled_model = PooledStats(n_img, k, n_t, n_n)
    pooled_base = PooledStats(n_img, k, n_t, n_n)
    negative = False
    chunks = _chunks(n_n, n_img * k * n_t * (2 if per_trial else 1), chunk)
    iterator: Any = chunks
    if progress and len(chunks) > 4:
        from tqdm import tqdm

        iterator = tqdm(chunks, desc="metrics", unit="chunk", leave=False)
    for sl in iterator:
        y = np.asarray(data[..., sl], dtype=np.float64)
        p = np.asarray(prediction[..., sl], dtype=np.float64)
        _check_finite(y, p)
        negative |= bool(p.size) and float(p.min()) < 0
        for name, value in _chunk_metrics(y, p, per_trial, null[sl]).items():
            parts.setdefault(name, []).append(value)
        pbar = p.mean(axis=1) if per_trial else p
        pooled_model.update(sl, y, pbar)
        pooled_base.update(sl, y, np.broadcast_to(base[sl], (n_img, n_t, sl.stop - sl.start)))
    cat = {name: np.concatenate(v) for name, v in parts.items()}

    per_neuron = {name: cat[name] for name in PER_NEURON_METRICS}
    per_image = dict(pooled_model.cc())
    per_image.update({f"baseline_{k_}": v for k_, v in pooled_base.cc().items()})
    pooled, skipped = _pooled_and_skipped(per_image, cat["ll_gain"], cat["n_spikes"], k)
    notes: list[str] = []
    if negative:
        notes.append("prediction has negative values; clipped at 1e-9 for the Poisson likelihood")
    undefined = _classify_undefined(per_neuron, cat, skipped)
    return MetricResult(
        per_neuron=per_neuron,
        pooled=pooled,
        per_image=per_image,
        n_spikes=cat["n_spikes"],
        ll_gain=cat["ll_gain"],
        skipped=skipped,
        undefined=undefined,
        notes=notes,
        pooled_stats=pooled_model,
        baseline_pooled_stats=pooled_base,
    )


def _classify_undefined(
    per_neuron: dict[str, np.ndarray], flags: dict[str, np.ndarray], skipped: dict[str, str]
) -> dict[str, dict[str, int]]:
    """Count NaN neurons per metric by the first reason that applies."""
    specific = {
        "cc_max": "no signal power (SP <= 0)",
        "cc_norm": "no signal power (SP <= 0)",
        "fev": "no explainable variance (total <= noise variance)",
        "feve": "no explainable variance (total <= noise variance)",
        "single_trial_r": "no trial with variance in both data and prediction",
        "oracle_r_loo_mean": "no trial with variance in both the trial and the other trials' mean",
        "oracle_r_jackknife": "no variance in the trials or the other trials' means",
    }
    uses_pred = {"single_trial_r", "trial_avg_r", "cc_norm"}
    out: dict[str, dict[str, int]] = {}
    for name, values in per_neuron.items():
        if name in skipped:
            continue
        left = np.isnan(values)
        counts: dict[str, int] = {}
        reasons = [
            ("silent neuron (no spikes)", flags["_silent"]),
            ("constant response", flags["_const_data"]),
        ]
        if name in uses_pred:
            pred_flag = flags["_const_pred"] if name == "single_trial_r" else flags["_const_pred_avg"]
            reasons.append(("constant prediction", pred_flag))
        reasons.append((specific.get(name, "undefined"), np.ones_like(left)))
        for reason, flag in reasons:
            hit = left & flag
            if hit.any():
                counts[reason] = int(hit.sum())
            left &= ~flag
        if counts:
            out[name] = counts
    return out


def pooled_image_cc(data: np.ndarray, prediction: np.ndarray) -> dict[str, np.ndarray]:
    """The thesis' per-image CC_ABS / CC_MAX / CC_NORM over all neurons and time bins pooled.

    Returns ``thesis_cc_abs``, ``thesis_cc_max``, ``thesis_cc_norm``, each float64 ``[images]``
    (NaN where undefined, CC_MAX/CC_NORM need ≥ 2 trials).
    """
    data, prediction, per_trial = _check(data, prediction)
    n_img, k, n_t, n_n = data.shape
    acc = PooledStats(n_img, k, n_t, n_n)
    for sl in _chunks(n_n, n_img * k * n_t, None):
        y = np.asarray(data[..., sl], dtype=np.float64)
        p = np.asarray(prediction[..., sl], dtype=np.float64)
        _check_finite(y, p)
        acc.update(sl, y, p.mean(axis=1) if per_trial else p)
    return acc.cc()


# --------------------------------------------------------------------------------------------
# per-population summary


POPULATIONS: tuple[str, ...] = tuple(population_label(s) for s in V1_SHEETS)


class SummaryRows(list):
    """A list of dict rows (one per population × neuron group × predictor) with extra context.

    ``skipped`` and ``undefined`` come from the model's :class:`MetricResult`; ``results`` holds
    the full :class:`MetricResult` of ``"model"`` and ``"baseline"`` (per-neuron values, so
    callers need not compute them again); :meth:`to_dataframe` returns a pandas DataFrame when
    pandas is installed.
    """

    def __init__(
        self,
        rows: Sequence[dict[str, Any]],
        skipped: dict[str, str],
        undefined: dict[str, dict[str, int]],
        results: dict[str, MetricResult] | None = None,
    ) -> None:
        super().__init__(rows)
        self.skipped = skipped
        self.undefined = undefined
        self.results = results or {}

    def to_dataframe(self) -> Any:
        import pandas as pd  # optional dependency

        return pd.DataFrame(list(self))


def summary_groups(labels: np.ndarray, mask: np.ndarray) -> list[tuple[str, str, np.ndarray]]:
    """The table's neuron groups ``(population, observed | hidden | all, bool mask)``, non-empty only,
    in table order, ending with ``("all", "all", every neuron)``."""
    order = [p for p in POPULATIONS if p in set(labels)] + sorted(set(labels) - set(POPULATIONS))
    groups: list[tuple[str, str, np.ndarray]] = []
    for pop in order:
        in_pop = labels == pop
        for group, sel in (("observed", in_pop & mask), ("hidden", in_pop & ~mask), ("all", in_pop)):
            groups.append((pop, group, sel))
    groups.append(("all", "all", np.ones(len(labels), dtype=bool)))
    return [g for g in groups if g[2].any()]


def _summary_rows(results: dict[str, MetricResult], groups: list[tuple[str, str, np.ndarray]]
                  ) -> list[dict[str, Any]]:
    """One row per group × predictor (see :func:`summarize`)."""
    rows: list[dict[str, Any]] = []
    for pop, group, sel in groups:
        idx = np.flatnonzero(sel)
        for predictor, res in results.items():
            row: dict[str, Any] = {
                "population": pop,
                "neurons": group,
                "predictor": predictor,
                "n": int(sel.sum()),
            }
            for name in PER_NEURON_METRICS:
                values = res.per_neuron[name][idx]
                if name == "feve":  # Sensorium: only neurons with enough explainable variance
                    values = values[res.per_neuron["fev"][idx] > FEV_THRESHOLD]
                med, mean, n_ok = _stats(values)
                row[f"{name}_median"], row[f"{name}_mean"], row[f"{name}_n"] = med, mean, n_ok
            row["co_bps"] = res.co_bps(idx)
            # the baseline's own pooled statistics equal the model result's baseline_pooled_stats
            row.update(res.thesis_cc(idx))
            if predictor == "model" and "population" in results:
                row["bps_vs_population"] = row["co_bps"] - results["population"].co_bps(idx)
            rows.append(row)
    return rows


def _stats(values: np.ndarray) -> tuple[float, float, int]:
    finite = values[np.isfinite(values)]
    if not finite.size:
        return math.nan, math.nan, 0
    return float(np.median(finite)), float(finite.mean()), int(finite.size)


def summarize(
    data: np.ndarray,
    prediction: np.ndarray,
    populations: Sequence[str] | np.ndarray,
    observed_mask: np.ndarray,
    *,
    baseline_rates: np.ndarray | None = None,
    baselines: dict[str, np.ndarray] | None = None,
    progress: bool = True,
) -> SummaryRows:
    """Metrics table per population (L4 E, L4 I, L2/3 E, L2/3 I) × {observed, hidden, all}.

    ``populations``: per neuron a sheet name (``V1_Exc_L4``, thesis spelling accepted) or a label;
    ``observed_mask``: bool per neuron. For the model and for the constant per-neuron mean-rate
    baseline (``baseline_rates``, default each neuron's mean over ``data``) each row holds, per
    per-neuron metric, ``<metric>_median``, ``<metric>_mean`` and ``<metric>_n`` (neurons where it
    is defined; for ``feve`` only the neurons with FEV > :data:`FEV_THRESHOLD`, Sensorium's rule),
    plus the group's pooled ``co_bps`` and the thesis pooled ``thesis_cc_*`` (means
    over images, computed on the group's neurons). Groups without neurons are left out; an
    ``all``/``all`` row covers every neuron. ``baselines``: further named predictions (e.g. the
    training-window baselines of :mod:`corticalrnn.baselines`), each a predictor of its own; with a
    ``population`` baseline the model's rows also hold ``bps_vs_population``, the pooled bits per
    spike of the model against it (> 0: the model beats it).
    """
    data, prediction, _ = _check(data, prediction)
    n_n = data.shape[-1]
    labels = np.array([population_label(str(p)) for p in populations], dtype=object)
    mask = np.asarray(observed_mask, dtype=bool)
    if labels.shape != (n_n,) or mask.shape != (n_n,):
        raise DataMismatchError(
            f"populations ({labels.shape}) and observed_mask ({mask.shape}) must have one entry per "
            f"neuron ({n_n})"
        )
    baseline = mean_rate_prediction(data, baseline_rates)
    results = {
        "model": compute_metrics(data, prediction, baseline_rates=baseline_rates, progress=progress),
        "baseline": compute_metrics(data, baseline, baseline_rates=baseline_rates, progress=progress),
    }
    for name, pred in (baselines or {}).items():
        results[name] = compute_metrics(data, pred, baseline_rates=baseline_rates, progress=progress)
    rows = _summary_rows(results, summary_groups(labels, mask))
    model = results["model"]
    return SummaryRows(rows, dict(model.skipped), dict(model.undefined), results)


# --------------------------------------------------------------------------------------------
# streaming: the same metrics from per-neuron sufficient statistics, one chunk of images at a time


class _Moments:
    """Running means, centred sums of squares ``css``, raw sums of squares ``raw`` and centred cross
    products ``cross`` of variables seen together, reduced over the sample axes of each update and
    merged across updates as Chan, Golub & LeVeque (1979) do: as accurate as the two-pass sums of the
    in-memory path. A variable may be broadcastable over a reduced axis (a trial-independent
    prediction ``[I, 1, T, n]`` beside trials ``[I, K, T, n]``); its statistics then keep that axis
    at 1. Updates of several neuron slices of one chunk precede one :meth:`commit`."""

    def __init__(self, n_neurons: int, pairs: Sequence[tuple[str, str]] = ()) -> None:
        self.n_neurons = n_neurons
        self.n = 0  # samples merged so far (per reduced entry)
        self.pairs = tuple(pairs)
        self.mean: dict[str, np.ndarray] = {}
        self.css: dict[str, np.ndarray] = {}
        self.raw: dict[str, np.ndarray] = {}
        self.cross: dict[tuple[str, str], np.ndarray] = {}

    def _alloc(self, store: dict[Any, np.ndarray], key: Any, shape: tuple[int, ...]) -> np.ndarray:
        if key not in store:
            store[key] = np.zeros(shape[:-1] + (self.n_neurons,))
        return store[key]

    def add(self, sl: slice, axes: tuple[int, ...], n_samples: int, xs: dict[str, np.ndarray]) -> None:
        """Merge samples of neurons ``sl`` (last axis); ``n_samples`` per reduced entry."""
        na, nb = self.n, n_samples
        n = na + nb
        dev, delta = {}, {}
        for name, x in xs.items():
            mb = x.mean(axis=axes, keepdims=True)
            d = x - mb
            dev[name] = d
            mb = np.squeeze(mb, axis=axes)
            css_b = (d * d).sum(axis=axes)
            raw_b = (x * x).sum(axis=axes)
            mean = self._alloc(self.mean, name, mb.shape)
            css = self._alloc(self.css, name, mb.shape)
            raw = self._alloc(self.raw, name, mb.shape)
            if na == 0:
                mean[..., sl] = mb
                css[..., sl] = css_b
            else:
                delta[name] = mb - mean[..., sl]
                mean[..., sl] += delta[name] * (nb / n)
                css[..., sl] += css_b + delta[name] ** 2 * (na * nb / n)
            raw[..., sl] += raw_b
        for a, b in self.pairs:
            if a not in xs or b not in xs:
                continue
            cb = (dev[a] * dev[b]).sum(axis=axes)
            cross = self._alloc(self.cross, (a, b), cb.shape)
            if na == 0:
                cross[..., sl] = cb
            else:
                cross[..., sl] += cb + delta[a] * delta[b] * (na * nb / n)

    def commit(self, n_samples: int) -> None:
        self.n += n_samples

    def corr(self, a: str, b: str, rel_zero: bool = True) -> np.ndarray:
        """Pearson r of ``a`` and ``b``; NaN where either has (numerically, with ``rel_zero`` as
        :func:`_corr` decides) zero variance."""
        va, vb = self.css[a], self.css[b]
        with np.errstate(invalid="ignore", divide="ignore"):
            r = self.cross[(a, b)] / np.sqrt(va * vb)
        if rel_zero:
            zero = (va <= _REL_ZERO * self.raw[a]) | (vb <= _REL_ZERO * self.raw[b])
        else:
            zero = ~(np.sqrt(va * vb) > 0)
        return np.where(zero, np.nan, r)

    def within_corr(self, a: str, b: str) -> np.ndarray:
        """Pearson r of ``a`` and ``b`` after removing their mean at each entry of the kept leading axis
        (time bins: each neuron's mean time course), pooled over that axis; NaN without variance."""
        cov = self.cross[(a, b)].sum(axis=0)
        den = np.sqrt(self.css[a].sum(axis=0) * self.css[b].sum(axis=0))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, cov / np.where(den > 0, den, 1), np.nan)

    def pooled_corr(self, a: str, b: str) -> np.ndarray:
        """Pearson r of ``a`` and ``b`` over the reduced samples *and* the kept leading axis (trials)
        pooled, with :func:`_corr`'s zero-variance rule; both variables must have the same ``[K, n]``
        statistics (the per-trial moments combined as Chan et al. do)."""
        n = self.n
        ma, mb = self.mean[a], self.mean[b]
        ga, gb = ma.mean(axis=0), mb.mean(axis=0)
        va = self.css[a].sum(axis=0) + n * ((ma - ga) ** 2).sum(axis=0)
        vb = self.css[b].sum(axis=0) + n * ((mb - gb) ** 2).sum(axis=0)
        cov = self.cross[(a, b)].sum(axis=0) + n * ((ma - ga) * (mb - gb)).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = cov / np.sqrt(va * vb)
        zero = (va <= _REL_ZERO * self.raw[a].sum(axis=0)) | (vb <= _REL_ZERO * self.raw[b].sum(axis=0))
        return np.where(zero, np.nan, r)


class GroupPooledStats:
    """The thesis pooled per-image statistics of :class:`PooledStats`, summed over fixed neuron groups
    as they arrive (memory O(images × groups × trials), not × neurons). :meth:`cc` takes one of the
    groups (its bool mask or index array; None: the group of every neuron)."""

    def __init__(self, k: int, n_t: int, groups: Sequence[np.ndarray], sums: dict[str, np.ndarray]) -> None:
        self.k, self.n_t = k, n_t
        self.index = {np.flatnonzero(g).tobytes(): i for i, g in enumerate(groups)}
        self.sizes = [int(np.count_nonzero(g)) for g in groups]
        self.n_neurons = len(groups[0]) if len(groups) else 0
        self.sums = sums  # s, s2, r2, p, p2, sp: [I, G]; r: [I, K, G]

    def cc(self, neurons: np.ndarray | None = None) -> dict[str, np.ndarray]:
        if neurons is None:
            neurons = np.arange(self.n_neurons)
        idx = np.asarray(neurons)
        idx = np.flatnonzero(idx) if idx.dtype == bool else np.sort(idx.astype(np.int64))
        g = self.index.get(idx.tobytes())
        if g is None:
            raise ValueError("streamed pooled statistics hold only the summary's neuron groups")
        x = self.sums
        return pooled_cc_from_sums(self.k, self.n_t * self.sizes[g], x["s"][:, g], x["s2"][:, g],
                                   x["r"][:, :, g], x["r2"][:, g], x["p"][:, g], x["p2"][:, g],
                                   x["sp"][:, g])


def group_mean(prediction: np.ndarray, member: np.ndarray) -> np.ndarray:
    """Each neuron's entry replaced by the mean over the neurons of its group (``member [N]``: group
    index per neuron; last axis of ``prediction`` = neurons); float64."""
    n_groups = int(member.max()) + 1 if member.size else 0
    onehot = np.zeros((member.size, n_groups))
    onehot[np.arange(member.size), member] = 1.0
    onehot /= np.maximum(onehot.sum(0), 1.0)
    return (np.asarray(prediction, dtype=np.float64) @ onehot)[..., member]


def split_half_beyond_course(data: np.ndarray, labels: np.ndarray, observed: np.ndarray
                             ) -> dict[str, np.ndarray]:
    """How reliable each neuron's test response is *beyond its population's time course*: a reference
    for what per-neuron identity could add over a predictor that knows only that course.

    ``data`` ``[images, trials, time, neurons]`` (>= 2 trials), ``labels`` the neurons' populations,
    ``observed`` a bool mask. Trials are split even / odd; in each half a neuron's course is the mean
    over its population's *observed* neurons, itself left out, of that half's trial average (images x
    time; all the population's other neurons when none is observed). Per neuron, ``"raw"`` is r between
    the halves' trial averages (:func:`corticalrnn.evaluate.split_half_r`), ``"beyond"`` the same r
    after each half's least-squares fit of [1, that half's course] is subtracted. Each half holds half
    the trials (no Spearman-Brown correction). NaN where undefined: < 2 trials, a constant half, no
    other neuron to form the course, or nothing left after the fit. Computed in float64.
    """
    y = np.asarray(data, np.float64)
    n = y.shape[-1]
    out = {"raw": np.full(n, np.nan), "beyond": np.full(n, np.nan)}
    if y.shape[1] < 2:
        return out
    halves = [y[:, h::2].mean(axis=1).reshape(-1, n) for h in (0, 1)]  # [I*T, N] each
    out["raw"] = _corr(halves[0], halves[1], axis=0)
    labels, observed = np.asarray(labels), np.asarray(observed, bool)
    resid = [np.full_like(h, np.nan) for h in halves]
    for pop in np.unique(labels):
        members = np.flatnonzero(labels == pop)
        source = observed[members] if observed[members].any() else np.ones(len(members), bool)
        others = source.sum() - source  # source neurons besides each member
        if not (others > 0).any():
            continue
        for h, r in zip(halves, resid):
            x = h[:, members]
            total = x[:, source].sum(axis=1, keepdims=True)
            with np.errstate(invalid="ignore", divide="ignore"):
                course = (total - x * source) / others  # [I*T, members], NaN where no other source
            xc, cc = x - x.mean(axis=0), course - course.mean(axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):
                slope = (xc * cc).sum(axis=0) / (cc * cc).sum(axis=0)
            rx = xc - slope * cc
            # nothing left after the fit (the neuron is its course): undefined, not rounding noise
            empty = (rx * rx).sum(axis=0) <= 1e-20 * (xc * xc).sum(axis=0)
            rx[:, empty | (others == 0) | ~np.isfinite(slope)] = np.nan
            r[:, members] = rx
    with np.errstate(invalid="ignore"):
        out["beyond"] = _corr(resid[0], resid[1], axis=0)
    out["beyond"][~np.isfinite(out["raw"])] = np.nan
    return out


def population_course_oracle(data: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """A reference predictor without identity, from the test data itself (an oracle, not a bound: an
    equal-weight mean need not be the best shared course): for each neuron, the mean over the *other*
    neurons of its population of their z-scored trial averages (silent or constant ones left out),
    shifted to be >= 0 (correlations ignore the shift).

    ``data`` ``[images, trials, time, neurons]``; returns the trial-averaged prediction
    ``[images, time, neurons]`` (float64) for :func:`compute_metrics`. A neuron alone in its
    population gets a constant (its correlations are then undefined).
    """
    y = np.asarray(data, np.float64)
    n_img, _, n_t, n = y.shape
    avg = y.mean(axis=1).reshape(n_img * n_t, n)
    sd = avg.std(axis=0)
    ok = avg.var(axis=0) > _REL_ZERO * (avg * avg).mean(axis=0)  # silent or constant: left out (as _corr)
    z = np.where(ok, (avg - avg.mean(axis=0)) / np.where(ok, sd, 1.0), 0.0)
    out = np.zeros_like(avg)
    labels = np.asarray(labels)
    for pop in np.unique(labels):
        members = np.flatnonzero(labels == pop)
        total, count = z[:, members].sum(axis=1, keepdims=True), int(ok[members].sum())
        others = count - ok[members]  # valid neurons other than each member
        with np.errstate(invalid="ignore", divide="ignore"):
            c = np.where(others > 0, (total - z[:, members]) / np.maximum(others, 1), 0.0)
        out[:, members] = c - c.min(axis=0)
    return out.reshape(n_img, n_t, n)


class StreamingSummary:
    """:func:`summarize` (and :func:`compute_metrics` per predictor) fed one chunk of images at a time.

    Holds per-neuron sufficient statistics (per trial ``[K, N]``, per neuron ``[N]``) and, for the
    thesis pooled CCs, per-image sums over the table's neuron groups, so memory does not grow with the
    number of images beyond O(images × groups × trials). Predictors: ``"model"`` (the ``prediction``
    of each :meth:`update`), ``"baseline"`` (the constant ``baseline_rates`` [N]; pass the data's own
    means, from a first pass, to reproduce :func:`summarize`'s default) and every entry of
    ``baselines`` (image-independent time courses ``[T, N]``). ``group_mean=True`` adds ``"model_pop"``:
    for each neuron, the model's own prediction averaged over its population's observed or hidden
    neurons (its group; :func:`group_mean`), the model with per-neuron identity removed: where it scores
    as well as ``"model"``, the model's individual predictions add nothing over its population's image-
    dependent time course. With ``truth=True`` each update also
    takes the generator's true rates ``[I, T, N]`` and :meth:`truth_r` gives the per-neuron r of
    ``corticalrnn.evaluate.truth_comparison``. Equal to the in-memory functions to rounding (tests).
    """

    def __init__(self, populations: Sequence[str] | np.ndarray, observed_mask: np.ndarray, n_trials: int,
                 n_bins: int, *, baseline_rates: np.ndarray, baselines: dict[str, np.ndarray] | None = None,
                 truth: bool = False, chunk: int | None = None, group_mean: bool = False) -> None:
        self.labels = np.array([population_label(str(p)) for p in populations], dtype=object)
        self.mask = np.asarray(observed_mask, dtype=bool)
        n_n = len(self.labels)
        if self.mask.shape != (n_n,):
            raise DataMismatchError(f"observed_mask ({self.mask.shape}) must have one entry per neuron "
                                    f"({n_n})")
        self.k, self.n_t, self.n_n = int(n_trials), int(n_bins), n_n
        self.groups = summary_groups(self.labels, self.mask)
        self.gmat = np.stack([g[2] for g in self.groups], axis=1).astype(np.float64)  # [N, G]
        rates = np.asarray(baseline_rates, dtype=np.float64)
        if rates.shape != (n_n,):
            raise DataMismatchError(f"baseline rates have shape {rates.shape}, expected ({n_n},)")
        self.fixed: dict[str, np.ndarray] = {"baseline": np.broadcast_to(rates, (self.n_t, n_n))}
        for name, v in (baselines or {}).items():
            v = np.asarray(v, dtype=np.float64)
            if v.shape != (self.n_t, n_n):
                raise DataMismatchError(f"baseline {name!r} has shape {v.shape}, expected {(self.n_t, n_n)}")
            self.fixed[name] = v
        self.dynamic = ["model_pop"] if group_mean else []  # derived from each update's prediction
        _, self.member = np.unique([f"{p}|{m}" for p, m in zip(self.labels, self.mask)], return_inverse=True)
        self.predictors = ["model", *self.fixed, *self.dynamic]
        self.truth = truth
        self.chunk = chunk
        self.n_img = 0
        self.trial = _Moments(n_n, [("y", "loo")] + [("y", f"p:{q}") for q in self.predictors])
        avg_pairs = [("even", "odd")] + [("ysum", f"pbar:{q}") for q in self.predictors]
        if truth:
            avg_pairs += [("dmean", "truth")] + [(f"pbar:{q}", "truth") for q in self.predictors]
            self.per_t = _Moments(n_n, [("pbar:model", "truth"), ("dmean", "truth")])
        self.avg = _Moments(n_n, avg_pairs)
        z = lambda: np.zeros(n_n)  # noqa: E731
        self.noise_ss, self.spikes, self.sq = z(), z(), z()
        self.mse = {q: z() for q in self.predictors}
        self.ll = {q: z() for q in self.predictors}
        self.negative = dict.fromkeys(self.predictors, False)
        self.thesis: dict[str, list[np.ndarray]] = {}
        self.max_spikes_image: tuple[float, int] = (-1.0, -1)

    def update(self, data: np.ndarray, prediction: np.ndarray, truth: np.ndarray | None = None) -> None:
        """One chunk: counts ``[I, K, T, N]``, the model's prediction per trial (same shape) or
        trial-averaged ``[I, T, N]``, and (with ``truth``) true rates ``[I, T, N]``."""
        data = np.asarray(data)
        prediction = np.asarray(prediction)
        n_img, k, n_t, n_n = data.shape if data.ndim == 4 else (None,) * 4
        if data.ndim != 4 or (k, n_t, n_n) != (self.k, self.n_t, self.n_n):
            raise DataMismatchError(f"data chunk has shape {data.shape}, expected [images, {self.k}, "
                                    f"{self.n_t}, {self.n_n}]")
        _check(data, prediction)
        if self.truth and (truth is None or np.shape(truth) != (n_img, n_t, n_n)):
            raise DataMismatchError(f"true rates of shape {(n_img, n_t, n_n)} needed with truth=True")
        if not n_img:
            return
        derived = {"model_pop": group_mean(prediction, self.member)} if self.dynamic else {}
        sums: dict[str, np.ndarray] = {}
        size = self.chunk or max(1, _CHUNK_ELEMENTS // max(1, n_img * k * n_t * 2))
        for a in range(0, n_n, size):
            sl = slice(a, min(a + size, n_n))
            tr = None if truth is None else np.asarray(truth[..., sl], dtype=np.float64)
            self._update_slice(sl, np.asarray(data[..., sl], dtype=np.float64),
                               np.asarray(prediction[..., sl], dtype=np.float64), tr, sums,
                               {k_: v[..., sl] for k_, v in derived.items()})
        self.trial.commit(n_img * n_t)
        self.avg.commit(n_img * n_t)
        if self.truth:
            self.per_t.commit(n_img)
        for key, v in sums.items():
            self.thesis.setdefault(key, []).append(v)
        self.n_img += n_img

    def _update_slice(self, sl: slice, y: np.ndarray, p: np.ndarray, truth: np.ndarray | None,
                      sums: dict[str, np.ndarray], derived: dict[str, np.ndarray]) -> None:
        k, n_img, n_t = self.k, y.shape[0], self.n_t
        if truth is not None and not np.isfinite(truth).all():
            raise DataMismatchError("true rates contain NaN or infinite values")
        preds = {"model": p, **{name: np.asarray(v, dtype=np.float64) for name, v in derived.items()}}
        for name, v in self.fixed.items():
            preds[name] = np.broadcast_to(v[:, sl], (n_img, n_t, v[:, sl].shape[1]))
        for name, q in preds.items():
            _check_finite(y, q)
            self.negative[name] |= bool(q.size) and float(q.min()) < 0
        ysum = y.sum(axis=1)  # [I, T, n]
        trial_vars: dict[str, np.ndarray] = {"y": y}
        if k >= 2:
            trial_vars["loo"] = (ysum[:, None] - y) / (k - 1)
        avg_vars: dict[str, np.ndarray] = {"ysum": ysum}
        if k >= 2:
            avg_vars["even"] = y[:, 0::2].mean(axis=1)
            avg_vars["odd"] = y[:, 1::2].mean(axis=1)
        pbars = {}
        for name, q in preds.items():
            per_trial = q.ndim == 4
            pbars[name] = q.mean(axis=1) if per_trial else q
            trial_vars[f"p:{name}"] = q if per_trial else q[:, None]
            avg_vars[f"pbar:{name}"] = pbars[name]
            lam = np.maximum(q, MIN_RATE)
            if per_trial:
                self.mse[name][sl] += ((y - q) ** 2).sum(axis=(0, 1, 2))
                self.ll[name][sl] += (y * np.log(lam) - lam).sum(axis=(0, 1, 2))
            else:
                self.mse[name][sl] += ((y - q[:, None]) ** 2).sum(axis=(0, 1, 2))
                self.ll[name][sl] += (ysum * np.log(lam)).sum(axis=(0, 1)) - k * lam.sum(axis=(0, 1))
        if truth is not None:
            avg_vars["dmean"] = ysum / k
            avg_vars["truth"] = truth
            self.per_t.add(sl, (0,), n_img, {"pbar:model": pbars["model"], "dmean": avg_vars["dmean"],
                                             "truth": truth})
        self.trial.add(sl, (0, 2), n_img * n_t, trial_vars)
        self.avg.add(sl, (0, 1), n_img * n_t, avg_vars)
        if k >= 2:
            self.noise_ss[sl] += ((y - ysum[:, None] / k) ** 2).sum(axis=(0, 1, 2))
        self.spikes[sl] += ysum.sum(axis=(0, 1))
        self.sq[sl] += np.einsum("iktn,iktn->n", y, y)

        # thesis pooled sums per image over the groups' neurons
        g = self.gmat[sl]
        per = {"s": ysum.sum(axis=1), "s2": np.einsum("itn,itn->in", ysum, ysum),
               "r": y.sum(axis=2), "r2": np.einsum("iktn,iktn->in", y, y)}
        for name, pb in pbars.items():
            per[f"p:{name}"] = pb.sum(axis=1)
            per[f"p2:{name}"] = np.einsum("itn,itn->in", pb, pb)
            per[f"sp:{name}"] = np.einsum("itn,itn->in", ysum, pb)
        for key, v in per.items():
            grouped = v @ g
            sums[key] = grouped if key not in sums else sums[key] + grouped

    # ---------------------------------------------------------------------------- results
    def _pooled(self, name: str) -> dict[str, np.ndarray]:
        return {key: np.concatenate(v) for key, v in self.thesis.items()
                if ":" not in key or key.endswith(f":{name}")}

    def result(self, name: str) -> MetricResult:
        """The :class:`MetricResult` of one predictor (pooled statistics per summary group only)."""
        k, n_img, n_t = self.k, self.n_img, self.n_t
        m = n_img * n_t
        tr, av = self.trial, self.avg
        pn: dict[str, np.ndarray] = {}
        pn["single_trial_r"] = _nanmean0(np.broadcast_to(tr.corr("y", f"p:{name}"), (k, self.n_n)))
        pn["trial_avg_r"] = av.corr("ysum", f"pbar:{name}")
        spikes = self.spikes
        # data moments pooled over trials
        grand = tr.mean["y"].mean(axis=0)
        css_all = tr.css["y"].sum(axis=0) + m * ((tr.mean["y"] - grand) ** 2).sum(axis=0)
        if k >= 2:
            trial_var = tr.css["y"] / m
            var_sum = av.css["ysum"] / m
            cc_max = _cc_max(_signal_power(var_sum, trial_var.sum(axis=0), k, m), var_sum / (k * k))
            pn["cc_max"] = cc_max
            with np.errstate(invalid="ignore", divide="ignore"):
                pn["cc_norm"] = pn["trial_avg_r"] / cc_max
            noise = self.noise_ss / ((k - 1) * m)
            total = css_all / (k * m - 1)
            mse = self.mse[name] / (k * m)
            explainable = total - noise
            ok = explainable > _REL_ZERO * np.maximum(total, 1e-300)
            with np.errstate(invalid="ignore", divide="ignore"):
                pn["fev"] = np.where(ok, explainable / total, np.nan)
                pn["feve"] = np.where(ok, 1.0 - (mse - noise) / explainable, np.nan)
            pn["oracle_r_loo_mean"] = _nanmean0(tr.corr("y", "loo"))
            pn["oracle_r_jackknife"] = tr.pooled_corr("y", "loo")
        else:
            for metric in NEEDS_REPEATS:
                pn[metric] = np.full(self.n_n, np.nan)
        null = spikes / (k * m) if m else np.zeros(self.n_n)
        lam0 = np.maximum(null, MIN_RATE)
        ll_gain = self.ll[name] - (spikes * np.log(lam0) - lam0 * (k * m))
        with np.errstate(invalid="ignore", divide="ignore"):
            pn["bits_per_spike"] = np.where(spikes > 0, ll_gain / (spikes * math.log(2)), np.nan)
        per_neuron = {metric: pn[metric] for metric in PER_NEURON_METRICS}

        pkey = f"p:{name}"
        p_mean, p_css, p_raw = tr.mean[pkey], tr.css[pkey], tr.raw[pkey]
        kp = p_mean.shape[0]  # 1 for a trial-independent prediction
        p_grand = p_mean.mean(axis=0)
        p_all = (p_css.sum(axis=0) + m * ((p_mean - p_grand) ** 2).sum(axis=0)) * (k / kp)
        flags = {
            "_silent": spikes == 0,
            "_const_data": css_all <= _REL_ZERO * self.sq,
            "_const_pred_avg": av.css[f"pbar:{name}"] <= _REL_ZERO * av.raw[f"pbar:{name}"],
            "_const_pred": p_all <= _REL_ZERO * p_raw.sum(axis=0) * (k / kp),
        }
        sums = self._pooled(name)
        stats = GroupPooledStats(k, n_t, [g[2] for g in self.groups],
                                 {"s": sums["s"], "s2": sums["s2"], "r": sums["r"], "r2": sums["r2"],
                                  "p": sums[f"p:{name}"], "p2": sums[f"p2:{name}"], "sp": sums[f"sp:{name}"]})
        per_image = dict(stats.cc())
        pooled, skipped = _pooled_and_skipped(per_image, ll_gain, spikes, k)
        notes = (["prediction has negative values; clipped at 1e-9 for the Poisson likelihood"]
                 if self.negative[name] else [])
        undefined = _classify_undefined(per_neuron, flags, skipped)
        return MetricResult(per_neuron=per_neuron, pooled=pooled, per_image=per_image, n_spikes=spikes.copy(),
                            ll_gain=ll_gain, skipped=skipped, undefined=undefined, notes=notes,
                            pooled_stats=stats)  # type: ignore[arg-type]

    def summary(self) -> SummaryRows:
        """The rows of :func:`summarize` (``results`` holds every predictor's :class:`MetricResult`)."""
        if not self.n_img:
            raise DataMismatchError("no images were streamed")
        results = {name: self.result(name) for name in self.predictors}
        base = results["baseline"]
        for metric, values in base.per_image.items():
            results["model"].per_image[f"baseline_{metric}"] = values
            results["model"].pooled[f"baseline_{metric}"] = _finite_mean(values)
        results["model"].baseline_pooled_stats = base.pooled_stats
        rows = _summary_rows(results, self.groups)
        model = results["model"]
        return SummaryRows(rows, dict(model.skipped), dict(model.undefined), results)

    def split_half_r(self) -> np.ndarray:
        """``corticalrnn.evaluate.split_half_r`` of the streamed data."""
        if self.k < 2:
            return np.full(self.n_n, np.nan)
        return self.avg.corr("even", "odd", rel_zero=False)

    def spike_rates(self) -> np.ndarray:
        """Each neuron's mean count per bin over the streamed data."""
        return self.spikes / max(1, self.n_img * self.k * self.n_t)

    def truth_r(self) -> dict[str, np.ndarray]:
        """Per-neuron r with the true rates (see ``truth_comparison``): ``model``, ``data``, each
        baseline, and the image-specific ``model_imgspec``, ``data_imgspec``."""
        if not self.truth:
            raise ValueError("StreamingSummary(truth=True) needed")
        av, pt = self.avg, self.per_t
        out = {"model": av.corr("pbar:model", "truth", rel_zero=False),
               "data": av.corr("dmean", "truth", rel_zero=False)}
        for name in [*self.dynamic, *self.fixed]:
            out[name] = av.corr(f"pbar:{name}", "truth", rel_zero=False)
        for key, a in (("model_imgspec", "pbar:model"), ("data_imgspec", "dmean")):
            if self.n_img < 2:
                out[key] = np.full(self.n_n, np.nan)
                continue
            out[key] = pt.within_corr(a, "truth")
        return out


class TruthCeiling:
    """Per neuron, the highest r with the trial-averaged true rates that a predictor of the *trial-
    invariant* rate (what one image drives, the same in every trial) can reach, streamed over chunks of
    images' per-trial true rates ``[images, trials, T, N]`` (``evaluate.truth_reader`` ``per_trial``).

    The trials' own noise (the generator's noise current, its LGN spikes) stays in the trial average,
    so this is sqrt of the split-half r (even vs odd trials' averages, Spearman-Brown corrected to all
    trials) over images x time (``total``), and after removing each neuron's mean time course over the
    images (``imgspec``: the ceiling of the image-specific r). A model that sees each trial's LGN spikes
    can exceed it by what those spikes explain."""

    def __init__(self, n_t: int, n: int) -> None:
        self.n = n
        self.total = _Moments(n, [("even", "odd")])  # over images x time
        self.per_t = _Moments(n, [("even", "odd")])  # per time bin, over images
        self.k = 0

    def update(self, per_trial: np.ndarray) -> None:
        k = per_trial.shape[1]
        self.k = k if not self.k else min(self.k, k)
        if k < 2 or not len(per_trial):
            return
        halves = {"even": per_trial[:, 0::2].mean(1, dtype=np.float64),
                  "odd": per_trial[:, 1::2].mean(1, dtype=np.float64)}  # [I, T, N]
        n_img, n_t = per_trial.shape[0], per_trial.shape[2]
        self.total.add(slice(None), (0, 1), n_img * n_t, halves)
        self.total.commit(n_img * n_t)
        self.per_t.add(slice(None), (0,), n_img, halves)
        self.per_t.commit(n_img)

    def result(self) -> dict[str, np.ndarray]:
        if self.k < 2 or not self.total.n:
            return {"total": np.full(self.n, np.nan), "imgspec": np.full(self.n, np.nan)}
        out = {}
        for key, r in (("total", self.total.corr("even", "odd", rel_zero=False)),
                       ("imgspec", self.per_t.within_corr("even", "odd"))):
            with np.errstate(invalid="ignore", divide="ignore"):
                out[key] = np.sqrt(np.clip(2 * r / (1 + r), 0, 1))  # Spearman-Brown: two halves -> all
        return out
