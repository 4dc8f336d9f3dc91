"""`corticalrnn bench load`: windows/s delivered as dense tensors, and the store layout decision.

Builds a synthetic store (``--neurons`` split over the six sheets in the full model's proportions,
712 ms windows, log-normal rates with mean 4.5 Hz: ~0.45 % of 1 ms bins occupied, like the
full model's ~350,000 spikes per window) at each ``--bins`` size, then measures:

- loading, per ``--paths`` (``sparse``: events only; ``dense``: today's fresh ``torch.zeros`` per
  batch; ``ring``: :class:`corticalrnn.data.DenseRing` of 2 reused buffers filled by a prefetching
  thread; ``ring-serial``: the ring without the thread) and ``--workers`` count (spawn):
  :func:`corticalrnn.data.make_loader` batches of ``--batch-size`` dense float32 tensors on
  ``--device``; ``--repeats`` epochs per path, interleaved, medians of windows/s over the epoch and
  in steady state after the first batch; peak RSS growth of the main process, also in dense
  batches; the rate a ``--gpu-step-s`` GPU step consumes beside them, and each path's ratio to
  ``dense``;
- layout: the same counts as dense uint8 Zarr arrays ``[W, T, N]`` per sheet (chunks one window,
  shards of 16 windows, Blosc-zstd bit-shuffle) vs the store's sparse events: bytes on disk per
  window and windows/s for reading a random batch into dense numpy (all neurons), in-process.
  Extrapolated to the full model (108,150 neurons, 50,000 windows) for the size column.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from corticalrnn.bench.binning import WINDOW_MS, make_spikes
from corticalrnn.bench.common import PeakRSS, time_call
from corticalrnn.binning import BinGrid, bin_spikes
from corticalrnn.sheets import ALL_SHEETS, FULL_MODEL_SIZES
from corticalrnn.store import SheetMeta, StoreMeta, StoreWriter, WindowBlock, open_store
from corticalrnn.tables import format_table, human_bytes

FULL_NEURONS = sum(FULL_MODEL_SIZES.values())
FULL_WINDOWS = 50_000


def sheet_sizes(total: int) -> dict[str, int]:
    return {s: max(1, round(total * FULL_MODEL_SIZES[s] / FULL_NEURONS)) for s in ALL_SHEETS}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--neurons", type=int, default=10000, help="neurons over all sheets")
    parser.add_argument("--windows", type=int, default=128, help="windows in the synthetic store")
    parser.add_argument("--bins", type=int, nargs="+", default=[1, 20], help="bin sizes (ms)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2],
                        help="DataLoader worker counts (spawn; > 0 runs the dense and ring-serial paths)")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS),
                        help="; ".join(f"{k}: {v}" for k, v in PATH_HELP.items()))
    parser.add_argument("--gpu-step-s", type=float, default=0.5,
                        help="seconds of one GPU training step: batch / this = the rate a GPU consumes")
    parser.add_argument("--device", default="cpu", help="target device of the tensors (cpu, cuda)")
    parser.add_argument(
        "--dense-windows", type=int, default=64, help="windows written in the dense layout (0: skip)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _events(sizes: dict[str, int], n_windows: int, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Spike times per sheet as CSR over (window, neuron)."""
    return {s: make_spikes(n_windows * n, seed=seed + k) for k, (s, n) in enumerate(sizes.items())}


