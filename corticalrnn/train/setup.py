"""From a :class:`~corticalrnn.train.config.TrainConfig` to a running :class:`Trainer`:
open the store, load the subset, split the images, build the model and its checkpoint spec.

Also the inverse for evaluation and fine-tuning: :func:`model_from_checkpoint` rebuilds the
trained network from a checkpoint alone (its spec holds sizes, neuron ids and positions).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from corticalrnn.errors import CorticalRNNError, DataMismatchError
from corticalrnn.train.config import TrainConfig
from corticalrnn.train.trainer import Trainer, TrainResult, resolve_device, resolve_precision


def model_config(cfg: TrainConfig, bin_ms: float, precision: str) -> Any:
    """The model's config from the ``[model]`` table; ``bin_ms`` comes from the store and the
    matmul precision from the trainer (fp32 on CPU)."""
    from corticalrnn.model import ModelConfig

    data = dict(cfg.model)
    if "bin_ms" in data and float(data["bin_ms"]) != float(bin_ms):
        raise DataMismatchError(f"config model.bin_ms={data['bin_ms']} but the store has {bin_ms} ms bins; "
                                f"{rebin_hint(data['bin_ms'])}, or drop model.bin_ms (the store sets it)")
    data["bin_ms"] = float(bin_ms)
    if "precision" not in data:
        data["precision"] = precision
    return ModelConfig.from_dict(data)


def rebin_hint(bin_ms: float) -> str:
    """The command that makes a store with ``bin_ms`` bins from the extracted spike files."""
    b = int(bin_ms) if float(bin_ms).is_integer() else bin_ms
    return (f"rebin the same extracted spike files: `corticalrnn trim SPIKES/*.h5 -o STORE_{b}ms.zarr "
            f"--bin-ms {b}`")


def check_store_fits(spec: dict[str, Any], subset: Any, store: Any, checkpoint: str | Path,
                     atol_mm: float = 1e-6) -> None:
    """Raise DataMismatchError unless ``store`` can be fed to the model of ``spec`` (a checkpoint's):
    the same bin size (else: the ``trim --bin-ms`` command) and, where both have them, the same
    neuron positions (same ids but other positions: a store of another network, e.g. another synth
    seed or Mozaik run). Missing neuron ids are reported by ``subset.indices``."""
    trained = float(spec["bin_ms"])
    if float(store.bin_ms) != trained:
        raise DataMismatchError(f"{store.path}: {store.bin_ms} ms bins, but {checkpoint} was trained on "
                                f"{trained:g} ms bins; {rebin_hint(trained)}")
    saved = spec.get("positions") or {}
    if not saved:
        return
    here = subset.positions(store)
    for sheet, want in saved.items():
        got = here.get(sheet)
        if got is None:
            continue
        want = np.asarray(want.cpu().numpy() if hasattr(want, "cpu") else want, dtype=np.float64)
        got = np.asarray(got, dtype=np.float64)
        if got.shape != want.shape:
            raise DataMismatchError(f"{store.path}: sheet {sheet} positions have shape {got.shape}, "
                                    f"{checkpoint} has {want.shape}")
        bad = ~np.isclose(got, want, rtol=0, atol=atol_mm).all(axis=1)
        if bad.any():
            raise DataMismatchError(
                f"{store.path}: the neuron ids match {checkpoint} but the positions of {int(bad.sum())} of "
                f"{bad.size} {sheet} neurons differ (by up to {np.abs(got - want).max():.3g}): a store of "
                f"another network (another synth seed or Mozaik model)? Evaluate on a store extracted "
                f"from the same network the model was trained on")


def make_spec(mcfg: Any, subset: Any, store: Any) -> dict[str, Any]:
    """What the model *is*, for checkpoints (see corticalrnn.train.checkpoint)."""
    spec_cfg = mcfg.to_dict()
    spec_cfg.pop("precision", None)  # a runtime choice (bf16 on GPU, fp32 on CPU), not architecture
    from corticalrnn.subsets import subset_identity

    positions = subset.positions(store)
    ident = subset_identity(subset, store)
    props = {s: p for s, p in ident.properties.items() if p}
    uses_connectome = mcfg.connectivity == "simulator" or any(p.mask == "simulator" for p in mcfg.pathways)
    return {
        "model_config": spec_cfg,
        "sizes": {s: int(n) for s, n in subset.sizes().items()},
        "neuron_ids": {s: torch.as_tensor(sub.modelled) for s, sub in subset.sheets.items()},
        "observed": {s: torch.as_tensor(sub.observed) for s, sub in subset.sheets.items()},
        "positions": {s: torch.as_tensor(np.asarray(p, dtype=np.float64))
                      for s, p in positions.items() if p is not None} or None,
        "properties": {s: {k: torch.as_tensor(v) for k, v in p.items()} for s, p in props.items()} or None,
        # the simulator's connectome among modelled neurons, only where the model uses it (can be large)
        "connectome": _connectome_spec(ident.projections) if uses_connectome else None,
        "bin_ms": float(store.bin_ms),
    }


def _connectome_spec(projections: list[Any]) -> dict[str, dict[str, torch.Tensor]] | None:
    """The subset's connectome for the spec: per ``"pre->post"`` sheet pair the synapses of every
    stored projection between them (``post``, ``pre`` indices in subset order, ``weight``)."""
    out: dict[str, dict[str, list[np.ndarray]]] = {}
    for p in projections:
        d = out.setdefault(f"{p.source}->{p.target}", {"post": [], "pre": [], "weight": []})
        d["post"].append(np.asarray(p.post, np.int64))
        d["pre"].append(np.asarray(p.pre, np.int64))
        d["weight"].append(np.asarray(p.weight, np.float32))
    return {k: {n: torch.as_tensor(np.concatenate(v)) for n, v in d.items()} for k, d in out.items()} or None


def _observed_mask(spec: dict[str, Any]) -> np.ndarray | None:
    """Bool per modelled V1 neuron (canonical order) from the spec's modelled and observed ids."""
    from corticalrnn.sheets import V1_SHEETS

    ids, obs = spec.get("neuron_ids") or {}, spec.get("observed") or {}
    if not all(s in ids for s in V1_SHEETS):
        return None
    return np.concatenate([np.isin(np.asarray(ids[s].cpu()), np.asarray(obs[s].cpu()) if s in obs else [])
                           for s in V1_SHEETS])


def _connectome_arg(spec: dict[str, Any]) -> dict[tuple[str, str], tuple[np.ndarray, ...]] | None:
    if not spec.get("connectome"):
        return None
    return {tuple(k.split("->")): (d["post"].cpu().numpy(), d["pre"].cpu().numpy(), d["weight"].cpu().numpy())
            for k, d in spec["connectome"].items()}


def build_model(spec: dict[str, Any], precision: str = "fp32") -> Any:
    """A fresh CorticalRNN for ``spec`` (weights initialised from the config's seed)."""
    from corticalrnn.model import CorticalRNN, ModelConfig

    mcfg = ModelConfig.from_dict({**spec["model_config"], "precision": precision})
    positions = properties = None
    if spec.get("positions") is not None:
        positions = {s: p.cpu().numpy() for s, p in spec["positions"].items()}
    if spec.get("properties") is not None:
        properties = {s: {k: v.cpu().numpy() for k, v in p.items()} for s, p in spec["properties"].items()}
    return CorticalRNN(mcfg, dict(spec["sizes"]), positions, properties, _connectome_arg(spec),
                       _observed_mask(spec))


MAX_SHEET_SIZE = 10_000_000  # neurons of one sheet in a checkpoint's spec (Mozaik's V1: ~10^5)


def model_bytes_lower_bound(spec: dict[str, Any]) -> int:
    """Bytes a model of ``spec`` certainly allocates: one float32 copy of its dense weight matrices
    (V1 x (V1 + input); V1 x input only with ``weight_storage = "sparse"``). The real footprint is a few
    times this; the bound only refuses what cannot fit at all."""
    from corticalrnn.sheets import INPUT_SHEETS, V1_SHEETS, normalize_sheet_name

    sizes = {normalize_sheet_name(k): int(v) for k, v in spec["sizes"].items()}
    n_v1 = sum(v for k, v in sizes.items() if k in V1_SHEETS)
    n_in = sum(v for k, v in sizes.items() if k in INPUT_SHEETS)
    sparse = (spec.get("model_config") or {}).get("weight_storage") == "sparse"
    return 4 * n_v1 * (n_in + (0 if sparse else n_v1))


def _memory_available(device: torch.device) -> tuple[int | None, str]:
    """Total memory of ``device`` in bytes (None: unknown) and its name for messages."""
    import os

    if device.type == "cuda" and torch.cuda.is_available():
        try:
            return int(torch.cuda.mem_get_info(device)[1]), f"GPU memory of {device}"
        except Exception:  # noqa: BLE001 - a query that fails leaves the bound unchecked
            return None, str(device)
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES")), "this machine's memory"
    except (ValueError, OSError, AttributeError):
        return None, "memory"


def check_checkpoint(ck: dict[str, Any], path: str | Path, store: Any = None,
                     device: str | torch.device = "cpu") -> Any:
    """Check what a checkpoint declares before anything is allocated from it; returns its
    :class:`~corticalrnn.subsets.NeuronSubset` (None when it holds none).

    The spec's ``sizes`` must be sheet names with counts in ``0 .. MAX_SHEET_SIZE``, equal to the
    number of its ``neuron_ids`` per sheet and to the checkpoint's subset (same ids); with ``store``,
    the store must hold every one of those neurons, with the same bin size and positions
    (:func:`check_store_fits`); and a lower bound of the model's memory
    (:func:`model_bytes_lower_bound`) must fit ``device``. Raises :class:`DataMismatchError` (or
    ``SchemaError`` for a malformed spec) naming the checkpoint."""
    from corticalrnn.errors import SchemaError
    from corticalrnn.sheets import normalize_sheet_name
    from corticalrnn.subsets import NeuronSubset
    from corticalrnn.tables import human_bytes

    spec = ck.get("spec")
    sizes = spec.get("sizes") if isinstance(spec, dict) else None
    if not isinstance(sizes, dict) or not sizes:
        raise SchemaError(f"{path}: checkpoint spec has no neuron counts ('sizes')")
    declared: dict[str, int] = {}
    for name, n in sizes.items():
        try:
            sheet = normalize_sheet_name(str(name))
        except ValueError as exc:
            raise SchemaError(f"{path}: checkpoint spec: {exc}") from None
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= int(n) <= MAX_SHEET_SIZE:
            raise SchemaError(f"{path}: checkpoint spec declares {n!r} neurons for {sheet} (expected an "
                              f"integer 0 .. {MAX_SHEET_SIZE:,})")
        declared[sheet] = int(n)
    ids = spec.get("neuron_ids") or {}
    for sheet, n in declared.items():
        got = ids.get(sheet)
        count = None if got is None else int(np.asarray(got.cpu() if hasattr(got, "cpu") else got).size)
        if count != n:
            raise DataMismatchError(f"{path}: checkpoint spec declares {n:,} {sheet} neurons but lists "
                                    f"{'no' if count is None else f'{count:,}'} neuron ids for it")
    subset = None
    if ck.get("subset") is not None:
        subset = NeuronSubset.from_json_dict(ck["subset"], f"{path} (subset)")
        if subset.sizes() != declared:
            raise DataMismatchError(f"{path}: the model's declared sizes {declared} differ from its neuron "
                                    f"subset's {subset.sizes()}")
        for sheet, sub in subset.sheets.items():
            spec_ids = np.asarray(ids[sheet].cpu() if hasattr(ids[sheet], "cpu") else ids[sheet])
            if not np.array_equal(spec_ids, np.asarray(sub.modelled)):
                raise DataMismatchError(f"{path}: the model's {sheet} neuron ids differ from its subset's")
    if store is not None:
        if subset is not None:
            subset.indices(store, "modelled", name=str(store.path))  # names missing sheets/ids
            check_store_fits(spec, subset, store, path)
        else:
            for sheet in declared:
                want = np.asarray(ids[sheet].cpu() if hasattr(ids[sheet], "cpu") else ids[sheet])
                have = store.neuron_ids(sheet) if sheet in store.sheets else np.zeros(0, np.int64)
                missing = want[~np.isin(want, have)]
                if missing.size:
                    raise DataMismatchError(f"{store.path}: lacks {missing.size:,} of the {sheet} neurons "
                                            f"of {path} (e.g. {missing[:5].tolist()})")
    need = model_bytes_lower_bound(spec)
    have_bytes, where = _memory_available(torch.device(device))
    if have_bytes is not None and need > have_bytes:
        raise DataMismatchError(f"{path}: the model it declares ({sum(declared.values()):,} neurons) needs "
                                f"at least {human_bytes(need)}, more than the {human_bytes(have_bytes)} "
                                f"of {where}")
    return subset


def model_from_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                          weights: str = "auto", store: Any = None,
                          ck: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """Rebuild the trained model of a checkpoint (EMA weights when present unless ``weights="raw"``).

    Before building, :func:`check_checkpoint` checks the declared sizes (against ``store`` too, when
    given) and a memory bound. ``ck``: the checkpoint already read with ``load_checkpoint(path)``.
    Returns ``(model, checkpoint_dict)``; the model is in eval mode on ``device``.
    """
    from corticalrnn.train.checkpoint import load_checkpoint, load_state_strict

    ck = load_checkpoint(path) if ck is None else ck
    device = torch.device(device)
    check_checkpoint(ck, path, store, device)
    model = build_model(ck["spec"], "fp32" if device.type == "cpu" else ck.get("precision", "fp32"))
    state = ck["model"]
    if weights == "auto" and ck.get("ema") is not None:
        state = {k[len("module."):]: v for k, v in ck["ema"].items() if k.startswith("module.")}
    load_state_strict(model, state, path)
    return model.to(device).eval(), ck


def mean_input(data: Any, batch: int = 64) -> torch.Tensor:
    """Mean LGN count per bin of each input neuron over trainer batches ``data`` (streamed)."""
    total, n = None, 0
    for a in range(0, len(data), batch):
        lgn = data.batch(np.arange(a, min(a + batch, len(data))))["lgn"].double()
        s = lgn.sum(dim=(0, 1))
        total = s if total is None else total + s
        n += lgn.shape[0] * lgn.shape[1]
    if total is None:
        raise CorticalRNNError("no training windows to centre the model's input on")
    return (total / n).float()


class TensorWindows:
    """Windows held in memory as float32 tensors; ``batch(indices)`` gives the trainer's dict."""

    def __init__(self, lgn: torch.Tensor, v1: torch.Tensor) -> None:
        self.lgn, self.v1 = lgn, v1

    def __len__(self) -> int:
        return int(self.lgn.shape[0])

    def batch(self, indices: Any) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return {"lgn": self.lgn[idx], "v1": self.v1[idx], "window": idx}


def subset_windows(store: Any, subset: Any, windows: np.ndarray, cache_mb: float = 0.0) -> Any:
    """The subset's neurons in ``windows`` as trainer batches (``corticalrnn.data.WindowBatches``),
    read once into memory when their dense float32 size is below ``cache_mb``.

    Raises DataMismatchError naming the store when it lacks some of the subset's neurons."""
    from corticalrnn.data import WindowBatches

    rows = subset.indices(store, "modelled", name=str(store.path))
    wb = WindowBatches(store, np.asarray(windows, dtype=np.int64), rows)
    dense_mb = len(wb) * wb.n_bins * (wb.sizes["lgn"] + wb.sizes["v1"]) * 4 / 2**20
    if len(wb) and dense_mb <= cache_mb:
        b = wb.batch(np.arange(len(wb)))
        return TensorWindows(b["lgn"], b["v1"])
    return wb


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


def prepare(cfg: TrainConfig, run_dir: str | Path) -> Trainer:
    """Everything up to a ready :class:`Trainer` (store, subset, split, data, model)."""
    from corticalrnn.store import open_store
    from corticalrnn.subsets import NeuronSubset

    device = resolve_device(cfg.train.device)  # first: a GPU job without a usable GPU fails at once
    if not cfg.data.store:
        raise CorticalRNNError("config: data.store is not set (path to the Zarr store)")
    if not cfg.data.subset:
        raise CorticalRNNError("config: data.subset is not set (neuron-subset JSON from corticalrnn subset)")
    store = open_store(cfg.data.store)
    subset = NeuronSubset.load(cfg.data.subset)
    precision = resolve_precision(cfg.train.precision, device)
    mcfg = model_config(cfg, store.bin_ms, precision)
    spec = make_spec(mcfg, subset, store)
    train_w, val_w, split = split_training_windows(store, cfg)
    train_data = subset_windows(store, subset, train_w, cfg.data.cache_mb)
    val_data = subset_windows(store, subset, val_w, cfg.data.cache_mb) if val_w.size else None
    torch.manual_seed(cfg.train.seed)
    model = build_model(spec, mcfg.precision)
    if mcfg.centered:
        model.set_input_center(mean_input(train_data))
    observed = torch.as_tensor(subset.observed_mask(), dtype=torch.bool)
    teacher = mcfg.teacher
    penalty = None
    if cfg.optim.hidden_rate_prior > 0:
        from corticalrnn.train.rate_prior import HiddenRatePrior

        prior, weight = HiddenRatePrior(subset.v1_sheet_labels(), observed), cfg.optim.hidden_rate_prior
        penalty = lambda rates, target: weight * prior(rates, target)  # noqa: E731
    trainer = Trainer(cfg, model, train_data, val_data, observed, run_dir, spec, model.loss,
                      subset=subset.to_json_dict(), project=model.project_,
                      teacher_fraction=teacher.fraction_at if teacher.start > 0 or teacher.end > 0 else None,
                      split=split.to_json_dict(), autocast=False, penalty=penalty)
    return trainer


def train(cfg: TrainConfig, run_dir: str | Path, resume: str | Path | None = None,
          init_from: str | Path | None = None) -> TrainResult:
    """Train from a config (what ``corticalrnn train`` runs)."""
    trainer = prepare(cfg, run_dir)
    return trainer.fit(resume=resume, init_from=init_from)
