"""``corticalrnn subset``: draw (or import from thesis pickles) a subset, optionally an image split.

``add_arguments(parser)`` and ``run(args)``, re-exported by :mod:`corticalrnn.subsets`, which is the
module ``corticalrnn.cli`` dispatches the subcommand to.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from corticalrnn.errors import CorticalRNNError, SchemaError
from corticalrnn.jsonio import read_json
from corticalrnn.subsets.images import ImageSplit, make_image_split
from corticalrnn.subsets.neurons import NeuronSubset, SubsetConfig, make_subset
from corticalrnn.subsets.sampling import METHODS
from corticalrnn.subsets.sources import SourceLike, _source_name
from corticalrnn.subsets.thesis import read_neuron_id_dir, subset_from_thesis


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", nargs="?", help="Zarr store (neuron ids and positions come from it)")
    parser.add_argument("-o", "--output", required=True, help="subset JSON file to write")
    parser.add_argument("--fraction", type=float, default=0.1, help="modelled fraction of each V1 sheet")
    parser.add_argument(
        "--observed", type=float, default=0.1, help="observed fraction of the modelled neurons"
    )
    parser.add_argument("--method", choices=METHODS, default="random", help="how modelled neurons are chosen")
    parser.add_argument(
        "--observed-method",
        choices=METHODS,
        default=None,
        help="how observed neurons are chosen (default: as --method)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--input-fraction", type=float, default=1.0, help="fraction of X_ON/X_OFF neurons")
    parser.add_argument(
        "--input-method", choices=METHODS, default="random", help="how input neurons are chosen"
    )
    parser.add_argument("--sheets", nargs="+", default=None, help="only these sheets (default: all)")
    parser.add_argument("--modelled-ids", metavar="JSON", help="explicit modelled ids: JSON {sheet: [ids]}")
    parser.add_argument("--observed-ids", metavar="JSON", help="explicit observed ids: JSON {sheet: [ids]}")
    parser.add_argument(
        "--from-thesis",
        nargs=2,
        action="append",
        metavar=("MODEL_PKL", "VISIBLE_PKL"),
        help="import thesis model_subsets/visible_neurons pickles (repeat for per-sheet files)",
    )
    parser.add_argument("--neuron-ids", metavar="DIR", help="thesis neuron_ids/ folder (for --from-thesis)")
    parser.add_argument(
        "--visible-relative",
        choices=("auto", "sheet", "model"),
        default="auto",
        help="thesis visible indices index the sheet or the model subset",
    )
    parser.add_argument("--split", metavar="JSON", help="also write a train/validation/test image split")
    parser.add_argument(
        "--validation", type=float, default=0.1, help="validation fraction of non-test images"
    )
    parser.add_argument(
        "--test",
        default="repeats",
        help="test images: 'repeats' (images with several trials), 'store' (the store's test split) "
        "or a fraction drawn at random",
    )


def _load_id_json(path: str) -> dict[str, list[int]]:
    doc = read_json(path)
    if not isinstance(doc, Mapping) or not all(isinstance(v, list) for v in doc.values()):
        raise SchemaError(f"{path}: expected a JSON object {{sheet: [neuron ids]}}")
    return {str(k): [int(i) for i in v] for k, v in doc.items()}


def _window_column(windows: Any, name: str) -> np.ndarray:
    """A column of a store's window table (a dataclass of arrays, a mapping, or a record array)."""
    return np.asarray(getattr(windows, name) if hasattr(windows, name) else windows[name])


def _split_from_store(store: Any, test: str, validation: float, seed: int) -> ImageSplit:
    """Image split for ``corticalrnn subset --split``: test images by repeats, store split or fraction."""
    windows = store.windows
    images = _window_column(windows, "image_id")
    if test == "store":
        labels = _window_column(windows, "split").astype(str)
        test_ids = np.unique(images[labels == "test"])
        if not test_ids.size:
            raise CorticalRNNError(f"{_source_name(store)}: no window is in the store's 'test' split")
        rest = np.setdiff1d(np.unique(images), test_ids)
        split = make_image_split(rest, validation=validation, test=0.0, seed=seed)
        return ImageSplit(
            split.train,
            split.validation,
            test_ids,
            seed=seed,
            method="store",
            info=dict(split.info, test="store"),
        )
    if test == "repeats":
        return make_image_split(
            images, trials=_window_column(windows, "trial"), validation=validation, test="repeats", seed=seed
        )
    try:
        fraction = float(test)
    except ValueError as exc:
        raise CorticalRNNError(f"--test must be 'repeats', 'store' or a fraction, got {test!r}") from exc
    return make_image_split(images, validation=validation, test=fraction, seed=seed)


def _print_summary(subset: NeuronSubset, path: Path) -> None:
    print(f"wrote {path}")
    print(f"{'sheet':<14}{'modelled':>10}{'observed':>10}{'hidden':>10}")
    for row in subset.summary():
        print(f"{row['sheet']:<14}{row['modelled']:>10}{row['observed']:>10}{row['hidden']:>10}")


def run(args: argparse.Namespace) -> int:
    store = None
    if args.store is not None:
        from corticalrnn.store import open_store  # lazy: store.py pulls in zarr

        store = open_store(args.store)
    if args.from_thesis:
        if args.neuron_ids:
            ids: SourceLike | Mapping[str, np.ndarray] = read_neuron_id_dir(args.neuron_ids)
        elif store is not None:
            ids = store
        else:
            raise CorticalRNNError("--from-thesis needs --neuron-ids DIR or a STORE for the neuron ids")
        subset = subset_from_thesis(
            [m for m, _ in args.from_thesis],
            [v for _, v in args.from_thesis],
            ids,
            visible_relative_to=args.visible_relative,
        )
        if store is not None:
            subset.indices(store, name=args.store)  # the store must hold every neuron of the subset
    else:
        if store is None:
            raise CorticalRNNError("give a STORE to draw the subset from (or --from-thesis)")
        method = args.method
        cfg = SubsetConfig(
            fraction=args.fraction,
            observed=args.observed,
            method=method,
            observed_method=args.observed_method or ("explicit" if args.observed_ids else None),
            seed=args.seed,
            input_fraction=args.input_fraction,
            input_method=args.input_method,
            sheets=tuple(args.sheets) if args.sheets else None,
        )
        subset = make_subset(
            store,
            cfg,
            modelled_ids=_load_id_json(args.modelled_ids) if args.modelled_ids else None,
            observed_ids=_load_id_json(args.observed_ids) if args.observed_ids else None,
            name=str(Path(args.store).resolve()),
        )
    out = subset.save(args.output)
    _print_summary(subset, out)
    if args.split:
        if store is None:
            raise CorticalRNNError("--split needs a STORE (its windows list the images and trials)")
        split = _split_from_store(store, args.test, args.validation, args.seed)
        split.save(args.split)
        print(
            f"wrote {args.split}: {len(split.train)} train, {len(split.validation)} validation, "
            f"{len(split.test)} test images"
        )
    return 0
