"""Python API for neuron-subset experiments: subsets, training, evaluation, fine-tuning, sweeps.

::

    from corticalrnn.experiment import Experiment

    exp = Experiment("train.zarr", test_store="test.zarr", workdir="runs/exp",
                     config="configs/demo.toml")
    subset = exp.make_subset(fraction=0.1, observed=0.1, method="spatial", seed=0)
    run = exp.train(subset, steps=300)
    print(exp.evaluate(run).table())
    other = exp.reobserve(subset, observed=0.1, seed=1)    # same neurons, another observed set
    tuned = exp.finetune(run, other, steps=100)
    rows = exp.sweep_observed([0.05, 0.1, 0.2], fraction=0.1, steps=300)   # list of dicts

Everything an experiment makes is written under ``workdir``: ``subsets/<name>.json`` (reusable
with ``corticalrnn train --subset``), ``runs/<name>/`` (checkpoints, logs, config) and each
evaluation's ``report.json`` and figures. Tables are lists of dicts; :func:`to_dataframe` turns
them into pandas DataFrames when pandas is installed.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corticalrnn.errors import CorticalRNNError, DataMismatchError
from corticalrnn.evaluate import EvalResult, evaluate
from corticalrnn.jsonio import write_json
from corticalrnn.subsets import NeuronSubset, SubsetConfig, make_subset
from corticalrnn.train.config import TrainConfig, apply_overrides, config_from_dict, load_config
from corticalrnn.train.setup import prepare
from corticalrnn.train.trainer import TrainResult

#: columns of :meth:`Experiment.sweep_observed` rows besides the sweep parameters
SWEEP_METRICS: tuple[str, ...] = ("trial_avg_r_median", "single_trial_r_median", "cc_norm_median",
                                  "feve_median", "co_bps", "thesis_cc_abs", "thesis_cc_norm")


@dataclass
class Run:
    """A finished (or interrupted) training run."""

    name: str
    run_dir: Path
    subset: NeuronSubset
    result: TrainResult

    @property
    def best(self) -> Path:
        return self.result.best_checkpoint

    @property
    def last(self) -> Path:
        return self.result.last_checkpoint


def to_dataframe(rows: list[dict[str, Any]]) -> Any:
    """A pandas DataFrame of table rows (pandas is optional)."""
    try:
        import pandas as pd
    except ImportError:
        raise CorticalRNNError("pandas is not installed; the rows are plain dicts") from None
    return pd.DataFrame(rows)


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write table rows to CSV (temporary name, then rename)."""
    import io

    from corticalrnn.atomic import write_text_atomic

    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)
    return write_text_atomic(path, buf.getvalue())


