"""``corticalrnn bench science``: do hidden neurons beat the population baseline?

On the LSV1M-like generator (``corticalrnn.synth``, structure ``lsv1m``: an orientation map, Gabor
LGN afferents, feature-specific recurrence, annotations and the connectome written as Mozaik does)
this builds train/test datastores, runs extract -> trim, measures the matched-neighbour effect, then
trains and evaluates model variants at each observed fraction:

* ``baseline``: the earlier default (dense LGN input, distance-masked recurrence, free hidden weights: no
  identity);
* ``identity``: Gabor input from each unit's identity + distance x orientation / phase recurrence with
  initial weights proportional to the connection probability, hidden L2/3 E rows tied to the observed
  rows' learned gain (the demo's model);
* ``simulator``: Gabor input + the simulator's own connectome as the recurrent mask;
* ``embedding``: no LGN positions used: a learned vector per LGN input times a learned function of each
  unit's labels (the rule for data without LGN positions, measured where the truth is known);
* ``inferred``: the identity variant with the store's LGN positions replaced by positions laid out from
  the training data (``connectivity.lgn_positions = "inferred"``, :mod:`corticalrnn.lgn_layout`).

``--v1-sample DIR`` runs the same comparison on the thesis-layout sample of the real model (no LGN
positions, no truth): import, a 10 % spatial subset, training with the packaged ``v1_sample.toml``
(variant ``config``: its embedding input; ``dense`` swaps in dense LGN weights, the earlier default;
``gabor`` the Gabor input on inferred LGN positions) on
its training images plus ``data.train_test_images`` of its multi-trial images, evaluation on the other
multi-trial images, and that data's criterion (hidden L4 E and L4 I beat the population baseline on
trial-average and single-trial r).

Every model figure is printed beside the population baseline (observed neurons' mean time course over
training windows) and the ceilings, per population and observed / hidden, with the issue's criteria
checked. Once per subset it prints what the test data leave for identity to find: each neuron's split-half
r beyond its population's time course, and the course oracle (a reference predictor without identity, from
the test data); each model row carries both. Timing is not the point here; run it when the science changes.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: per variant, the ``[model.connectivity]`` keys it sets over the demo's config (``neurons``: the
#: ``[model.neurons]`` keys)
VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {"rule": "distance", "input_rule": "dense", "weight_init": "random",
                 "distance_sigma_mm": {"exc": 0.07, "inh": 0.05}, "neurons": {"hidden_weights": "free"}},
    "identity": {"rule": "feature", "input_rule": "gabor"},
    "simulator": {"rule": "simulator", "input_rule": "gabor", "storage": "dense"},
    "embedding": {"rule": "feature", "input_rule": "embedding"},
    "inferred": {"rule": "feature", "input_rule": "gabor", "lgn_positions": "inferred"},
}
#: ``--v1-sample``: per variant, the ``[model.connectivity]`` keys it sets over ``v1_sample.toml``
V1_VARIANTS: dict[str, dict[str, Any]] = {"config": {}, "dense": {"input_rule": "dense"},
                                          "gabor": {"input_rule": "gabor", "lgn_positions": "inferred"}}
#: model-table column: mean split-half r of the test data beyond the population course
BEYOND_COLUMN = "split-half beyond course mean"
#: columns of the course oracle (:func:`corticalrnn.metrics.population_course_oracle`): a reference
#: predictor without identity, from the test data itself
COURSE_COLUMNS = ("course oracle r_avg med", "course oracle r_1 med")
#: the real sample's criterion: populations whose hidden units must beat the population baseline
V1_CRITERION_POPULATIONS = ("L4 E", "L4 I")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("bench-science"), help="work folder (data reused)")
    parser.add_argument("--observed", type=float, nargs="+", default=None,
                        help="observed fractions of the modelled neurons (default 0.1 0.3; --v1-sample: 0.1)")
    parser.add_argument("--variants", nargs="+", default=None, choices=sorted({*VARIANTS, *V1_VARIANTS}),
                        help=f"default: {' '.join(VARIANTS)}; with --v1-sample: {' '.join(V1_VARIANTS)}")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps (default 800; --v1-sample: the config's train.max_steps)")
    parser.add_argument("--v1-sample", type=Path, default=None, metavar="DIR",
                        help="the thesis-layout sample of the real model (e.g. ../shared/data/v1_sample) "
                             "instead of the generator; see the module docstring")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and a few steps (tests)")
    parser.add_argument("--set", dest="model_set", action="append", default=[], metavar="KEY=VALUE",
                        help="model config override for every variant (TOML value), e.g. "
                             "neurons.model=\"adaptive\"; repeatable")


def _data(out: Path, quick: bool, seed: int) -> tuple[Any, Path, Path, Path]:
    from corticalrnn.demo import (
        FULL,
        QUICK,
        TEST_FIRST_IMAGE,
        TRAIN_FIRST_IMAGE,
        _extract,
        _synth,
        _trim,
        cortex_config,
    )

    size = QUICK if quick else FULL
    cortex = cortex_config(size.scale)
    d = out / "data"
    d.mkdir(parents=True, exist_ok=True)
    _synth(d / "train", TRAIN_FIRST_IMAGE, size.train_images, 1, seed, cortex, False)
    truth = _synth(d / "test", TEST_FIRST_IMAGE, size.test_images, size.test_trials, seed, cortex, False)
    train = _trim(_extract(d / "train", d / "train.h5"), d / "train_20ms.zarr", 20, "train", False)
    test = _trim(_extract(d / "test", d / "test.h5"), d / "test_20ms.zarr", 20, "test", False)
    return size, train, test, truth


def matched_neighbours(store: Any, sheet: str, k: int = 5, pool: int = 30, seed: int = 0) -> dict[str, float]:
    """Median over neurons of r (over images, trials and bins: within the same trials, and over the
    trial-averaged responses) between a neuron and the mean of ``k`` of its ``pool`` nearest cortical
    neighbours: the ``k`` most similar in orientation (and phase where recorded), and ``k`` random ones."""
    from corticalrnn.data import WindowBatches
    from corticalrnn.sheets import surface_xy

    ori, xy = store.neuron_property(sheet, "ori"), store.positions(sheet)
    if ori is None or xy is None:
        return {}
    phase = store.neuron_property(sheet, "phase")
    rows = {s: np.arange(store.n_neurons(s)) if s == sheet else np.zeros(0, np.int64) for s in store.sheets}
    table = store.windows
    wins = np.flatnonzero(np.asarray(table.split) == "test")
    wins = wins if wins.size else np.arange(len(table.image_id))
    x = WindowBatches(store, wins, rows).batch(np.arange(len(wins)))["v1"].double().numpy()  # [W, T, N]
    ids = np.asarray(table.image_id)[wins]
    avg = np.stack([x[ids == i].mean(0) for i in np.unique(ids)]).reshape(-1, x.shape[-1])
    x = x.reshape(-1, x.shape[-1])
    sim = np.cos(2 * (ori[:, None] - ori[None, :]))
    if phase is not None:
        sim = sim + np.cos(phase[:, None] - phase[None, :])
    xy = surface_xy(xy)
    d = ((xy[:, None] - xy[None, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    rng = np.random.default_rng(seed)
    out: dict[str, list[float]] = {"r_matched": [], "r_random": [], "r_matched_avg": [], "r_random_avg": []}
    for i in range(len(ori)):
        near = np.argsort(d[i])[:pool]
        matched = near[np.argsort(-sim[i, near])[:k]]
        rand = rng.choice(near, size=min(k, near.size), replace=False)
        for name, idx in (("matched", matched), ("random", rand)):
            out[f"r_{name}"].append(_r(x[:, i], x[:, idx].mean(1)))
            out[f"r_{name}_avg"].append(_r(avg[:, i], avg[:, idx].mean(1)))
    return {"sheet": sheet, "neurons": len(ori), **{k_: float(np.nanmedian(v)) for k_, v in out.items()}}


def beyond_course_rows(data: np.ndarray, labels: np.ndarray, observed: np.ndarray) -> list[dict[str, Any]]:
    """Per population x observed / hidden, the mean over neurons (± its standard error) of the test
    data's split-half r, raw and beyond the population course (:func:`corticalrnn.metrics.
    split_half_beyond_course`): the per-neuron signal a population-course predictor (the baseline, or a
    model whose units lack an identity) cannot reach. Means, not medians: most values lie near 0. Also the
    median r_avg / r_1 of the course oracle (:func:`corticalrnn.metrics.population_course_oracle`), the
    reference predictor without identity, known from the test data (an oracle, not a bound)."""
    from corticalrnn.metrics import (
        compute_metrics,
        population_course_oracle,
        split_half_beyond_course,
        summary_groups,
    )
    from corticalrnn.sheets import population_label

    pops = np.array([population_label(str(x)) for x in labels], dtype=object)
    r = split_half_beyond_course(data, pops, observed)
    course = compute_metrics(data, population_course_oracle(data, pops), progress=False).per_neuron
    rows = []
    for pop, group, sel in summary_groups(pops, np.asarray(observed, bool)):
        if group == "all":
            continue
        row: dict[str, Any] = {"population": pop, "neurons": group, "n": int(sel.sum())}
        for key, head in (("raw", "split-half r"), ("beyond", "beyond course")):
            v = r[key][sel]
            v = v[np.isfinite(v)]
            sem = v.std(ddof=1) / np.sqrt(v.size) if v.size > 1 else np.nan
            row[f"{head} mean"] = float(v.mean()) if v.size else np.nan
            row[f"{head} s.e.m."] = float(sem)
        row["n defined"] = int(np.isfinite(r["beyond"][sel]).sum())
        for key, head in (("trial_avg_r", COURSE_COLUMNS[0]), ("single_trial_r", COURSE_COLUMNS[1])):
            v = course[key][sel]
            row[head] = float(np.median(v[np.isfinite(v)])) if np.isfinite(v).any() else np.nan
        rows.append(row)
    return rows


def _r(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


def _column(predictor: str, key: str) -> str:
    """Header of ``evaluate``'s comparison column for ``predictor``'s ``key``."""
    from corticalrnn.evaluate import COMPARISON_COLUMNS

    return next(h for p, k, h in COMPARISON_COLUMNS if (p, k) == (predictor, key))


def _criteria(table: list[dict[str, Any]], variant: str) -> list[str]:
    """The issue's criteria on one run's rows (hidden: beat the population baseline by >= 0.1 in
    trial-average r and > 0 bits/spike against it; image-specific r vs truth >= 0.5 (0.7 for the
    simulator) x the observed units')."""
    lines = []
    r_model, r_pop = _column("model", "trial_avg_r_median"), _column("population", "trial_avg_r_median")
    bps = _column("model", "bps_vs_population")
    hidden = [r for r in table if r["neurons"] == "hidden"]
    obs = {r["population"]: r for r in table if r["neurons"] == "observed"}
    for r in hidden:
        gap = r[r_model] - r[r_pop]
        o = obs.get(r["population"])
        ratio = r["imgspec r(true)"] / o["imgspec r(true)"] if o else np.nan
        need = 0.7 if variant == "simulator" else 0.5
        ok = gap >= 0.1 and r[bps] > 0 and ratio >= need
        ceiling = r.get(_column("model", "cc_max_median"), np.nan)
        oracle = r.get("r_avg of true rates", np.nan)
        reach = (f"; pop + 0.1 = {r[r_pop] + 0.1:.3f} is above the ceiling CC_max {ceiling:.3f}: "
                 "unreachable with this test set's trials" if r[r_pop] + 0.1 > ceiling else "")
        if r[r_pop] + 0.1 > oracle:
            reach += (f"; the generator's true rates themselves reach r_avg {oracle:.3f} < pop + 0.1: no "
                      "predictor can pass")
        lines.append(f"  {r['population']:6s} hidden: r_avg {r[r_model]:.3f} vs pop "
                     f"{r[r_pop]:.3f} ({gap:+.3f}), bits/spike vs pop "
                     f"{r[bps]:+.4f}, "
                     f"image-specific r(true) hidden/observed {ratio:.2f} (need >= {need}) -> "
                     f"{'PASS' if ok else 'FAIL'}{reach}{_identity_gain(r)}")
    return lines


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    from corticalrnn.demo import demo_config
    from corticalrnn.experiment import Experiment
    from corticalrnn.store import open_store
    from corticalrnn.tables import format_table

    if args.v1_sample is not None:
        return run_v1_sample(args)
    variants = _variants(args, VARIANTS)
    t0 = time.perf_counter()
    size, train, test, truth = _data(args.out, args.quick, args.seed)
    st = open_store(test)
    neigh = [m for s in ("V1_Exc_L4", "V1_Inh_L4", "V1_Exc_L2/3", "V1_Inh_L2/3")
             if (m := matched_neighbours(st, s))]
    print("matched-neighbour effect (r of a neuron with the mean of 5 of its 30 nearest neighbours, "
          "matched in orientation / phase or random; single trials, and trial averages):")
    print(format_table(neigh))
    steps = 6 if args.quick else args.steps or 800

    def config(variant: str) -> dict[str, Any]:
        cfg = demo_config(size, steps, 20, 1)
        _set_variant(cfg, VARIANTS[variant])
        return cfg

    def rows(res: Any) -> list[dict[str, Any]]:
        truth_by = {(r["population"], r["neurons"]): r for r in res.truth_rows or []}
        table = []
        for r in res.report["comparison"]:
            row = dict(r)
            tr = truth_by.get((r["population"], r["neurons"]), {})
            row["r(true) model"] = tr.get("r_model_truth_median", np.nan)
            row["r(true) pop"] = tr.get("r_population_truth_median", np.nan)
            row["r(true) ceiling"] = tr.get("r_ceiling_truth_median", np.nan)
            row["imgspec r(true)"] = tr.get("r_model_truth_imgspec_median", np.nan)
            row["imgspec ceiling"] = tr.get("r_ceiling_truth_imgspec_median", np.nan)
            # the generator's own rates as the predictor of the data's trial average: an oracle
            row["r_avg of true rates"] = tr.get("r_data_truth_median", np.nan)
            table.append(row)
        return table

    runs = _compare(args, _Comparison(
        variants=variants, config=config, steps=steps, fraction=size.fraction, rows=rows,
        criteria=lambda table, variant, res: _criteria(table, variant), title="",
        experiment=lambda cfg: Experiment(train, test_store=test, workdir=args.out / "work", truth=truth,
                                          config=cfg)))
    results: dict[str, Any] = {"neighbours": neigh, "runs": runs}
    results["seconds"] = time.perf_counter() - t0
    return results


@dataclass(frozen=True)
class _Comparison:
    """What one ``bench science`` data source varies; :func:`_compare` runs it."""

    variants: list[str]
    config: Callable[[str], dict[str, Any]]  # variant -> config, before ``--set``
    experiment: Callable[[dict[str, Any]], Any]  # config -> Experiment
    steps: int
    fraction: float  # of the store's neurons modelled
    rows: Callable[[Any], list[dict[str, Any]]]  # evaluation result -> printed table
    # (table, variant, evaluation result) -> PASS / FAIL lines
    criteria: Callable[[list[dict[str, Any]], str, Any], list[str]]
    title: str  # printed before each run's variant


def _compare(args: argparse.Namespace, c: _Comparison) -> list[dict[str, Any]]:
    """Train and evaluate every variant at every observed fraction (``--observed``); print each table
    and its criteria lines."""
    from corticalrnn.tables import format_table
    from corticalrnn.train.config import apply_overrides

    runs = []
    ceilings: dict[float, list[dict[str, Any]]] = {}
    for observed in args.observed or ([0.1] if args.v1_sample is not None else [0.1, 0.3]):
        for variant in c.variants:
            cfg = apply_overrides(c.config(variant), [f"model.{text}" for text in args.model_set])
            exp = c.experiment(cfg)
            tag = f"obs{observed:g}-seed{args.seed}"  # runs of other seeds in the same --out stay apart
            subset = exp.make_subset(fraction=c.fraction, observed=observed, method="spatial", seed=args.seed,
                                     name=tag)
            t = time.perf_counter()
            run = exp.train(subset, c.steps, name=f"{variant}-{tag}", train__progress=False)
            train_s = time.perf_counter() - t
            res = exp.evaluate(run, progress=False, figures=False)
            if observed not in ceilings:  # the data's own limit, the same for every variant
                ceilings[observed] = _beyond_course(exp, subset, run)
                print(f"\n== observed {observed:g}: test data's split-half r (even / odd trials; mean ± "
                      "s.e.m. over neurons), raw and beyond the population course (the observed units' "
                      "mean time course in each half, fitted out): what any per-neuron identity can add")
                print(format_table(ceilings[observed]))
            table = c.rows(res)
            beyond = {(b["population"], b["neurons"]): b for b in ceilings[observed]}
            for row in table:  # the data's ceiling on identity beside each model row
                b = beyond.get((row["population"], row["neurons"]), {})
                row[BEYOND_COLUMN] = b.get("beyond course mean", np.nan)
                row.update({k: b.get(k, np.nan) for k in COURSE_COLUMNS})
            print(f"\n== {c.title}{variant}, observed {observed:g} ({c.steps} steps, trained in "
                  f"{train_s:.0f} s; test images {res.report.get('test_images', '?')})")
            print(format_table(table))
            crit = c.criteria(table, variant, res)
            print("\n".join(crit))
            runs.append({"variant": variant, "observed": observed, "steps": c.steps, "train_s": train_s,
                         "table": table, "criteria": crit, "beyond_course": ceilings[observed]})
    return runs


def _beyond_course(exp: Any, subset: Any, run: Any) -> list[dict[str, Any]]:
    """:func:`beyond_course_rows` of ``run``'s test windows (its image split) in the test store (in
    memory: a subset's test images)."""
    from corticalrnn.evaluate import load_test_data
    from corticalrnn.jsonio import read_json

    test = load_test_data(exp.test_store, subset, read_json(run.run_dir / "split.json"))
    return beyond_course_rows(test.v1, subset.v1_sheet_labels(), subset.observed_mask())


def _set_variant(cfg: dict[str, Any], keys: dict[str, Any]) -> None:
    """Apply a variant's keys (``VARIANTS``) to a config dict in place."""
    keys = dict(keys)
    cfg["model"].setdefault("neurons", {}).update(keys.pop("neurons", {}))
    cfg["model"]["connectivity"].update(keys)


def _variants(args: argparse.Namespace, known: dict[str, dict[str, Any]]) -> list[str]:
    from corticalrnn.errors import CorticalRNNError

    chosen = args.variants or list(known)
    bad = [v for v in chosen if v not in known]
    if bad:
        where = "--v1-sample" if known is V1_VARIANTS else "the generator"
        raise CorticalRNNError(f"bench science: variant(s) {', '.join(bad)} do not apply to {where}; "
                               f"choose from {', '.join(known)}")
    return chosen


def _identity_gain(row: dict[str, Any]) -> str:
    """What the model's per-neuron predictions add over its own population mean (identity removed)."""
    own = row.get(_column("model_pop", "trial_avg_r_median"), np.nan)
    gain = row[_column("model", "trial_avg_r_median")] - own
    return f"; per-neuron identity adds {gain:+.3f} r_avg over the model's own population mean ({own:.3f})"


def paired_difference(neurons: dict[str, np.ndarray], population: str, metric: str
                      ) -> tuple[float, float, int]:
    """Hidden units of ``population``: median over neurons of (model - population baseline) ``metric``,
    the fraction of neurons where the model is higher, and the neurons compared (both defined)."""
    sel = (np.asarray(neurons["population"]) == population) & ~np.asarray(neurons["observed"], bool)
    a = np.asarray(neurons[f"model_{metric}"], np.float64)[sel]
    b = np.asarray(neurons[f"population_{metric}"], np.float64)[sel]
    d = (a - b)[np.isfinite(a) & np.isfinite(b)]
    return (float(np.median(d)), float(np.mean(d > 0)), int(d.size)) if d.size else (np.nan, np.nan, 0)


def _v1_criteria(table: list[dict[str, Any]], neurons: dict[str, np.ndarray] | None = None) -> list[str]:
    """The real sample's criterion: hidden L4 E and L4 I beat the population baseline on median
    trial-average r and median single-trial r. With the per-neuron table (``neurons``), also the paired
    comparison (median over neurons of model - baseline; the fraction of neurons the model wins), which
    a difference of medians over heterogeneous neurons can contradict."""
    lines = []
    for pop in V1_CRITERION_POPULATIONS:
        r = next((r for r in table if r["population"] == pop and r["neurons"] == "hidden"), None)
        if r is None:
            lines.append(f"  {pop:6s} hidden: not in the subset")
            continue
        gaps = {k: r.get(_column("model", key), np.nan) - r.get(_column("population", key), np.nan)
                for k, key in (("r_avg", "trial_avg_r_median"), ("r_1", "single_trial_r_median"))}
        ok = all(g > 0 for g in gaps.values())
        paired = ""
        if neurons is not None:
            p = {k: paired_difference(neurons, pop, m) for k, m in (("r_avg", "trial_avg_r"),
                                                                   ("r_1", "single_trial_r"))}
            ok_p = all(v[0] > 0 for v in p.values())
            paired = ("; paired over neurons: " + ", ".join(
                f"{k} {v[0]:+.4f} (model higher for {100 * v[1]:.0f} % of {v[2]})" for k, v in p.items())
                + f" -> {'PASS' if ok_p else 'FAIL'}")
        lines.append(f"  {pop:6s} hidden: r_avg {r[_column('model', 'trial_avg_r_median')]:.3f} vs pop "
                     f"{r[_column('population', 'trial_avg_r_median')]:.3f} ({gaps['r_avg']:+.3f}), r_1 "
                     f"{r[_column('model', 'single_trial_r_median')]:.3f} vs pop "
                     f"{r[_column('population', 'single_trial_r_median')]:.3f} ({gaps['r_1']:+.3f}) -> "
                     f"{'PASS' if ok else 'FAIL'}{paired}{_identity_gain(r)}"
                     f"; ceilings from the test data: the course oracle (no identity) reaches r_avg "
                     f"{r.get(COURSE_COLUMNS[0], np.nan):.3f} / r_1 {r.get(COURSE_COLUMNS[1], np.nan):.3f}, "
                     "and split-half r beyond the population course (what any identity could draw on) is "
                     f"{r.get(BEYOND_COLUMN, np.nan):.3f}")
    return lines


def run_v1_sample(args: argparse.Namespace) -> dict[str, Any]:
    """``--v1-sample``: import, subset, train with the packaged ``v1_sample.toml``, evaluate, criteria."""
    from importlib.resources import files

    import tomllib

    from corticalrnn.experiment import Experiment
    from corticalrnn.import_npz import ImportConfig, import_npz
    from corticalrnn.train.config import apply_overrides

    variants = _variants(args, V1_VARIANTS)
    t0 = time.perf_counter()
    out = args.out / "v1"
    store = import_npz(args.v1_sample, out / "v1_sample.zarr", ImportConfig(progress=not args.quick))
    base = tomllib.loads(files("corticalrnn").joinpath("configs", "v1_sample.toml").read_text())
    quick = ["train.batch_size=2", "train.eval_every=1", "train.checkpoint_every=1000",
             "train.log_every=1"] if args.quick else []

    def config(variant: str) -> dict[str, Any]:
        cfg = apply_overrides(base, quick)
        _set_variant(cfg, V1_VARIANTS[variant])
        return cfg

    runs = _compare(args, _Comparison(
        variants=variants, config=config, fraction=1.0 if args.quick else 0.1,
        steps=args.steps or (3 if args.quick else int(base["train"]["max_steps"])),
        rows=lambda res: [dict(r) for r in res.report["comparison"]],
        criteria=lambda table, variant, res: _v1_criteria(table, res.neurons), title="v1 sample, ",
        experiment=lambda cfg: Experiment(store, test_store=store, workdir=out / "work", config=cfg)))
    results: dict[str, Any] = {"v1_sample": str(args.v1_sample), "runs": runs}
    results["seconds"] = time.perf_counter() - t0
    return results
