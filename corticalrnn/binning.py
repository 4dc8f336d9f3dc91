"""Spike times -> spike counts: the rebinning kernel (vectorised numpy, CSR in, sparse events out).

Spikes arrive as CSR rows (``indptr`` int64 [R+1], ``times`` sorted within each row, ms), e.g.
one row per (presentation, neuron) as in the HDF5 spike file. A :class:`BinGrid` defines
``n_bins`` bins of ``bin_ms`` starting at ``t0_ms``. Every bin is half-open: bin ``k`` is
``[t0 + k*b, t0 + (k+1)*b)``, the last one included, so a spike exactly at the grid's right edge
``t0 + n_bins*b`` is outside it (it belongs to bin 0 of a window starting there; unlike
``np.histogram``, whose last bin is closed, no spike is ever counted in two adjacent windows).
Bin indices are computed in float64 and corrected against the float64 edges ``t0 + k*b``, so the
result equals ``np.histogram(times + offset, edges)`` exactly except for spikes at the right edge
(:func:`histogram_reference`).

The output is run-length encoded sparse counts (:class:`BinnedCSR`): per row, the occupied bins
in ascending order with their counts; no dense ``rows x bins`` array is ever built unless asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from corticalrnn.errors import CorticalRNNError


@dataclass(frozen=True)
class BinGrid:
    """``n_bins`` bins of ``bin_ms`` ms starting at ``t0_ms`` (ms, in the caller's time frame)."""

    t0_ms: float
    bin_ms: int
    n_bins: int

    def __post_init__(self) -> None:
        validate_bin_ms(self.bin_ms)
        if self.n_bins < 1:
            raise CorticalRNNError(f"a bin grid needs at least one bin, got n_bins={self.n_bins}")

    @property
    def t_end_ms(self) -> float:
        return self.t0_ms + self.n_bins * self.bin_ms

    def edges(self) -> np.ndarray:
        """float64 bin edges, ``n_bins + 1`` of them (the values the kernel compares against)."""
        return self.t0_ms + np.arange(self.n_bins + 1, dtype=np.float64) * self.bin_ms


def validate_bin_ms(bin_ms: object) -> int:
    """Return ``bin_ms`` as int; raise :class:`CorticalRNNError` unless it is a positive integer."""
    if isinstance(bin_ms, bool) or not isinstance(bin_ms, int | np.integer):
        if isinstance(bin_ms, float | np.floating) and float(bin_ms).is_integer():
            bin_ms = int(bin_ms)
        else:
            raise CorticalRNNError(f"bin size must be a positive integer number of ms, got {bin_ms!r}")
    if int(bin_ms) < 1:
        raise CorticalRNNError(f"bin size must be a positive integer number of ms, got {bin_ms!r}")
    return int(bin_ms)


@dataclass(frozen=True)
class BinnedCSR:
    """Sparse counts: row ``r`` has bins ``bins[indptr[r]:indptr[r+1]]`` (ascending) with ``counts``."""

    indptr: np.ndarray  # int64 [R+1]
    bins: np.ndarray  # int32 [E]
    counts: np.ndarray  # int32 [E], all >= 1
    n_bins: int

    @property
    def n_rows(self) -> int:
        return int(self.indptr.size - 1)

    def rows(self) -> np.ndarray:
        """Row index of every event (int64 [E])."""
        return np.repeat(np.arange(self.n_rows, dtype=np.int64), np.diff(self.indptr))

    @classmethod
    def from_dense(cls, counts: np.ndarray) -> BinnedCSR:
        """Inverse of :meth:`to_dense`: ``counts [R, n_bins]`` (non-negative integers)."""
        r, b = np.nonzero(counts)
        indptr = np.zeros(counts.shape[0] + 1, np.int64)
        np.cumsum(np.bincount(r, minlength=counts.shape[0]), out=indptr[1:])
        return cls(indptr, b.astype(np.int32), counts[r, b].astype(np.int32), counts.shape[1])

    def to_dense(self, dtype: np.dtype | type = np.int32) -> np.ndarray:
        """Dense ``[R, n_bins]`` counts."""
        out = np.zeros(self.n_rows * self.n_bins, dtype=dtype)
        out[self.rows() * self.n_bins + self.bins] = self.counts
        return out.reshape(self.n_rows, self.n_bins)


def _exact_fast_path(times: np.ndarray, grid: BinGrid, offset_ms: float) -> bool:
    """True when plain ``floor((t + offset - t0) / b)`` is provably equal to the edge comparison.

    Holds for float32 times (>= 0, as spike times relative to a segment start are) with integer
    offset, ``t0`` and bin size below 2**20 ms: every intermediate is then exact in float64 and a
    time just below an edge is at least one float32 ulp away from it.
    """
    vals = [float(offset_ms), float(grid.t0_ms), float(grid.t_end_ms)]
    if times.dtype != np.float32:
        return False
    if times.size:  # also keeps every bin index far inside int32
        vals += [float(times.min()) // 1, float(times.max()) // 1]
    return all(v.is_integer() and abs(v) < 2**20 for v in vals)


def bin_indices(times: np.ndarray, grid: BinGrid, offset_ms: float = 0.0) -> np.ndarray:
    """Bin index (int64) of each time ``times + offset_ms``; -1 for spikes outside the grid."""
    k, outside = _raw_bins(np.asarray(times), grid, offset_ms)
    k = k.astype(np.int64)
    if outside is not None:
        k[outside] = -1
    return k


def _raw_bins(times: np.ndarray, grid: BinGrid, offset_ms: float) -> tuple[np.ndarray, np.ndarray | None]:
    """int32 bin index per spike and a bool mask of spikes outside the grid (None when all inside)."""
    n = grid.n_bins
    if n >= 2**31 - 1:
        raise CorticalRNNError(f"too many bins ({n})")
    x = times.astype(np.float64)
    if _exact_fast_path(times, grid, offset_ms):
        shift = float(offset_ms) - float(grid.t0_ms)
        if shift:
            x += shift
        x /= float(grid.bin_ms)
        np.floor(x, out=x)
        k = x.astype(np.int32)  # |x| < 2**20: no overflow; half-open bins, k == n is outside
    else:
        if offset_ms:
            x += offset_ms
        t0, b = float(grid.t0_ms), float(grid.bin_ms)
        q = np.floor((x - t0) / b)
        np.clip(q, -2.0, float(n) + 1.0, out=q)
        # correct float rounding against the exact float64 edges (as np.histogram does)
        lo = t0 + q * b
        q -= x < lo
        q += x >= lo + b  # half-open: a spike on an edge opens the next bin (or leaves the grid)
        k = q.astype(np.int32)
    outside = k.view(np.uint32) >= n  # negative indices wrap to huge values
    return k, (outside if outside.any() else None)


def _drop(indptr: np.ndarray, outside: np.ndarray) -> np.ndarray:
    """indptr (from 0) of the rows after dropping the elements where ``outside`` is True."""
    base = indptr - indptr[0]
    removed = np.flatnonzero(outside)  # few: spikes outside the window
    return base - np.searchsorted(removed, base)


def bin_segment(
    indptr: np.ndarray, times: np.ndarray, grid: BinGrid, offset_ms: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Bin one CSR block of spike times: ``(indptr, bin index int32)`` of the spikes inside the grid.

    ``indptr`` may start at a non-zero value (a slice of a larger CSR); the result starts at 0.
    Bins stay sorted within each row because times are.
    """
    indptr = np.asarray(indptr, dtype=np.int64)
    times = np.asarray(times)[indptr[0] : indptr[-1]]
    k, outside = _raw_bins(times, grid, offset_ms)
    if outside is None:
        return indptr - indptr[0], k
    return _drop(indptr, outside), k[~outside]


def merge_rows(parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate CSR blocks with the same rows along each row (part 0's elements first).

    ``parts`` are ``(indptr starting at 0, values)`` pairs over the same number of rows.
    """
    if len(parts) == 1:
        return parts[0]
    n_rows = parts[0][0].size - 1
    counts = np.zeros(n_rows, dtype=np.int64)
    for ip, _ in parts:
        if ip.size - 1 != n_rows:
            raise ValueError("merge_rows: parts have different numbers of rows")
        counts += np.diff(ip)
    out_ip = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(counts, out=out_ip[1:])
    out = np.empty(int(out_ip[-1]), dtype=np.result_type(*[v.dtype for _, v in parts]))
    cursor = out_ip[:-1].copy()
    for ip, values in parts:
        c = np.diff(ip)
        if values.size:
            dest = np.repeat(cursor - ip[:-1], c) + np.arange(values.size, dtype=np.int64)
            out[dest] = values
        cursor += c
    return out_ip, out


def run_length(indptr: np.ndarray, bins: np.ndarray, n_bins: int) -> BinnedCSR:
    """Collapse sorted per-row bin indices (``indptr`` from 0) into (bin, count) events."""
    n_rows = indptr.size - 1
    if bins.size == 0:
        empty = np.zeros(0, np.int32)
        return BinnedCSR(np.zeros(n_rows + 1, np.int64), empty, empty.copy(), n_bins)
    start = np.empty(bins.size, dtype=bool)
    start[0] = True
    np.not_equal(bins[1:], bins[:-1], out=start[1:])
    row_starts = indptr[1:-1]
    start[row_starts[row_starts < bins.size]] = True  # a new row always starts a new event
    first = np.flatnonzero(start)
    counts = np.diff(first, append=bins.size).astype(np.int32)
    cum = np.zeros(bins.size + 1, dtype=np.int32 if bins.size < 2**31 else np.int64)
    np.cumsum(start, out=cum[1:])
    return BinnedCSR(cum[indptr].astype(np.int64), bins[first], counts, n_bins)


def bin_spikes(
    segments: Sequence[tuple[np.ndarray, np.ndarray, float]] | tuple[np.ndarray, np.ndarray],
    grid: BinGrid,
) -> BinnedCSR:
    """Bin CSR spike times into sparse counts.

    ``segments`` is either one ``(indptr, times)`` pair, or a sequence of
    ``(indptr, times, offset_ms)`` blocks over the same rows whose shifted times are ordered
    across blocks (e.g. blank before at ``-blank``, stimulus at 0, blank after at ``+stimulus``).
    """
    if isinstance(segments, tuple) and len(segments) == 2:
        segments = [(segments[0], segments[1], 0.0)]
    parts = [bin_segment(ip, t, grid, off) for ip, t, off in segments]  # type: ignore[misc]
    indptr, bins = merge_rows(parts)
    return run_length(indptr, bins, grid.n_bins)


def histogram_reference(indptr: np.ndarray, times: np.ndarray, grid: BinGrid) -> np.ndarray:
    """Naive reference: ``np.histogram`` per row in float64, made half-open (spikes exactly at the
    right edge are not counted; slow; tests and benchmarks only)."""
    edges = grid.edges()
    n_rows = indptr.size - 1
    out = np.zeros((n_rows, grid.n_bins), dtype=np.int64)
    for r in range(n_rows):
        x = np.asarray(times[indptr[r] : indptr[r + 1]], np.float64)
        out[r] = np.histogram(x[x != edges[-1]], edges)[0]
    return out
