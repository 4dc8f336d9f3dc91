"""Rebinning kernel against np.histogram per neuron in float64."""

from __future__ import annotations

import numpy as np
import pytest

from corticalrnn.binning import (
    BinGrid,
    BinnedCSR,
    bin_indices,
    bin_spikes,
    histogram_reference,
    merge_rows,
    run_length,
    validate_bin_ms,
)
from corticalrnn.errors import CorticalRNNError


def random_csr(
    rng: np.random.Generator, n_rows: int, duration: float, dtype=np.float32, edge_step: float = 1.0
):
    """Sorted times per row in [0, duration], many exactly on multiples of ``edge_step`` and at the end."""
    rows = []
    for _ in range(n_rows):
        t = rng.uniform(0, duration, rng.poisson(8))
        on_edges = rng.integers(0, int(duration / edge_step) + 1, rng.poisson(3)) * edge_step
        end = [duration] * int(rng.integers(0, 2))
        rows.append(np.sort(np.concatenate([t, on_edges, end]).astype(dtype)))
    indptr = np.zeros(n_rows + 1, np.int64)
    indptr[1:] = np.cumsum([r.size for r in rows])
    return indptr, np.concatenate(rows)


@pytest.mark.parametrize(
    "grid",
    [
        BinGrid(0.0, 1, 100),
        BinGrid(0.0, 5, 20),
        BinGrid(0.0, 20, 5),
        BinGrid(-10.0, 7, 15),  # grid starts before and ends past the data
        BinGrid(10.0, 3, 20),  # grid inside the data: spikes outside are dropped
        BinGrid(0.5, 2, 49),  # non-integer start: the corrected (non fast-path) route
    ],
)
def test_equals_histogram(grid: BinGrid) -> None:
    rng = np.random.default_rng(grid.bin_ms)
    indptr, times = random_csr(rng, 60, 100.0, edge_step=0.5)
    got = bin_spikes((indptr, times), grid)
    want = histogram_reference(indptr, times, grid)
    assert np.array_equal(got.to_dense(np.int64), want)
    assert np.all(got.counts >= 1)
    for r in range(got.n_rows):  # bins ascending within each row
        assert np.all(np.diff(got.bins[got.indptr[r] : got.indptr[r + 1]]) > 0)


def test_float64_times_and_offsets() -> None:
    rng = np.random.default_rng(3)
    indptr, times = random_csr(rng, 40, 50.0, dtype=np.float64, edge_step=0.25)
    grid = BinGrid(-20.0, 5, 12)
    got = bin_spikes([(indptr, times, -30.0)], grid).to_dense(np.int64)
    assert np.array_equal(got, histogram_reference(indptr, times - 30.0, grid))


def test_segments_with_offsets_equal_concatenated_histogram() -> None:
    rng = np.random.default_rng(4)
    n = 30
    blank, stim, after = random_csr(rng, n, 150.0), random_csr(rng, n, 560.0), random_csr(rng, n, 150.0)
    grid = BinGrid(-75.0, 5, 142)
    segs = [(blank[0], blank[1], -150.0), (stim[0], stim[1], 0.0), (after[0], after[1], 560.0)]
    got = bin_spikes(segs, grid).to_dense(np.int64)
    edges = grid.edges()
    for r in range(n):
        x = np.concatenate(
            [
                seg[1][seg[0][r] : seg[0][r + 1]].astype(np.float64) + off
                for seg, off in zip((blank, stim, after), (-150, 0, 560))
            ]
        )
        assert np.array_equal(got[r], np.histogram(x[x != edges[-1]], edges)[0])  # half-open


