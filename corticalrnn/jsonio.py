"""JSON files: the one writer (atomic, strict JSON: NaN/inf become null) and the one reader.

Torch-free (core).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from corticalrnn.atomic import write_text_atomic
from corticalrnn.errors import CorticalRNNError, SchemaError


def jsonable(x: Any, default: Callable[[Any], Any] | None = None) -> Any:
    """``x`` as plain JSON values: numpy arrays and scalars converted, non-finite floats -> None,
    paths -> str, mapping keys -> str; anything else through ``default`` (when given)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v, default) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v, default) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist(), default)
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    if x is None or isinstance(x, (int, str)) or default is None:
        return x
    return jsonable(default(x))


def _compact_number_lists(match: re.Match[str]) -> str:
    return "[" + ", ".join(x.strip() for x in match.group(0)[1:-1].split(",") if x.strip()) + "]"


def dumps(doc: Any, *, indent: int = 1, compact_lists: bool = False,
          default: Callable[[Any], Any] | None = None) -> str:
    """The text :func:`write_json` writes (``compact_lists``: lists of integers on one line)."""
    text = json.dumps(jsonable(doc, default), indent=indent, allow_nan=False)
    if compact_lists:
        text = re.sub(r"\[[\d,\s-]*\]", _compact_number_lists, text)
    return text + "\n"


def write_json(path: str | os.PathLike[str], doc: Any, *, indent: int = 1, compact_lists: bool = False,
               default: Callable[[Any], Any] | None = None) -> Path:
    """Write ``doc`` as JSON atomically (temporary name, fsync, rename); returns the path."""
    return write_text_atomic(path, dumps(doc, indent=indent, compact_lists=compact_lists, default=default))


def read_json(path: str | os.PathLike[str]) -> Any:
    """Parse a JSON file; a missing file or invalid JSON is a user error naming the file."""
    path = Path(path)
    try:
        with path.open("r", encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError as exc:
        raise CorticalRNNError(f"{path}: no such file") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SchemaError(f"{path}: not valid JSON: {exc}") from exc


_D = TypeVar("_D", bound="JSONDocument")


class JSONDocument:
    """Mixin for a type stored as one JSON file: :meth:`save` / :meth:`load` around the subclass'
    ``to_json_dict()`` and ``from_json_dict(doc, where)`` (integer lists written one line each)."""

    def to_json_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_json_dict(cls: type[_D], doc: Any, where: str) -> _D:
        raise NotImplementedError

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write as JSON (temporary name, fsync, rename)."""
        return write_json(path, self.to_json_dict(), compact_lists=True)

    @classmethod
    def load(cls: type[_D], path: str | os.PathLike[str]) -> _D:
        return cls.from_json_dict(read_json(path), str(path))
