"""`corticalrnn bench eval`: peak memory and time of streaming ``corticalrnn evaluate`` at scale.

Builds (once, in ``--dir``) a synthetic store at ``--scale`` of the full model (0.1: 720 + 720 LGN,
9,374 V1 neurons) with ``--bin-ms`` bins over 712 ms windows: ``--train-images`` training images (one
trial each, for the time-course baselines) and ``max(--images)`` test images × ``--trials`` trials,
Poisson counts with log-normal per-neuron rates (mean ``--rate-hz``); no simulation; neurons placed at
the full model's density (:func:`corticalrnn.bench.model.random_identity`). The model
(:func:`corticalrnn.bench.model.fast_config`, fp32, untrained) is ``--model dense`` (every pathway
dense) or ``local`` (distance masks and Gabor input, both stored sparse: the layout that scales to the
full model), saved with :mod:`corticalrnn.train.checkpoint` (weights only, no optimizer state). Then,
for each ``--images`` count, ``evaluate`` runs in a fresh child process (``--max-images``, no
figures): its peak RSS (``ru_maxrss``), the wall time, and the part spent after the model was
loaded. Memory must not grow with the number of images; the time per image extrapolates to
``--target-images`` (900 by default, the lab's test set), labelled as an extrapolation.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from corticalrnn.atomic import atomic_path
from corticalrnn.tables import format_table, human_bytes

WINDOW_MS = 712.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scale", type=float, default=0.1, help="size as a fraction of the full model")
    p.add_argument("--images", type=int, nargs="+", default=[8, 24],
                   help="test image counts to evaluate (the store holds the largest)")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--train-images", type=int, default=16)
    p.add_argument("--bin-ms", type=int, default=20)
    p.add_argument("--rate-hz", type=float, default=4.5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--target-images", type=int, default=900, help="extrapolate the time to this many images")
    p.add_argument("--budget-gb", type=float, default=3.0, help="peak RSS the run must stay within")
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", choices=("dense", "local"), default="dense",
                   help="dense: every pathway dense (the most compute per neuron); local: distance masks and "
                        "Gabor LGN input, both stored sparse")
    p.add_argument("--workers", type=int, default=1,
                   help="processes drawing the synthetic store (1: the original single stream)")
    p.add_argument("--save-predictions", action="store_true", help="also write float16 predictions")
    p.add_argument("--metrics-only", type=int, default=0, metavar="N",
                   help="also stream N synthetic images (no store, no model) through the metric "
                        "accumulator with the baselines: its peak RSS and time at the full image count")
    p.add_argument("--dir", type=Path, default=Path("bench-eval"),
                   help="work folder (store and model reused)")


def _sizes(scale: float) -> dict[str, int]:
    from corticalrnn.bench.model import scaled_sizes

    return scaled_sizes(scale)


def _block_events(lam: dict[str, np.ndarray], n_windows: int, n_bins: int, rng: np.random.Generator
                  ) -> dict[str, Any]:
    """Poisson counts of ``n_windows`` windows per sheet, as the store's binned CSR (numpy only)."""
    from corticalrnn.binning import BinnedCSR

    events = {}
    for s, rates in lam.items():
        counts = rng.poisson(np.broadcast_to(rates[None, :, None], (n_windows, rates.size, n_bins)))
        rows = counts.reshape(-1, n_bins)
        r, c = np.nonzero(rows)
        indptr = np.zeros(rows.shape[0] + 1, np.int64)
        np.cumsum(np.bincount(r, minlength=rows.shape[0]), out=indptr[1:])
        events[s] = BinnedCSR(indptr, c.astype(np.int32), rows[r, c].astype(np.int32), n_bins)
    return events


def _block_worker(job: tuple[dict[str, np.ndarray], int, int, int, int]) -> dict[str, Any]:
    lam, n_windows, n_bins, seed, block = job
    return _block_events(lam, n_windows, n_bins, np.random.default_rng([seed, block]))


