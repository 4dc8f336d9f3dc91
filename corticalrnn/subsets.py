"""Neuron subsets (modelled / observed neurons per sheet) and train/validation/test image splits.

Torch-free. A :class:`NeuronSubset` lists, per sheet, the neuron *ids* the model contains
("modelled") and, among them, the ids the loss sees ("observed"); the unobserved modelled neurons
are the hidden ones. Subsets are saved by ids (never row indices) so that an experiment can be
repeated on any store of the same simulation; :meth:`NeuronSubset.indices` maps them back to the row
indices of a particular store and fails clearly when that store lacks some of them.

Ordering contract (docs/ARCHITECTURE.md "Sheets"): within a sheet the subset lists ids in ascending
order; the model's V1 vector is the concatenation of the V1 sheets' modelled ids in canonical sheet
order, the input vector likewise for ``X_ON``, ``X_OFF``. Input sheets have no hidden neurons
(their observed ids equal their modelled ids); by default all input neurons are modelled.

Selection methods, usable for both stages (modelled fraction of each sheet, observed fraction of the
modelled neurons):

``random``
    uniform random sample without replacement.
``spatial``
    spatially balanced sample over the cortical sheet (x, y): systematic sampling along a Hilbert
    curve through the (randomly rotated) positions, see :func:`select_spatial`. Every neuron keeps
    inclusion probability exactly k/N, but the chosen neurons tile space far more evenly than a
    random sample (measured on 3,000 uniform neurons, k = 100: count variance over a 5 x 5 grid
    0.97 vs 3.55, largest distance to the nearest chosen neuron 0.47 vs 0.67 of random); exact
    ``k``; O(N log N), 0.03 s for 37,500 neurons.
``explicit``
    given id lists.

File formats (JSON, written atomically): schema ``corticalrnn.subset`` and
``corticalrnn.image_split``, version 1; see :meth:`NeuronSubset.to_json_dict` and
:meth:`ImageSplit.to_json_dict`.

The earlier thesis stored subsets as pickled row-index arrays (``model_subsets/*.pkl``,
``visible_neurons/*.pkl``); :func:`subset_from_thesis` converts them to ids given the neuron-id
arrays, loading the pickles with a restricted unpickler (numpy arrays and builtins only).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from corticalrnn.errors import CorticalRNNError, DataMismatchError, SchemaError
from corticalrnn.jsonio import JSONDocument, read_json
from corticalrnn.schema import check_schema, provenance
from corticalrnn.sheets import (
    ALL_SHEETS,
    INPUT_SHEETS,
    V1_SHEETS,
    file_sheet_name,
    normalize_sheet_name,
    sort_sheets,
)

SUBSET_SCHEMA = "corticalrnn.subset"
SPLIT_SCHEMA = "corticalrnn.image_split"
SCHEMA_VERSION = 1
METHODS: tuple[str, ...] = ("random", "spatial", "explicit")
_HILBERT_ORDER = 16  # 65536 x 65536 grid over the bounding box of the positions


# --------------------------------------------------------------------------------------------
# sources: a WindowStore-like object or a plain mapping sheet -> (ids, positions)


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


# --------------------------------------------------------------------------------------------
# selection methods


def hilbert_index(xy: np.ndarray, order: int = _HILBERT_ORDER) -> np.ndarray:
    """Position of each 2-D point along a Hilbert curve through the points' bounding box.

    ``xy`` is ``[N, 2]`` (floats); returns int64 ``[N]``. Points closer along the curve are close
    in space, which is what the spatial stratification relies on.
    """
    xy = np.asarray(xy, dtype=np.float64)
    n = 1 << order
    lo = xy.min(axis=0)
    span = np.maximum(xy.max(axis=0) - lo, np.finfo(np.float64).tiny)
    q = np.minimum(((xy - lo) / span * n).astype(np.int64), n - 1)
    x, y = q[:, 0].copy(), q[:, 1].copy()
    d = np.zeros(len(xy), dtype=np.int64)
    s = n // 2
    while s > 0:
        rx = (x & s) > 0
        ry = (y & s) > 0
        d += s * s * ((3 * rx.astype(np.int64)) ^ ry.astype(np.int64))
        flip = ~ry & rx
        x = np.where(flip, n - 1 - x, x)
        y = np.where(flip, n - 1 - y, y)
        swap = ~ry
        x, y = np.where(swap, y, x), np.where(swap, x, y)
        s //= 2
    return d


def select_random(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` of ``n`` row indices uniformly at random, sorted."""
    return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)


