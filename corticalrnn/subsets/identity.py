"""What the simulator recorded about a subset's neurons: properties and connectome, re-indexed.

Torch-free; reads the store lazily (``corticalrnn.store`` pulls in zarr). Everything comes out in the
subset's order, so that ``pre`` / ``post`` of a projection index the model's per-sheet neurons.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from corticalrnn.subsets.neurons import NeuronSubset


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
