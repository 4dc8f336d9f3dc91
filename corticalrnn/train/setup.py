"""From a :class:`~corticalrnn.train.config.TrainConfig` to a running :class:`Trainer`:
open the store, load the subset (or take both as objects: :func:`prepare`), split the images,
build the model and its checkpoint spec (the spec and the way back from a checkpoint to a model:
:mod:`corticalrnn.train.spec`).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from corticalrnn.data.batches import subset_windows
from corticalrnn.errors import CorticalRNNError, DataMismatchError
from corticalrnn.model.loss import LOSSES
from corticalrnn.train.config import TrainConfig
from corticalrnn.train.spec import build_model, infer_spec_lgn_positions, make_spec, rebin_hint
from corticalrnn.train.trainer import Trainer, TrainResult, resolve_device, resolve_precision


def model_config(cfg: TrainConfig, bin_ms: float, precision: str, n_bins: int = 0) -> Any:
    """The model's config from the ``[model]`` table; ``bin_ms`` (and, for a stimulus-locked drive
    without its own length, ``architecture.time_drive_bins``: the window's ``n_bins``) come from the
    store and the matmul precision from the trainer (fp32 on CPU)."""
    from corticalrnn.model import ModelConfig
    from corticalrnn.model.config import migrate_flat

    data = dict(cfg.model)
    if "bin_ms" in data and float(data["bin_ms"]) != float(bin_ms):
        raise DataMismatchError(f"config model.bin_ms={data['bin_ms']} but the store has {bin_ms} ms bins; "
                                f"{rebin_hint(data['bin_ms'])}, or drop model.bin_ms (the store sets it)")
    data["bin_ms"] = float(bin_ms)
    mcfg = ModelConfig.from_dict(data, "config [model]")
    if "precision" not in (migrate_flat(data)[0].get("compute") or {}):  # a flat layout's key counts too
        mcfg = mcfg.with_values({"compute.precision": precision})
    if mcfg.architecture.time_drive and mcfg.architecture.time_drive_bins == 0 and n_bins > 0:
        mcfg = mcfg.with_values({"architecture.time_drive_bins": int(n_bins)})
    return mcfg


def mean_counts(data: Any, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean count per bin of each LGN input and each V1 neuron over trainer batches ``data``
    (streamed); V1 neurons without data (NaN: hidden) get NaN."""
    totals: dict[str, torch.Tensor] = {}
    counts: dict[str, torch.Tensor] = {}
    for a in range(0, len(data), batch):
        b = data.batch(np.arange(a, min(a + batch, len(data))))
        for key in ("lgn", "v1"):
            x = b[key].double()
            ok = torch.isfinite(x)
            s, c = torch.where(ok, x, 0.0).sum(dim=(0, 1)), ok.sum(dim=(0, 1))
            totals[key] = s if key not in totals else totals[key] + s
            counts[key] = c if key not in counts else counts[key] + c
    if not totals:
        raise CorticalRNNError("no training windows to centre the model on")
    lgn, v1 = ((totals[k] / counts[k]).where(counts[k] > 0, torch.nan).float() for k in ("lgn", "v1"))
    return lgn, v1


def split_training_windows(store: Any, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray, Any]:
    """Training and validation window indices and the :class:`ImageSplit` used.

    Test images never enter training: windows the store marks ``test`` and (``data.test_images =
    "auto"``) images shown in more than one trial are excluded; the validation images are a
    seeded fraction of the rest, chosen by image so that no image is in both.
    """
    from corticalrnn.subsets import ImageSplit, make_image_split

    table = store.windows
    ids, trials = np.asarray(table.image_id), np.asarray(table.trial)
    marked_test = np.asarray(table.split) == "test"
    if cfg.data.split:
        split = ImageSplit.load(cfg.data.split)
    else:
        usable = ~marked_test
        test_mode: Any = "repeats" if cfg.data.test_images == "auto" else 0.0
        split = make_image_split(ids[usable], trials=trials[usable], validation=cfg.data.val_fraction,
                                 test=test_mode, seed=cfg.data.split_seed)
        if marked_test.any():
            split = dataclasses.replace(split, test=np.union1d(split.test, np.unique(ids[marked_test])))
        split = _train_on_test(split, cfg.data.train_test_images, cfg.data.split_seed, store.path)
    # the split decides: a store-marked test image enters training only where the split says so
    usable = ~np.asarray(table.padded, dtype=bool) & ~np.isin(ids, split.test)
    train_w = np.flatnonzero(np.isin(ids, split.train) & usable)
    val_w = np.flatnonzero(np.isin(ids, split.validation) & usable)
    if train_w.size == 0:
        raise CorticalRNNError(f"{store.path}: no training windows after removing test and validation "
                               f"images (images: {np.unique(ids).size}, test: {split.test.size})")
    return train_w, val_w, split


