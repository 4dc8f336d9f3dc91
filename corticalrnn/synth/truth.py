"""The ground-truth file of a synthetic datastore (HDF5, schema ``corticalrnn.synth_truth``, version 1).

Written next to the datastore folder, never inside it: ``<OUTDIR>.truth.h5`` (see :func:`truth_path`).

```
/                       attrs: schema, schema_version=1, seed, config (JSON of CortexConfig),
                               datastore (abs folder), tool_version, created (ISO 8601 UTC),
                               rate_bin_ms, window_ms = [blank_before, stimulus, blank_after]
/sheets/<quoted name>/  attrs name, layer, sign (+1/-1)
    neuron_ids    int64   [N]     same ids as the datastore's
    positions_mm  float64 [N, 2]  x, y on the cortical sheet (mm; the datastore has µm, [3, N])
/network/               V1 vector = V1 sheets in canonical order; LGN vector = X_ON then X_OFF
    W/indptr, W/indices, W/data   CSR [N_v1, N_v1] (row = post, column = pre), signed (Dale)
    U/indptr, U/indices, U/data   CSR [N_v1, N_lgn], >= 0
    bias [N_v1], tau_ms [N_v1]    float64
/presentations/         one row per NaturalImage presentation, recording order
    image_id, trial     int64 [P]
/rates/v1   float32 [P, n_bins, N_v1]  Hz, mean over rate_bin_ms bins of the window
                                        blank before | image | blank after (as recorded)
/rates/lgn  float32 [P, n_bins, N_lgn]
/trial_average/image_id int64 [I];  /trial_average/v1 float32 [I, n_bins, N_v1]
```
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp

from corticalrnn.atomic import atomic_path
from corticalrnn.errors import SchemaError
from corticalrnn.schema import check_schema, stamp
from corticalrnn.sheets import INPUT_SHEETS, SHEET_INFO, V1_SHEETS, sheet_key

SCHEMA = "corticalrnn.synth_truth"
SCHEMA_VERSION = 1


def truth_path(outdir: str | os.PathLike) -> Path:
    """Where the ground truth of datastore folder ``outdir`` lives: ``<outdir>.truth.h5`` beside it."""
    p = Path(outdir).absolute()
    return p.with_name(p.name + ".truth.h5")


@dataclass
class GroundTruth:
    """Everything known about a synthetic datastore's generating network and rates."""

    seed: int
    config: dict
    datastore: str
    rate_bin_ms: int
    window_ms: tuple[float, float, float]  # blank before, image, blank after
    neuron_ids: dict[str, np.ndarray]
    positions_mm: dict[str, np.ndarray]
    W: sp.csr_matrix
    U: sp.csr_matrix
    bias: np.ndarray
    tau_ms: np.ndarray
    image_id: np.ndarray  # [P]
    trial: np.ndarray  # [P]
    rates_v1: np.ndarray  # [P, n_bins, N_v1]
    rates_lgn: np.ndarray  # [P, n_bins, N_lgn]
    avg_image_id: np.ndarray  # [I]
    avg_rates_v1: np.ndarray  # [I, n_bins, N_v1]

    def v1_slice(self, sheet: str) -> slice:
        start = 0
        for s in V1_SHEETS:
            n = len(self.neuron_ids[s])
            if s == sheet:
                return slice(start, start + n)
            start += n
        raise KeyError(sheet)

    def signs(self) -> np.ndarray:
        """Dale sign of every V1 neuron (column of W)."""
        return np.concatenate([np.full(len(self.neuron_ids[s]), SHEET_INFO[s].sign) for s in V1_SHEETS])


def _write_csr(g: h5py.Group, name: str, m: sp.csr_matrix) -> None:
    sub = g.create_group(name)
    sub.attrs["shape"] = np.asarray(m.shape, np.int64)
    sub.create_dataset("indptr", data=m.indptr.astype(np.int64))
    sub.create_dataset("indices", data=m.indices.astype(np.int64))
    sub.create_dataset("data", data=m.data.astype(np.float64))


