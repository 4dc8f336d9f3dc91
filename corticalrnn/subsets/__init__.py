"""Neuron subsets (modelled / observed neurons per sheet) and train/validation/test image splits.

Torch-free. A :class:`NeuronSubset` lists, per sheet, the neuron *ids* the model contains
("modelled") and, among them, the ids the loss sees ("observed"); the unobserved modelled neurons
are the hidden ones. Subsets are saved by ids (never row indices) so that an experiment can be
repeated on any store of the same simulation; :meth:`NeuronSubset.indices` maps them back to the row
indices of a particular store and fails clearly when that store lacks some of them.

One module per concept, every name re-exported here (``from corticalrnn.subsets import X``):

``sources``
    where neurons come from: :class:`NeuronSource` (a store) or a mapping sheet → (ids, positions).
``sampling``
    selection methods (:data:`METHODS`: ``random``, ``spatial`` along a Hilbert curve, ``explicit``).
``neurons``
    :class:`SheetSubset`, :class:`NeuronSubset` and its JSON file, :class:`SubsetConfig`,
    :func:`make_subset`.
``identity``
    a subset's neuron properties and connectome, re-indexed in the subset's order
    (:func:`subset_identity`).
``images``
    :class:`ImageSplit` (images, not neurons) and its JSON file, :func:`make_image_split`.
``files``
    the two JSON formats' schema names, version and shared header / reading guard.
``thesis``
    import of the earlier thesis' index pickles (:func:`subset_from_thesis`).
``cli``
    ``corticalrnn subset`` (``add_arguments`` / ``run``, re-exported: ``corticalrnn.cli`` dispatches
    the subcommand to this package).

File formats (JSON, written atomically): schema ``corticalrnn.subset`` and
``corticalrnn.image_split``, version 1; see :meth:`NeuronSubset.to_json_dict` and
:meth:`ImageSplit.to_json_dict`.
"""

from __future__ import annotations

import os as os  # an attribute of the package: tests patch ``corticalrnn.subsets.os.fsync``

from corticalrnn.subsets.cli import add_arguments, run
from corticalrnn.subsets.files import SCHEMA_VERSION, SPLIT_SCHEMA, SUBSET_SCHEMA
from corticalrnn.subsets.identity import (
    SubsetIdentity,
    subset_identity,
    subset_projections,
    subset_properties,
)
from corticalrnn.subsets.images import ImageSplit, make_image_split
from corticalrnn.subsets.neurons import NeuronSubset, SheetSubset, SubsetConfig, make_subset
from corticalrnn.subsets.sampling import METHODS, hilbert_index, select_random, select_spatial
from corticalrnn.subsets.sources import NeuronSource, SourceLike
from corticalrnn.subsets.thesis import (
    load_index_pickle,
    read_neuron_id_dir,
    read_thesis_indices,
    subset_from_thesis,
)

__all__ = [
    "METHODS",
    "SCHEMA_VERSION",
    "SPLIT_SCHEMA",
    "SUBSET_SCHEMA",
    "ImageSplit",
    "NeuronSource",
    "NeuronSubset",
    "SheetSubset",
    "SourceLike",
    "SubsetConfig",
    "SubsetIdentity",
    "add_arguments",
    "hilbert_index",
    "load_index_pickle",
    "make_image_split",
    "make_subset",
    "read_neuron_id_dir",
    "read_thesis_indices",
    "run",
    "select_random",
    "select_spatial",
    "subset_from_thesis",
    "subset_identity",
    "subset_projections",
    "subset_properties",
]
