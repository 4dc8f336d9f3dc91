"""The predictions file (one home): free-running rates saved by ``corticalrnn evaluate --save-predictions``.

Two files, torch-free:

``NAME.npy``
    float16 or float32 ``[images, trials, T, N_v1]``: the model's expected count per bin for every
    test trial (the rate the metrics score), images in the report's ``test_images`` order, trials in
    ``trials`` order, neurons in the model's V1 order. Written one chunk of images at a time (never
    held whole in memory) under ``NAME.npy.tmp`` and renamed when every image is in.
``NAME.json``
    written last (the commit point): ``schema`` = ``corticalrnn.predictions``, ``schema_version`` 1,
    ``shape``, ``dtype``, ``units``, ``bin_ms``, ``image_ids`` [images], ``trials`` and ``windows``
    [images, trials] (store window indices), ``neuron_ids`` and ``sheets`` [N_v1], ``observed`` [N_v1],
    plus free ``info`` (checkpoint, store).

``open_predictions(path)`` reads both; the rates are memory-mapped.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from corticalrnn.errors import SchemaError

SCHEMA = "corticalrnn.predictions"
SCHEMA_VERSION = 1
DTYPES = ("float16", "float32")


def paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(NAME.npy, NAME.json)`` for ``path`` given with or without ``.npy``."""
    p = Path(path)
    npy = p if p.suffix == ".npy" else p.with_name(p.name + ".npy")
    return npy, npy.with_suffix(".json")


@dataclass
class Predictions:
    rates: np.ndarray  # memory-mapped [images, trials, T, N_v1]
    image_ids: np.ndarray
    trials: np.ndarray
    windows: np.ndarray
    neuron_ids: np.ndarray
    sheets: np.ndarray
    observed: np.ndarray
    bin_ms: float
    info: dict[str, Any]


class PredictionWriter:
    """Context manager: ``write(rates)`` appends ``[c, trials, T, N]`` chunks of images in order; on a
    clean exit with every image written the file is renamed into place and the JSON written."""

    def __init__(self, path: str | os.PathLike[str], *, image_ids: np.ndarray, trials: np.ndarray,
                 windows: np.ndarray, n_bins: int, neuron_ids: np.ndarray, sheets: np.ndarray,
                 observed: np.ndarray, bin_ms: float, dtype: str = "float32",
                 info: dict[str, Any] | None = None) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"prediction dtype {dtype!r}: one of {', '.join(DTYPES)}")
        self.npy, self.json = paths(path)
        trials = np.asarray(trials, np.int64)
        self.shape = (int(len(image_ids)), int(trials.shape[1]), int(n_bins), int(len(neuron_ids)))
        self.dtype = np.dtype(dtype)
        self.meta = {
            "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "shape": list(self.shape), "dtype": dtype,
            "units": "expected spike count per bin", "bin_ms": float(bin_ms),
            "image_ids": np.asarray(image_ids, np.int64).tolist(), "trials": trials.tolist(),
            "windows": np.asarray(windows, np.int64).tolist(),
            "neuron_ids": np.asarray(neuron_ids, np.int64).tolist(),
            "sheets": [str(s) for s in sheets], "observed": np.asarray(observed, bool).tolist(),
            "info": {k: str(v) for k, v in (info or {}).items()},
        }
        self.written = 0
        self._ctx: Any = None
        self._fh: Any = None

    def __enter__(self) -> PredictionWriter:
        from corticalrnn.atomic import atomic_path

        self.json.unlink(missing_ok=True)  # a stale index must never describe the new rates
        self._ctx = atomic_path(self.npy)
        tmp = self._ctx.__enter__()
        self._fh = open(tmp, "wb")
        np.lib.format.write_array_header_2_0(
            self._fh, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                       "shape": self.shape})
        return self

    def write(self, rates: np.ndarray) -> None:
        rates = np.asarray(rates)
        if rates.shape[1:] != self.shape[1:] or self.written + len(rates) > self.shape[0]:
            raise ValueError(f"prediction chunk {rates.shape} does not continue {self.shape} "
                             f"after {self.written} images")
        self._fh.write(np.ascontiguousarray(rates, dtype=self.dtype).tobytes())
        self.written += len(rates)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        from corticalrnn.atomic import write_text_atomic

        self._fh.close()
        if exc_type is None and self.written != self.shape[0]:
            exc = ValueError(f"{self.npy}: {self.written} of {self.shape[0]} images written")
            self._ctx.__exit__(type(exc), exc, None)
            raise exc
        self._ctx.__exit__(exc_type, exc, tb)
        if exc_type is None:
            write_text_atomic(self.json, json.dumps(self.meta))


def open_predictions(path: str | os.PathLike[str]) -> Predictions:
    """Read a predictions file (``NAME.npy`` or ``NAME``); rates memory-mapped read-only."""
    npy, js = paths(path)
    if not js.is_file() or not npy.is_file():
        raise SchemaError(f"{npy}: no complete predictions file ({js.name} and {npy.name} needed)")
    try:
        meta = json.loads(js.read_text())
    except ValueError as exc:
        raise SchemaError(f"{js}: not JSON ({exc})") from None
    if meta.get("schema") != SCHEMA or meta.get("schema_version") != SCHEMA_VERSION:
        raise SchemaError(f"{js}: schema {meta.get('schema')!r} v{meta.get('schema_version')!r}, "
                          f"expected {SCHEMA!r} v{SCHEMA_VERSION}")
    rates = np.load(npy, mmap_mode="r")
    if list(rates.shape) != meta["shape"] or str(rates.dtype) != meta["dtype"]:
        raise SchemaError(f"{npy}: shape {rates.shape} {rates.dtype}, index says {meta['shape']} "
                          f"{meta['dtype']}")
    return Predictions(rates, np.asarray(meta["image_ids"], np.int64), np.asarray(meta["trials"], np.int64),
                       np.asarray(meta["windows"], np.int64), np.asarray(meta["neuron_ids"], np.int64),
                       np.asarray(meta["sheets"]), np.asarray(meta["observed"], bool), float(meta["bin_ms"]),
                       dict(meta.get("info", {})))
