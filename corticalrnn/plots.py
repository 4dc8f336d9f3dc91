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
import matplotlib.patches  # noqa: E402
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


STIM_COLOR = "#fff2b3"  # shading of the interval the image is shown
REF_STYLES = {"population": ("dimgrey", "--", "population baseline"),
              "psth": ("dimgrey", ":", "PSTH baseline"), "baseline": ("dimgrey", "-.", "mean-rate baseline")}
METRIC_LABELS = {
    "trial_avg_r": "r with the trial-averaged response (r_avg)",
    "single_trial_r": "r with single trials (r_1)",
    "cc_norm": "CC_norm = r_avg / CC_max",
    "cc_max": "CC_max (ceiling of r_avg)",
    "bits_per_spike": "bits/spike (log-likelihood gain over the mean rate)",
    "feve": "FEVE (fraction of explainable variance explained)",
    "fev": "FEV (fraction of explainable variance)",
}


def _shade_stimulus(ax: plt.Axes, stimulus_ms: float | None) -> None:
    """Shade ``[0, stimulus_ms]`` (the image) and mark the onset; just the onset when the duration is
    unknown."""
    if stimulus_ms is not None and stimulus_ms > 0:
        ax.axvspan(0.0, stimulus_ms, color=STIM_COLOR, zorder=0, lw=0)
    ax.axvline(0.0, color="goldenrod", lw=0.8, zorder=0.5)


