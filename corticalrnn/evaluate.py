"""``corticalrnn evaluate CHECKPOINT STORE``: free-running prediction of the test windows, metrics
per population × observed/hidden (with the mean-rate baseline beside), a JSON report and figures.

Streaming: the test images are read, predicted and scored one chunk of images (all their trials) at a
time; :class:`corticalrnn.metrics.StreamingSummary` accumulates per-neuron sufficient statistics of
every metric, so memory does not grow with the number of test images. Only the images kept for the
figures (by default the one with the most spikes) stay in memory; ``--save-predictions`` writes every
prediction to disk as it is made (:mod:`corticalrnn.predictions`). :func:`load_test_data`,
:func:`predict`, :func:`corticalrnn.metrics.summarize`, :func:`split_half_r` and
:func:`truth_comparison` are the in-memory reference the streaming path is tested against.

Test windows are the store's windows whose images the checkpoint's run never trained or
validated on (its image split); every trial of each test image is predicted from that trial's
own LGN input. With one trial per image the trial-based metrics are skipped and the report says
which and why. With ``--truth FILE`` (written by ``corticalrnn synth``) the trial-averaged
prediction is also compared with the generator's true rates.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from corticalrnn.data.windows import group_test_windows, test_window_candidates
from corticalrnn.errors import CorticalRNNError, DataMismatchError

# columns of the printed table: (row key, header); "med" = median over the group's neurons, "pooled" =
# one value from the group's neurons together (bits/spike: sum of gains / sum of spikes; thesis_CC: all
# neurons and bins of an image pooled, mean over images)
TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("population", "population"), ("neurons", "neurons"), ("predictor", "predictor"), ("n", "n"),
    ("single_trial_r_median", "r_single med"), ("trial_avg_r_median", "r_trialavg med"),
    ("cc_norm_median", "CC_norm med"), ("fev_median", "FEV med"),
    ("feve_median", "FEVE med (FEV>0.15)"), ("feve_n", "n FEV>0.15"),
    ("oracle_r_loo_mean_median", "r_oracle LOO med"), ("co_bps", "bits/spike pooled"),
    ("thesis_cc_abs", "thesis_CC_abs pooled"), ("thesis_cc_norm", "thesis_CC_norm pooled"),
)
TABLE_CAPTION = ("med: median over the group's neurons; pooled: one value from the group's neurons together\n"
                 "(bits/spike: sum of log-likelihood gains / sum of spikes; thesis_CC: every neuron and bin\n"
                 "of an image pooled, mean over images); FEVE: over neurons with FEV > 0.15 (Sensorium),\n"
                 "counted in 'n FEV>0.15'; r_oracle LOO: r of each trial with the mean of the other trials,\n"
                 "averaged over trials (neuralpredictors' pooled variant: oracle_r_jackknife in report.json)")
TRUTH_COLUMNS: tuple[str, ...] = ("population", "neurons", "n", "r_model_truth_median",
                                  "r_population_truth_median", "r_psth_truth_median", "r_data_truth_median",
                                  "r_ceiling_truth_median", "r_model_truth_imgspec_median",
                                  "r_data_truth_imgspec_median", "r_ceiling_truth_imgspec_median")
TRUTH_NOTE = """\
r_ceiling: the highest r with the true rates that a predictor of each image's trial-invariant rate can
  reach: the test trials' own noise (noise current, LGN spikes) stays in their average (sqrt of the true
  rates' split-half r, even vs odd trials, Spearman-Brown corrected; metrics.TruthCeiling). imgspec: after
  removing each neuron's mean time course over the test images; image-blind predictors score 0 there."""
# the model beside the baselines and ceilings, per population x observed / hidden (med: medians over
# neurons; bits/spike pooled over the group's neurons)
COMPARISON_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("model", "trial_avg_r_median", "r_avg model med"), ("population", "trial_avg_r_median", "r_avg pop med"),
    ("psth", "trial_avg_r_median", "r_avg psth med"),
    ("model_pop", "trial_avg_r_median", "r_avg model-popmean med"),
    ("model", "single_trial_r_median", "r_1 model med"),
    ("population", "single_trial_r_median", "r_1 pop med"), ("model", "cc_norm_median", "CC_norm model med"),
    ("population", "cc_norm_median", "CC_norm pop med"), ("model", "co_bps", "bits/spike model pooled"),
    ("population", "co_bps", "bits/spike pop pooled"),
    ("model", "bps_vs_population", "model-pop bits/spike pooled"),
    ("model", "cc_max_median", "CC_max med (ceiling of r_avg)"),
    ("model", "oracle_r_loo_mean_median",
     "r_oracle LOO med (ceiling of r_1 for trial-blind predictors)"),
    ("model", "split_half_r_median", "split-half r med"),
)


@dataclass
class TestData:
    """Test windows grouped by image. ``image_ids``, ``trials``, ``windows`` cover every test image;
    ``v1`` and ``lgn`` (counts and LGN input ``[kept images, trials, T, N]``) hold only the images
    ``kept`` (row indices into ``image_ids``; default every image, as :func:`load_test_data` reads;
    :func:`evaluate` keeps the image(s) of its figures)."""

    image_ids: np.ndarray
    trials: np.ndarray  # [images, trials] trial numbers
    windows: np.ndarray  # [images, trials] store window indices
    v1: np.ndarray  # float32 [kept images, trials, T, N_v1]
    lgn: np.ndarray  # float32 [kept images, trials, T, N_in]
    notes: list[str] = field(default_factory=list)
    kept: np.ndarray | None = None  # rows of image_ids held in v1 / lgn; None: all

    def __post_init__(self) -> None:
        if self.kept is None:
            self.kept = np.arange(len(self.image_ids))

    @property
    def kept_image_ids(self) -> np.ndarray:
        return self.image_ids[self.kept]