class Experiment:
    """Subset experiments on one training store (and optionally a test store).

    ``config`` is a TOML path, a :class:`TrainConfig` or a nested dict; the store and the subset are
    passed to each run as objects (its ``config.toml`` records ``data.store`` = this store and
    ``data.subset`` = the run's ``subset.json``). ``overrides`` (``{"optim.lr": 1e-3}``) apply to every run.
    """

    def __init__(self, store: str | Path, *, test_store: str | Path | None = None,
                 workdir: str | Path = "experiment", config: str | Path | TrainConfig | dict | None = None,
                 truth: str | Path | None = None, overrides: dict[str, Any] | None = None) -> None:
        from corticalrnn.store import open_store

        self.store_path = Path(store)
        self.store = open_store(self.store_path)
        self.test_store = None if test_store is None else open_store(test_store)
        if self.test_store is not None and float(self.test_store.bin_ms) != float(self.store.bin_ms):
            from corticalrnn.train.spec import rebin_hint

            raise DataMismatchError(
                f"{self.test_store.path}: {self.test_store.bin_ms} ms bins, but the training store "
                f"{self.store_path} has {self.store.bin_ms} ms bins; {rebin_hint(float(self.store.bin_ms))}")
        self.truth = truth
        self.workdir = Path(workdir)
        if isinstance(config, TrainConfig):
            base = config.to_dict()
        elif isinstance(config, dict):
            base = config_from_dict(config).to_dict()
        else:
            base = load_config(config).to_dict()
        self.base = apply_overrides(base, _override_list(overrides or {}))
        config_from_dict(self.base)  # validate now, not at the first run

    # -------------------------------------------------------------------- subsets
    def make_subset(self, fraction: float = 0.1, observed: float = 0.1, method: str = "spatial",
                    seed: int = 0, name: str | None = None, **kwargs: Any) -> NeuronSubset:
        """Choose modelled neurons (``fraction`` of each V1 sheet) and observed ones among them;
        saved as ``workdir/subsets/<name>.json``. ``kwargs`` go to :class:`SubsetConfig`."""
        cfg = SubsetConfig(fraction=fraction, observed=observed, method=method, seed=seed, **kwargs)
        subset = make_subset(self.store, cfg, name=str(self.store_path))
        name = name or f"m{fraction:g}-o{observed:g}-{method}-s{seed}"
        subset.save(self.subset_path(name))
        return subset

    def reobserve(self, subset: NeuronSubset, observed: float = 0.1, method: str = "spatial", seed: int = 1,
                  name: str | None = None) -> NeuronSubset:
        """The same modelled neurons with another observed set (for fine-tuning)."""
        modelled = {s: sub.modelled for s, sub in subset.sheets.items()}
        cfg = SubsetConfig(fraction=1.0, observed=observed, method="explicit", observed_method=method,
                           input_method="explicit", seed=seed, sheets=tuple(subset.sheets))
        new = make_subset(self.store, cfg, modelled_ids=modelled, name=str(self.store_path))
        new.save(self.subset_path(name or f"reobserved-o{observed:g}-{method}-s{seed}"))
        return new

    def subset_path(self, name: str) -> Path:
        return self.workdir / "subsets" / f"{name}.json"

    def load_subset(self, name_or_path: str | Path) -> NeuronSubset:
        """A saved subset by name (``workdir/subsets/<name>.json``) or path."""
        p = Path(name_or_path)
        return NeuronSubset.load(p if p.suffix == ".json" else self.subset_path(str(name_or_path)))

    # ------------------------------------------------------------------- training
    def config_for(self, steps: int | None = None, **overrides: Any) -> TrainConfig:
        """The run's config: base config + ``steps`` + overrides (store, subset: objects, :meth:`train`)."""
        extra: dict[str, Any] = {}
        if steps is not None:
            extra["train.max_steps"] = steps
        extra.update(overrides)
        return config_from_dict(apply_overrides(self.base, _override_list(extra)), "experiment config")

    def train(self, subset: NeuronSubset, steps: int | None = None, name: str | None = None,
              init_from: str | Path | None = None, resume: bool = False, **overrides: Any) -> Run:
        """Train a model of ``subset``'s neurons; ``overrides`` like ``{"optim.lr": 1e-3}`` as keywords
        with ``__`` for the dot (``optim__lr=1e-3``). ``resume=True`` continues ``runs/<name>/last.pt``."""
        name = name or self._next_name("run")
        ov = {k.replace("__", "."): v for k, v in overrides.items()}
        cfg = self.config_for(steps, **ov)
        run_dir = self.workdir / "runs" / name
        last = run_dir / "last.pt"
        trainer = prepare(cfg, run_dir, store=self.store, subset=subset)
        result = trainer.fit(resume=last if resume and last.exists() else None, init_from=init_from)
        return Run(name, run_dir, subset, result)

    def finetune(self, run: Run, subset: NeuronSubset, steps: int | None = None, name: str | None = None,
                 **overrides: Any) -> Run:
        """Continue training ``run``'s model (its selected weights) with another observed set.

        The modelled neurons must be the same (else :class:`DataMismatchError`); optimizer and
        schedule start afresh."""
        same = set(subset.sheets) == set(run.subset.sheets) and all(
            _same(run.subset.sheets[s].modelled, sub.modelled) for s, sub in subset.sheets.items())
        if not same:
            raise DataMismatchError(f"{run.run_dir}: fine-tuning needs the same modelled neurons; "
                                    f"use Experiment.reobserve(subset) to change only the observed set")
        return self.train(subset, steps, name or f"{run.name}-finetune", init_from=run.best, **overrides)

    # ----------------------------------------------------------------- evaluation
    def evaluate(self, run: Run | str | Path, store: str | Path | None = None,
                 truth: str | Path | None = None, figures: bool = True, progress: bool = True) -> EvalResult:
        """Evaluate ``run`` (or a checkpoint path) on the test store; report and figures go to
        ``<run_dir>/eval-<store name>/``."""
        ckpt = run.best if isinstance(run, Run) else Path(run)
        st = store if store is not None else (self.test_store.path if self.test_store is not None else None)
        if st is None:
            raise CorticalRNNError("no test store: pass store=... or Experiment(test_store=...)")
        out = ckpt.parent / f"eval-{Path(st).name.removesuffix('.zarr')}"
        return evaluate(ckpt, st, out, truth=truth if truth is not None else self.truth, figures=figures,
                        progress=progress, device="auto", train_store=self.store)

    # ---------------------------------------------------------------------- sweeps
    def sweep_observed(self, observed: list[float], fraction: float = 0.1, method: str = "spatial",
                       seeds: tuple[int, ...] = (0,), steps: int | None = None, figures: bool = False,
                       **overrides: Any) -> list[dict[str, Any]]:
        """Train and evaluate one model per observed fraction (and seed) on the same modelled
        neurons; one row per run × population × observed/hidden (model predictor), also written
        to ``workdir/sweep_observed.csv``."""
        rows: list[dict[str, Any]] = []
        for seed in seeds:
            for obs in observed:
                subset = self.make_subset(fraction, obs, method, seed)
                name = f"sweep-m{fraction:g}-o{obs:g}-s{seed}"
                run = self.train(subset, steps, name, **overrides)
                res = self.evaluate(run, figures=figures, progress=False)
                for r in res.rows:
                    if r["predictor"] != "model" or r["neurons"] == "all":
                        continue
                    rows.append({"observed_fraction": obs, "seed": seed, "run": name,
                                 "population": r["population"], "neurons": r["neurons"], "n": r["n"],
                                 **{m: r.get(m) for m in SWEEP_METRICS}})
        write_csv(rows, self.workdir / "sweep_observed.csv")
        write_json(self.workdir / "sweep_observed.json", rows)
        return rows

    def _next_name(self, prefix: str) -> str:
        i = 0
        while (self.workdir / "runs" / f"{prefix}{i}").exists():
            i += 1
        return f"{prefix}{i}"


def _same(a: Any, b: Any) -> bool:
    import numpy as np

    return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def _override_list(d: dict[str, Any]) -> list[str]:
    """``{"optim.lr": 1e-3}`` -> ``["optim.lr=0.001"]`` (TOML literals)."""
    out = []
    for k, v in d.items():
        if isinstance(v, bool):
            lit = "true" if v else "false"
        elif isinstance(v, str):
            lit = json.dumps(v)
        else:
            lit = repr(v)
        out.append(f"{k}={lit}")
    return out
