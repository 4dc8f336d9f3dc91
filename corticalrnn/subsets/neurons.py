"""The neuron subset: per sheet the modelled neuron ids and, among them, the observed ones.

Torch-free. A :class:`NeuronSubset` lists, per sheet, the neuron *ids* the model contains
("modelled") and, among them, the ids the loss sees ("observed"); the unobserved modelled neurons
are the hidden ones. Subsets are saved by ids (never row indices) so that an experiment can be
repeated on any store of the same simulation; :meth:`NeuronSubset.indices` maps them back to the row
indices of a particular store and fails clearly when that store lacks some of them.

Ordering contract (docs/ARCHITECTURE.md "Sheets"): within a sheet the subset lists ids in ascending
order; the model's V1 vector is the concatenation of the V1 sheets' modelled ids in canonical sheet
order, the input vector likewise for ``X_ON``, ``X_OFF``. Input sheets have no hidden neurons
(their observed ids equal their modelled ids); by default all input neurons are modelled.

:func:`make_subset` draws a subset from a store by :class:`SubsetConfig` (methods in
:mod:`corticalrnn.subsets.sampling`). File format (JSON, written atomically): schema
``corticalrnn.subset``, version 1; see :meth:`NeuronSubset.to_json_dict`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from corticalrnn.errors import CorticalRNNError, DataMismatchError
from corticalrnn.jsonio import JSONDocument
from corticalrnn.schema import provenance
from corticalrnn.sheets import ALL_SHEETS, INPUT_SHEETS, V1_SHEETS, normalize_sheet_name, sort_sheets
from corticalrnn.subsets.files import SUBSET_SCHEMA, reading, schema_header
from corticalrnn.subsets.sampling import METHODS, _count, _select
from corticalrnn.subsets.sources import (
    SourceLike,
    _preview,
    _rows_of,
    _source_ids,
    _source_name,
    _source_positions,
    _source_sheets,
)


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
            **schema_header(SUBSET_SCHEMA),
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
        with reading(doc, SUBSET_SCHEMA, where, "subset"):
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


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


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