def build_store(
    path: Path, sizes: dict[str, int], spikes: dict[str, Any], n_windows: int, bin_ms: int
) -> Path:
    grid = BinGrid(0.0, bin_ms, int(WINDOW_MS // bin_ms))
    meta = StoreMeta(
        bin_ms,
        grid.n_bins,
        {"origin": "bench", "t0_ms": 0.0},
        [SheetMeta(s, np.arange(n)) for s, n in sizes.items()],
    )
    w = StoreWriter.create(path, meta)
    src = w.add_source(path="synthetic", sha256="", kind="bench")
    step = 32
    for a in range(0, n_windows, step):
        b = min(n_windows, a + step)
        events = {}
        for s, n in sizes.items():
            indptr, times = spikes[s]
            events[s] = bin_spikes((indptr[a * n : b * n + 1], times), grid)
        w.append(WindowBlock(np.arange(a, b), np.zeros(b - a), events), src)
    w.commit()
    return path


def build_dense(path: Path, store_path: Path, n_windows: int) -> Path:
    """The store's first ``n_windows`` as dense uint8 [W, T, N] per sheet (sharded, zstd bit-shuffle)."""
    import zarr
    from zarr.codecs import BloscCodec

    st = open_store(store_path)
    root = zarr.open_group(str(path), mode="w")
    for s in st.sheets:
        n = st.n_neurons(s)
        arr = root.create_array(
            s.replace("/", ""),
            shape=(n_windows, st.n_bins, n),
            chunks=(1, st.n_bins, n),
            shards=(16, st.n_bins, n),
            dtype=np.uint8,
            compressors=[BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")],
        )
        for a in range(0, n_windows, 16):
            b = min(n_windows, a + 16)
            arr[a:b] = np.minimum(st.read(s, np.arange(a, b)), 255).astype(np.uint8)
    return path


def _read_dense(path: Path, sheets: list[str], windows: np.ndarray) -> list[np.ndarray]:
    import zarr

    root = zarr.open_group(str(path), mode="r")
    return [np.asarray(root[s.replace("/", "")].oindex[np.sort(windows)]).astype(np.float32) for s in sheets]


PATHS = ("sparse", "dense", "ring", "ring-serial")
PATH_HELP = {
    "sparse": "events only (WindowBatches.sparse_batch), no dense tensors",
    "dense": "today's path: a fresh torch.zeros batch per batch, events scattered into it",
    "ring": "DenseRing of 2 reused buffers, events scattered by a prefetching thread",
    "ring-serial": "the same ring without the thread",
}


def _loader(batches: Any, args: argparse.Namespace, path: str, workers: int) -> Any:
    from corticalrnn.data import make_loader

    ring = path.startswith("ring")
    return make_loader(batches, args.batch_size, shuffle=True, seed=0, num_workers=workers,
                       device=args.device, prefetch=path == "ring", buffers=2 if ring else 0)


def _epoch(batches: Any, args: argparse.Namespace, path: str, workers: int) -> dict[str, float]:
    """One epoch of ``path``: windows/s overall and after the first batch, peak RSS growth."""
    import torch

    n = n_first = 0
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        first = t0
        if path == "sparse":
            loader = _loader(batches, args, "dense", 0)
            for b in loader.plan():
                n += len(batches.sparse_batch(b)["window"])
                if not n_first:
                    first, n_first = time.perf_counter(), n
        else:
            for batch in _loader(batches, args, path, workers):
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                n += int(batch["v1"].shape[0])
                if not n_first:
                    first, n_first = time.perf_counter(), n
        end = time.perf_counter()
    return {"windows": n, "rate": n / (end - t0),
            "steady": (n - n_first) / (end - first) if n > n_first else float("nan"),
            "first_s": first - t0, "growth": mem.growth_bytes}


def _time_paths(batches: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every path (and worker count) ``--repeats`` times, interleaved so that load changes hit all
    alike; medians per path."""
    import statistics

    cases = [(p, 0) for p in args.paths] + [(p, w) for w in args.workers if w > 0
                                            for p in args.paths if p in ("dense", "ring-serial")]
    runs: dict[tuple[str, int], list[dict[str, float]]] = {c: [] for c in cases}
    for _ in range(args.repeats):
        for c in cases:
            runs[c].append(_epoch(batches, args, *c))
    batch_bytes = args.batch_size * batches.n_bins * (batches.sizes["lgn"] + batches.sizes["v1"]) * 4
    gpu_rate = args.batch_size / args.gpu_step_s
    rows = []
    for (path, workers), rs in runs.items():
        steady = statistics.median(r["steady"] for r in rs)
        peak = max(r["growth"] for r in rs)
        rows.append({
            "bin_ms": batches.bin_ms,
            "T": batches.n_bins,
            "neurons": args.neurons,
            "path": path,
            "workers": workers,
            "windows": int(rs[0]["windows"]),
            "windows_per_s": statistics.median(r["rate"] for r in rs),
            "steady_windows_per_s": steady,
            "steady_min_max": f"{min(r['steady'] for r in rs):.4g}-{max(r['steady'] for r in rs):.4g}",
            "first_batch_s": statistics.median(r["first_s"] for r in rs),
            "peak_rss_growth": human_bytes(peak),
            "peak_batches": peak / batch_bytes,
            "gpu_step_windows_per_s": gpu_rate,
            "vs_gpu": steady / gpu_rate,
        })
    base = next((r for r in rows if r["path"] == "dense" and r["workers"] == 0), None)
    for r in rows:
        r["vs_dense"] = r["steady_windows_per_s"] / base["steady_windows_per_s"] if base else float("nan")
    return rows


def _layout_rows(
    store: Path, work: Path, batches: Any, args: argparse.Namespace, rng: np.random.Generator
) -> list[dict[str, Any]]:
    st = open_store(store)
    n_dense = min(args.dense_windows, args.windows)
    pool = max(n_dense, min(args.windows, args.batch_size))
    samples = [rng.choice(pool, min(args.batch_size, pool), replace=False) for _ in range(args.repeats + 1)]
    scale = FULL_NEURONS / args.neurons * FULL_WINDOWS

    def row(name: str, per_window: float, per_s: float) -> dict[str, Any]:
        return {
            "bin_ms": st.bin_ms,
            "layout": name,
            "bytes_per_window": human_bytes(per_window),
            "full_model_size": human_bytes(per_window * scale),
            "read_windows_per_s": per_s,
        }

    it = iter(samples)
    sparse_t = time_call(lambda: batches.batch(next(it)), repeats=args.repeats, warmup=1)
    out = [row("sparse events (store)", _du(store) / args.windows, len(samples[0]) / sparse_t.median)]
    if n_dense > 0:
        dense = build_dense(work / f"d{st.bin_ms}.zarr", store, n_dense)
        it = iter(samples)
        dense_t = time_call(lambda: _read_dense(dense, st.sheets, next(it)), repeats=args.repeats, warmup=1)
        out.append(row("dense uint8 zstd shards", _du(dense) / n_dense, len(samples[0]) / dense_t.median))
        out.append(row("dense uint8 uncompressed", st.n_bins * args.neurons, float("nan")))
        shutil.rmtree(dense)
    return out


def run_bench(args: argparse.Namespace) -> dict:
    from corticalrnn.data import WindowBatches

    sizes = sheet_sizes(args.neurons)
    work = Path(tempfile.mkdtemp(prefix="bench-load-", dir=args.dir))
    rows: list[dict[str, Any]] = []
    layout: list[dict[str, Any]] = []
    rng = np.random.default_rng(0)
    try:
        spikes = _events(sizes, args.windows, seed=1)
        n_spikes = sum(int(t.size) for _, t in spikes.values())
        for b in args.bins:
            store = build_store(work / f"s{b}.zarr", sizes, spikes, args.windows, b)
            batches = WindowBatches(store)
            rows += _time_paths(batches, args)
            layout += _layout_rows(store, work, batches, args, rng)
            shutil.rmtree(store)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(format_table(rows))
    print(
        f"batch {args.batch_size}, {args.windows} windows of {WINDOW_MS:g} ms, "
        f"{n_spikes / args.windows:,.0f} spikes/window over {args.neurons} neurons; "
        f"workers use spawn; tensors on {args.device}; medians of {args.repeats} epochs per path "
        f"(interleaved); steady = after the first batch; peak_batches = peak RSS growth / one dense "
        f"batch; vs_dense = ratio of steady medians to the dense path; a {args.gpu_step_s:g} s GPU "
        "step consumes gpu_step_windows_per_s"
    )
    for k, v in PATH_HELP.items():
        print(f"  {k}: {v}")
    print()
    print(format_table(layout))
    print(
        "layout: bytes on disk per window; read = random batch -> dense float32 (all neurons), medians; "
        f"full model = {FULL_NEURONS} neurons x {FULL_WINDOWS} windows, scaled linearly"
    )
    return {"loading": rows, "layout": layout, "sheet_sizes": sizes}
