"""Sheet (population) names of the Mozaik cat V1 model and their properties.

Torch-free; the single place that knows sheet names, order, layer and sign.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

import numpy as np

INPUT_SHEETS: tuple[str, ...] = ("X_ON", "X_OFF")
V1_SHEETS: tuple[str, ...] = ("V1_Exc_L4", "V1_Inh_L4", "V1_Exc_L2/3", "V1_Inh_L2/3")
ALL_SHEETS: tuple[str, ...] = INPUT_SHEETS + V1_SHEETS

#: neurons per sheet in the full cat V1 model (the thesis data; ~108,000 neurons, 93,750 in V1)
FULL_MODEL_SIZES: dict[str, int] = {
    "X_ON": 7200,
    "X_OFF": 7200,
    "V1_Exc_L4": 37500,
    "V1_Inh_L4": 9375,
    "V1_Exc_L2/3": 37500,
    "V1_Inh_L2/3": 9375,
}


@dataclass(frozen=True)
class SheetInfo:
    name: str
    layer: str  # "LGN", "L4", "L2/3"
    excitatory: bool

    @property
    def sign(self) -> int:
        return 1 if self.excitatory else -1


SHEET_INFO: dict[str, SheetInfo] = {
    "X_ON": SheetInfo("X_ON", "LGN", True),
    "X_OFF": SheetInfo("X_OFF", "LGN", True),
    "V1_Exc_L4": SheetInfo("V1_Exc_L4", "L4", True),
    "V1_Inh_L4": SheetInfo("V1_Inh_L4", "L4", False),
    "V1_Exc_L2/3": SheetInfo("V1_Exc_L2/3", "L2/3", True),
    "V1_Inh_L2/3": SheetInfo("V1_Inh_L2/3", "L2/3", False),
}


def normalize_sheet_name(name: str) -> str:
    """Map thesis spellings (``V1_Exc_L23``) to Mozaik names (``V1_Exc_L2/3``); raise on unknown."""
    canonical = name.replace("L23", "L2/3")
    if canonical not in SHEET_INFO:
        raise ValueError(f"unknown sheet name {name!r}; known sheets: {', '.join(ALL_SHEETS)}")
    return canonical


def sheet_key(name: str) -> str:
    """Group name of a sheet (or projection) inside a file: ``V1_Exc_L2/3`` -> ``V1_Exc_L2%2F3``.

    Used by every format that keeps one group per sheet (spike file, store, ground-truth file).
    """
    return quote(name, safe="")


def population_label(name: str) -> str:
    """``V1_Exc_L4`` / ``V1_Exc_L23`` -> ``L4 E`` / ``L2/3 E``; other labels unchanged."""
    try:
        info = SHEET_INFO[normalize_sheet_name(name)]
    except ValueError:
        return name
    return f"{info.layer} {'E' if info.excitatory else 'I'}"


def file_sheet_name(name: str) -> str:
    """Spelling usable in file names (thesis layout): ``V1_Exc_L2/3`` -> ``V1_Exc_L23``."""
    return name.replace("L2/3", "L23")


def sort_sheets(names: list[str] | tuple[str, ...]) -> list[str]:
    """Sort sheet names into canonical order (inputs first, then L4 E/I, L2/3 E/I)."""
    return sorted(names, key=lambda n: ALL_SHEETS.index(normalize_sheet_name(n)))


def input_polarity(sheets: Sequence[str], sizes: Sequence[int]) -> np.ndarray:
    """+1 for each ON cell, -1 for each OFF cell of the LGN ``sheets`` (``sizes`` cells each, in order)."""
    return np.concatenate([np.full(int(n), 1.0 if normalize_sheet_name(s) == "X_ON" else -1.0)
                           for s, n in zip(sheets, sizes, strict=True)] or [np.zeros(0)])


def surface_xy(positions: object) -> np.ndarray:
    """The cortical-surface (x, y) columns of positions ``[N, D >= 2]`` (float64), the coordinates
    every spatial rule of the model and the spatial sampling use; the one place positions are cut.

    Positions keep all their D columns everywhere else (stores, subsets, checkpoint specs). Mozaik's
    ``VisualCorticalUniformSheet3D`` adds a third column, the depth below the surface in µm (the other
    two are on the surface, in other units), which Mozaik's own spatial components ignore too; LGN
    positions are visual-field grid indices, also 2-D."""
    p = np.asarray(positions, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"positions must be [N, D >= 2], got shape {list(p.shape)}")
    return p[:, :2]


def mozaik_positions_to_mm(sheet: str, positions: object) -> object:
    """Positions as a Mozaik datastore stores them ([N, D] after transposing) -> the store's convention.

    Mozaik keeps V1 sheet positions in µm of cortex; the store (and the thesis' files) use mm. LGN sheets
    carry grid indices in visual space, which are returned unchanged. ``None`` passes through.
    """
    if positions is None:
        return None
    info = SHEET_INFO[normalize_sheet_name(sheet)]
    if info.layer == "LGN":
        return positions
    return positions * 1e-3  # type: ignore[operator]


#: Per-neuron identity the simulator records (Mozaik ``neuron_annotations`` keys) -> the short
#: property name used in spike files, stores and the model. Angles in radians (orientation period
#: pi, phase period 2 pi), frequency in cycles per LGN grid unit of the annotation, size in grid units.
MOZAIK_ANNOTATIONS: dict[str, str] = {
    "LGNAfferentOrientation": "ori",
    "LGNAfferentPhase": "phase",
    "LGNAfferentFrequency": "frequency",
    "LGNAfferentSize": "size",
    "LGNAfferentAspectRatio": "aspect_ratio",
}

#: Property names a store may hold per V1 neuron (besides ``positions``), in this order.
NEURON_PROPERTIES: tuple[str, ...] = tuple(MOZAIK_ANNOTATIONS.values())
