"""Saved evaluation results (one home): the per-neuron metrics table ``corticalrnn evaluate`` writes
beside ``report.json``, and :func:`load_results`, which reads an evaluation folder back.

Torch-free (numpy; pandas and pyarrow when installed).

``per_neuron.csv`` (always) and ``per_neuron.parquet`` (when pyarrow is importable; same columns):
one row per modelled V1 neuron, in the model's V1 order (the order of the predictions file's
neurons, ``corticalrnn.predictions``). Columns:

- ``index`` (row in the model's V1 vector), ``neuron_id`` (Mozaik id), ``sheet`` (Mozaik name),
  ``population`` (``L4 E`` ...), ``observed`` (``true``: trained on; ``false``: hidden);
- ``spikes`` (recorded test spikes), ``rate_hz`` (mean test rate), ``split_half_r`` (reliability of
  the recording itself);
- the metrics that are properties of the recorded trials alone (equal for every predictor: ``cc_max``,
  ``fev``, the oracle r), once, without a prefix;
- ``<predictor>_<metric>`` for every predictor the evaluation scored (``model``; ``baseline``: the
  constant per-neuron mean rate; ``psth`` and ``population``: the time-course baselines of
  ``corticalrnn.baselines``) and every per-neuron metric of ``corticalrnn.metrics``
  (``model_trial_avg_r``, ``population_cc_norm``, ``psth_bits_per_spike`` ...); a column that is
  undefined for every neuron (the constant baseline's correlations) is left out;
- with a ground-truth file: ``<model|data|psth|population>_r_truth`` (r with the generator's true rate
  over images × time) and ``<model|data>_r_truth_imgspec`` (image-specific r: each neuron's mean time
  course over the test images removed first).

CSV: one header line, comma-separated, floats with round-trip precision, ``NaN`` for undefined,
booleans ``true``/``false``. ``report.json`` names the files (``files``) and describes every column
(``per_neuron_columns``).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from corticalrnn.errors import CorticalRNNError, SchemaError

CSV_NAME = "per_neuron.csv"
PARQUET_NAME = "per_neuron.parquet"
REPORT_NAME = "report.json"

PREDICTOR_TEXT = {
    "model": "the model's free-running prediction",
    "baseline": "the constant per-neuron mean rate",
    "psth": "each neuron's mean time course over the training windows (same for every image)",
    "population": "the population baseline (mean time course of the population's observed neurons)",
}
METRIC_TEXT = {
    "single_trial_r": "Pearson r with each trial over images x time, averaged over trials",
    "trial_avg_r": "Pearson r with the trial average over images x time (Schoppe's CC_abs)",
    "cc_max": "Schoppe's CC_max: the ceiling of trial_avg_r the trial-to-trial noise leaves",
    "cc_norm": "trial_avg_r / cc_max",
    "fev": "fraction of explainable variance (Sensorium)",
    "feve": "fraction of explainable variance explained (Sensorium)",
    "bits_per_spike": "Poisson log-likelihood gain over the neuron's test mean rate, bits per spike",
    "oracle_r": "leave-one-trial-out r (ceiling of single_trial_r for trial-blind predictors)",
    "oracle_r_loo_mean": "leave-one-trial-out r of each trial with the mean of the others, averaged over "
                         "trials (ceiling of single_trial_r for trial-blind predictors)",
    "oracle_r_jackknife": "neuralpredictors' compute_oracle_corr: r over all trials pooled of each trial "
                          "with the mean of the others",
}
_INT = ("index", "neuron_id", "spikes")
_STR = ("sheet", "population")
_BOOL = ("observed",)


def per_neuron_table(neuron_ids: np.ndarray, sheets: np.ndarray, observed: np.ndarray,
                     results: Mapping[str, Any], *, spikes: np.ndarray | None = None,
                     rate_hz: np.ndarray | None = None, split_half_r: np.ndarray | None = None,
                     truth_r: Mapping[str, np.ndarray] | None = None
                     ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``(columns, descriptions)`` of the per-neuron table (module docstring) from the evaluation's
    per-predictor :class:`corticalrnn.metrics.MetricResult` ``results`` and per-neuron extras."""
    from corticalrnn.sheets import population_label

    n = len(neuron_ids)
    cols: dict[str, np.ndarray] = {
        "index": np.arange(n, dtype=np.int64), "neuron_id": np.asarray(neuron_ids, np.int64),
        "sheet": np.asarray([str(s) for s in sheets], dtype=object),
        "population": np.asarray([population_label(str(s)) for s in sheets], dtype=object),
        "observed": np.asarray(observed, bool)}
    desc = {"index": "row in the model's V1 vector (and the predictions file's neuron axis)",
            "neuron_id": "Mozaik neuron id", "sheet": "Mozaik sheet", "population": "V1 population",
            "observed": "true: the model was trained on this neuron; false: hidden (never seen)"}
    for name, values, text in (("spikes", spikes, "recorded spikes in the test windows"),
                               ("rate_hz", rate_hz, "mean rate over the test windows (spikes/s)"),
                               ("split_half_r", split_half_r,
                                "r between the means of the even and the odd trials (the recording's "
                                "reliability)")):
        if values is not None:
            cols[name] = np.asarray(values, np.int64 if name == "spikes" else np.float64)
            desc[name] = text
    # a metric equal for every predictor is a property of the recording (CC_max, FEV, the oracle): once
    metric_names = list(dict.fromkeys(m for res in results.values() for m in res.per_neuron))
    of_data = [m for m in metric_names if len(results) > 1 and all(
        m in res.per_neuron for res in results.values()) and all(
        np.array_equal(np.asarray(res.per_neuron[m], np.float64),
                       np.asarray(next(iter(results.values())).per_neuron[m], np.float64), equal_nan=True)
        for res in results.values())]
    for metric in of_data:
        v = np.asarray(next(iter(results.values())).per_neuron[metric], np.float64)
        if v.shape == (n,) and np.isfinite(v).any():
            cols[metric] = v
            desc[metric] = f"{METRIC_TEXT.get(metric, metric)}; a property of the recorded trials"
    for predictor, res in results.items():
        for metric, values in res.per_neuron.items():
            v = np.asarray(values, np.float64)
            if metric in of_data or v.shape != (n,) or not np.isfinite(v).any():
                continue
            key = f"{predictor}_{metric}"
            cols[key] = v
            desc[key] = (f"{METRIC_TEXT.get(metric, metric)}; predictor: "
                         f"{PREDICTOR_TEXT.get(predictor, predictor)}")
    for name, values in (truth_r or {}).items():
        v = np.asarray(values, np.float64)
        if name in ("baseline", "mean_rate") or v.shape != (n,) or not np.isfinite(v).any():  # constant
            continue
        base, imgspec = (name[:-len("_imgspec")], True) if name.endswith("_imgspec") else (name, False)
        key = f"{base}_r_truth" + ("_imgspec" if imgspec else "")
        who = "the trial-averaged data" if base == "data" else PREDICTOR_TEXT.get(base, base)
        cols[key] = v
        desc[key] = ("the highest r with the generator's true rate (trial average) that a predictor of "
                     "the trial-invariant rate can reach (sqrt of the true rates' split-half r)"
                     if base == "ceiling" else
                     f"Pearson r of {who} with the generator's true rate over images x time")
        desc[key] += ", after removing each neuron's mean time course over the test images" if imgspec else ""
    return cols, desc