@dataclass
class EvalResult:
    """What :func:`evaluate` computed; ``rows`` is the metrics table (list of dicts)."""

    rows: list[dict[str, Any]]
    skipped: dict[str, str]
    truth_rows: list[dict[str, Any]] | None
    report: dict[str, Any]
    report_path: Path | None
    figures: list[Path]
    per_neuron: dict[str, np.ndarray]
    prediction: np.ndarray
    test: TestData
    # every per-neuron metric of every predictor, one entry per column (corticalrnn.results)
    neurons: dict[str, np.ndarray] = field(default_factory=dict)

    def table(self) -> str:
        return format_metrics_table(self.rows)


def format_metrics_table(rows: list[dict[str, Any]]) -> str:
    from corticalrnn.tables import format_table

    return format_table([{h: r.get(k, "") for k, h in TABLE_COLUMNS} for r in rows],
                        [h for _, h in TABLE_COLUMNS], drop_empty=True)


# ------------------------------------------------------------------------------------ data
def test_index(store: Any, split: dict[str, Any] | None, max_images: int | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """``(image_ids, trials [images, trials], windows [images, trials], notes)`` of the test windows."""
    table = store.windows
    image_ids = np.asarray(table.image_id, dtype=np.int64)
    trials = np.asarray(table.trial, dtype=np.int64)
    imgs, tr, win, notes = group_test_windows(image_ids, trials, test_window_candidates(store, split))
    if max_images is not None and len(imgs) > max_images:
        imgs, tr, win = imgs[:max_images], tr[:max_images], win[:max_images]
    return imgs, tr, win, notes


def load_test_data(store: Any, subset: Any, split: dict[str, Any] | None,
                   max_images: int | None = None) -> TestData:
    """LGN input and V1 counts of every test window, grouped ``[images, trials, T, N]`` (in memory:
    the reference path; :func:`evaluate` streams).

    Raises :class:`DataMismatchError` when the store lacks the subset's neurons or has no test window.
    """
    from corticalrnn.data import subset_windows

    imgs, tr, win, notes = test_index(store, split, max_images)
    data = subset_windows(store, subset, win.ravel())
    b = data.batch(np.arange(len(data)))
    v1, lgn = b["v1"].numpy(), b["lgn"].numpy()
    return TestData(imgs, tr, win, v1.reshape(win.shape + v1.shape[1:]),
                    lgn.reshape(win.shape + lgn.shape[1:]), notes)


# ------------------------------------------------------------------------------ prediction
def predict(model: Any, lgn: np.ndarray, batch_size: int = 16, device: str = "cpu",
            progress: bool = True) -> np.ndarray:
    """Free-running rates ``[..., T, N_v1]`` for LGN input ``[..., T, N_in]`` (float32 numpy)."""
    import torch
    from tqdm import tqdm

    lead = lgn.shape[:-2]
    flat = lgn.reshape(-1, *lgn.shape[-2:])
    out = []
    model.eval()
    with torch.no_grad():
        for i in tqdm(range(0, len(flat), batch_size), desc="predict", disable=not progress,
                      file=sys.stderr, leave=False):
            x = torch.as_tensor(flat[i:i + batch_size], device=device)
            out.append(model(x).float().cpu().numpy())
    rates = np.concatenate(out) if out else np.zeros((0, *lgn.shape[-2:-1], model.n_v1), np.float32)
    return rates.reshape(*lead, *rates.shape[-2:])


# ----------------------------------------------------------------------------- comparison
def truth_comparison(pred: np.ndarray, data: np.ndarray, truth: np.ndarray, labels: np.ndarray,
                     observed: np.ndarray, baselines: dict[str, np.ndarray] | None = None
                     ) -> list[dict[str, Any]]:
    """Per population × observed/hidden: median over neurons of Pearson r (over images × time)
    between the generator's true rate and (a) the trial-averaged prediction, (b) the
    trial-averaged data (how well the data itself pins the rate down), (c) each time-course baseline
    (``population``, ``psth``: the same time course for every image); and the *image-specific* r of
    (a) and (b): both after removing each neuron's mean time course across the test images, on which
    any image-blind predictor (every baseline) scores 0."""

    def corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a = a.reshape(-1, a.shape[-1]).astype(np.float64)
        b = b.reshape(-1, b.shape[-1]).astype(np.float64)
        a = a - a.mean(0)
        b = b - b.mean(0)
        den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, (a * b).sum(0) / np.where(den > 0, den, 1), np.nan)

    pred = np.asarray(pred, np.float64)
    truth = np.asarray(truth, np.float64)
    pm = pred.mean(1) if pred.ndim == 4 else pred
    dm = np.asarray(data, np.float64).sum(1) / data.shape[1]
    r = {"model": corr(pm, truth), "data": corr(dm, truth)}
    r.update({k: corr(np.asarray(v, np.float64), truth) for k, v in (baselines or {}).items()
              if k not in ("model", "data")})

    def specific(x: np.ndarray) -> np.ndarray:
        return x - x.mean(0, keepdims=True)

    none = np.full(pm.shape[-1], np.nan)
    r["model_imgspec"] = corr(specific(pm), specific(truth)) if len(truth) > 1 else none
    r["data_imgspec"] = corr(specific(dm), specific(truth)) if len(truth) > 1 else none
    return truth_rows(r, labels, observed)


