"""Where a subset's neurons come from: a store, or a plain mapping sheet -> (ids, positions).

Torch-free. :class:`NeuronSource` is what subsets need from a store (``corticalrnn.store.WindowStore``
satisfies it); a mapping sheet → ``(ids, positions)`` tuple (positions may be None) or just ids (array
or list) serves as well. The ``_source_*`` helpers read either kind; :func:`_rows_of` maps neuron ids
back to a source's rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from corticalrnn.errors import DataMismatchError
from corticalrnn.sheets import file_sheet_name, normalize_sheet_name, sort_sheets


class NeuronSource(Protocol):
    """What subsets need from a store (``corticalrnn.store.WindowStore`` satisfies it)."""

    @property
    def sheets(self) -> Sequence[str]: ...

    def neuron_ids(self, sheet: str) -> np.ndarray: ...

    def positions(self, sheet: str) -> np.ndarray | None: ...


SourceLike = NeuronSource | Mapping[str, Any]


def _source_name(source: SourceLike, name: str | None = None) -> str:
    if name is not None:
        return name
    for attr in ("path", "root", "store_path"):
        value = getattr(source, attr, None)
        if value is not None:
            return str(value)
    return "<in-memory neuron table>"


def _source_sheets(source: SourceLike) -> list[str]:
    """Canonical names of the sheets the source holds (thesis ``L23`` spelling accepted)."""
    names = list(source.keys()) if isinstance(source, Mapping) else list(source.sheets)
    try:
        return sort_sheets([normalize_sheet_name(n) for n in names])
    except ValueError as exc:
        raise DataMismatchError(f"{_source_name(source)}: {exc}") from exc


def _mapping_entry(source: Mapping[str, Any], sheet: str) -> Any:
    for key in (sheet, file_sheet_name(sheet)):
        if key in source:
            return source[key]
    raise DataMismatchError(f"{_source_name(source)}: no sheet {sheet!r}")


def _source_ids(source: SourceLike, sheet: str) -> np.ndarray:
    if isinstance(source, Mapping):
        entry = _mapping_entry(source, sheet)
        ids = entry[0] if isinstance(entry, tuple) else entry
    else:
        ids = source.neuron_ids(sheet)
    ids = np.asarray(ids)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise DataMismatchError(
            f"{_source_name(source)}: neuron ids of {sheet!r} must be a 1-D integer array, "
            f"got dtype {ids.dtype} shape {ids.shape}"
        )
    return ids.astype(np.int64, copy=False)


def _source_positions(source: SourceLike, sheet: str) -> np.ndarray | None:
    if isinstance(source, Mapping):
        entry = _mapping_entry(source, sheet)
        pos = entry[1] if isinstance(entry, tuple) and len(entry) > 1 else None
    else:
        pos = source.positions(sheet)
    return None if pos is None else np.asarray(pos, dtype=np.float64)


def _rows_of(ids: np.ndarray, wanted: np.ndarray, where: str) -> np.ndarray:
    """Row of each id of ``wanted`` in ``ids``; DataMismatchError listing the missing ones."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    pos = np.searchsorted(sorted_ids, wanted)
    pos_c = np.minimum(pos, max(len(ids) - 1, 0))
    found = (pos < len(ids)) & (sorted_ids[pos_c] == wanted) if len(ids) else np.zeros(len(wanted), bool)
    if not found.all():
        raise DataMismatchError(
            f"{where}: lacks {(~found).sum()} of the subset's {len(wanted)} neurons: "
            f"missing {_preview(wanted[~found])}"
        )
    return order[pos_c].astype(np.int64)


def _preview(ids: np.ndarray, limit: int = 10) -> str:
    ids = np.asarray(ids)
    head = ", ".join(str(int(i)) for i in ids[:limit])
    return f"{len(ids)} ids [{head}{', …' if len(ids) > limit else ''}]"
