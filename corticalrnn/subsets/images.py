"""Train / validation / test splits of the images (not neurons), and their JSON file.

Torch-free. File format (JSON, written atomically): schema ``corticalrnn.image_split``, version 1;
see :meth:`ImageSplit.to_json_dict`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from corticalrnn.errors import CorticalRNNError, DataMismatchError
from corticalrnn.jsonio import JSONDocument
from corticalrnn.schema import provenance
from corticalrnn.subsets.files import SPLIT_SCHEMA, reading, schema_header
from corticalrnn.subsets.sources import _preview


@dataclass(frozen=True, eq=False)
class ImageSplit(JSONDocument):
    """Image ids of the train / validation / test splits (disjoint), and how they were made (``save`` /
    ``load``: JSON)."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    seed: int | None = None
    method: str = "random"
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        parts = {}
        for part in ("train", "validation", "test"):
            arr = np.asarray(getattr(self, part), dtype=np.int64).ravel()
            if len(np.unique(arr)) != len(arr):
                raise CorticalRNNError(f"image split: duplicate image ids in {part}")
            object.__setattr__(self, part, arr)
            parts[part] = arr
        for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
            both = np.intersect1d(parts[a], parts[b])
            if both.size:
                raise CorticalRNNError(f"image split: {a} and {b} share {_preview(both)}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ImageSplit):
            return NotImplemented
        same = all(
            np.array_equal(getattr(self, p), getattr(other, p)) for p in ("train", "validation", "test")
        )
        return same and (self.seed, self.method) == (other.seed, other.method)

    __hash__ = None  # type: ignore[assignment]

    def part_of(self, image_ids: Iterable[int]) -> np.ndarray:
        """Split name (``train``/``validation``/``test``/``""``) of each image id."""
        ids = np.asarray(list(image_ids), dtype=np.int64)
        out = np.full(len(ids), "", dtype=object)
        for part in ("train", "validation", "test"):
            out[np.isin(ids, getattr(self, part))] = part
        return out

    def to_json_dict(self) -> dict[str, Any]:
        return {
            **schema_header(SPLIT_SCHEMA),
            "method": self.method,
            "seed": self.seed,
            "info": dict(self.info),
            "train": self.train.tolist(),
            "validation": self.validation.tolist(),
            "test": self.test.tolist(),
        }

    @classmethod
    def from_json_dict(cls, doc: Mapping[str, Any], where: str = "<image split>") -> ImageSplit:
        with reading(doc, SPLIT_SCHEMA, where, "image split"):
            return cls(
                train=np.asarray(doc["train"], dtype=np.int64),
                validation=np.asarray(doc["validation"], dtype=np.int64),
                test=np.asarray(doc["test"], dtype=np.int64),
                seed=doc.get("seed"),
                method=str(doc.get("method", "")),
                info=dict(doc.get("info", {})),
            )


def make_image_split(
    image_ids: Iterable[int],
    *,
    trials: Iterable[int] | None = None,
    validation: float = 0.1,
    test: float | str = 0.0,
    seed: int = 0,
) -> ImageSplit:
    """Split the distinct images into train / validation / test.

    ``image_ids`` may repeat (one entry per window); ``trials`` (same length) is needed for
    ``test="repeats"``, which puts every image shown in more than one trial into the test split (the
    thesis layout: single-trial training images, multi-trial test images). Otherwise ``test`` is
    the fraction of images drawn at random for testing; ``validation`` is the fraction of the
    remaining (non-test) images held out for model selection. At least one validation image is
    kept when ``validation > 0`` and there are two or more candidate images.
    """
    ids = np.asarray(list(image_ids), dtype=np.int64)
    unique = np.unique(ids)
    rng = np.random.default_rng(seed)
    if isinstance(test, str):
        if test != "repeats":
            raise CorticalRNNError(f"test must be a fraction or 'repeats', got {test!r}")
        if trials is None:
            raise CorticalRNNError("test='repeats' needs the trial of each window")
        tr = np.asarray(list(trials), dtype=np.int64)
        if len(tr) != len(ids):
            raise DataMismatchError(f"image_ids ({len(ids)}) and trials ({len(tr)}) differ in length")
        n_trials = np.array([len(np.unique(tr[ids == u])) for u in unique])
        test_ids = unique[n_trials > 1]
        method = "repeats"
    else:
        if not 0.0 <= test < 1.0:
            raise CorticalRNNError(f"test fraction must be in [0, 1), got {test}")
        k_test = int(round(test * len(unique)))
        test_ids = np.sort(rng.choice(unique, size=k_test, replace=False)) if k_test else unique[:0]
        method = "random"
    if not 0.0 <= validation < 1.0:
        raise CorticalRNNError(f"validation fraction must be in [0, 1), got {validation}")
    rest = np.setdiff1d(unique, test_ids)
    k_val = int(round(validation * len(rest)))
    if validation > 0 and k_val == 0 and len(rest) >= 2:
        k_val = 1
    val_ids = np.sort(rng.choice(rest, size=k_val, replace=False)) if k_val else rest[:0]
    train_ids = np.setdiff1d(rest, val_ids)
    return ImageSplit(
        train=train_ids,
        validation=val_ids,
        test=test_ids,
        seed=seed,
        method=method,
        info={
            **provenance(),
            "validation_fraction": validation,
            "test": test,
        },
    )
