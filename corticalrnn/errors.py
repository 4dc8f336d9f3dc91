"""Exceptions for user-facing problems (bad files, bad arguments). The CLI prints them, exits 1."""

from __future__ import annotations


class CorticalRNNError(Exception):
    """A problem the user can fix; the message names the file and the problem."""


class SchemaError(CorticalRNNError):
    """A file of another schema or version, or missing required content."""


class DataMismatchError(CorticalRNNError):
    """Inputs that do not fit together (different neuron ids, bin sizes, sheets)."""
