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
    Schoppe et al. (2016): with N trials R_n (vectors over images × time),
    SP = (Var(Σ_n R_n) − Σ_n Var(R_n)) / (N (N − 1)), CC_max = sqrt(SP / Var(mean_n R_n)),
    CC_norm = CC_abs / CC_max. Undefined when SP ≤ 0.
``fev``, ``feve``
    Sensorium 2022 (neuralpredictors ``get_FEV``), with each (image, time bin) a repeated
    condition: noise variance σ² = mean over conditions of the across-trial variance (ddof 1),
    total variance V = variance over all images, trials and bins (ddof 1), MSE = mean squared error
    over the same; FEV = (V − σ²)/V, FEVE = 1 − (MSE − σ²)/(V − σ²). Undefined when V ≤ σ².
    The ceiling 1 holds for trial-independent predictions; a per-trial prediction that tracks
    trial-to-trial variability (the data itself, or a model driven by each trial's input) can
    exceed it, and the trial mean of the data scores 1 + σ²/(K (V − σ²)).
``bits_per_spike``
    Poisson log-likelihood gain of the prediction over the neuron's constant mean rate (measured on
    the same data), in bits per recorded spike (Pei et al. 2021, NLB): (LL(pred) − LL(mean)) /
    (n_spikes · ln 2). Rates are clipped at 1e-9 as NLB does. ``co_bps`` pools over neurons
    (sum of gains / sum of spikes).
``oracle_r``
    Leave-one-trial-out ceiling: r between each trial and the mean of the other trials over
    images × time, averaged over trials (defined like ``single_trial_r``, so they compare).

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
from corticalrnn.sheets import SHEET_INFO, V1_SHEETS, normalize_sheet_name

PER_NEURON_METRICS: tuple[str, ...] = (
    "single_trial_r",
    "trial_avg_r",
    "cc_max",
    "cc_norm",
    "fev",
    "feve",
    "bits_per_spike",
    "oracle_r",
)
NEEDS_REPEATS: tuple[str, ...] = ("cc_max", "cc_norm", "fev", "feve", "oracle_r")
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
        # Schoppe et al. 2016 signal power (ddof 0 throughout; the ratios do not depend on it)
        trial_var = yt.var(axis=1)  # [K, n]
        var_sum = ysum.var(axis=0)
        sp = (var_sum - trial_var.sum(axis=0)) / (k * (k - 1))
        var_mean = var_sum / (k * k)
        with np.errstate(invalid="ignore", divide="ignore"):
            cc_max = np.sqrt(sp / var_mean)
        cc_max[~(sp > 0) | ~(var_mean > 0)] = np.nan
        out["cc_max"] = cc_max
        with np.errstate(invalid="ignore", divide="ignore"):
            out["cc_norm"] = out["trial_avg_r"] / cc_max

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
        out["oracle_r"] = _nanmean0(_corr(yt, loo, axis=1))
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
        k = self.k
        n = float(self.n_t * self.s[:, sel].shape[1])
        s, s2 = self.s[:, sel].sum(1), self.s2[:, sel].sum(1)
        p, p2, sp_ = self.p[:, sel].sum(1), self.p2[:, sel].sum(1), self.sp[:, sel].sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            var_s = s2 / n - (s / n) ** 2
            var_m = var_s / k**2
            var_p = p2 / n - (p / n) ** 2
            cov = (sp_ / n - (s / n) * (p / n)) / k
            cc_abs = cov / np.sqrt(var_m * var_p)
            flat = ~(var_m > _REL_ZERO * s2 / n / k**2) | ~(var_p > _REL_ZERO * p2 / n)
            cc_abs[flat] = np.nan
            if k >= 2:
                r = self.r[:, :, sel].sum(2)
                sum_var = self.r2[:, sel].sum(1) / n - ((r / n) ** 2).sum(axis=1)
                sig = (var_s - sum_var) / (k * (k - 1))
                cc_max = np.sqrt(sig / var_m)
                cc_max[~(sig > 0) | ~(var_m > 0)] = np.nan
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
    pooled: dict[str, float] = {}
    total_spikes = float(cat["n_spikes"].sum())
    pooled["co_bps"] = (
        float(cat["ll_gain"].sum() / (total_spikes * math.log(2))) if total_spikes else math.nan
    )
    for name, values in per_image.items():
        pooled[name] = _finite_mean(values)

    skipped: dict[str, str] = {}
    if k < 2:
        why = f"needs at least 2 trials per image; the data has {k}"
        for name in NEEDS_REPEATS + ("thesis_cc_max", "thesis_cc_norm"):
            skipped[name] = why
    if total_spikes == 0:
        skipped["co_bps"] = "no spikes in the data"
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
        "oracle_r": "no trial with variance in both the trial and the other trials' mean",
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


def population_label(name: str) -> str:
    """``V1_Exc_L4`` / ``V1_Exc_L23`` → ``L4 E`` / ``L2/3 E``; other labels unchanged."""
    try:
        info = SHEET_INFO[normalize_sheet_name(name)]
    except ValueError:
        return name
    return f"{info.layer} {'E' if info.excitatory else 'I'}"


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
    is defined), plus the group's pooled ``co_bps`` and the thesis pooled ``thesis_cc_*`` (means
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
    order = [p for p in POPULATIONS if p in set(labels)] + sorted(set(labels) - set(POPULATIONS))
    groups: list[tuple[str, str, np.ndarray]] = []
    for pop in order:
        in_pop = labels == pop
        for group, sel in (("observed", in_pop & mask), ("hidden", in_pop & ~mask), ("all", in_pop)):
            groups.append((pop, group, sel))
    groups.append(("all", "all", np.ones(n_n, dtype=bool)))
    rows: list[dict[str, Any]] = []
    for pop, group, sel in groups:
        if not sel.any():
            continue
        idx = np.flatnonzero(sel)
        for predictor, res in results.items():
            row: dict[str, Any] = {
                "population": pop,
                "neurons": group,
                "predictor": predictor,
                "n": int(sel.sum()),
            }
            for name in PER_NEURON_METRICS:
                med, mean, n_ok = _stats(res.per_neuron[name][idx])
                row[f"{name}_median"], row[f"{name}_mean"], row[f"{name}_n"] = med, mean, n_ok
            row["co_bps"] = res.co_bps(idx)
            if predictor in ("model", "baseline"):
                row.update(results["model"].thesis_cc(idx, baseline=predictor == "baseline"))
            else:
                row.update(res.thesis_cc(idx))
            if predictor == "model" and "population" in results:
                row["bps_vs_population"] = row["co_bps"] - results["population"].co_bps(idx)
            rows.append(row)
    model = results["model"]
    return SummaryRows(rows, dict(model.skipped), dict(model.undefined), results)