def truth_rows(r: dict[str, np.ndarray], labels: np.ndarray, observed: np.ndarray) -> list[dict[str, Any]]:
    """The rows of :func:`truth_comparison` from per-neuron r: ``model``, ``data``, ``model_imgspec``,
    ``data_imgspec`` and one entry per baseline (``mean_rate`` / ``baseline``, constant, left out)."""
    from corticalrnn.metrics import POPULATIONS
    from corticalrnn.sheets import population_label

    fixed = ("model", "data", "model_imgspec", "data_imgspec", "mean_rate", "baseline", "ceiling",
             "ceiling_imgspec")
    lab = np.array([population_label(str(x)) for x in labels], dtype=object)
    rows = []
    for pop in [p for p in POPULATIONS if p in set(lab)] + ["all"]:
        in_pop = np.ones(len(lab), bool) if pop == "all" else lab == pop
        for group, sel in (("observed", in_pop & observed), ("hidden", in_pop & ~observed)):
            if not sel.any():
                continue
            row = {"population": pop, "neurons": group, "n": int(sel.sum()),
                   "r_model_truth_median": _nanmedian(r["model"][sel]),
                   "r_data_truth_median": _nanmedian(r["data"][sel]),
                   "r_model_truth_imgspec_median": _nanmedian(r["model_imgspec"][sel]),
                   "r_data_truth_imgspec_median": _nanmedian(r["data_imgspec"][sel])}
            if "ceiling" in r:  # TruthCeiling: what a predictor of the trial-invariant rate can reach
                row["r_ceiling_truth_median"] = _nanmedian(r["ceiling"][sel])
                row["r_ceiling_truth_imgspec_median"] = _nanmedian(r["ceiling_imgspec"][sel])
            for k, v in r.items():
                if k not in fixed:
                    row[f"r_{k}_truth_median"] = _nanmedian(v[sel])
            rows.append(row)
    return rows


def true_rates_for(path: str | Path, image_ids: np.ndarray, subset: Any, store: Any) -> np.ndarray:
    """The generator's trial-averaged true rates on the store's bins: expected counts per bin
    ``[images, T, N_v1]`` for the subset's V1 neurons (``corticalrnn.synth.truth`` file)."""
    return truth_reader(path, subset, store)(image_ids)