def _train_on_test(split: Any, k: int, seed: int, where: Any) -> Any:
    """``split`` with ``k`` of its test images (a seeded choice) moved to training
    (``data.train_test_images``)."""
    if k == 0:
        return split
    if k >= split.test.size:
        raise CorticalRNNError(f"{where}: data.train_test_images = {k} would leave no test image "
                               f"(the store has {split.test.size}); use at most {split.test.size - 1}")
    moved = np.sort(np.random.default_rng(seed).choice(split.test, size=k, replace=False))
    return dataclasses.replace(split, train=np.union1d(split.train, moved),
                               test=np.setdiff1d(split.test, moved),
                               info={**split.info, "train_test_images": [int(i) for i in moved]})


def prepare(cfg: TrainConfig, run_dir: str | Path, *, store: Any = None, subset: Any = None) -> Trainer:
    """Everything up to a ready :class:`Trainer` (store, subset, split, data, model).

    ``store`` (an open :class:`~corticalrnn.store.WindowStore`) and ``subset`` (a
    :class:`~corticalrnn.subsets.NeuronSubset`), when given, are used instead of loading
    ``data.store`` / ``data.subset`` (which may then be empty). The run's config then records where
    they are: ``data.store`` = the store's path, ``data.subset`` = ``<run_dir>/subset.json`` (the
    subset as trained, written by :meth:`Trainer.fit` like every run's), so ``config.toml`` alone
    reruns the run and evaluation finds the training store.
    """
    from corticalrnn.store import open_store
    from corticalrnn.subsets import NeuronSubset

    device = resolve_device(cfg.train.device)  # first: a GPU job without a usable GPU fails at once
    if store is None and not cfg.data.store:
        raise CorticalRNNError("config: data.store is not set (path to the Zarr store)")
    if subset is None and not cfg.data.subset:
        raise CorticalRNNError("config: data.subset is not set (neuron-subset JSON from corticalrnn subset)")
    if store is not None or subset is not None:
        data = dataclasses.replace(cfg.data)
        if store is not None:
            data.store = str(store.path)
        if subset is not None:
            data.subset = str(Path(run_dir) / "subset.json")
        cfg = dataclasses.replace(cfg, data=data)
    if store is None:
        store = open_store(cfg.data.store)
    if subset is None:
        subset = NeuronSubset.load(cfg.data.subset)
    precision = resolve_precision(cfg.train.precision, device)
    mcfg = model_config(cfg, store.bin_ms, precision, store.n_bins)
    spec = make_spec(mcfg, subset, store)
    train_w, val_w, split = split_training_windows(store, cfg)
    train_data = subset_windows(store, subset, train_w, cfg.data.cache_mb)
    val_data = subset_windows(store, subset, val_w, cfg.data.cache_mb) if val_w.size else None
    if mcfg.connectivity.lgn_positions == "inferred":  # from the training windows only
        layout = infer_spec_lgn_positions(spec, mcfg, subset, train_data,
                                          f"{store.path} ({len(train_w)} training windows)")
        if os.environ.get("RANK", "0") == "0":
            from corticalrnn.plots import lgn_layout

            Path(run_dir).mkdir(parents=True, exist_ok=True)
            fig = lgn_layout(layout, Path(run_dir) / "lgn_layout.png", title=str(store.path))
            print(f"train: {layout.summary()}; figure {fig}", file=sys.stderr, flush=True)
    torch.manual_seed(cfg.train.seed)
    model = build_model(spec, mcfg.compute.precision)
    if mcfg.architecture.centered:  # centres from the training data; units start at their population's rate
        lgn_mean, v1_mean = mean_counts(train_data)
        model.set_input_center(lgn_mean)
        obs_mask = torch.as_tensor(subset.observed_mask(), dtype=torch.bool)
        model.start_at_rates(torch.where(obs_mask, v1_mean, torch.nan))
    if mcfg.architecture.time_drive:  # the stimulus-locked drive starts at the observed population's course
        from corticalrnn.baselines import training_baselines

        model.start_time_drive(training_baselines(store, subset, train_w).population)
    observed = torch.as_tensor(subset.observed_mask(), dtype=torch.bool)
    teacher = cfg.objective.teacher
    penalty = None
    if cfg.optim.hidden_rate_prior > 0:
        from corticalrnn.train.rate_prior import HiddenRatePrior

        prior, weight = HiddenRatePrior(subset.v1_sheet_labels(), observed), cfg.optim.hidden_rate_prior
        penalty = lambda rates, target: weight * prior(rates, target)  # noqa: E731
    trainer = Trainer(cfg, model, train_data, val_data, observed, run_dir, spec, LOSSES[cfg.objective.loss],
                      subset=subset.to_json_dict(), project=model.project_,
                      teacher_fraction=teacher.fraction_at if teacher.active else None,
                      split=split.to_json_dict(), autocast=False, penalty=penalty)
    return trainer


def train(cfg: TrainConfig, run_dir: str | Path, resume: str | Path | None = None,
          init_from: str | Path | None = None) -> TrainResult:
    """Train from a config (what ``corticalrnn train`` runs)."""
    trainer = prepare(cfg, run_dir)
    return trainer.fit(resume=resume, init_from=init_from)