def raster_psth(data: np.ndarray, pred: np.ndarray, neurons: Sequence[int], labels: Sequence[str],
                bin_ms: float, path: str | Path, title: str = "",
                truth: np.ndarray | None = None, t0_ms: float = 0.0,
                stimulus_ms: float | None = None) -> Path:
    """Rows of example neurons: spike-count raster over trials (data) and PSTH data vs prediction.

    ``data`` and ``pred`` are ``[trials, T, N]`` (counts per bin and expected counts per bin) for
    one image; ``truth`` (optional, ``[T, N]``) is the generator's true expected count per bin.
    Time is in ms from image onset: the window starts at ``t0_ms`` (negative: part of the blank
    before); ``[0, stimulus_ms]`` (the image) is shaded. Rates are shown in spikes/s; the rasters
    share one colour scale (spikes per bin, colour bar).
    """
    n = len(neurons)
    k, n_t = data.shape[0], data.shape[1]
    fig, axes = plt.subplots(n, 2, figsize=(11, 1.5 * n + 1.0), squeeze=False, layout="constrained",
                             gridspec_kw={"width_ratios": [1, 1.3]}, sharex=True)
    edges = t0_ms + np.arange(n_t + 1) * bin_ms
    t = (edges[:-1] + edges[1:]) / 2
    hz = 1000.0 / bin_ms
    vmax = max(1.0, float(max((data[:, :, j].max() for j in neurons), default=1.0)))
    cmap = matplotlib.colormaps["Greys"].resampled(int(vmax) + 1) if vmax <= 12 else "Greys"
    im = None
    for row, (j, label) in enumerate(zip(neurons, labels)):
        ax_r, ax_p = axes[row]
        counts = data[:, :, j]
        im = ax_r.imshow(counts, aspect="auto", interpolation="nearest", cmap=cmap,
                         extent=(edges[0], edges[-1], k + 0.5, 0.5), vmin=-0.5 if vmax <= 12 else 0,
                         vmax=vmax + 0.5 if vmax <= 12 else vmax)
        if stimulus_ms is not None and stimulus_ms > 0:
            for x in (0.0, stimulus_ms):
                ax_r.axvline(x, color="goldenrod", lw=1.0)
        else:
            ax_r.axvline(0.0, color="goldenrod", lw=1.0)
        ax_r.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True, nbins=4))
        ax_r.set_ylabel(f"{label}\ntrial", fontsize=8)
        _shade_stimulus(ax_p, stimulus_ms)
        ax_p.step(edges, np.append(counts.mean(0), counts.mean(0)[-1]) * hz, where="post",
                  color=DATA_COLOR, lw=1.0, label="data (trial mean)")
        ax_p.plot(t, pred[:, :, j].mean(0) * hz, color=PRED_COLOR, lw=1.6, label="model (trial mean)")
        if truth is not None:
            ax_p.plot(t, truth[:, j] * hz, color=TRUTH_COLOR, lw=1.2, ls="--", label="true rate")
        ax_p.set_ylabel("rate (spikes/s)", fontsize=8)
        ax_p.set_ylim(bottom=0)
        if row == 0:
            ax_r.set_title("data: spike counts per trial", fontsize=9)
            ax_p.set_title("PSTH (shaded: image shown)", fontsize=9)
            handles, texts = ax_p.get_legend_handles_labels()
            handles.append(matplotlib.patches.Patch(color=STIM_COLOR, label="image shown"))
            fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncol=len(handles))
    ax_r.set_xlim(edges[0], edges[-1])
    axes[-1, 0].set_xlabel("time from image onset (ms)")
    axes[-1, 1].set_xlabel("time from image onset (ms)")
    if im is not None:
        cb = fig.colorbar(im, ax=axes[:, 0], location="left", shrink=0.5, pad=0.02, aspect=30)
        cb.set_label(f"spikes per {bin_ms:g} ms bin", fontsize=8)
        cb.ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        cb.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def population_time_course(curves: Mapping[str, Mapping[str, np.ndarray]], bin_ms: float, path: str | Path,
                           title: str = "", t0_ms: float = 0.0, stimulus_ms: float | None = None) -> Path:
    """One panel per population: mean count per bin over its neurons, test images and trials, of the
    data and the model (observed and hidden neurons) and of the population baseline, in spikes/s.

    ``curves[population][name]`` is ``[T]``; names starting with ``data`` are drawn black, ``model`` in
    colour, ``baseline`` grey; ``hidden`` ones dashed. This is where a model that misses the shared
    time course (onset transient, offset) shows at a glance."""
    pops = list(curves)
    fig, axes = plt.subplots(1, len(pops), figsize=(3.6 * len(pops), 3.2), squeeze=False,
                             layout="constrained")
    for ax, pop in zip(axes[0], pops):
        for name, y in curves[pop].items():
            y = np.asarray(y, np.float64)
            t = t0_ms + (np.arange(y.size) + 0.5) * bin_ms
            color = "black" if name.startswith("data") else "0.6" if "baseline" in name else "tab:red"
            ax.plot(t, y * 1000.0 / bin_ms, color=color, ls="--" if "hidden" in name else "-", lw=1.4,
                    label=name)
        _shade_stimulus(ax, stimulus_ms)
        ax.set_title(pop)
        ax.set_xlabel("time from image onset (ms)")
    axes[0][0].set_ylabel("mean rate (spikes/s)")
    axes[0][-1].legend(fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def _shown_range(values: Sequence[np.ndarray], refs: Sequence[float], metric: str) -> tuple[float, float]:
    """One x range for every panel: the 1st..99th percentile of all values (and ``refs``), so that
    an outlier does not squash the rest; correlations stay within [-1, 1]."""
    allv = np.concatenate([np.asarray(v, float).ravel() for v in values] + [np.zeros(0)])
    allv = allv[np.isfinite(allv)]
    if not allv.size:
        return (-1.0, 1.0)
    lo, hi = np.percentile(allv, [1, 99]) if allv.size >= 50 else (allv.min(), allv.max())
    finite_refs = [r for r in refs if np.isfinite(r)]
    lo, hi = min([lo, *finite_refs]), max([hi, *finite_refs])
    if metric.endswith("_r") or metric == "cc_max":
        lo, hi = max(lo, -1.0), min(hi, 1.0)
    if metric == "bits_per_spike":
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    pad = 0.04 * (hi - lo) if hi > lo else 0.5
    return float(lo - pad), float(hi + pad)


def metric_histograms(values: Mapping[str, Mapping[str, np.ndarray]], metric: str, path: str | Path,
                      baseline: Mapping[str, float] | None = None,
                      references: Mapping[str, Mapping[str, float]] | None = None) -> Path:
    """One panel per population: histogram of a per-neuron metric, observed vs hidden, on one x range
    and one set of bins for every panel (values outside it are counted in the edge bins and noted).

    ``values[population][group]`` with group ``observed``/``hidden``; each group's median is a solid
    line in its colour. ``references[population][predictor]`` (``population``, ``psth``,
    ``baseline``): the median of that baseline predictor, drawn as a grey reference line (in the
    legend only, marked so, when outside the neurons' range);
    ``baseline[population]`` is the older spelling of ``references[population]["baseline"]``.
    """
    pops = list(values)
    refs: dict[str, dict[str, float]] = {p: dict((references or {}).get(p, {})) for p in pops}
    for p, v in (baseline or {}).items():
        refs.setdefault(p, {})["baseline"] = v
    lo, hi = _shown_range([v for g in values.values() for v in g.values()], [], metric)
    bins = np.linspace(lo, hi, 26)
    fig, axes = plt.subplots(1, len(pops), figsize=(3.4 * len(pops), 4.0), squeeze=False,
                             layout="constrained", sharex=True)
    for ax, pop in zip(axes[0], pops):
        outside = 0
        for (group, v), color in zip(values[pop].items(), (OBS_COLOR, HID_COLOR)):
            v = np.asarray(v, float)
            v = v[np.isfinite(v)]
            if not v.size:
                continue
            outside += int(((v < lo) | (v > hi)).sum())
            ax.hist(np.clip(v, bins[0] + 1e-12, bins[-1] - 1e-12), bins=bins, alpha=0.5, color=color,
                    label=f"{group}: median {np.median(v):.2f} (n={v.size})")
            ax.axvline(float(np.median(v)), color=color, lw=1.6)
        for name, x in refs.get(pop, {}).items():
            if np.isfinite(x) and name in REF_STYLES:
                c, ls, text = REF_STYLES[name]
                if lo <= x <= hi:
                    ax.axvline(x, color=c, ls=ls, lw=1.2, label=f"{text}: median {x:.2f}")
                else:  # only in the legend: the range follows the neurons' values
                    ax.plot([], [], color=c, ls=ls, lw=1.2,
                            label=f"{text}: median {x:.2f} ({'below' if x < lo else 'above'} the range)")
        if metric == "bits_per_spike":
            ax.axvline(0.0, color="black", lw=0.6)
        if outside:  # a legend line, not a label over the bars
            ax.plot([], [], ls="none", label=f"{outside} neuron(s) outside the range: in the edge bins")
        ax.set_xlim(lo, hi)
        ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_title(pop, fontsize=9)
        ax.set_xlabel(METRIC_LABELS.get(metric, metric), fontsize=8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    axes[0, 0].set_ylabel("neurons")
    fig.suptitle(f"{METRIC_LABELS.get(metric, metric)} per neuron; lines: medians", fontsize=9)
    return _save(fig, path)


def learning_curves(rows: Sequence[Mapping[str, Any]], path: str | Path,
                    best_step: int | None = None) -> Path:
    """Training and validation loss (and hidden-neuron validation loss) against the step; the step of
    the kept checkpoint (``best_step``) as a vertical line."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6), layout="constrained")
    train = [(r["step"], r["loss"]) for r in rows if r.get("split") == "train"]
    val = [(r["step"], r["loss"]) for r in rows if r.get("split") == "val"]
    hid = [(r["step"], r["loss_hidden"]) for r in rows if r.get("split") == "val" and "loss_hidden" in r]
    for pts, label, style, color in ((train, "train (observed neurons)", "-", "#7f7f7f"),
                                     (val, "validation (observed neurons)", "o-", OBS_COLOR),
                                     (hid, "validation (hidden neurons)", "s--", HID_COLOR)):
        if pts:
            x, y = zip(*pts)
            ax.plot(x, y, style, ms=3, lw=1, label=label, color=color)
    if best_step is not None:
        ax.axvline(best_step, color="black", ls=":", lw=1, label=f"best checkpoint (step {best_step})")
    ax.set_xlabel("training step")
    ax.set_ylabel("loss (Poisson NLL per bin)")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if not (train or val):
        ax.text(0.5, 0.5, "no metrics logged", ha="center", transform=ax.transAxes)
    return _save(fig, path)


def truth_scatter(pred: Mapping[str, Mapping[str, np.ndarray]] | Mapping[str, np.ndarray],
                  truth: Mapping[str, Mapping[str, np.ndarray]] | Mapping[str, np.ndarray], path: str | Path,
                  bin_ms: float, r: Mapping[str, Mapping[str, float]] | None = None) -> Path:
    """Per population: trial-averaged predicted rate vs the generator's true rate (every bin of the
    images given), observed and hidden neurons in their colours, each with its r in the legend.

    ``pred[population][group]`` and ``truth[population][group]`` (group ``observed``/``hidden``;
    a plain array per population is one group ``neurons``) are expected counts per bin, shown in
    spikes/s on equal x and y ranges with the identity line. ``r[population][group]``: the number
    to print (e.g. the median over neurons of the per-neuron r with the true rate); default: Pearson
    r over the points shown.
    """
    pops = list(pred)
    fig, axes = plt.subplots(1, len(pops), figsize=(3.3 * len(pops), 3.9), squeeze=False,
                             layout="constrained")
    hz = 1000.0 / bin_ms
    rng = np.random.default_rng(0)
    for ax, pop in zip(axes[0], pops):
        pg = pred[pop] if isinstance(pred[pop], Mapping) else {"neurons": pred[pop]}
        tg = truth[pop] if isinstance(truth[pop], Mapping) else {"neurons": truth[pop]}
        hi = 1.0
        for group, color in zip(pg, (OBS_COLOR, HID_COLOR)):
            p, t = np.ravel(pg[group]) * hz, np.ravel(tg[group]) * hz
            if not p.size:
                continue
            value = (r or {}).get(pop, {}).get(group)
            if value is None:
                value = float(np.corrcoef(p, t)[0, 1]) if p.std() > 0 and t.std() > 0 else float("nan")
                what = "r"
            else:
                what = "median r"
            if p.size > 10000:
                sel = rng.choice(p.size, 10000, replace=False)
                p, t = p[sel], t[sel]
            ax.scatter(t, p, s=2, alpha=0.3, color=color, rasterized=True,
                       label=f"{group}: {what} {value:.2f}")
            hi = max(hi, float(np.percentile(t, 99.9)), float(np.percentile(p, 99.9)))
        hi *= 1.05
        ax.plot([0, hi], [0, hi], color="grey", lw=0.8, label="identity")
        ax.set_xlim(0, hi)
        ax.set_ylim(0, hi)
        ax.set_aspect("equal")
        ax.set_title(pop, fontsize=9)
        ax.set_xlabel("true rate (spikes/s)", fontsize=8)
        leg = ax.legend(fontsize=7, loc="upper left", markerscale=4)
        for h in leg.legend_handles:
            if hasattr(h, "set_alpha"):
                h.set_alpha(1)
    axes[0, 0].set_ylabel("model rate, trial mean (spikes/s)")
    fig.suptitle(f"model vs the generator's true rate, {bin_ms:g} ms bins (r: median over neurons of "
                 f"each neuron's r)" if r else f"model vs the generator's true rate, {bin_ms:g} ms bins",
                 fontsize=9)
    return _save(fig, path)


def lgn_layout(layout: Any, path: str | Path, title: str = "") -> Path:
    """LGN positions inferred from activity (a :class:`corticalrnn.lgn_layout.LGNLayout`), in cortical mm:
    left, the cells (ON / OFF) and the observed units that fixed the frame; right, each of those units'
    position against the position its RF centre maps to (x and y; on the diagonal when the frame is
    right)."""
    xy, polarity, r2 = layout.xy, layout.polarity, layout.anchor_r2
    anchor_xy, anchor_fit = layout.anchor_xy, layout.anchor_fit
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 5), layout="constrained")
    on = np.asarray(polarity) > 0
    ax.scatter(xy[on, 0], xy[on, 1], s=3, c="#d62728", alpha=0.5, lw=0, label="ON cells")
    ax.scatter(xy[~on, 0], xy[~on, 1], s=3, c="#1f77b4", alpha=0.5, lw=0, label="OFF cells")
    for k, a in enumerate(anchor_xy):
        ax.scatter(a[:, 0], a[:, 1], s=12, marker="x", c="black", lw=0.8,
                   label="observed units (frame)" if k == 0 else None)
    ax.set_xlabel("x (mm, the units' cortical frame)")
    ax.set_ylabel("y (mm)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(loc="upper right", fontsize=8, markerscale=2)
    ax.set_title("inferred LGN positions")
    lo = min([float(np.min(a)) for a in (*anchor_xy, *anchor_fit)] or [0.0])
    hi = max([float(np.max(a)) for a in (*anchor_xy, *anchor_fit)] or [1.0])
    ax2.plot([lo, hi], [lo, hi], color="dimgrey", lw=0.8, ls="--")
    for k, (a, f) in enumerate(zip(anchor_xy, anchor_fit, strict=True)):
        for d, (mark, name) in enumerate((("o", "x"), ("s", "y"))):
            ax2.scatter(a[:, d], f[:, d], s=8, marker=mark, alpha=0.6, lw=0,
                        label=f"part {k + 1}, {name}: R² {r2[k][d]:.2f}")
    ax2.set_xlabel("unit's position (mm)")
    ax2.set_ylabel("position of its RF centre in the layout (mm)")
    ax2.legend(loc="upper left", fontsize=8)
    ax2.set_title("how well observed units fix the frame")
    if title:
        fig.suptitle(title)
    return _save(fig, path)
