"""`corticalrnn bench bin`: rebinning throughput (spikes/s) of the kernel vs np.histogram and elephant.

Workload: CSR spike times (float32 ms, sorted per row) of ``presentations x neurons`` rows over a
712 ms window, per-neuron rates log-normal around 4.5 Hz (the full model's ~350,000 spikes per
window over ~108,000 neurons). Columns:

- ``kernel``: :func:`corticalrnn.binning.bin_spikes` -> sparse (bin, count) events, what ``trim``
  stores; ``kernel+dense``: the same plus a dense ``[rows, bins]`` uint16 array;
- ``np.histogram``: one call per row (float64 edges), timed on the first ``--baseline-rows`` rows;
- ``elephant``: ``BinnedSpikeTrain(...).to_array()`` per row, timed on ``--elephant-rows`` rows
  (skipped with a note when elephant is not installed: it is a benchmark-only dependency).

Baselines run on a subset of rows and are reported as spikes/s over that subset; the kernel's
counts are checked to equal np.histogram's on it.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from corticalrnn.bench.common import time_call
from corticalrnn.binning import BinGrid, bin_spikes, histogram_reference
from corticalrnn.tables import format_table

WINDOW_MS = 712.0
MEAN_RATE_HZ = 4.5


def make_spikes(n_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted float32 spike times per row; rates log-normal with mean ``MEAN_RATE_HZ``."""
    rng = np.random.default_rng(seed)
    sigma = 1.0
    rates = rng.lognormal(np.log(MEAN_RATE_HZ) - sigma**2 / 2, sigma, n_rows)
    counts = rng.poisson(rates * WINDOW_MS / 1000.0)
    indptr = np.zeros(n_rows + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    rows = np.repeat(np.arange(n_rows), counts)
    times = rng.uniform(0.0, WINDOW_MS, indptr[-1])
    order = np.lexsort((times, rows))
    return indptr, times[order].astype(np.float32)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--neurons", type=int, nargs="+", default=[5000, 50000])
    parser.add_argument("--bins", type=int, nargs="+", default=[1, 5, 20], help="bin sizes (ms)")
    parser.add_argument(
        "--spikes",
        type=float,
        default=2e6,
        help="approximate spikes per workload (rows = presentations x neurons)",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline-rows", type=int, default=2000, help="rows timed for np.histogram")
    parser.add_argument("--elephant-rows", type=int, default=200, help="rows timed for elephant (0: skip)")


def _elephant() -> Any:
    try:
        import elephant.conversion as conv
        import neo
        import quantities as pq
    except ImportError:
        return None
    return conv, neo, pq


def _elephant_run(indptr: np.ndarray, times: np.ndarray, grid: BinGrid, rows: int, mods: Any) -> np.ndarray:
    conv, neo, pq = mods
    out = np.zeros((rows, grid.n_bins), np.int64)
    for r in range(rows):
        t = times[indptr[r] : indptr[r + 1]].astype(np.float64)
        t = t[(t >= grid.t0_ms) & (t <= grid.t_end_ms)]  # neo refuses spikes outside [t_start, t_stop]
        st = neo.SpikeTrain(
            t * pq.ms,
            t_start=grid.t0_ms * pq.ms,
            t_stop=grid.t_end_ms * pq.ms,
        )
        out[r] = conv.BinnedSpikeTrain(st, bin_size=grid.bin_ms * pq.ms).to_array()[0]
    return out


def _cpu_seconds(fn: Any, repeats: int) -> float:
    """Median process CPU time of ``fn`` (less sensitive than wall time to other loads on the machine)."""
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        out.append(time.process_time() - t0)
    return float(np.median(out))


def _measure(
    n: int, indptr: np.ndarray, times: np.ndarray, grid: BinGrid, args: argparse.Namespace, mods: Any
) -> dict[str, Any]:
    nsp = int(times.size)
    kern = time_call(lambda: bin_spikes((indptr, times), grid), repeats=args.repeats)
    kern_cpu = _cpu_seconds(lambda: bin_spikes((indptr, times), grid), repeats=args.repeats)
    dense = time_call(lambda: bin_spikes((indptr, times), grid).to_dense(np.uint16), repeats=args.repeats)
    sub = min(args.baseline_rows, indptr.size - 1)
    sub_spikes = int(indptr[sub])
    ref = histogram_reference(indptr[: sub + 1], times, grid)
    hist = time_call(lambda: histogram_reference(indptr[: sub + 1], times, grid), repeats=3, warmup=0)
    ok = bool(np.array_equal(bin_spikes((indptr[: sub + 1], times), grid).to_dense(np.int64), ref))
    row: dict[str, Any] = {
        "neurons": n,
        "bin_ms": grid.bin_ms,
        "spikes": nsp,
        "kernel_Mspk_s": nsp / kern.median / 1e6,
        "kernel_Mspk_cpu_s": nsp / kern_cpu / 1e6,
        "kernel+dense_Mspk_s": nsp / dense.median / 1e6,
        "histogram_Mspk_s": sub_spikes / hist.median / 1e6,
        "elephant_Mspk_s": float("nan"),
        "x_histogram": (nsp / kern.median) / (sub_spikes / hist.median),
        "x_elephant": float("nan"),
        "match": ok,
    }
    if mods is not None:
        er = min(args.elephant_rows, indptr.size - 1)
        ele = time_call(lambda: _elephant_run(indptr, times, grid, er, mods), repeats=1, warmup=0)
        row["elephant_Mspk_s"] = int(indptr[er]) / ele.median / 1e6
        row["x_elephant"] = row["kernel_Mspk_s"] / row["elephant_Mspk_s"]
        row["match"] = ok and bool(np.array_equal(_elephant_run(indptr, times, grid, er, mods), ref[:er]))
    return row


def run_bench(args: argparse.Namespace) -> dict:
    mods = _elephant() if args.elephant_rows > 0 else None
    rows_out: list[dict[str, Any]] = []
    spikes_per_neuron = MEAN_RATE_HZ * WINDOW_MS / 1000.0
    for n in args.neurons:
        presentations = max(1, int(round(args.spikes / (n * spikes_per_neuron))))
        indptr, times = make_spikes(n * presentations, seed=n)
        for b in args.bins:
            rows_out.append(_measure(n, indptr, times, BinGrid(0.0, b, int(WINDOW_MS // b)), args, mods))
    print(format_table(rows_out))
    print(
        "medians of repeated runs (wall clock; kernel_Mspk_cpu_s per CPU second of this process); "
        "kernel = sparse events (what trim stores), kernel+dense adds a "
        f"[rows, bins] uint16 array; np.histogram timed on {args.baseline_rows} rows, elephant on "
        f"{args.elephant_rows} rows; match = kernel counts equal the baselines there."
    )
    if mods is None and args.elephant_rows > 0:
        print("elephant is not installed: its column is empty (pip install elephant to measure it)")
    return {"rows": rows_out, "elephant_installed": mods is not None}