def build_store(path: Path, sizes: dict[str, int], n_train: int, n_test: int, trials: int, bin_ms: int,
                rate_hz: float, seed: int = 0, workers: int = 1, sheet_mm: float = 1.6) -> Path:
    """Synthetic store of Poisson counts (see the module doc); written in blocks of 32 windows.

    ``workers > 1`` draws the blocks in that many processes (one seeded stream per block, so the counts
    differ from the one-process stream but not between runs); the writer stays the one process.
    Positions and identity: :func:`corticalrnn.bench.model.random_identity` on a ``sheet_mm`` square."""
    from corticalrnn.bench.model import random_identity
    from corticalrnn.sheets import ALL_SHEETS
    from corticalrnn.store import SheetMeta, StoreMeta, StoreWriter, WindowBlock

    n_bins = int(WINDOW_MS // bin_ms)
    rng = np.random.default_rng(seed)
    pos, props = random_identity(sizes, sheet_mm, seed)
    meta = StoreMeta(bin_ms, n_bins, {"origin": "bench eval", "t0_ms": 0.0},
                     [SheetMeta(s, np.arange(n) + 1_000_000 * ALL_SHEETS.index(s), pos[s], props.get(s, {}))
                      for s, n in sizes.items()])
    sigma = 1.0
    lam = {s: rng.lognormal(np.log(rate_hz) - sigma**2 / 2, sigma, n) * bin_ms / 1000.0
           for s, n in sizes.items()}
    img = np.concatenate([np.arange(n_train), np.repeat(np.arange(n_test) + 10_000, trials)])
    trial = np.concatenate([np.zeros(n_train, np.int64), np.tile(np.arange(trials), n_test)])
    w = StoreWriter.create(path, meta)
    src = w.add_source(path="synthetic", sha256="", kind="bench")
    step = 32
    parts = ((0, n_train, ""), (n_train, len(img), "test"))  # training windows first
    blocks = [(a, min(hi, a + step), label) for lo, hi, label in parts for a in range(lo, hi, step)]
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            jobs = [(lam, b - a, n_bins, seed, k) for k, (a, b, _) in enumerate(blocks)]
            for (a, b, label), events in zip(blocks, pool.imap(_block_worker, jobs, chunksize=1)):
                w.append(WindowBlock(img[a:b], trial[a:b], events, split=label), src)
    else:
        for a, b, label in blocks:
            events = _block_events(lam, b - a, n_bins, rng)
            w.append(WindowBlock(img[a:b], trial[a:b], events, split=label), src)
    w.commit()
    return path


def build_checkpoint(path: Path, store_path: Path, bin_ms: int, n_train: int, model: str = "dense") -> Path:
    """The untrained fast-path model (``dense`` or ``local``, see the module doc) of the store's neurons
    (all modelled, 10 % observed) as a checkpoint."""
    from corticalrnn.bench.model import SPARSE_LOCAL, fast_config
    from corticalrnn.store import open_store
    from corticalrnn.subsets import SubsetConfig, make_subset
    from corticalrnn.train.checkpoint import save_checkpoint
    from corticalrnn.train.config import TrainConfig
    from corticalrnn.train.spec import build_model, make_spec

    st = open_store(store_path)
    subset = make_subset(st, SubsetConfig(fraction=1.0, observed=0.1, method="random"))
    mcfg = fast_config(float(bin_ms), "fp32", SPARSE_LOCAL if model == "local" else None)
    spec = make_spec(mcfg, subset, st)
    net = build_model(spec)
    cfg = TrainConfig().to_dict()
    cfg["data"]["store"] = str(store_path)
    save_checkpoint(path, {
        "config": cfg, "spec": spec, "model": net.state_dict(), "ema": None,
        "progress": {"step": 0, "best_step": None}, "subset": subset.to_json_dict(), "precision": "fp32",
        "split": {"train": list(range(n_train)), "validation": [], "test": []},
    })
    return path


def _child(checkpoint: str, store: str, max_images: int, batch_size: int, device: str, save: str) -> None:
    """Runs in a fresh process: one streaming evaluation (its progress bar on stderr, so a run cut
    off by a time limit shows how far it got); prints a JSON line of its figures."""
    import resource

    t0 = time.perf_counter()
    from corticalrnn.evaluate import evaluate

    res = evaluate(checkpoint, store, None, device=device, batch_size=batch_size, figures=False,
                   progress=True, max_images=max_images, save_predictions=save or None,
                   predictions_dtype="float16")
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    model = next(r for r in res.rows if r["predictor"] == "model" and r["neurons"] == "all"
                 and r["population"] == "all")
    print("BENCH-EVAL " + json.dumps({"wall_s": wall, "peak_rss": peak, "images": len(res.test.image_ids),
                                      "windows": int(res.report["n_windows"]),
                                      "images_per_chunk": res.report["streaming"]["images_per_chunk"],
                                      "seconds": res.report["streaming"]["seconds"],
                                      "co_bps": model["co_bps"]}))


def _run_child(args: argparse.Namespace, ckpt: Path, store: Path, n: int) -> dict[str, Any]:
    save = str(args.dir / f"pred-{n}.npy") if args.save_predictions else ""
    code = (f"from corticalrnn.bench.evaluate import _child; _child({str(ckpt)!r}, {str(store)!r}, {n}, "
            f"{args.batch_size}, {args.device!r}, {save!r})")
    print(f"evaluating {n} test images in a fresh process (progress below)", file=sys.stderr, flush=True)
    # stderr is this process's: the child's progress and messages stream while it runs
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ))
    line = [x for x in out.stdout.splitlines() if x.startswith("BENCH-EVAL ")]
    if out.returncode or not line:
        raise RuntimeError(f"evaluate child failed (exit {out.returncode}); its messages are above")
    return json.loads(line[-1][len("BENCH-EVAL "):])


