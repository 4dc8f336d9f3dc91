"""Import of the earlier thesis' subsets: pickled row-index arrays to a subset of neuron ids.

Torch-free. The thesis stored subsets as pickled row-index arrays (``model_subsets/*.pkl``,
``visible_neurons/*.pkl``); :func:`subset_from_thesis` converts them to ids given the neuron-id
arrays (:func:`read_neuron_id_dir` reads a thesis ``neuron_ids/`` folder), loading the pickles with a
restricted unpickler (numpy arrays and builtins only).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from corticalrnn.errors import CorticalRNNError, DataMismatchError, SchemaError
from corticalrnn.schema import provenance
from corticalrnn.sheets import (
    ALL_SHEETS,
    INPUT_SHEETS,
    V1_SHEETS,
    file_sheet_name,
    normalize_sheet_name,
    sort_sheets,
)
from corticalrnn.subsets.neurons import NeuronSubset, SheetSubset
from corticalrnn.subsets.sources import SourceLike, _preview, _source_ids, _source_sheets


def load_index_pickle(path: str | os.PathLike[str]) -> Any:
    """Load a thesis index pickle safely (numpy + builtins only; nothing else is executed)."""
    from extract.safe_pickle import load_plain

    return load_plain(path)


def _sheet_from_filename(path: Path) -> str | None:
    stem = path.name
    hits = [
        s
        for s in ALL_SHEETS
        if re.search(rf"(^|[^A-Za-z0-9]){re.escape(file_sheet_name(s))}([^A-Za-z0-9]|$)", stem)
    ]
    return hits[0] if len(hits) == 1 else None


def _as_index_array(value: Any, n: int, where: str, ids: np.ndarray | None = None) -> np.ndarray:
    """Row indices (or a bool mask) from a thesis pickle as int64, checked against ``n`` rows."""
    arr = np.asarray(value)
    if arr.dtype == bool:
        if arr.ndim != 1 or len(arr) != n:
            raise DataMismatchError(f"{where}: boolean mask of length {arr.shape}, sheet has {n} neurons")
        return np.flatnonzero(arr).astype(np.int64)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise SchemaError(f"{where}: expected integer row indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64).ravel()
    if arr.min() < 0 or arr.max() >= n:
        hint = ""
        if ids is not None and np.isin(arr, ids).all():
            hint = " (all values are neuron ids of this sheet: the file seems to hold ids, not row indices)"
        raise DataMismatchError(
            f"{where}: index {int(arr.min() if arr.min() < 0 else arr.max())} out of range for a sheet "
            f"of {n} neurons{hint}"
        )
    if len(np.unique(arr)) != len(arr):
        raise SchemaError(f"{where}: duplicate indices")
    return arr


def read_thesis_indices(paths: Iterable[str | os.PathLike[str]]) -> dict[str, tuple[Any, str]]:
    """Raw index arrays per canonical sheet from thesis pickles (dict sheet→indices, or one sheet's
    indices with the sheet named in the file name). Returns sheet → (value, file)."""
    out: dict[str, tuple[Any, str]] = {}
    for p in paths:
        path = Path(p)
        obj = load_index_pickle(path)
        if isinstance(obj, Mapping):
            items = []
            for key, value in obj.items():
                try:
                    items.append((normalize_sheet_name(str(key)), value))
                except ValueError as exc:
                    raise SchemaError(f"{path}: {exc}") from exc
        elif isinstance(obj, list | tuple | np.ndarray):
            sheet = _sheet_from_filename(path)
            if sheet is None:
                raise SchemaError(
                    f"{path}: holds one index array but its file name names no single sheet "
                    f"(expected one of {', '.join(file_sheet_name(s) for s in ALL_SHEETS)} in the name)"
                )
            items = [(sheet, obj)]
        else:
            raise SchemaError(
                f"{path}: expected a dict sheet -> indices or an index array, got {type(obj).__name__}"
            )
        for sheet, value in items:
            if sheet in out:
                raise SchemaError(f"{path}: sheet {sheet!r} also given by {out[sheet][1]}")
            out[sheet] = (value, str(path))
    return out


def read_neuron_id_dir(directory: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Neuron ids per sheet from a thesis ``neuron_ids/`` folder (``neuron_ids_<SHEET>[_<tag>].npy``)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CorticalRNNError(f"{directory}: not a directory")
    out: dict[str, np.ndarray] = {}
    for sheet in ALL_SHEETS:
        fname = file_sheet_name(sheet)
        files = sorted(directory.glob(f"neuron_ids_{fname}.npy")) + sorted(
            directory.glob(f"neuron_ids_{fname}_*.npy")
        )
        arrays = []
        for f in files:
            try:
                arrays.append(np.load(f, allow_pickle=False))
            except (ValueError, OSError) as exc:
                raise SchemaError(f"{f}: cannot read neuron ids: {exc}") from exc
        if not arrays:
            continue
        if any(not np.array_equal(a, arrays[0]) for a in arrays[1:]):
            raise DataMismatchError(
                f"{directory}: the files {', '.join(f.name for f in files)} disagree on {sheet} ids"
            )
        out[sheet] = np.asarray(arrays[0]).astype(np.int64)
    if not out:
        raise SchemaError(f"{directory}: no neuron_ids_<SHEET>*.npy files")
    return out


def subset_from_thesis(
    model_pickles: Iterable[str | os.PathLike[str]],
    visible_pickles: Iterable[str | os.PathLike[str]],
    neuron_ids: SourceLike | Mapping[str, np.ndarray],
    *,
    visible_relative_to: str = "auto",
    include_inputs: bool = True,
) -> NeuronSubset:
    """Convert the thesis' ``model_subsets`` / ``visible_neurons`` index pickles into a subset of ids.

    Model indices are rows of each sheet's neuron-id array. Visible indices are either rows of the
    sheet (``visible_relative_to="sheet"``) or positions within the model subset (``"model"``);
    ``"auto"`` decides per sheet from the data (sheet rows must all be modelled; model positions must
    be < the model size) and refuses when both readings fit. Sheets without a model pickle are not
    modelled, except input sheets, which are fully included when ``include_inputs``.
    """
    if visible_relative_to not in ("auto", "sheet", "model"):
        raise ValueError("visible_relative_to must be 'auto', 'sheet' or 'model'")
    model_paths = [str(p) for p in model_pickles]
    visible_paths = [str(p) for p in visible_pickles]
    models = read_thesis_indices(model_paths)
    visible = read_thesis_indices(visible_paths)
    if isinstance(neuron_ids, Mapping):
        id_table = {
            normalize_sheet_name(k): np.asarray(v[0] if isinstance(v, tuple) else v, np.int64)
            for k, v in neuron_ids.items()
        }
    else:
        id_table = {s: _source_ids(neuron_ids, s) for s in _source_sheets(neuron_ids)}
    for sheet in visible:
        if sheet not in models and sheet not in INPUT_SHEETS:
            raise DataMismatchError(
                f"{visible[sheet][1]}: visible neurons of {sheet!r} but no model subset for it"
            )
    sheets: dict[str, SheetSubset] = {}
    readings: dict[str, str] = {}
    for sheet in sort_sheets(
        list(set(models) | (set(INPUT_SHEETS) & set(id_table) if include_inputs else set()))
    ):
        if sheet not in id_table:
            where = models[sheet][1] if sheet in models else "input sheets"
            raise DataMismatchError(f"{where}: no neuron ids given for sheet {sheet!r}")
        ids = id_table[sheet]
        if sheet not in models:
            sheets[sheet] = SheetSubset(ids, ids)
            continue
        value, mfile = models[sheet]
        m_rows = _as_index_array(value, len(ids), f"{mfile}: sheet {sheet!r}", ids)
        if sheet in INPUT_SHEETS:
            sheets[sheet] = SheetSubset(ids[m_rows], ids[m_rows])
            continue
        if sheet not in visible:
            raise DataMismatchError(
                f"{mfile}: sheet {sheet!r} has a model subset but no visible-neuron indices"
            )
        vvalue, vfile = visible[sheet]
        vwhere = f"{vfile}: sheet {sheet!r}"
        raw = np.asarray(vvalue)
        if raw.dtype == bool:
            mode = "sheet" if len(raw) == len(ids) else "model"
            if visible_relative_to != "auto":
                mode = visible_relative_to
        else:
            rows_raw = _as_index_array(vvalue, len(ids), vwhere, ids)
            fits_sheet = bool(np.isin(rows_raw, m_rows).all())
            fits_model = bool(rows_raw.size == 0 or rows_raw.max() < len(m_rows))
            if visible_relative_to != "auto":
                mode = visible_relative_to
            elif fits_sheet and fits_model:
                raise DataMismatchError(
                    f"{vwhere}: visible indices fit both as sheet rows and as positions in the model "
                    f"subset; say which with visible_relative_to='sheet' or 'model' (--visible-relative)"
                )
            elif fits_sheet:
                mode = "sheet"
            elif fits_model:
                mode = "model"
            else:
                raise DataMismatchError(
                    f"{vwhere}: visible indices are neither all modelled sheet rows nor positions within "
                    f"the {len(m_rows)}-neuron model subset of {mfile}"
                )
        if mode == "sheet":
            v_rows = _as_index_array(vvalue, len(ids), vwhere)
            absent = np.setdiff1d(v_rows, m_rows)
            if absent.size:
                raise DataMismatchError(f"{vwhere}: visible rows not in the model subset: {_preview(absent)}")
        else:
            v_rows = m_rows[_as_index_array(vvalue, len(m_rows), vwhere)]
        readings[sheet] = mode
        sheets[sheet] = SheetSubset(ids[m_rows], ids[v_rows])
    if not any(s in V1_SHEETS for s in sheets):
        raise DataMismatchError(f"{', '.join(model_paths)}: no V1 sheet in the model subset pickles")
    return NeuronSubset(
        sheets=sheets,
        method={"modelled": "explicit", "observed": "explicit", "inputs": "explicit"},
        fractions={"modelled": None, "observed": None, "inputs": None},
        seed=None,
        info={
            **provenance(),
            "imported_from": "thesis pickles",
            "model_pickles": model_paths,
            "visible_pickles": visible_paths,
            "visible_relative_to": readings,
        },
    )
