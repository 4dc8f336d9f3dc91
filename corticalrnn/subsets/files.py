"""The two JSON file formats of this package: their schema names and version, and the one way both
documents stamp and check them.

Torch-free. :class:`~corticalrnn.subsets.NeuronSubset` (``corticalrnn.subset``) and
:class:`~corticalrnn.subsets.ImageSplit` (``corticalrnn.image_split``) are
:class:`~corticalrnn.jsonio.JSONDocument` s (``save`` / ``load``: atomic JSON, integer lists on one
line); their ``to_json_dict`` starts with :func:`schema_header` and their ``from_json_dict`` parses
inside :func:`reading`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from corticalrnn.errors import CorticalRNNError, SchemaError
from corticalrnn.schema import check_schema

SUBSET_SCHEMA = "corticalrnn.subset"
SPLIT_SCHEMA = "corticalrnn.image_split"
SCHEMA_VERSION = 1


def schema_header(schema: str) -> dict[str, Any]:
    """The first keys of a document: ``schema`` and ``schema_version``."""
    return {"schema": schema, "schema_version": SCHEMA_VERSION}


@contextmanager
def reading(doc: Any, schema: str, where: str, what: str) -> Iterator[None]:
    """Check ``doc``'s schema stamp, then parse it in the ``with`` block: a missing key or a bad value
    there becomes a :class:`SchemaError` "``where``: malformed ``what`` file: ..."."""
    check_schema(doc, schema, SCHEMA_VERSION, where)
    try:
        yield
    except (KeyError, TypeError, ValueError, CorticalRNNError) as exc:
        raise SchemaError(f"{where}: malformed {what} file: {exc}") from exc