def test_edges_and_t_stop() -> None:
    # half-open bins everywhere: a spike at the grid's right edge is outside (bin 0 of the next window)
    times = np.array([0.0, 4.999, 5.0, 10.0, 15.0, 19.999, 20.0, 20.001], np.float32)
    indptr = np.array([0, times.size])
    grid = BinGrid(0.0, 5, 4)
    assert bin_indices(times, grid).tolist() == [0, 0, 1, 2, 3, 3, -1, -1]
    assert bin_spikes((indptr, times), grid).to_dense().tolist() == [[2, 1, 1, 2]]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("offset", [0.0, -30.0, 0.25])
def test_spikes_on_window_and_bin_edges_counted_once(dtype, offset: float) -> None:
    """Adjacent windows tile time: every spike on any edge lands in exactly one bin of one window."""
    edges_ms = np.arange(0.0, 41.0, 5.0)  # two windows of 4 bins: [0, 20) and [20, 40), and 40
    times = (np.concatenate([edges_ms, edges_ms + 0.5]) - offset).astype(dtype)
    times.sort()
    indptr = np.array([0, times.size])
    first = bin_spikes([(indptr, times, offset)], BinGrid(0.0, 5, 4)).to_dense()
    second = bin_spikes([(indptr, times, offset)], BinGrid(20.0, 5, 4)).to_dense()
    assert first.tolist() == [[2, 2, 2, 2]] and second.tolist() == [[2, 2, 2, 2]]
    both = bin_spikes([(indptr, times, offset)], BinGrid(0.0, 5, 8)).to_dense()
    assert both.sum() == 16  # 40.0 and 40.5 are outside both windows
    assert np.array_equal(both, np.concatenate([first, second], axis=1))
    ref = histogram_reference(indptr, times.astype(np.float64) + offset, BinGrid(0.0, 5, 8))
    assert np.array_equal(both, ref)


def test_slice_of_larger_csr_and_empty_rows() -> None:
    indptr = np.array([0, 2, 2, 5, 5], np.int64)
    times = np.array([1, 2, 3, 3, 9], np.float32)
    grid = BinGrid(0.0, 2, 5)
    part = bin_spikes((indptr[2:], times), grid)  # rows 2..3, indptr starting at 2
    assert part.to_dense().tolist() == [[0, 2, 0, 0, 1], [0, 0, 0, 0, 0]]
    empty = bin_spikes((np.zeros(4, np.int64), np.zeros(0, np.float32)), grid)
    assert empty.to_dense().sum() == 0 and empty.n_rows == 3


def test_merge_rows_and_run_length() -> None:
    a = (np.array([0, 1, 1, 3]), np.array([1, 2, 3]))
    b = (np.array([0, 0, 2, 3]), np.array([4, 5, 6]))
    ip, v = merge_rows([a, b])
    assert ip.tolist() == [0, 1, 3, 6] and v.tolist() == [1, 4, 5, 2, 3, 6]
    rl = run_length(np.array([0, 3, 5]), np.array([1, 1, 2, 2, 2], np.int32), 4)
    assert (
        rl.indptr.tolist() == [0, 2, 3] and rl.bins.tolist() == [1, 2, 2] and rl.counts.tolist() == [2, 1, 2]
    )


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, "5", None])
def test_bad_bin_sizes(bad) -> None:
    with pytest.raises(CorticalRNNError, match="positive integer"):
        validate_bin_ms(bad)


def test_bin_grid_validation() -> None:
    assert validate_bin_ms(5.0) == 5
    with pytest.raises(CorticalRNNError, match="at least one bin"):
        BinGrid(0.0, 5, 0)


def test_binned_csr_from_dense_inverts_to_dense():
    counts = np.array([[0, 2, 0, 1], [0, 0, 0, 0], [3, 0, 0, 7]])
    csr = BinnedCSR.from_dense(counts)
    assert csr.indptr.tolist() == [0, 2, 2, 4] and csr.bins.tolist() == [1, 3, 0, 3]
    assert csr.counts.tolist() == [2, 1, 3, 7] and csr.n_bins == 4
    np.testing.assert_array_equal(csr.to_dense(), counts)
