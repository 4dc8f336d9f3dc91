"""`corticalrnn trim`: HDF5 spike-time files (``extract``) -> a ``corticalrnn.windows`` store.

A window is cut around each image presentation, in ms relative to image onset:
``[-before, stimulus + after]``, binned into ``n_bins = length / bin_ms`` bins. Spike times of
the three recorded parts are shifted onto that axis (blank before: ``t - blank_before_ms``,
stimulus: ``t``, blank after: ``t + stimulus_ms``) and binned exactly (:mod:`corticalrnn.binning`;
every bin is half-open, the last one too, so a spike exactly at the window's end is counted
only in the window that starts there).

Window definition (``--window before=75,after=75,incomplete=drop,remainder=error``):

- ``before`` / ``after``: ms of blank kept before / after the image. Default: half of the blank,
  i.e. ``min(blank_before_ms) / 2`` and ``min(blank_after_ms > 0) / 2`` over all inputs.
- Every presentation must have the same ``stimulus_ms`` (else a clear error).
- ``incomplete``: a presentation whose recording does not cover the window (the last image of a
  folder has no blank after it): ``drop`` (default) leaves it out; ``pad`` keeps it with zero
  counts where nothing was recorded, ``padded=True`` and ``valid_bins`` = bins fully recorded.
  Padded windows are excluded by ``corticalrnn.data.select_windows`` unless asked for.
- ``remainder``: when the length is not a multiple of the bin size: ``error`` (default, with a
  suggestion) or ``drop`` (the window ends at the last whole bin).

Robustness: inputs are binned in parallel (processes, ``--jobs``), with a progress bar. The store
is built under ``OUT.tmp`` and renamed when complete; it is committed after each input file, so
rerunning a killed trim resumes where it stopped (finished inputs are recognised by sha256).
``--append`` adds new files to an existing store in place (same bin size, window and neuron ids
required; files already in it are skipped); an interrupted append leaves the store at its last
commit and can be rerun. Inputs must have the same sheets and neuron ids.

Identity: per-neuron properties of the spike files (v2, ``corticalrnn.store.SHEET_PROPERTIES``:
``ori``, ``phase``, ... from Mozaik's neuron annotations) go into the store's sheets, and the
connectome (``connections/``) is copied from the first input that has one, chunk by chunk (all
inputs holding one must agree on its projections and their sizes).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import math
import multiprocessing as mp
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from corticalrnn.atomic import temporary_name
from corticalrnn.binning import BinGrid, bin_spikes, validate_bin_ms
from corticalrnn.errors import CorticalRNNError, DataMismatchError, SchemaError
from corticalrnn.locking import exclusive_lock
from corticalrnn.sheets import mozaik_positions_to_mm
from corticalrnn.store import (
    SHEET_PROPERTIES,
    PackedEvents,
    SheetMeta,
    StoreMeta,
    StoreWriter,
    WindowBlock,
    check_compatible,
    is_uncreated,
    open_store,
    pack_events,
    sha256_file,
)

INCOMPLETE = ("drop", "pad")
REMAINDER = ("error", "drop")


@dataclass(frozen=True)
class WindowSpec:
    """How windows are cut (ms); ``None`` means half of the (shortest) blank. See module docstring."""

    before_ms: float | None = None
    after_ms: float | None = None
    incomplete: str = "drop"
    remainder: str = "error"

    def __post_init__(self) -> None:
        if self.incomplete not in INCOMPLETE:
            raise CorticalRNNError(f"incomplete must be one of {INCOMPLETE}, not {self.incomplete!r}")
        if self.remainder not in REMAINDER:
            raise CorticalRNNError(f"remainder must be one of {REMAINDER}, not {self.remainder!r}")
        for name in ("before_ms", "after_ms"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise CorticalRNNError(f"window {name[:-3]} must be a non-negative number of ms, got {v}")

    @classmethod
    def parse(cls, text: str | None) -> WindowSpec:
        """Parse ``before=75,after=75,incomplete=pad,remainder=drop`` (any subset, any order)."""
        if not text:
            return cls()
        kw: dict[str, Any] = {}
        for item in text.split(","):
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or key not in ("before", "after", "incomplete", "remainder"):
                raise CorticalRNNError(
                    f"--window: cannot parse {item!r}; expected before=MS,after=MS,incomplete=drop|pad,"
                    "remainder=error|drop"
                )
            if key in ("before", "after"):
                try:
                    kw[f"{key}_ms"] = float(value)
                except ValueError:
                    raise CorticalRNNError(f"--window: {key} must be a number of ms, got {value!r}") from None
            else:
                kw[key] = value.strip()
        return cls(**kw)


@dataclass(frozen=True)
class ResolvedWindow:
    """A concrete window: ``n_bins`` bins of ``bin_ms`` from ``-before_ms`` relative to image onset."""

    before_ms: float
    after_ms: float
    stimulus_ms: float
    bin_ms: int
    n_bins: int
    incomplete: str

    @property
    def grid(self) -> BinGrid:
        return BinGrid(-self.before_ms, self.bin_ms, self.n_bins)

    def to_attrs(self) -> dict[str, Any]:
        return {
            "origin": "trim",
            "t0_ms": -self.before_ms,
            "length_ms": self.n_bins * self.bin_ms,
            "before_ms": self.before_ms,
            "after_ms": self.after_ms,
            "stimulus_ms": self.stimulus_ms,
            "incomplete": self.incomplete,
        }

    @classmethod
    def from_attrs(cls, window: dict[str, Any], bin_ms: int, n_bins: int) -> ResolvedWindow:
        if window.get("origin") != "trim":
            raise DataMismatchError(f"windows of origin {window.get('origin')!r} cannot be extended by trim")
        return cls(
            float(window["before_ms"]),
            float(window["after_ms"]),
            float(window["stimulus_ms"]),
            bin_ms,
            n_bins,
            str(window["incomplete"]),
        )


def _not_an_input_file(p: Path) -> str:
    """Why ``p`` cannot be a trim input, with the command that makes one."""
    mozaik = p / "datastore.recordings.pickle"
    if mozaik.is_file() or (p.is_file() and p.suffix == ".pickle"):
        folder = p if p.is_dir() else p.parent
        return (f"{p}: a Mozaik datastore, not an extracted spike file; run extract first: "
                f"`corticalrnn extract {folder} -o spikes/` then `corticalrnn trim spikes/*.h5 -o STORE "
                f"--bin-ms B`")
    if p.is_dir():
        h5 = sorted(p.glob("*.h5"))
        hint = f" (it holds {len(h5)} .h5 file(s): `corticalrnn trim {p}/*.h5 ...`)" if h5 else ""
        return f"{p}: a folder; trim takes the HDF5 spike files that `corticalrnn extract` writes{hint}"
    return f"{p}: no such file"


def resolve_window(
    spec: WindowSpec, bin_ms: int, tables: Sequence[tuple[str, dict[str, np.ndarray]]]
) -> ResolvedWindow:
    """Fix before/after/length from the presentation tables of all inputs; validate the bin size."""
    bin_ms = validate_bin_ms(bin_ms)
    stim = np.concatenate([t["stimulus_ms"] for _, t in tables]) if tables else np.zeros(0)
    if stim.size == 0:
        raise DataMismatchError("the inputs hold no presentations")
    if np.any(stim != stim[0]):
        bad = next(p for p, t in tables if np.any(t["stimulus_ms"] != stim[0]))
        raise DataMismatchError(
            f"{bad}: presentations have different stimulus durations ({sorted(set(stim.tolist()))} ms); "
            "windows need one length"
        )
    blank_b = np.concatenate([t["blank_before_ms"] for _, t in tables])
    blank_a = np.concatenate([t["blank_after_ms"] for _, t in tables])
    before = spec.before_ms if spec.before_ms is not None else float(blank_b.min()) / 2
    pos = blank_a[blank_a > 0]
    after = spec.after_ms if spec.after_ms is not None else (float(pos.min()) / 2 if pos.size else 0.0)
    length = before + float(stim[0]) + after
    if bin_ms > length:
        raise CorticalRNNError(f"bin size {bin_ms} ms is larger than the window ({length:g} ms)")
    n_bins = int(math.floor(length / bin_ms + 1e-9))
    if not math.isclose(n_bins * bin_ms, length, abs_tol=1e-9) and spec.remainder == "error":
        whole = n_bins * bin_ms
        raise CorticalRNNError(
            f"the window ({before:g} + {float(stim[0]):g} + {after:g} = {length:g} ms) is not a multiple of "
            f"{bin_ms} ms bins; choose e.g. --window after={after - (length - whole):g} ({whole:g} ms), "
            "or add remainder=drop to cut the window at the last whole bin"
        )
    return ResolvedWindow(before, after, float(stim[0]), bin_ms, n_bins, spec.incomplete)


# ---------------------------------------------------------------------------------------------
# work per input (runs in worker processes)


def _coverage(table: dict[str, np.ndarray], win: ResolvedWindow) -> tuple[np.ndarray, np.ndarray]:
    """Per presentation: complete (bool) and number of bins wholly inside the recording."""
    rec_lo = -table["blank_before_ms"]
    rec_hi = table["stimulus_ms"] + table["blank_after_ms"]
    complete = (table["blank_before_ms"] >= win.before_ms) & (table["blank_after_ms"] >= win.after_ms)
    edges = win.grid.edges()
    inside = (edges[None, :-1] >= rec_lo[:, None]) & (edges[None, 1:] <= rec_hi[:, None])
    return complete, inside.sum(axis=1).astype(np.int32)


def _runs(indices: np.ndarray, max_len: int) -> list[tuple[int, int]]:
    """Split sorted indices into ranges of consecutive values, each at most ``max_len`` long."""
    out: list[tuple[int, int]] = []
    if indices.size == 0:
        return out
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    for run in np.split(indices, breaks):
        for a in range(0, run.size, max_len):
            part = run[a : a + max_len]
            out.append((int(part[0]), int(part[-1]) + 1))
    return out


def bin_presentations(path: str, start: int, stop: int, win: ResolvedWindow) -> dict[str, PackedEvents]:
    """Bin presentations ``start:stop`` of one spike file: packed events per sheet."""
    from extract.spikefile import open_spikefile

    grid = win.grid
    out: dict[str, PackedEvents] = {}
    with open_spikefile(path) as sf:
        table = sf.presentations
        for sheet in sf.sheets:
            n = sf.n_neurons(sheet)
            parts = {
                p: sf.read_part(sheet, p, start, stop) for p in ("blank_before", "stimulus", "blank_after")
            }
            segs = []
            stim = float(table["stimulus_ms"][start]) if stop > start else 0.0
            bb = table["blank_before_ms"][start:stop]
            if np.all(bb == bb[0]):  # the usual case: one pass over the whole block
                segs.append((parts["blank_before"].indptr, parts["blank_before"].times, -float(bb[0])))
                segs.append((parts["stimulus"].indptr, parts["stimulus"].times, 0.0))
                segs.append((parts["blank_after"].indptr, parts["blank_after"].times, stim))
                counts = bin_spikes(segs, grid)
            else:  # presentations with different blank durations: one at a time
                counts = _bin_one_by_one(parts, bb, stim, n, grid)
            out[sheet] = pack_events(counts, n, stop - start, f"{path} sheet {sheet}")
    return out


def _bin_one_by_one(parts: dict[str, Any], bb: np.ndarray, stim: float, n: int, grid: BinGrid) -> Any:
    from corticalrnn.binning import BinnedCSR

    pieces = []
    for i in range(bb.size):
        rows = slice(i * n, (i + 1) * n + 1)
        segs = [
            (parts["blank_before"].indptr[rows], parts["blank_before"].times, -float(bb[i])),
            (parts["stimulus"].indptr[rows], parts["stimulus"].times, 0.0),
            (parts["blank_after"].indptr[rows], parts["blank_after"].times, stim),
        ]
        pieces.append(bin_spikes(segs, grid))
    ip = [pieces[0].indptr]
    for p in pieces[1:]:
        ip.append(p.indptr[1:] + ip[-1][-1])
    return BinnedCSR(
        np.concatenate(ip),
        np.concatenate([p.bins for p in pieces]),
        np.concatenate([p.counts for p in pieces]),
        grid.n_bins,
    )


# ---------------------------------------------------------------------------------------------
# orchestration


@dataclass(frozen=True)
class TrimConfig:
    """Options of a trim run (CLI flags map 1:1)."""

    bin_ms: int | None
    window: WindowSpec = WindowSpec()
    jobs: int = 1
    append: bool = False
    overwrite: bool = False
    split: str = ""
    chunk_windows: int = 64
    progress: bool = True


def _read_headers(paths: Sequence[Path]) -> list[tuple[str, dict[str, np.ndarray], list[SheetMeta]]]:
    from extract.spikefile import open_spikefile

    out = []
    for p in paths:
        with open_spikefile(p) as sf:
            # spike files keep the datastore's units (V1 in µm); the store holds mm
            metas = [
                SheetMeta(
                    s,
                    sf.neuron_ids(s),
                    mozaik_positions_to_mm(s, sf.positions(s)),
                    {k: v for k, v in sf.properties(s).items() if k in SHEET_PROPERTIES},
                )
                for s in sf.sheets
            ]
            out.append((str(p), dict(sf.presentations), metas))
    ref_path, _, ref = out[0] if out else ("", {}, [])
    for path, _, metas in out[1:]:
        if [m.name for m in metas] != [m.name for m in ref]:
            raise DataMismatchError(
                f"{path}: sheets {[m.name for m in metas]} differ from {ref_path} ({[m.name for m in ref]})"
            )
        for m, r in zip(metas, ref):
            if not np.array_equal(m.neuron_ids, r.neuron_ids):
                raise DataMismatchError(f"{path}: neuron ids of sheet {m.name} differ from {ref_path}")
    return out


def trim(inputs: Sequence[str | Path], out: str | Path, config: TrimConfig) -> Path:
    """Build (or extend, with ``append``) the store ``out`` from spike files; returns its path.

    Holds the store's write lock (:mod:`corticalrnn.locking`) throughout: a second writer of the
    same store fails with "in use by PID". Rerunning a finished trim with the same inputs and
    options is a no-op.
    """
    with exclusive_lock(out):
        return _trim(inputs, Path(out), config)


def _trim(inputs: Sequence[str | Path], out: Path, config: TrimConfig) -> Path:
    paths = [Path(p).resolve() for p in inputs]
    if not paths:
        raise CorticalRNNError("no input files given")
    for p in paths:
        if not p.is_file():
            raise CorticalRNNError(_not_an_input_file(p))
    if len(set(paths)) != len(paths):
        raise CorticalRNNError("an input file is given twice")
    headers = _read_headers(paths)
    sheets = headers[0][2]
    tables = [(p, t) for p, t, _ in headers]
    if config.append:
        if not out.exists():
            raise CorticalRNNError(f"{out}: --append needs an existing store")
        store = open_store(out)
        if config.bin_ms is not None and validate_bin_ms(config.bin_ms) != store.bin_ms:
            raise DataMismatchError(
                f"{out}: the store has {store.bin_ms} ms bins, --bin-ms {config.bin_ms} asked; "
                "stores of different bin sizes cannot be mixed"
            )
        win = ResolvedWindow.from_attrs(store.window_def, store.bin_ms, store.n_bins)
        check_compatible(
            store, StoreMeta(store.bin_ms, store.n_bins, store.window_def, sheets), str(headers[0][0])
        )
        target = out
        writer = StoreWriter.open(out)
    else:
        if config.bin_ms is None:
            raise CorticalRNNError("--bin-ms is required (a positive integer number of ms)")
        win = resolve_window(config.window, config.bin_ms, tables)
        meta = StoreMeta(win.bin_ms, win.n_bins, win.to_attrs(), sheets)
        if out.exists() and not config.overwrite:
            if _finished(out, paths, meta, config):
                return out
            raise CorticalRNNError(
                f"{out}: already exists with other inputs or options "
                "(use --append to add files, --overwrite to replace)"
            )
        target = temporary_name(out)
        if is_uncreated(target):  # killed while being created: nothing was committed
            shutil.rmtree(target)
        if target.exists():
            try:
                check_compatible(open_store(target), meta, f"{target} (partial store of an earlier run)")
            except CorticalRNNError as exc:
                raise CorticalRNNError(f"{exc}; remove {target} to start afresh") from None
            writer = StoreWriter.open(target)
        else:
            writer = StoreWriter.create(target, meta)
    _run(writer, paths, tables, win, config)
    carry_connections(writer, paths)
    if target != out:
        if out.exists():
            shutil.rmtree(out)
        target.rename(out)
    return out


def _run(
    writer: StoreWriter,
    paths: Sequence[Path],
    tables: Sequence[tuple[str, dict[str, np.ndarray]]],
    win: ResolvedWindow,
    config: TrimConfig,
) -> None:
    jobs = max(1, int(config.jobs))
    pool: cf.Executor | None = (
        cf.ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) if jobs > 1 else None
    )
    try:
        hashes = list(pool.map(sha256_file, paths)) if pool else [sha256_file(p) for p in paths]
        _verify_done(writer, hashes)
        done = writer.committed_sha256()
        extra = [src["path"] for src in writer.sources if src.get("sha256") not in set(hashes)]
        if extra and not config.append:
            raise CorticalRNNError(
                f"{writer.path} (partial store of an earlier run) holds inputs not given now: "
                f"{', '.join(extra[:3])}; rerun with the same inputs or remove {writer.path}"
            )
        todo = [i for i, h in enumerate(hashes) if h not in done]
        skipped = len(paths) - len(todo)
        plans = []
        for i in todo:
            table = tables[i][1]
            complete, valid = _coverage(table, win)
            keep = np.arange(complete.size) if win.incomplete == "pad" else np.flatnonzero(complete)
            plans.append((i, keep, complete, valid))
        total = sum(k.size for _, k, _, _ in plans)
        bar = tqdm(total=total, desc="trim", unit="win", file=sys.stderr, disable=not config.progress)
        if skipped:
            bar.write(f"trim: {skipped} input(s) already in {writer.path}, skipped")
        for i, keep, complete, valid in plans:
            table = tables[i][1]
            src = writer.add_source(
                path=str(paths[i]), sha256=hashes[i], kind="spikes-h5", n_presentations=int(complete.size)
            )
            for (a, b), events in _ordered(pool, str(paths[i]), _runs(keep, config.chunk_windows), win, jobs):
                writer.append(
                    WindowBlock(
                        image_id=table["image_id"][a:b],
                        trial=table["trial"][a:b],
                        presentation=np.arange(a, b),
                        padded=~complete[a:b],
                        valid_bins=valid[a:b],
                        events=events,
                        split=config.split,
                    ),
                    src,
                )
                bar.update(b - a)
            writer.commit()
        bar.close()
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _finished(out: Path, paths: Sequence[Path], meta: StoreMeta, config: TrimConfig) -> bool:
    """True when ``out`` is a finished store of exactly these inputs and options (a rerun)."""
    try:
        store = open_store(out)
        check_compatible(store, meta, str(out))
    except CorticalRNNError:
        return False
    if store.window_def.get("incomplete") != meta.window.get("incomplete"):
        return False
    recorded = sorted(str(s.get("sha256")) for s in store.sources)
    if recorded != sorted(sha256_file(p) for p in paths):
        return False
    if config.split and set(store.splits) - {""} != {config.split}:
        return False
    if config.progress:
        print(f"trim: {out} already holds these {len(paths)} input(s); nothing to do", file=sys.stderr)
    return True


def _verify_done(writer: StoreWriter, hashes: Sequence[str]) -> None:
    """Check the committed windows of every recorded input that is about to be skipped; redo the
    trailing ones that fail (roll back to before them), refuse when an earlier one fails."""
    given = set(hashes)
    bad = {}
    for i, src in enumerate(writer.sources):
        if src.get("sha256") in given:
            problem = writer.verify_source(i)
            if problem is not None:
                bad[i] = problem
    if not bad:
        return
    first = min(bad)
    if all(s.get("sha256") in given for s in writer.sources[first:]):
        print(
            f"trim: {writer.path}: input {writer.sources[first].get('path')} is recorded but "
            f"{bad[first]}; redoing it and the inputs after it",
            file=sys.stderr,
        )
        writer.rollback_to(first)
        return
    raise SchemaError(
        f"{writer.path}: input {writer.sources[first].get('path')} is recorded but {bad[first]}; "
        "the store is damaged (rebuild it)"
    )


def carry_connections(writer: StoreWriter, paths: Sequence[Path], chunk: int = 1 << 20) -> int:
    """Copy the connectome of the inputs into the store (streamed); returns synapses written (0: none).

    Spike files and the store share neuron order (trim keeps each sheet's neuron ids), so indices
    carry over unchanged. Skipped when the store already holds a complete connectome that matches.
    """
    from extract.spikefile import open_spikefile

    found: list[tuple[Path, list[Any]]] = []
    for p in paths:
        with open_spikefile(p) as sf:
            if sf.connections:
                found.append((p, sf.connections))
    if not found:
        return 0
    ref_path, ref = found[0]
    key = [(c.name, c.source, c.target, c.n_synapses) for c in ref]
    for p, conns in found[1:]:
        if [(c.name, c.source, c.target, c.n_synapses) for c in conns] != key:
            raise DataMismatchError(f"{p}: its connectome differs from that of {ref_path}")
    if writer.has_connections:
        if open_store(writer.path).projection_info() != key:
            raise DataMismatchError(f"{writer.path}: the store's connectome differs from that of {ref_path}")
        return 0

    def projections() -> Iterator[tuple[str, str, str, Iterator[dict[str, np.ndarray]], int]]:
        with open_spikefile(ref_path) as sf:
            for c in ref:
                chunks = (
                    sf.read_connections(c.name, a, min(a + chunk, c.n_synapses))
                    for a in range(0, c.n_synapses, chunk)
                )
                yield c.name, c.source, c.target, chunks, c.n_dropped

    return writer.write_connections(projections())


def _ordered(
    pool: cf.Executor | None, path: str, ranges: list[tuple[int, int]], win: ResolvedWindow, jobs: int
) -> Iterator[tuple[tuple[int, int], dict[str, PackedEvents]]]:
    """Bin ranges of one file, in order, with at most ``2 * jobs`` in flight."""
    if pool is None:
        for r in ranges:
            yield r, bin_presentations(path, r[0], r[1], win)
        return
    pending: list[tuple[tuple[int, int], cf.Future[dict[str, PackedEvents]]]] = []
    it = iter(ranges)
    for r in it:
        pending.append((r, pool.submit(bin_presentations, path, r[0], r[1], win)))
        if len(pending) >= 2 * jobs:
            break
    while pending:
        r, fut = pending.pop(0)
        nxt = next(it, None)
        if nxt is not None:
            pending.append((nxt, pool.submit(bin_presentations, path, nxt[0], nxt[1], win)))
        yield r, fut.result()


# ---------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs", nargs="+", type=Path, help="HDF5 spike files written by `corticalrnn extract`"
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="store to create (STORE.zarr)")
    parser.add_argument("--bin-ms", type=int, default=None, help="bin size, a positive integer number of ms")
    parser.add_argument(
        "--window",
        default=None,
        help="window definition, e.g. before=75,after=75,incomplete=drop|pad,remainder=error|drop "
        "(default: half of the blank before and after, drop incomplete, error on a remainder)",
    )
    parser.add_argument("-j", "--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--append", action="store_true", help="add the inputs to an existing store in place")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output store")
    parser.add_argument("--split", default="", help="label stored with every new window (e.g. train, test)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    cfg = TrimConfig(
        bin_ms=args.bin_ms,
        window=WindowSpec.parse(args.window),
        jobs=args.jobs,
        append=args.append,
        overwrite=args.overwrite,
        split=args.split,
        progress=not args.no_progress,
    )
    out = trim(args.inputs, args.output, cfg)
    store = open_store(out)
    w = store.window_def
    print(
        f"wrote {out}: {len(store)} windows ({int(store.windows.padded.sum())} padded) from "
        f"{len(store.sources)} file(s); {store.n_bins} bins of {store.bin_ms} ms covering "
        f"{w['t0_ms']:g} .. {w['t0_ms'] + w['length_ms']:g} ms from image onset (blank before "
        f"{w['before_ms']:g} ms, image {w['stimulus_ms']:g} ms, blank after {w['after_ms']:g} ms, "
        f"incomplete windows: {w['incomplete']}); {store.n_events} events"
    )
    return 0
