"""Plain-text tables and byte sizes for what the commands print (summaries, benchmarks).

Torch-free (core).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


ZERO_BELOW = 1e-12  # |float| below this prints as 0 (rounding residue of an exact zero)


def format_number(v: Any) -> str:
    """One table cell: floats with 4 significant digits, ``0`` for |v| < :data:`ZERO_BELOW` (a
    difference of two equal sums such as the baseline's bits/spike prints -1.2e-15 otherwise)."""
    if isinstance(v, float):
        if abs(v) < ZERO_BELOW:
            return "0"
        return f"{v:.4g}"
    return str(v)


def _empty(v: Any) -> bool:
    return v is None or v == "" or (isinstance(v, float) and v != v)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None,
                 drop_empty: bool = False) -> str:
    """Plain-text table with right-aligned numbers; floats get 4 significant digits and values within
    :data:`ZERO_BELOW` of zero print as ``0``. ``drop_empty``: leave out columns that are NaN or
    missing in every row, named in a last line."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())
    dropped: list[str] = []
    if drop_empty:
        dropped = [c for c in columns if all(_empty(r.get(c)) for r in rows)]
        columns = [c for c in columns if c not in dropped]

    cells = [[format_number(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    if dropped:
        lines.append(f"(left out, undefined in every row: {', '.join(dropped)})")
    return "\n".join(lines)