def _read_csr(g: h5py.Group) -> sp.csr_matrix:
    shape = tuple(int(x) for x in g.attrs["shape"])
    return sp.csr_matrix((g["data"][()], g["indices"][()], g["indptr"][()]), shape=shape)


def write_truth(path: str | os.PathLike, truth: GroundTruth) -> Path:
    """Write atomically (``<path>.tmp`` then rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs.update(stamp(SCHEMA, SCHEMA_VERSION))
            f.attrs.update(
                seed=int(truth.seed),
                config=json.dumps(truth.config),
                datastore=truth.datastore,
                rate_bin_ms=int(truth.rate_bin_ms),
                window_ms=np.asarray(truth.window_ms, np.float64),
            )
            sh = f.create_group("sheets")
            for s in INPUT_SHEETS + V1_SHEETS:
                g = sh.create_group(sheet_key(s))
                g.attrs.update(name=s, layer=SHEET_INFO[s].layer, sign=SHEET_INFO[s].sign)
                g.create_dataset("neuron_ids", data=np.asarray(truth.neuron_ids[s], np.int64))
                g.create_dataset("positions_mm", data=np.asarray(truth.positions_mm[s], np.float64))
            net = f.create_group("network")
            _write_csr(net, "W", truth.W)
            _write_csr(net, "U", truth.U)
            net.create_dataset("bias", data=truth.bias.astype(np.float64))
            net.create_dataset("tau_ms", data=truth.tau_ms.astype(np.float64))
            pres = f.create_group("presentations")
            pres.create_dataset("image_id", data=truth.image_id.astype(np.int64))
            pres.create_dataset("trial", data=truth.trial.astype(np.int64))
            rates = f.create_group("rates")
            for name, arr in (("v1", truth.rates_v1), ("lgn", truth.rates_lgn)):
                rates.create_dataset(
                    name,
                    data=arr.astype(np.float32),
                    chunks=_chunks(arr.shape),
                    compression="gzip",
                    compression_opts=1,
                    shuffle=True,
                )
            avg = f.create_group("trial_average")
            avg.create_dataset("image_id", data=truth.avg_image_id.astype(np.int64))
            avg.create_dataset(
                "v1",
                data=truth.avg_rates_v1.astype(np.float32),
                chunks=_chunks(truth.avg_rates_v1.shape),
                compression="gzip",
                compression_opts=1,
                shuffle=True,
            )
    return path


def _chunks(shape: tuple[int, ...]) -> tuple[int, ...] | None:
    if 0 in shape:
        return None
    return (1, shape[1], shape[2])


def read_truth(path: str | os.PathLike) -> GroundTruth:
    """Read a ground-truth file; :class:`SchemaError` names the file when it is not one (of v1)."""
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise SchemaError(f"{path}: cannot open as HDF5 ({exc})") from exc
    with f:
        check_schema(f.attrs, SCHEMA, SCHEMA_VERSION, path)
        try:
            ids, pos = {}, {}
            for s in INPUT_SHEETS + V1_SHEETS:
                g = f["sheets"][sheet_key(s)]
                ids[s] = g["neuron_ids"][()]
                pos[s] = g["positions_mm"][()]
            return GroundTruth(
                seed=int(f.attrs["seed"]),
                config=json.loads(f.attrs["config"]),
                datastore=str(f.attrs["datastore"]),
                rate_bin_ms=int(f.attrs["rate_bin_ms"]),
                window_ms=tuple(float(x) for x in f.attrs["window_ms"]),
                neuron_ids=ids,
                positions_mm=pos,
                W=_read_csr(f["network/W"]),
                U=_read_csr(f["network/U"]),
                bias=f["network/bias"][()],
                tau_ms=f["network/tau_ms"][()],
                image_id=f["presentations/image_id"][()],
                trial=f["presentations/trial"][()],
                rates_v1=f["rates/v1"][()],
                rates_lgn=f["rates/lgn"][()],
                avg_image_id=f["trial_average/image_id"][()],
                avg_rates_v1=f["trial_average/v1"][()],
            )
        except KeyError as exc:
            raise SchemaError(f"{path}: missing {exc.args[0]!r} in {SCHEMA} file") from exc