def select_spatial(positions: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` row indices spread evenly over the (x, y) plane, sorted.

    Systematic sampling along a Hilbert curve: the plane is rotated by a random angle, the
    neurons are ordered along a Hilbert curve through their rotated positions, and every
    ``n/k``-th neuron is taken from a random start. Consecutive picks are a stratum's length
    apart along a space-filling curve, so they tile space evenly; every neuron has inclusion
    probability exactly ``k/n`` (no boundary bias, unlike farthest-point sampling); the random
    rotation makes the possible samples a continuum rather than ``n/k`` shifts. Only the first
    two columns of ``positions`` are used (the cortical sheet is 2-D; a third column is depth).
    """
    positions = np.asarray(positions, dtype=np.float64)
    n = len(positions)
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    if k >= n:
        return np.arange(n, dtype=np.int64)
    theta = rng.uniform(0.0, 2.0 * np.pi)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    keys = hilbert_index(positions[:, :2] @ rot.T)
    order = np.lexsort((rng.random(n), keys))  # random tie-break for neurons in one curve cell
    step = n / k
    picks = np.floor(rng.random() * step + step * np.arange(k)).astype(np.int64)
    return np.sort(order[picks])


def _count(fraction: float, n: int, what: str) -> int:
    if not 0.0 <= fraction <= 1.0:
        raise CorticalRNNError(f"{what} must be in [0, 1], got {fraction}")
    if fraction == 0.0 or n == 0:
        return 0
    return int(min(n, max(1, round(fraction * n))))


# --------------------------------------------------------------------------------------------
# the subset


@dataclass(frozen=True, eq=False)
class SheetSubset:
    """Modelled and observed neuron ids of one sheet (both int64, ascending, observed ⊆ modelled)."""

    modelled: np.ndarray
    observed: np.ndarray

    def __post_init__(self) -> None:
        m = np.unique(np.asarray(self.modelled, dtype=np.int64))
        o = np.unique(np.asarray(self.observed, dtype=np.int64))
        if len(m) != len(self.modelled) or len(o) != len(self.observed):
            raise CorticalRNNError("neuron ids in a subset must be unique")
        if not np.isin(o, m).all():
            raise CorticalRNNError(f"observed ids not among the modelled ids: {_preview(np.setdiff1d(o, m))}")
        object.__setattr__(self, "modelled", m)
        object.__setattr__(self, "observed", o)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SheetSubset):
            return NotImplemented
        return np.array_equal(self.modelled, other.modelled) and np.array_equal(self.observed, other.observed)

    __hash__ = None  # type: ignore[assignment]

    @property
    def hidden(self) -> np.ndarray:
        return np.setdiff1d(self.modelled, self.observed)

    def observed_mask(self) -> np.ndarray:
        """Bool over :attr:`modelled`: True where the neuron is observed."""
        return np.isin(self.modelled, self.observed)


def _preview(ids: np.ndarray, limit: int = 10) -> str:
    ids = np.asarray(ids)
    head = ", ".join(str(int(i)) for i in ids[:limit])
    return f"{len(ids)} ids [{head}{', …' if len(ids) > limit else ''}]"


@dataclass(frozen=True)
class SubsetConfig:
    """How to make a subset. Fractions are per sheet; ``observed`` is a fraction of the modelled ones."""

    fraction: float = 0.1
    observed: float = 0.1
    method: str = "random"
    observed_method: str | None = None  # None: same as ``method`` (``random`` if that is explicit)
    seed: int = 0
    input_fraction: float = 1.0
    input_method: str = "random"
    sheets: tuple[str, ...] | None = None  # None: every sheet of the source

    def __post_init__(self) -> None:
        for name, m in (
            ("method", self.method),
            ("observed_method", self.observed_method),
            ("input_method", self.input_method),
        ):
            if m is not None and m not in METHODS:
                raise CorticalRNNError(f"unknown {name} {m!r}; choose one of {', '.join(METHODS)}")
        for name in ("fraction", "observed", "input_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise CorticalRNNError(f"{name} must be in [0, 1], got {value}")

    @property
    def resolved_observed_method(self) -> str:
        if self.observed_method is not None:
            return self.observed_method
        return "random" if self.method == "explicit" else self.method


@dataclass(frozen=True)
class NeuronSubset(JSONDocument):
    """Per sheet the modelled neuron ids and, within them, the observed ids (``save`` / ``load``: JSON).

    ``method``/``fractions`` record how each stage was made (keys ``modelled``, ``observed``,
    ``inputs``); ``info`` holds creation details (time, tool version, source, free notes).
    """

    sheets: dict[str, SheetSubset]
    method: dict[str, str] = field(default_factory=dict)
    fractions: dict[str, float | None] = field(default_factory=dict)
    seed: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        canonical = {normalize_sheet_name(k): v for k, v in self.sheets.items()}
        ordered = {k: canonical[k] for k in sort_sheets(list(canonical))}
        object.__setattr__(self, "sheets", ordered)

    # ----- views in model order
    @property
    def v1_sheets(self) -> list[str]:
        return [s for s in self.sheets if s in V1_SHEETS]

    @property
    def input_sheets(self) -> list[str]:
        return [s for s in self.sheets if s in INPUT_SHEETS]

    def sizes(self) -> dict[str, int]:
        """Number of modelled neurons per sheet (the model's ``sizes`` argument)."""
        return {s: len(sub.modelled) for s, sub in self.sheets.items()}

    def v1_ids(self) -> np.ndarray:
        """Neuron ids of the model's V1 vector, in model order."""
        return _concat([self.sheets[s].modelled for s in self.v1_sheets])

    def input_ids(self) -> np.ndarray:
        """Neuron ids of the model's input vector (X_ON then X_OFF)."""
        return _concat([self.sheets[s].modelled for s in self.input_sheets])

    def v1_sheet_labels(self) -> np.ndarray:
        """Sheet name of each entry of the V1 vector (for per-population metrics)."""
        return np.concatenate(
            [np.full(len(self.sheets[s].modelled), s, dtype=object) for s in self.v1_sheets]
            or [np.zeros(0, dtype=object)]
        )

    def observed_mask(self) -> np.ndarray:
        """Bool ``[N_v1]`` over the model's V1 vector: True for observed neurons."""
        return np.concatenate(
            [self.sheets[s].observed_mask() for s in self.v1_sheets] or [np.zeros(0, dtype=bool)]
        )

    # ----- mapping to a store
    def indices(
        self, source: SourceLike, which: str = "modelled", name: str | None = None
    ) -> dict[str, np.ndarray]:
        """Row indices of this subset's neurons in ``source``'s per-sheet neuron arrays.

        ``which`` is ``"modelled"``, ``"observed"`` or ``"hidden"``; the result follows this subset's
        order. Raises :class:`DataMismatchError` naming the store and the missing ids when the
        source lacks a sheet or neurons of the subset.
        """
        if which not in ("modelled", "observed", "hidden"):
            raise ValueError(f"which must be 'modelled', 'observed' or 'hidden', not {which!r}")
        where = _source_name(source, name)
        available = set(_source_sheets(source))
        out: dict[str, np.ndarray] = {}
        for sheet, sub in self.sheets.items():
            if sheet not in available:
                raise DataMismatchError(
                    f"{where}: has no sheet {sheet!r} but the subset models {len(sub.modelled)} of its "
                    f"neurons (store sheets: {', '.join(sorted(available)) or 'none'})"
                )
            ids = _source_ids(source, sheet)
            wanted = sub.modelled if which == "modelled" else getattr(sub, which)
            out[sheet] = _rows_of(ids, wanted, f"{where}: sheet {sheet!r}")
        return out

    def positions(self, source: SourceLike) -> dict[str, np.ndarray | None]:
        """Positions of the modelled neurons per sheet (None where the source has none)."""
        rows = self.indices(source)
        out: dict[str, np.ndarray | None] = {}
        for sheet, idx in rows.items():
            pos = _source_positions(source, sheet)
            out[sheet] = None if pos is None else pos[idx]
        return out

    # ----- files
    def to_json_dict(self) -> dict[str, Any]:
        return {
            "schema": SUBSET_SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "method": dict(self.method),
            "seed": self.seed,
            "fractions": dict(self.fractions),
            "info": dict(self.info),
            "sheets": {
                s: {"modelled": sub.modelled.tolist(), "observed": sub.observed.tolist()}
                for s, sub in self.sheets.items()
            },
        }

    @classmethod
    def from_json_dict(cls, doc: Mapping[str, Any], where: str = "<subset>") -> NeuronSubset:
        check_schema(doc, SUBSET_SCHEMA, SCHEMA_VERSION, where)
        try:
            sheets = {}
            for name, entry in doc["sheets"].items():
                sheets[normalize_sheet_name(name)] = SheetSubset(
                    np.asarray(entry["modelled"], dtype=np.int64),
                    np.asarray(entry["observed"], dtype=np.int64),
                )
            return cls(
                sheets=sheets,
                method=dict(doc.get("method", {})),
                fractions=dict(doc.get("fractions", {})),
                seed=doc.get("seed"),
                info=dict(doc.get("info", {})),
            )
        except (KeyError, TypeError, ValueError, CorticalRNNError) as exc:
            raise SchemaError(f"{where}: malformed subset file: {exc}") from exc

    def summary(self) -> list[dict[str, Any]]:
        """One row per sheet: modelled, observed, hidden counts."""
        return [
            {
                "sheet": s,
                "modelled": len(sub.modelled),
                "observed": len(sub.observed),
                "hidden": len(sub.modelled) - len(sub.observed),
            }
            for s, sub in self.sheets.items()
        ]


@dataclass(frozen=True)
class SubsetIdentity:
    """What the simulator recorded about a subset's neurons (see :func:`subset_identity`).

    ``properties[sheet][name]``: float64 per neuron in the subset's order (only names the store
    holds, ``corticalrnn.store.SHEET_PROPERTIES``); ``projections``: ``corticalrnn.store.Projection``
    objects whose ``pre`` / ``post`` index the subset's neurons of ``source`` / ``target`` (in the
    subset's order) and that keep only synapses between those neurons (projections left empty are
    kept, so every stored projection appears).
    """

    properties: dict[str, dict[str, np.ndarray]]
    projections: list[Any]


def subset_properties(
    subset: NeuronSubset, store: Any, which: str = "modelled"
) -> dict[str, dict[str, np.ndarray]]:
    """Per sheet, the store's per-neuron properties (``ori``, ``phase`` ...) of the subset's neurons."""
    from corticalrnn.store import SHEET_PROPERTIES

    rows = subset.indices(store, which)
    out: dict[str, dict[str, np.ndarray]] = {}
    for sheet, idx in rows.items():
        props = {}
        for name in SHEET_PROPERTIES:
            values = store.neuron_property(sheet, name)
            if values is not None:
                props[name] = np.asarray(values, np.float64)[idx]
        out[sheet] = props
    return out


def subset_projections(subset: NeuronSubset, store: Any, which: str = "modelled") -> list[Any]:
    """The store's connectome restricted to the subset's neurons, re-indexed in the subset's order.

    Projections whose source or target sheet the subset does not model are left out.
    """
    from corticalrnn.store import Projection

    rows = subset.indices(store, which)
    lookup: dict[str, np.ndarray] = {}
    for sheet, idx in rows.items():
        table = np.full(store.n_neurons(sheet), -1, np.int64)
        table[idx] = np.arange(idx.size)
        lookup[sheet] = table
    out = []
    for proj in store.projections():
        if proj.source not in lookup or proj.target not in lookup:
            continue
        pre, post = lookup[proj.source][proj.pre], lookup[proj.target][proj.post]
        keep = (pre >= 0) & (post >= 0)
        out.append(
            Projection(
                proj.name,
                proj.source,
                proj.target,
                pre[keep],
                post[keep],
                proj.weight[keep],
                proj.delay[keep],
            )
        )
    return out


def subset_identity(subset: NeuronSubset, store: Any, which: str = "modelled") -> SubsetIdentity:
    """Properties and connectome of a subset's (by default modelled) neurons, in the subset's order."""
    return SubsetIdentity(subset_properties(subset, store, which), subset_projections(subset, store, which))


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


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


def _select(
    method: str,
    k: int,
    ids: np.ndarray,
    positions: np.ndarray | None,
    rng: np.random.Generator,
    where: str,
) -> np.ndarray:
    """Row indices (into ``ids``) of ``k`` neurons chosen by ``method``."""
    if method == "random":
        return select_random(len(ids), k, rng)
    if method == "spatial":
        if positions is None:
            raise CorticalRNNError(f"{where}: spatial selection needs neuron positions, which it lacks")
        if positions.ndim != 2 or positions.shape[0] != len(ids) or positions.shape[1] < 2:
            raise DataMismatchError(
                f"{where}: positions have shape {positions.shape}, expected ({len(ids)}, 2 or 3)"
            )
        return select_spatial(positions, k, rng)
    raise CorticalRNNError(f"{where}: method {method!r} cannot draw neurons (explicit needs id lists)")


def make_subset(
    source: SourceLike,
    config: SubsetConfig | None = None,
    *,
    modelled_ids: Mapping[str, Iterable[int]] | None = None,
    observed_ids: Mapping[str, Iterable[int]] | None = None,
    name: str | None = None,
    notes: Mapping[str, Any] | None = None,
) -> NeuronSubset:
    """Choose modelled neurons of each sheet of ``source`` and, within them, the observed ones.

    ``source`` is a store (``.sheets``, ``.neuron_ids(sheet)``, ``.positions(sheet)``) or a mapping
    sheet → ``(ids, positions)`` tuple (positions may be None) or just ids (array or list). With
    ``method="explicit"`` the modelled V1 ids come from ``modelled_ids`` (V1 sheets not listed get
    no neurons), with ``input_method="explicit"`` the input ids too; with
    ``observed_method="explicit"`` the observed ids come from ``observed_ids`` (sheets not listed:
    none observed). Ids given for a stage whose method is not ``explicit`` are an error. Each
    sheet draws from its own seeded stream, so adding a sheet
    does not change another sheet's choice.
    """
    cfg = config or SubsetConfig()
    where = _source_name(source, name)
    available = _source_sheets(source)
    wanted = available if cfg.sheets is None else sort_sheets([normalize_sheet_name(s) for s in cfg.sheets])
    missing = [s for s in wanted if s not in available]
    if missing:
        raise DataMismatchError(f"{where}: has no sheet(s) {', '.join(missing)}")
    explicit_m = {
        normalize_sheet_name(k): np.asarray(list(v), np.int64) for k, v in (modelled_ids or {}).items()
    }
    explicit_o = {
        normalize_sheet_name(k): np.asarray(list(v), np.int64) for k, v in (observed_ids or {}).items()
    }
    if cfg.method == "explicit" and modelled_ids is None:
        raise CorticalRNNError("method 'explicit' needs modelled_ids (sheet -> neuron ids)")
    obs_method = cfg.resolved_observed_method
    if obs_method == "explicit" and observed_ids is None:
        raise CorticalRNNError("observed method 'explicit' needs observed_ids (sheet -> neuron ids)")
    for extra in set(explicit_m) | set(explicit_o):
        if extra not in wanted:
            raise DataMismatchError(f"{where}: explicit ids given for sheet {extra!r}, which is not selected")
    for sheet in explicit_m:
        stage = "input_method" if sheet in INPUT_SHEETS else "method"
        if getattr(cfg, stage) != "explicit":
            raise CorticalRNNError(
                f"modelled ids given for {sheet!r}, but {stage} is {getattr(cfg, stage)!r}"
            )
    if explicit_o and obs_method != "explicit":
        raise CorticalRNNError(f"observed ids given, but the observed method is {obs_method!r}")
    if cfg.input_method == "explicit" and not any(s in explicit_m for s in wanted if s in INPUT_SHEETS):
        raise CorticalRNNError("input_method 'explicit' needs modelled_ids for X_ON / X_OFF")

    sheets: dict[str, SheetSubset] = {}
    for sheet in wanted:
        rng = np.random.default_rng([cfg.seed, ALL_SHEETS.index(sheet)])
        ids = _source_ids(source, sheet)
        swhere = f"{where}: sheet {sheet!r}"
        if sheet in INPUT_SHEETS:
            if cfg.input_method == "explicit":
                modelled = explicit_m.get(sheet, np.zeros(0, np.int64))
                _rows_of(ids, modelled, swhere)
            elif cfg.input_fraction == 1.0:
                modelled = ids
            else:
                k = _count(cfg.input_fraction, len(ids), "input_fraction")
                pos = _source_positions(source, sheet) if cfg.input_method == "spatial" else None
                modelled = ids[_select(cfg.input_method, k, ids, pos, rng, swhere)]
            sheets[sheet] = SheetSubset(modelled, modelled)
            continue
        pos_all = None
        needs_pos = cfg.method == "spatial" or obs_method == "spatial"
        if needs_pos:
            pos_all = _source_positions(source, sheet)
        if cfg.method == "explicit":
            modelled = explicit_m.get(sheet, np.zeros(0, np.int64))
            m_rows = _rows_of(ids, modelled, swhere)
        else:
            k = _count(cfg.fraction, len(ids), "fraction")
            m_rows = _select(cfg.method, k, ids, pos_all, rng, swhere)
        modelled = ids[m_rows]
        if obs_method == "explicit":
            observed = explicit_o.get(sheet, np.zeros(0, np.int64))
            absent = np.setdiff1d(observed, modelled)
            if absent.size:
                raise DataMismatchError(
                    f"{swhere}: observed ids not among the modelled ids: {_preview(absent)}"
                )
        else:
            k_obs = _count(cfg.observed, len(modelled), "observed")
            sub_pos = None if pos_all is None else pos_all[m_rows]
            o_rows = _select(obs_method, k_obs, modelled, sub_pos, rng, swhere)
            observed = modelled[o_rows]
        sheets[sheet] = SheetSubset(modelled, observed)

    info = {**provenance(), "source": where}
    if notes:
        info.update(notes)
    return NeuronSubset(
        sheets=sheets,
        method={"modelled": cfg.method, "observed": obs_method, "inputs": cfg.input_method},
        fractions={
            "modelled": None if cfg.method == "explicit" else cfg.fraction,
            "observed": None if obs_method == "explicit" else cfg.observed,
            "inputs": cfg.input_fraction,
        },
        seed=cfg.seed,
        info=info,
    )


# --------------------------------------------------------------------------------------------
# image splits


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
            "schema": SPLIT_SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "method": self.method,
            "seed": self.seed,
            "info": dict(self.info),
            "train": self.train.tolist(),
            "validation": self.validation.tolist(),
            "test": self.test.tolist(),
        }

    @classmethod
    def from_json_dict(cls, doc: Mapping[str, Any], where: str = "<image split>") -> ImageSplit:
        check_schema(doc, SPLIT_SCHEMA, SCHEMA_VERSION, where)
        try:
            return cls(
                train=np.asarray(doc["train"], dtype=np.int64),
                validation=np.asarray(doc["validation"], dtype=np.int64),
                test=np.asarray(doc["test"], dtype=np.int64),
                seed=doc.get("seed"),
                method=str(doc.get("method", "")),
                info=dict(doc.get("info", {})),
            )
        except (KeyError, TypeError, ValueError, CorticalRNNError) as exc:
            raise SchemaError(f"{where}: malformed image split file: {exc}") from exc



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


# --------------------------------------------------------------------------------------------
# thesis pickles


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


# --------------------------------------------------------------------------------------------
# CLI: corticalrnn subset


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
