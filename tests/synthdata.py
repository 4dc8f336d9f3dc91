"""Helpers for tests: small synthetic Mozaik datastores, and a plain-pickle reader for checking them.

    from synthdata import make_datastore, make_train_test, read_datastore_plain

``make_datastore(tmp_path, images=..., trials=..., scale=..., seed=...)`` writes
``tmp_path/<name>`` (a Mozaik ``PickledDataStore`` folder) and ``tmp_path/<name>.truth.h5`` and
returns the folder; ``corticalrnn.synth.read_truth(truth_path(folder))`` gives the ground truth.
Default scale 0.1: 16 + 16 LGN, 40 E + 10 I per V1 layer (132 neurons), about a second per
few images.
"""

from __future__ import annotations

import ast
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from corticalrnn.synth import CortexConfig, generate
from extract.mozaik_types import MOZAIK_CLASSES

SMALL_SCALE = 0.1


def make_datastore(
    tmp_path: Path,
    images: Sequence[int] = (50000, 50001, 50002),
    trials: int = 1,
    scale: float = SMALL_SCALE,
    seed: int = 0,
    name: str = "datastore",
    **config: Any,
) -> Path:
    """Generate a small datastore folder ``tmp_path/name`` (+ ``name.truth.h5`` beside it)."""
    cfg = CortexConfig(scale=scale, **config)
    summary = generate(Path(tmp_path) / name, list(images), trials, seed=seed, config=cfg)
    return summary.outdir


def make_train_test(
    tmp_path: Path,
    train_images: Sequence[int] = (50000, 50001, 50002, 50003),
    test_images: Sequence[int] = (300050, 300051),
    test_trials: int = 3,
    scale: float = SMALL_SCALE,
    seed: int = 0,
    **config: Any,
) -> tuple[Path, Path]:
    """A training folder (one trial) and a test folder (several trials) of the same network."""
    train = make_datastore(tmp_path, train_images, 1, scale, seed, "train", **config)
    test = make_datastore(tmp_path, test_images, test_trials, scale, seed, "test", **config)
    return train, test


class MozaikFreeUnpickler(pickle.Unpickler):
    """Maps Mozaik globals to the stand-ins in ``extract.mozaik_types``; everything else as usual."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in MOZAIK_CLASSES:
            return MOZAIK_CLASSES[(module, name)]
        if module.split(".")[0] == "mozaik":
            raise pickle.UnpicklingError(f"unexpected Mozaik global {module}.{name}")
        return super().find_class(module, name)


@dataclass
class SegmentRecord:
    """One recorded segment as a reader without Mozaik sees it."""

    identifier: str
    sheet: str
    null: bool
    stimulus: str
    params: dict
    rec_datetime: Any
    t_start: float
    t_stop: float
    spikes: dict[int, np.ndarray] | None = field(default_factory=dict)  # neuron id -> times (ms)
    annotations: list[dict] = field(default_factory=list)  # per spike train


@dataclass
class PlainDatastore:
    block_annotations: dict
    segments: list[SegmentRecord]  # in file order (recordings pickle order)

    def by_time(self) -> list[SegmentRecord]:
        return sorted(self.segments, key=lambda s: s.rec_datetime)


def read_datastore_plain(folder: Path, max_stimuli: int | None = None) -> PlainDatastore:
    """Read a datastore with plain ``pickle`` (+ neo for neo objects), Mozaik mapped to stand-ins.

    ``max_stimuli``: load spike files only for the first ``max_stimuli`` stimuli and the last one
    (in recording order); the other segments keep ``spikes=None`` (neo unpickling is slow).
    """
    folder = Path(folder)
    with open(folder / "datastore.recordings.pickle", "rb") as f:
        block = MozaikFreeUnpickler(f).load()
    wanted = None
    if max_stimuli is not None:
        ordered = sorted(block.segments, key=lambda w: w.rec_datetime)
        per = 2 * len(block.annotations["neuron_ids"])
        keep = ordered[: per * max_stimuli] + ordered[-per:]
        wanted = {w.identifier for w in keep}
    segments = []
    for w in block.segments:
        if wanted is not None and w.identifier not in wanted:
            segments.append(
                SegmentRecord(
                    w.identifier,
                    w.sheet_name,
                    w.null,
                    w.stimulus,
                    ast.literal_eval(w.stimulus),
                    w.rec_datetime,
                    float("nan"),
                    float("nan"),
                    spikes=None,
                )
            )
            continue
        with open(folder / f"{w.identifier}.pickle", "rb") as f:
            seg = MozaikFreeUnpickler(f).load()
        trains = list(seg.spiketrains)
        rec = SegmentRecord(
            identifier=w.identifier,
            sheet=w.sheet_name,
            null=w.null,
            stimulus=w.stimulus,
            params=ast.literal_eval(w.stimulus),
            rec_datetime=w.rec_datetime,
            t_start=float(trains[0].t_start) if trains else 0.0,
            t_stop=float(trains[0].t_stop) if trains else 0.0,
        )
        assert seg.annotations["sheet_name"] == w.sheet_name and seg.annotations["stimulus"] == w.stimulus
        for st in trains:
            nid = st.annotations.get("source_id", st.annotations.get("channel_id"))
            rec.spikes[int(nid)] = np.asarray(st.rescale("ms").magnitude, np.float64)
            rec.annotations.append(dict(st.annotations))
        segments.append(rec)
    return PlainDatastore(dict(block.annotations), segments)