def _model_load(ckpt: Path, device: str) -> dict[str, Any]:
    """Peak RSS and time of loading the model alone (what every evaluation pays before streaming)."""
    code = ("import json, resource, time; t=time.perf_counter(); "
            "from corticalrnn.train.spec import model_from_checkpoint; "
            f"m, ck = model_from_checkpoint({str(ckpt)!r}, {device!r}); "
            "print('BENCH-EVAL ' + json.dumps({'wall_s': time.perf_counter()-t, "
            "'peak_rss': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss*1024}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    line = [x for x in out.stdout.splitlines() if x.startswith("BENCH-EVAL ")]
    if out.returncode or not line:
        raise RuntimeError(f"model load failed:\n{out.stderr[-3000:]}")
    return json.loads(line[-1][len("BENCH-EVAL "):])


def _metrics_child(n_images: int, trials: int, n_bins: int, n_v1: int, chunk: int) -> None:
    """Fresh process: ``n_images`` random images through StreamingSummary (model, 3 baselines)."""
    import resource

    from corticalrnn.metrics import StreamingSummary

    rng = np.random.default_rng(0)
    labels = np.array(["V1_Exc_L4", "V1_Inh_L4", "V1_Exc_L2/3", "V1_Inh_L2/3"])[np.arange(n_v1) % 4]
    observed = rng.random(n_v1) < 0.1
    lam = rng.uniform(0.02, 0.3, n_v1).astype(np.float32)
    course = np.tile(lam, (n_bins, 1))
    acc = StreamingSummary(labels, observed, trials, n_bins, baseline_rates=lam,
                           baselines={"psth": course, "population": course})
    t0 = time.perf_counter()
    for a in range(0, n_images, chunk):
        c = min(chunk, n_images - a)
        counts = rng.poisson(lam, (c, trials, n_bins, n_v1)).astype(np.float32)
        acc.update(counts, (counts * 0.5 + lam).astype(np.float32))
    rows = acc.summary()
    wall = time.perf_counter() - t0
    print("BENCH-EVAL " + json.dumps({"wall_s": wall, "images": n_images, "rows": len(rows),
                                      "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    """One run per work folder at a time (its lock); the store and model are built under temporary
    names and renamed when complete, so a run stopped while building leaves nothing that a later run
    would take for finished."""
    from corticalrnn.locking import exclusive_lock

    args.dir.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(args.dir / "bench-eval", "used by bench eval"):
        return _run_bench(args)


def _run_bench(args: argparse.Namespace) -> dict[str, Any]:
    sizes = _sizes(args.scale)
    counts = sorted(set(args.images))
    n_test = counts[-1]
    tag = f"s{args.scale:g}-b{args.bin_ms}-i{n_test}x{args.trials}-t{args.train_images}"
    store = args.dir / f"store-{tag}-placed.zarr"  # "placed": with positions and identity
    ckpt = args.dir / f"model-{args.model}-s{args.scale:g}-b{args.bin_ms}.pt"
    t = time.perf_counter()
    if not store.exists():
        with atomic_path(store, fsync=False) as tmp:
            build_store(tmp, sizes, args.train_images, n_test, args.trials, args.bin_ms, args.rate_hz,
                        workers=args.workers, sheet_mm=5.0 * math.sqrt(args.scale))
        print(f"built {store} in {time.perf_counter() - t:.1f} s")
    if not ckpt.exists():  # save_checkpoint writes atomically
        t = time.perf_counter()
        build_checkpoint(ckpt, store, args.bin_ms, args.train_images, args.model)
        print(f"built {ckpt} in {time.perf_counter() - t:.1f} s ({human_bytes(ckpt.stat().st_size)})")
    n_v1 = sum(v for k, v in sizes.items() if k.startswith("V1"))
    n_in = sizes["X_ON"] + sizes["X_OFF"]
    n_bins = int(WINDOW_MS // args.bin_ms)
    load = _model_load(ckpt, args.device)
    rows, runs = [], []
    for n in counts:
        r = _run_child(args, ckpt, store, n)
        runs.append(r)
        in_memory = n * args.trials * n_bins * (n_in + 2 * n_v1) * 4
        rows.append({"test images": n, "windows": r["windows"], "images/chunk": r["images_per_chunk"],
                     "wall s": round(r["wall_s"], 1),
                     "predict+score s": round(r["seconds"]["predict_and_score"], 1),
                     "peak RSS": human_bytes(r["peak_rss"]),
                     "in-memory arrays (old path)": human_bytes(in_memory)})
    print(f"\nstreaming evaluate, {args.model} model, {args.scale:g} size ({n_in} LGN, {n_v1} V1), "
          f"{args.bin_ms} ms bins x {n_bins}, {args.trials} trials/image, batch {args.batch_size}, "
          f"device {args.device}; "
          f"model load alone: {load['wall_s']:.1f} s, peak RSS {human_bytes(load['peak_rss'])}")
    print(format_table(rows))
    out: dict[str, Any] = {"model": args.model, "scale": args.scale, "n_in": n_in, "n_v1": n_v1,
                           "bin_ms": args.bin_ms, "n_bins": n_bins, "trials": args.trials,
                           "batch_size": args.batch_size,
                           "model_load": load, "runs": runs}
    if len(runs) >= 2:
        a, b = runs[0], runs[-1]
        # per image: the streaming part only (imports, model load and baselines are fixed costs)
        per_image = b["seconds"]["predict_and_score"] / b["images"]
        fixed = b["wall_s"] - b["seconds"]["predict_and_score"]
        est = fixed + per_image * args.target_images
        growth = (b["peak_rss"] - a["peak_rss"]) / (b["images"] - a["images"])
        peak_est = b["peak_rss"] + max(0.0, growth) * (args.target_images - b["images"])
        ok = peak_est <= args.budget_gb * 1e9
        how = "MEASURED" if b["images"] == args.target_images else "EXTRAPOLATED"
        print(f"per test image {per_image:.2f} s ({per_image / args.trials:.3f} s per window), "
              f"fixed {fixed:.1f} s; "
              f"{how} at {args.target_images} images: {est / 60:.1f} min. Peak RSS growth "
              f"{human_bytes(max(0.0, growth))}/image -> {how} peak at {args.target_images} images "
              f"{human_bytes(peak_est)} ({'within' if ok else 'OVER'} {args.budget_gb:g} GB)")
        out.update({"seconds_per_image": per_image, "fixed_seconds": fixed,
                    "extrapolated_seconds": est, "target_images": args.target_images,
                    "rss_growth_per_image": growth, "extrapolated_peak_rss": peak_est,
                    "within_budget": ok})
    if args.metrics_only:
        code = ("from corticalrnn.bench.evaluate import _metrics_child; "
                f"_metrics_child({args.metrics_only}, {args.trials}, {n_bins}, {n_v1}, "
                f"{runs[-1]['images_per_chunk']})")
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        line = [x for x in res.stdout.splitlines() if x.startswith("BENCH-EVAL ")]
        if res.returncode or not line:
            raise RuntimeError(f"metrics-only child failed:\n{res.stderr[-3000:]}")
        m = json.loads(line[-1][len("BENCH-EVAL "):])
        print(f"metrics only (no model, no store): {m['images']} images x {args.trials} trials x "
              f"{n_bins} bins x {n_v1} neurons streamed through StreamingSummary (model + 3 baselines) "
              f"in {m['wall_s']:.0f} s ({m['wall_s'] / m['images']:.2f} s/image), "
              f"peak RSS {human_bytes(m['peak_rss'])}")
        out["metrics_only"] = m
    return out
