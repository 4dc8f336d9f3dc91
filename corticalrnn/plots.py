"""Figures (matplotlib, Agg backend, PNG): rasters/PSTHs, metric histograms, learning curves.

Every function takes plain numpy data, writes one PNG atomically and returns its path; none
computes a metric (that is ``corticalrnn.metrics``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

OBS_COLOR, HID_COLOR = "#1f77b4", "#d62728"
DATA_COLOR, PRED_COLOR, TRUTH_COLOR = "black", "#ff7f0e", "#2ca02c"


def _save(fig: plt.Figure, path: str | Path) -> Path:
    from corticalrnn.atomic import atomic_path

    path = Path(path)
    try:
        with atomic_path(path, fsync=False) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return path


def raster_psth(data: np.ndarray, pred: np.ndarray, neurons: Sequence[int], labels: Sequence[str],
                bin_ms: float, path: str | Path, title: str = "",
                truth: np.ndarray | None = None) -> Path:
    """Rows of example neurons: spike-count raster over trials (data) and PSTH data vs prediction.

    ``data`` and ``pred`` are ``[trials, T, N]`` (counts per bin and expected counts per bin) for
    one image; ``truth`` (optional, ``[T, N]``) is the generator's true expected count per bin.
    Rates are shown in spikes/s.
    """
    n = len(neurons)
    fig, axes = plt.subplots(n, 2, figsize=(10, 1.5 * n + 0.8), squeeze=False, layout="constrained",
                             gridspec_kw={"width_ratios": [1, 1.3]})
    t = (np.arange(data.shape[1]) + 0.5) * bin_ms
    hz = 1000.0 / bin_ms
    for row, (j, label) in enumerate(zip(neurons, labels)):
        ax_r, ax_p = axes[row]
        counts = data[:, :, j]
        ax_r.imshow(counts, aspect="auto", interpolation="nearest", cmap="Greys",
                    extent=(0, data.shape[1] * bin_ms, counts.shape[0], 0), vmin=0,
                    vmax=max(1.0, float(counts.max())))
        ax_r.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax_r.set_ylabel(f"{label}\ntrial", fontsize=8)
        ax_p.plot(t, counts.mean(0) * hz, color=DATA_COLOR, lw=1.2, label="data (trial mean)")
        ax_p.plot(t, pred[:, :, j].mean(0) * hz, color=PRED_COLOR, lw=1.2, label="model (trial mean)")
        if truth is not None:
            ax_p.plot(t, truth[:, j] * hz, color=TRUTH_COLOR, lw=1.0, ls="--", label="true rate")
        ax_p.set_ylabel("spikes/s", fontsize=8)
        if row == 0:
            ax_r.set_title("data raster", fontsize=9)
            ax_p.set_title("PSTH", fontsize=9)
            ax_p.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("time (ms)")
    axes[-1, 1].set_xlabel("time (ms)")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def metric_histograms(values: Mapping[str, Mapping[str, np.ndarray]], metric: str, path: str | Path,
                      baseline: Mapping[str, float] | None = None) -> Path:
    """One panel per population: histogram of a per-neuron metric, observed vs hidden.

    ``values[population][group]`` with group ``observed``/``hidden``; ``baseline[population]``
    (optional) draws the mean-rate baseline's median as a dashed line.
    """
    pops = list(values)
    fig, axes = plt.subplots(1, len(pops), figsize=(3.2 * len(pops), 2.8), squeeze=False,
                             layout="constrained")
    for ax, pop in zip(axes[0], pops):
        groups = values[pop]
        finite = [np.asarray(v, float)[np.isfinite(v)] for v in groups.values()]
        allv = np.concatenate(finite) if finite else np.zeros(0)
        bins = np.linspace(allv.min(), allv.max(), 25) if allv.size and allv.min() < allv.max() else 10
        for (group, v), color in zip(groups.items(), (OBS_COLOR, HID_COLOR)):
            v = np.asarray(v, float)
            v = v[np.isfinite(v)]
            if v.size:
                ax.hist(v, bins=bins, alpha=0.55, color=color,
                        label=f"{group} (n={v.size}, median {np.median(v):.2f})")
        if baseline and pop in baseline and np.isfinite(baseline[pop]):
            ax.axvline(baseline[pop], color="grey", ls="--", lw=1, label="mean-rate baseline")
        ax.set_title(pop, fontsize=9)
        ax.set_xlabel(metric, fontsize=8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    axes[0, 0].set_ylabel("neurons")
    return _save(fig, path)


def learning_curves(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Training and validation loss (and hidden-neuron validation loss) against the step."""
    fig, ax = plt.subplots(figsize=(6, 3.4), layout="constrained")
    train = [(r["step"], r["loss"]) for r in rows if r.get("split") == "train"]
    val = [(r["step"], r["loss"]) for r in rows if r.get("split") == "val"]
    hid = [(r["step"], r["loss_hidden"]) for r in rows if r.get("split") == "val" and "loss_hidden" in r]
    for pts, label, style in ((train, "train (observed)", "-"), (val, "validation (observed)", "o-"),
                              (hid, "validation (hidden)", "s--")):
        if pts:
            x, y = zip(*pts)
            ax.plot(x, y, style, ms=3, lw=1, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (Poisson NLL per bin)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if not (train or val):
        ax.text(0.5, 0.5, "no metrics logged", ha="center", transform=ax.transAxes)
    return _save(fig, path)


def truth_scatter(pred: Mapping[str, np.ndarray], truth: Mapping[str, np.ndarray], path: str | Path,
                  bin_ms: float) -> Path:
    """Per population: trial-averaged predicted rate vs the generator's true rate (all bins)."""
    pops = list(pred)
    fig, axes = plt.subplots(1, len(pops), figsize=(3.0 * len(pops), 3.0), squeeze=False,
                             layout="constrained")
    hz = 1000.0 / bin_ms
    for ax, pop in zip(axes[0], pops):
        p, t = np.ravel(pred[pop]) * hz, np.ravel(truth[pop]) * hz
        if p.size > 20000:
            sel = np.random.default_rng(0).choice(p.size, 20000, replace=False)
            p, t = p[sel], t[sel]
        ax.scatter(t, p, s=2, alpha=0.3)
        hi = float(max(t.max(initial=1), p.max(initial=1)))
        ax.plot([0, hi], [0, hi], color="grey", lw=0.8)
        ax.set_title(pop, fontsize=9)
        ax.set_xlabel("true rate (spikes/s)", fontsize=8)
    axes[0, 0].set_ylabel("model rate (spikes/s)")
    return _save(fig, path)
