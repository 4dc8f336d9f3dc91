"""File-format stamps: the one place that writes and checks ``schema`` / ``schema_version``.

Torch-free (core). Every file format of the package (spike file, window store, subset and image-split
JSON, ground-truth file) stamps its root attributes with :func:`stamp` and checks them on reading with
:func:`check_schema`, so the attribute names, the tool version and the messages are the same everywhere.
"""

from __future__ import annotations

import datetime
import numbers
from collections.abc import Collection, Mapping
from typing import Any

from corticalrnn.errors import SchemaError


def tool_version() -> str:
    """``"corticalrnn X.Y.Z"``: the version written into every file (``tool_version``)."""
    from corticalrnn import __version__

    return f"corticalrnn {__version__}"


def utc_now() -> str:
    """The current time as ISO 8601 UTC to the second (the ``created`` attribute)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def provenance() -> dict[str, str]:
    """``created`` (now, UTC) and ``tool_version``: what every written file records."""
    return {"created": utc_now(), "tool_version": tool_version()}


def stamp(schema: str, version: int) -> dict[str, Any]:
    """Root attributes of a new file: ``schema``, ``schema_version``, ``tool_version``, ``created``."""
    return {"schema": schema, "schema_version": int(version), **provenance()}


def _plain(v: Any) -> Any:
    """An attribute as Python: bytes decoded, 0-d arrays and numpy scalars unwrapped."""
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    item = getattr(v, "item", None)
    if item is not None and getattr(v, "shape", None) == ():
        return _plain(item())
    return v


def check_schema(attrs: Any, schema: str, readable: int | Collection[int], where: object) -> int:
    """Check a file's ``schema`` and ``schema_version`` (from a mapping: JSON, HDF5 or Zarr attributes).

    Returns the version as ``int``; raises :class:`SchemaError` naming ``where`` (the file) otherwise.
    """
    versions = (readable,) if isinstance(readable, int) else tuple(readable)
    if not isinstance(attrs, Mapping) and not hasattr(attrs, "get"):
        raise SchemaError(f"{where}: not a {schema} file (a {type(attrs).__name__}, not a mapping)")
    found = _plain(attrs.get("schema"))
    if found != schema:
        raise SchemaError(f"{where}: schema is {found!r}, expected {schema!r}")
    version = _plain(attrs.get("schema_version"))
    if isinstance(version, bool) or not isinstance(version, numbers.Integral) or int(version) not in versions:
        raise SchemaError(
            f"{where}: schema version {version!r} is not supported (this reader of {schema}: "
            f"{', '.join(map(str, versions))})"
        )
    return int(version)