def _cell(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return "NaN" if math.isnan(f) else repr(f)
    return str(v)


def write_per_neuron(out_dir: str | os.PathLike[str], columns: Mapping[str, np.ndarray]) -> dict[str, str]:
    """Write ``per_neuron.csv`` and, when pyarrow is importable, ``per_neuron.parquet`` into
    ``out_dir`` (atomically); returns ``{"per_neuron_csv": name, "per_neuron_parquet": name}``."""
    import io

    from corticalrnn.atomic import atomic_path, write_text_atomic

    out = Path(out_dir)
    names = list(columns)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(names)
    lists = [np.asarray(columns[c]).tolist() for c in names]
    for row in zip(*lists):
        w.writerow([_cell(v) for v in row])
    write_text_atomic(out / CSV_NAME, buf.getvalue())
    files = {"per_neuron_csv": CSV_NAME}
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return files
    table = pa.table({c: (np.asarray(columns[c]).astype(str) if c in _STR else np.asarray(columns[c]))
                      for c in names})
    with atomic_path(out / PARQUET_NAME, fsync=False) as tmp:
        pq.write_table(table, tmp)
    files["per_neuron_parquet"] = PARQUET_NAME
    return files


def read_per_neuron_csv(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The per-neuron table of ``per_neuron.csv`` as columns of numpy arrays (typed as written)."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except FileNotFoundError:
        raise CorticalRNNError(f"{path}: no such file") from None
    if not rows:
        raise SchemaError(f"{path}: empty per-neuron table")
    header, body = rows[0], rows[1:]
    if any(len(r) != len(header) for r in body):
        raise SchemaError(f"{path}: rows of unequal length")
    cols: dict[str, np.ndarray] = {}
    for j, name in enumerate(header):
        vals = [r[j] for r in body]
        try:
            if name in _INT:
                cols[name] = np.asarray(vals, dtype=np.int64)
            elif name in _BOOL:
                cols[name] = np.asarray([v == "true" for v in vals], dtype=bool)
            elif name in _STR:
                cols[name] = np.asarray(vals, dtype=object)
            else:
                cols[name] = np.asarray(vals, dtype=np.float64)
        except ValueError as exc:
            raise SchemaError(f"{path}: column {name!r}: {exc}") from None
    return cols


@dataclass
class SavedResults:
    """An evaluation folder read back: ``report`` (``report.json``), ``per_neuron`` (a pandas
    DataFrame, or a dict of numpy columns without pandas / with ``frame=False``), ``path`` (the
    folder). ``report, table = load_results(d)`` unpacks the first two."""

    report: dict[str, Any]
    per_neuron: Any
    path: Path

    def __iter__(self) -> Any:
        return iter((self.report, self.per_neuron))

    def file(self, key: str) -> Path | None:
        """The path of a file the report names under ``files`` (``per_neuron_csv``, ``predictions``
        ...), resolved against the folder; None when the report names none."""
        name = (self.report.get("files") or {}).get(key)
        return None if not name else self.path / name

    def predictions(self) -> Any:
        """The saved predictions (``evaluate --save-predictions``; :class:`corticalrnn.predictions.
        Predictions`, rates memory-mapped); error when the evaluation saved none."""
        from corticalrnn.predictions import open_predictions

        p = self.file("predictions")
        if p is None:
            raise CorticalRNNError(f"{self.path}: the evaluation saved no predictions "
                                   f"(evaluate --save-predictions FILE.npy)")
        return open_predictions(p)


def load_results(eval_dir: str | os.PathLike[str], frame: bool | None = None) -> SavedResults:
    """Read an evaluation folder (``report.json`` and the per-neuron table it names). ``frame``:
    True: a pandas DataFrame (error without pandas); False: a dict of numpy arrays; None (default):
    a DataFrame when pandas is importable. The Parquet file is used when pandas and pyarrow are
    importable, else the CSV."""
    from corticalrnn.jsonio import read_json

    d = Path(eval_dir)
    if d.is_file() and d.name == REPORT_NAME:
        d = d.parent
    report = read_json(d / REPORT_NAME)
    files = report.get("files") or {}
    if not files.get("per_neuron_csv"):
        raise SchemaError(f"{d / REPORT_NAME}: names no per-neuron table (written by an older "
                          f"corticalrnn; run evaluate again)")
    pd = None
    if frame is not False:
        try:
            import pandas as pd
        except ImportError:
            if frame:
                raise CorticalRNNError("load_results(frame=True) needs pandas (pip install pandas)") from None
    if pd is not None and files.get("per_neuron_parquet") and (d / files["per_neuron_parquet"]).is_file():
        try:
            import pyarrow  # noqa: F401

            return SavedResults(report, pd.read_parquet(d / files["per_neuron_parquet"]), d)
        except ImportError:
            pass
    cols = read_per_neuron_csv(d / files["per_neuron_csv"])
    return SavedResults(report, cols if pd is None else pd.DataFrame(cols), d)


def relative_name(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> str:
    """``path`` relative to ``folder`` (``../x`` allowed), absolute when on another drive/root."""
    try:
        return os.path.relpath(Path(path).resolve(), Path(folder).resolve())
    except ValueError:
        return str(Path(path).resolve())