def truth_reader(path: str | Path, subset: Any, store: Any) -> Any:
    """A function ``(image_ids, per_trial=False) -> [images, T, N_v1]`` of :func:`true_rates_for` (file
    read once); ``per_trial=True``: ``[images, trials, T, N_v1]``, each trial's true rates (that trial's
    noise included), as many trials as every image in ``image_ids`` has."""
    from corticalrnn.synth.truth import read_truth

    gt = read_truth(path)
    b, rb, T = int(store.bin_ms), int(gt.rate_bin_ms), int(store.n_bins)
    t0 = float(store.window_def.get("t0_ms", 0.0))
    start = t0 + float(gt.window_ms[0])  # ms from the start of the truth's time axis
    if b % rb or start % rb or start < 0:
        raise DataMismatchError(f"{path}: true rates in {rb} ms bins from -{gt.window_ms[0]:g} ms cannot be "
                                f"averaged onto {store.path}'s {b} ms bins from {t0:g} ms")
    k0, per = int(start // rb), b // rb
    if k0 + T * per > gt.avg_rates_v1.shape[1]:
        raise DataMismatchError(f"{path}: true rates end before {store.path}'s windows do")
    col = {}
    offset = 0
    from corticalrnn.sheets import V1_SHEETS

    for sheet in V1_SHEETS:
        ids = gt.neuron_ids.get(sheet, np.zeros(0, np.int64))
        col.update({int(i): offset + j for j, i in enumerate(ids)})
        offset += len(ids)
    wanted = subset.v1_ids()
    missing = [int(i) for i in wanted if int(i) not in col]
    if missing:
        raise DataMismatchError(f"{path}: lacks {len(missing)} of the model's neurons (e.g. {missing[:5]})")
    cols = np.array([col[int(i)] for i in wanted], dtype=np.int64)
    by_trial = {int(i): np.flatnonzero(gt.image_id == i) for i in np.unique(gt.image_id)}
    sources = {False: (gt.avg_rates_v1, {int(i): np.array([r]) for r, i in enumerate(gt.avg_image_id)}),
               True: (gt.rates_v1, by_trial)}

    def rates(image_ids: np.ndarray, per_trial: bool = False) -> np.ndarray:
        rates_v1, trials = sources[per_trial]
        absent = [int(i) for i in image_ids if int(i) not in trials]
        if absent:
            raise DataMismatchError(f"{path}: has no true rates for test images {absent}")
        k = min(len(trials[int(i)]) for i in image_ids)
        rows = np.concatenate([trials[int(i)][:k] for i in image_ids])
        r = rates_v1[rows][:, k0:k0 + T * per][..., cols]
        r = r.reshape(len(image_ids), k, T, per, len(cols)).mean(3).astype(np.float64) * (b / 1000.0)
        return r if per_trial else r[:, 0]

    return rates


def _training_baselines(ck: dict[str, Any], subset: Any, train_store: Any, notes: list[str]) -> Any:
    """Baselines over the run's training windows, or None (with a note) when its store is unavailable."""
    from corticalrnn.baselines import training_baselines
    from corticalrnn.store import open_store

    if train_store is None:
        train_store = ((ck.get("config") or {}).get("data") or {}).get("store")
        if not train_store or not Path(train_store).exists():
            notes.append("time-course baselines left out: the run's training store is not available "
                         "(pass --train-store)")
            return None
    st = train_store if hasattr(train_store, "windows") else open_store(train_store)
    split = ck.get("split") or {}
    ids = np.asarray(st.windows.image_id, np.int64)
    ok = ~np.asarray(st.windows.padded, bool) & (np.asarray(st.windows.split) != "test")
    train_ids = np.asarray(split.get("train", []), np.int64)
    windows = np.flatnonzero(ok & np.isin(ids, train_ids)) if train_ids.size else np.flatnonzero(ok)
    if windows.size == 0:
        notes.append(f"time-course baselines left out: {st.path} has none of the run's training windows")
        return None
    return training_baselines(st, subset, windows)


def split_half_r(data: np.ndarray) -> np.ndarray:
    """Per neuron: r over images × time between the mean of the even and of the odd trials (NaN with
    fewer than 2 trials or a constant half): the reliability of the recorded response itself."""
    if data.shape[1] < 2:
        return np.full(data.shape[-1], np.nan)
    a = np.asarray(data[:, 0::2], np.float64).mean(1).reshape(-1, data.shape[-1])
    b = np.asarray(data[:, 1::2], np.float64).mean(1).reshape(-1, data.shape[-1])
    a -= a.mean(0)
    b -= b.mean(0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(0) / np.where(den > 0, den, 1), np.nan)


def _add_group_medians(rows: list[dict[str, Any]], values: np.ndarray, key: str, labels: np.ndarray,
                       observed: np.ndarray) -> None:
    """Set ``key`` in every row to the median of ``values`` over the row's neurons."""
    from corticalrnn.sheets import population_label

    lab = np.array([population_label(str(x)) for x in labels], dtype=object)
    for r in rows:
        sel = np.ones(len(lab), bool) if r["population"] == "all" else lab == r["population"]
        if r["neurons"] == "observed":
            sel &= observed
        elif r["neurons"] == "hidden":
            sel &= ~observed
        r[key] = _nanmedian(values[sel])


def comparison_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per population × observed/hidden: the model beside the baselines and the ceilings."""
    by = {(r["population"], r["neurons"], r["predictor"]): r for r in rows}
    out = []
    for r in rows:
        if r["predictor"] != "model" or r["neurons"] == "all":
            continue
        row: dict[str, Any] = {"population": r["population"], "neurons": r["neurons"], "n": r["n"]}
        for predictor, key, header in COMPARISON_COLUMNS:
            src = by.get((r["population"], r["neurons"], predictor))
            if src is not None and key in src:
                row[header] = src[key]
        out.append(row)
    return out


def _nanmedian(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else math.nan


# ------------------------------------------------------------------------------- figures
def example_neurons(data: np.ndarray | None, labels: np.ndarray, observed: np.ndarray, sheet: str,
                    per_group: int = 2, rate: np.ndarray | None = None) -> list[tuple[int, str]]:
    """The most active observed and hidden neurons of one sheet (visible rasters); ``rate`` (per
    neuron) defaults to the mean of ``data`` ``[images, trials, T, N]``."""
    rate = data.mean(axis=(0, 1, 2)) if rate is None else rate
    out = []
    for group, sel in (("observed", observed), ("hidden", ~observed)):
        idx = np.flatnonzero((labels == sheet) & sel)
        for j in idx[np.argsort(-rate[idx], kind="stable")][:per_group]:
            out.append((int(j), group))
    return out


def make_figures(out_dir: Path, test: TestData, pred: np.ndarray, labels: np.ndarray,
                 observed: np.ndarray, ids: np.ndarray, per_neuron: dict[str, np.ndarray],
                 skipped: dict[str, str], bin_ms: float, log_rows: list[dict[str, Any]],
                 truth: np.ndarray | None, rate: np.ndarray | None = None,
                 scatter: tuple[np.ndarray, np.ndarray] | None = None, *,
                 window: dict[str, Any] | None = None, neurons: dict[str, np.ndarray] | None = None,
                 run_dir: Path | None = None, best_step: int | None = None,
                 population_baseline: np.ndarray | None = None) -> list[Path]:
    """Rasters/PSTHs (one observed and one hidden example neuron per population) of the kept image
    with the most spikes, metric histograms per population observed vs hidden (with the baselines'
    medians as reference lines), learning curves, truth scatter. ``test``/``pred``/``truth`` hold the
    kept images; ``rate``: per-neuron mean count over every test image (default: over the kept ones);
    ``scatter``: (trial-averaged prediction, true rates) ``[images, T, N]`` for the scatter (default:
    the kept images); ``window``: the store's ``window_def`` (time from image onset, image shaded);
    ``neurons``: the per-neuron table (:mod:`corticalrnn.results`; reference lines and r);
    ``run_dir``: where the learning curves go (default ``out_dir``)."""
    from corticalrnn import plots
    from corticalrnn.sheets import V1_SHEETS, population_label

    window = window or {}
    neurons = neurons or {}
    figs: list[Path] = []
    img = int(np.argmax(test.v1.sum(axis=(1, 2, 3))))  # the (kept) test image with the most spikes
    sheets = [s for s in V1_SHEETS if (labels == s).any()]
    r_avg = per_neuron.get("trial_avg_r")

    def example_label(s: str, g: str, j: int) -> str:
        r = "" if r_avg is None or not np.isfinite(r_avg[j]) else f"\nr_avg {r_avg[j]:.2f}"
        return f"{population_label(s)} {g}\n#{int(ids[j])}{r}"

    examples = [(j, example_label(s, g, j))
                for s in sheets for j, g in example_neurons(test.v1, labels, observed, s, 1, rate)]
    if examples:
        stim = window.get("stimulus_ms")
        figs.append(plots.raster_psth(
            test.v1[img], pred[img], [j for j, _ in examples], [lab for _, lab in examples], bin_ms,
            out_dir / "raster_psth.png",
            title=f"test image {int(test.kept_image_ids[img])} (most spikes): data vs model, "
                  f"{test.v1.shape[1]} trials; r_avg: the neuron's r over all test images",
            truth=None if truth is None else truth[img], t0_ms=float(window.get("t0_ms", 0.0)),
            stimulus_ms=None if stim is None else float(stim)))
    curves: dict[str, dict[str, np.ndarray]] = {}
    for s in sheets:
        c = curves[population_label(s)] = {}
        for g, m in (("observed", observed), ("hidden", ~observed)):
            sel = (labels == s) & m
            if sel.any():
                c[f"data {g}"] = test.v1[..., sel].mean(axis=(0, 1, 3))
                c[f"model {g}"] = pred[..., sel].mean(axis=(0, 1, 3))
        if population_baseline is not None and ((labels == s) & ~observed).any():
            c["population baseline (hidden)"] = population_baseline[:, (labels == s) & ~observed].mean(1)
    if curves:
        stim = window.get("stimulus_ms")
        figs.append(plots.population_time_course(
            curves, bin_ms, out_dir / "population_time_course.png",
            title=f"mean over neurons, {test.v1.shape[0]} test image(s) x {test.v1.shape[1]} trials",
            t0_ms=float(window.get("t0_ms", 0.0)), stimulus_ms=None if stim is None else float(stim)))
    for metric in ("trial_avg_r", "cc_norm", "bits_per_spike"):
        if metric in skipped or metric not in per_neuron:
            continue
        values = {population_label(s): {"observed": per_neuron[metric][(labels == s) & observed],
                                        "hidden": per_neuron[metric][(labels == s) & ~observed]}
                  for s in sheets}
        present = [q for q in ("population", "psth", "baseline") if f"{q}_{metric}" in neurons]
        refs = {population_label(s): {q: _nanmedian(neurons[f"{q}_{metric}"][labels == s]) for q in present}
                for s in sheets}
        figs.append(plots.metric_histograms(values, metric, out_dir / f"hist_{metric}.png", references=refs))
    if log_rows:
        folder = out_dir if run_dir is None else run_dir
        try:
            figs.append(plots.learning_curves(log_rows, folder / "learning_curves.png", best_step=best_step))
        except OSError:  # a read-only run folder: beside the report instead
            figs.append(plots.learning_curves(log_rows, out_dir / "learning_curves.png", best_step=best_step))
    if truth is not None:
        pm, tr = scatter if scatter is not None else (pred.mean(1), truth)
        groups = {"observed": observed, "hidden": ~observed}
        r_truth = neurons.get("model_r_truth")
        r_med = None if r_truth is None else {
            population_label(s): {g: _nanmedian(r_truth[(labels == s) & m]) for g, m in groups.items()}
            for s in sheets}
        figs.append(plots.truth_scatter(
            {population_label(s): {g: pm[..., (labels == s) & m] for g, m in groups.items()} for s in sheets},
            {population_label(s): {g: tr[..., (labels == s) & m] for g, m in groups.items()} for s in sheets},
            out_dir / "truth_scatter.png", bin_ms,
            r=r_med))
    return figs


# ---------------------------------------------------------------------------------- main
SCATTER_IMAGES = 8  # the truth scatter shows the first test images (its 20,000 points need no more)
CHUNK_BYTES = 256 * 2**20  # dense float32 input + counts + prediction of one chunk of images


def chunk_images_for(n_trials: int, n_bins: int, n_in: int, n_v1: int, batch_size: int) -> int:
    """Images per chunk: at least one, about :data:`CHUNK_BYTES` of dense data, no more than it takes
    to fill four prediction batches."""
    per_image = max(1, n_trials * n_bins * (n_in + 2 * n_v1) * 4)
    fill = max(1, math.ceil(4 * batch_size / max(1, n_trials)))
    return max(1, min(CHUNK_BYTES // per_image, fill))


def _mean_counts(data: Any, n_v1: int, chunk: int = 256) -> np.ndarray:
    """Each V1 neuron's mean count per bin over every window of ``data`` (sparse events, no dense
    arrays): the constant mean-rate baseline when no training windows are available."""
    total = np.zeros(n_v1)
    for a in range(0, len(data), chunk):
        ev = data.sparse_batch(np.arange(a, min(a + chunk, len(data))))
        total += np.bincount(np.asarray(ev["v1_index"], np.int64) % n_v1,
                             weights=np.asarray(ev["v1_count"], np.float64), minlength=n_v1)
    return total / max(1, len(data) * data.n_bins)


class _Keeper:
    """The ``keep`` images with the most spikes (ties: the earlier), or every image (``keep=None``)."""

    def __init__(self, keep: int | None) -> None:
        self.keep = keep
        self.items: list[tuple[float, int, tuple[np.ndarray, ...]]] = []

    def offer(self, spikes: float, row: int, chunk: tuple[np.ndarray, ...], j: int) -> None:
        """Image ``row`` with ``spikes``: entry ``j`` of each chunk array (copied only when kept)."""
        if self.keep is not None and self.keep <= 0:
            return
        if self.keep is None or len(self.items) < self.keep:
            self.items.append((spikes, row, tuple(np.array(a[j]) for a in chunk)))
            return
        worst = min(range(len(self.items)), key=lambda i: (self.items[i][0], -self.items[i][1]))
        if spikes > self.items[worst][0]:
            self.items[worst] = (spikes, row, tuple(np.array(a[j]) for a in chunk))

    def stacked(self, shapes: list[tuple[int, ...]]) -> tuple[np.ndarray, list[np.ndarray]]:
        items = sorted(self.items, key=lambda it: it[1])
        rows = np.array([it[1] for it in items], dtype=np.int64)
        out = []
        for j, shape in enumerate(shapes):
            out.append(np.stack([it[2][j] for it in items]) if items else np.zeros((0, *shape), np.float32))
        return rows, out


def evaluate(checkpoint: str | Path, store: str | Path | Any, out_dir: str | Path | None = None, *,
             truth: str | Path | None = None, device: str = "auto", batch_size: int = 16,
             figures: bool = True, progress: bool = True, max_images: int | None = None,
             weights: str = "auto", train_store: str | Path | Any | None = None,
             keep_images: int | None = 1, save_predictions: str | Path | None = None,
             predictions_dtype: str = "float32", chunk_images: int | None = None) -> EvalResult:
    """Predict the test windows of ``store`` with ``checkpoint`` and compute the metrics table.

    Streams: one chunk of images (all trials; ``chunk_images``, default from
    :func:`chunk_images_for`) is read, predicted and scored at a time. ``keep_images`` images (those
    with the most spikes; None: every image, for small data) stay in memory as ``EvalResult.test``
    (``v1``, ``lgn``, ``kept``) and ``EvalResult.prediction`` ``[kept, trials, T, N_v1]``.
    ``save_predictions``: write every prediction to this file as it is made
    (:mod:`corticalrnn.predictions`, ``predictions_dtype`` float32 or float16).

    Writes ``report.json`` and PNG figures to ``out_dir`` when given. ``truth`` is a ground-truth
    rates file of ``corticalrnn synth`` for the same images. ``train_store`` (default: the run's
    ``data.store`` when it exists) gives the training windows of the time-course baselines
    (:mod:`corticalrnn.baselines`); without it they are left out, with a note, and the mean-rate
    baseline is each neuron's mean over the test data (one extra pass over the counts).
    """
    import time

    from tqdm import tqdm

    from corticalrnn.data import dense_batches, subset_windows
    from corticalrnn.metrics import StreamingSummary, TruthCeiling
    from corticalrnn.store import open_store
    from corticalrnn.subsets import NeuronSubset
    from corticalrnn.train.checkpoint import load_checkpoint
    from corticalrnn.train.runlog import read_log
    from corticalrnn.train.spec import model_from_checkpoint
    from corticalrnn.train.trainer import resolve_device

    t_start = time.perf_counter()
    checkpoint = Path(checkpoint)
    dev = resolve_device(device, cpu_hint="--device cpu (API: device=\"cpu\")")
    ck = load_checkpoint(checkpoint)  # first: arguments swapped are named as such
    st = store if hasattr(store, "windows") else open_store(store)
    # the checkpoint's declared sizes, neuron ids, bin size and positions are checked against the store
    # (and a memory bound) before the model is built
    model, ck = model_from_checkpoint(checkpoint, dev, weights=weights, store=st, ck=ck)
    t_loaded = time.perf_counter()
    weights_used = "ema" if (weights == "auto" and ck.get("ema") is not None) else "raw"
    for key in ("model", "ema", "optimizer", "scheduler", "scaler"):  # in the model now; free the copies
        ck.pop(key, None)
    if progress:
        from corticalrnn.device import describe

        print(f"evaluate: {describe(dev, ck.get('precision', 'fp32') if dev.type == 'cuda' else 'fp32')}",
              file=sys.stderr, flush=True)
    if float(st.bin_ms) != float(ck["spec"]["bin_ms"]):
        raise DataMismatchError(f"{st.path}: {st.bin_ms} ms bins, but {checkpoint} was trained on "
                                f"{ck['spec']['bin_ms']} ms bins")
    if ck.get("subset") is None:
        raise CorticalRNNError(f"{checkpoint}: checkpoint has no neuron subset")
    subset = NeuronSubset.from_json_dict(ck["subset"], f"{checkpoint} (subset)")
    imgs, trials, win, notes = test_index(st, ck.get("split"), max_images)
    data = subset_windows(st, subset, win.ravel())  # checks the store has the subset's neurons
    n_img, k = win.shape
    n_t = int(st.n_bins)
    labels = np.asarray(subset.v1_sheet_labels())
    observed = np.asarray(subset.observed_mask(), dtype=bool)
    ids = subset.v1_ids()
    n_v1, n_in = int(data.sizes["v1"]), int(data.sizes["lgn"])

    base = _training_baselines(ck, subset, train_store, notes)
    rates = base.mean_rate if base is not None else _mean_counts(data, n_v1)
    acc = StreamingSummary(labels, observed, k, n_t, baseline_rates=rates, truth=truth is not None,
                           group_mean=True,
                           baselines=None if base is None else {"psth": base.psth,
                                                                "population": base.population})
    true_rates = None if truth is None else truth_reader(truth, subset, st)
    ceiling = None if truth is None else TruthCeiling(n_t, n_v1)
    per_chunk = chunk_images or chunk_images_for(k, n_t, n_in, n_v1, batch_size)
    t_stream = time.perf_counter()
    keeper = _Keeper(keep_images)
    scatter_pm: list[np.ndarray] = []
    scatter_truth: list[np.ndarray] = []
    writer = None
    if save_predictions is not None:
        from corticalrnn.predictions import PredictionWriter

        writer = PredictionWriter(save_predictions, image_ids=imgs, trials=trials, windows=win, n_bins=n_t,
                                  neuron_ids=ids, sheets=labels, observed=observed, bin_ms=st.bin_ms,
                                  dtype=predictions_dtype,
                                  info={"checkpoint": checkpoint, "store": st.path, "weights": weights_used})
        writer.__enter__()
    try:
        bar = tqdm(total=n_img, desc="evaluate", unit="image", disable=not progress, file=sys.stderr,
                   leave=False)
        # chunks of whole images through the one batch path the trainer uses (corticalrnn.data)
        starts = range(0, n_img, per_chunk)
        plan = [np.arange(a * k, min(n_img, a + per_chunk) * k) for a in starts]
        for a, batch in zip(starts, dense_batches(data, plan, "cpu", num_workers=None, prefetch=False)):
            b = min(n_img, a + per_chunk)
            v1 = batch["v1"].numpy().reshape(b - a, k, n_t, n_v1)
            lgn = batch["lgn"].numpy().reshape(b - a, k, n_t, n_in)
            pred = predict(model, lgn, batch_size, str(dev), progress=False)
            tr = None if true_rates is None else true_rates(imgs[a:b])
            acc.update(v1, pred, tr)
            if ceiling is not None:
                ceiling.update(true_rates(imgs[a:b], per_trial=True))
            if writer is not None:
                writer.write(pred)
            spikes = v1.sum(axis=(1, 2, 3), dtype=np.float64)
            chunk = (v1, lgn, pred) + (() if tr is None else (tr,))
            for j in range(b - a):
                keeper.offer(float(spikes[j]), a + j, chunk, j)
            if tr is not None and len(scatter_pm) < SCATTER_IMAGES:
                take = SCATTER_IMAGES - len(scatter_pm)
                scatter_pm.extend(pred[:take].mean(1))
                scatter_truth.extend(tr[:take])
            batch = v1 = lgn = pred = chunk = None  # free this chunk before reading the next
            bar.update(b - a)
        bar.close()
    except BaseException as exc:
        if writer is not None:
            writer.__exit__(type(exc), exc, exc.__traceback__)
        raise
    if writer is not None:
        writer.__exit__(None, None, None)

    t_streamed = time.perf_counter()
    summary = acc.summary()
    rows = [dict(r) for r in summary]
    _add_group_medians(rows, acc.split_half_r(), "split_half_r_median", labels, observed)
    skipped = dict(summary.skipped)
    per = summary.results["model"].per_neuron
    truth_r = None if truth is None else acc.truth_r()
    if truth_r is not None and ceiling is not None:
        c = ceiling.result()
        truth_r.update({"ceiling": c["total"], "ceiling_imgspec": c["imgspec"]})
    truth_rows_ = None if truth_r is None else truth_rows(truth_r, labels, observed)
    from corticalrnn.results import per_neuron_table

    neuron_table, neuron_columns = per_neuron_table(
        ids, labels, observed, summary.results, spikes=summary.results["model"].n_spikes,
        rate_hz=acc.spike_rates() * (1000.0 / float(st.bin_ms)), split_half_r=acc.split_half_r(),
        truth_r=truth_r)

    shapes = [(k, n_t, n_v1), (k, n_t, n_in), (k, n_t, n_v1)] + ([] if truth is None else [(n_t, n_v1)])
    kept, arrays = keeper.stacked(shapes)
    test = TestData(imgs, trials, win, arrays[0], arrays[1], notes, kept=kept)
    pred_kept = arrays[2]
    truth_kept = arrays[3] if truth is not None else None

    figs: list[Path] = []
    report_path = None
    log_rows = read_log(checkpoint.parent)
    report = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": str(checkpoint), "store": str(st.path), "bin_ms": st.bin_ms,
        "weights": weights_used,
        "step": ck["progress"]["step"], "best_step": ck["progress"].get("best_step"),
        "test_images": imgs, "trials_per_image": int(k),
        "n_windows": int(win.size), "n_bins": n_t, "window": dict(st.window_def),
        "neurons": subset.summary(), "table": rows, "skipped_metrics": skipped,
        "undefined_counts": summary.undefined, "notes": notes,
        "truth": truth_rows_, "truth_file": None if truth is None else str(truth),
        "baseline": ("constant per-neuron mean rate of the test data" if base is None else
                     f"constant per-neuron mean rate of the {base.n_windows} training windows") +
                    " (per-neuron correlations of a constant are undefined; compare bits/spike (> 0 "
                    "beats it) and thesis_CC_*); 'psth' and 'population' predictors: see "
                    "corticalrnn.baselines",
        "comparison": comparison_rows(rows),
        "streaming": {"images_per_chunk": per_chunk, "kept_images": imgs[kept],
                      "seconds": {"load_model": t_loaded - t_start, "baselines": t_stream - t_loaded,
                                  "predict_and_score": t_streamed - t_stream,
                                  "summary": time.perf_counter() - t_streamed}},
        "predictions": None if writer is None else str(writer.npy),
    }
    if out_dir is not None:
        out = Path(out_dir)
        if figures and len(kept):
            scatter = (np.stack(scatter_pm), np.stack(scatter_truth)) if scatter_pm else None
            figs = make_figures(out, test, pred_kept, labels, observed, ids, per, skipped, st.bin_ms,
                                log_rows, truth_kept, rate=acc.spike_rates(), scatter=scatter,
                                window=dict(st.window_def), neurons=neuron_table, run_dir=checkpoint.parent,
                                best_step=ck["progress"].get("best_step"),
                                population_baseline=None if base is None else base.population)
        from corticalrnn.jsonio import write_json
        from corticalrnn.results import relative_name, write_per_neuron

        report["figures"] = [relative_name(f, out) for f in figs]
        files = {"report": "report.json", **write_per_neuron(out, neuron_table)}
        if writer is not None:
            files["predictions"] = relative_name(writer.npy, out)
            files["predictions_index"] = relative_name(writer.json, out)
        report["files"] = files
        report["per_neuron_columns"] = neuron_columns

        report_path = write_json(out / "report.json", report)
    return EvalResult(rows, skipped, truth_rows_, report, report_path, figs, per, pred_kept, test,
                      neuron_table)


def load_results(eval_dir: str | Path, frame: bool | None = None) -> Any:
    """An evaluation folder read back: ``report, table = load_results(d)``; the table has one row
    per neuron with every per-neuron metric of the model and each baseline (a pandas DataFrame when
    pandas is importable, else a dict of numpy arrays); ``.predictions()`` opens the saved
    predictions. See :mod:`corticalrnn.results`."""
    from corticalrnn.results import load_results as _load

    return _load(eval_dir, frame)


def print_result(res: EvalResult, file: Any = None) -> None:
    """The metrics table, skipped metrics with reasons, and the ground-truth comparison."""
    from corticalrnn.tables import format_table

    file = file or sys.stdout
    r = res.report
    shown = list(map(int, r["test_images"]))
    if len(shown) > 12:
        shown = f"{len(shown)} ({', '.join(map(str, shown[:5]))}, ..., {shown[-1]})"
    print(f"test images {shown}, {r['trials_per_image']} trial(s) each, "
          f"{r['n_bins']} bins of {r['bin_ms']} ms; model vs mean-rate baseline", file=file)
    print(TABLE_CAPTION, file=file)
    print(res.table(), file=file)
    if r.get("comparison") and any("r_avg pop" in c for c in r["comparison"]):
        print("\nmodel beside the time-course baselines (from training windows) and the ceilings:", file=file)
        print(format_table(r["comparison"], drop_empty=True), file=file)
    if res.skipped:
        print("skipped metrics:", file=file)
        for name, why in res.skipped.items():
            print(f"  {name}: {why}", file=file)
    for note in res.test.notes:
        print(f"note: {note}", file=file)
    if res.truth_rows:
        print("\ncomparison with the generator's true rates (Pearson r over images x time, median):",
              file=file)
        print(format_table(res.truth_rows, list(TRUTH_COLUMNS), drop_empty=True), file=file)
        print(TRUTH_NOTE, file=file)
    if res.report_path is not None:
        print(f"\nreport: {res.report_path}", file=file)
        tables = [v for k, v in (r.get("files") or {}).items() if k.startswith("per_neuron")]
        if tables:
            print(f"per-neuron metrics: {', '.join(str(res.report_path.parent / t) for t in tables)} "
                  f"(corticalrnn.evaluate.load_results)", file=file)
        if res.figures:
            print(f"figures: {', '.join(str(f) for f in res.figures)}", file=file)
    if r.get("predictions"):
        print(f"predictions: {r['predictions']}", file=file)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="checkpoint (RUN_DIR/best.pt or last.pt)")
    parser.add_argument("store", type=Path, help="Zarr store with the test windows")
    parser.add_argument("--out", type=Path, default=None,
                        help="write report.json and figures here (default: CHECKPOINT_DIR/eval-STORE)")
    parser.add_argument("--truth", type=Path, default=None,
                        help="ground-truth rates file from corticalrnn synth (compare with true rates)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-images", type=int, default=None, help="evaluate only the first N test images")
    parser.add_argument("--weights", choices=("auto", "raw"), default="auto",
                        help="auto: EMA weights when the run kept them; raw: the optimised weights")
    parser.add_argument("--no-figures", action="store_true")
    parser.add_argument("--train-store", type=Path, default=None,
                        help="store of the run's training windows, for the time-course baselines "
                             "(default: the run's data.store)")
    parser.add_argument("--save-predictions", type=Path, default=None, metavar="FILE.npy",
                        help="write every free-running prediction [images, trials, T, N_v1] to FILE.npy "
                             "(+ FILE.json index) as it is made; default: kept only for the figures")
    parser.add_argument("--predictions-dtype", choices=("float32", "float16"), default="float32")
    parser.add_argument("--chunk-images", type=int, default=None,
                        help="test images predicted and scored at a time (default: ~256 MB of dense data)")


def run(args: argparse.Namespace) -> int:
    out = args.out or args.checkpoint.parent / f"eval-{args.store.name.removesuffix('.zarr')}"
    res = evaluate(args.checkpoint, args.store, out, truth=args.truth, device=args.device,
                   batch_size=args.batch_size, figures=not args.no_figures, max_images=args.max_images,
                   weights=args.weights, train_store=args.train_store,
                   save_predictions=args.save_predictions, predictions_dtype=args.predictions_dtype,
                   chunk_images=args.chunk_images)
    print_result(res)
    return 0
