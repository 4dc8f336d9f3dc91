"""Lazy reader of a Mozaik ``PickledDataStore`` folder and extraction of one folder to a spike file.

``datastore.recordings.pickle`` holds a neo Block whose segments are metadata-only wrappers
(sheet, stimulus string, ``null``, ``rec_datetime``, ``identifier``); the spikes of each live in
``<identifier>.pickle`` and are loaded one segment at a time through :mod:`extract.safe_pickle`.

Pairing (see docs/ARCHITECTURE.md, HDF5 spike-time file): segments are grouped into
presentations by their exact stimulus string; presentations are ordered by ``rec_datetime``
(never by file name). A ``NaturalImage`` presentation's image segments are paired with the
blank recorded before it (same stimulus string, ``null=True``) and the blank after it: the next
presentation's blank, or the ``EndOfSimulationBlank`` segment when that presentation has no blank.
"""

from __future__ import annotations

import ast
import json
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from corticalrnn.errors import CorticalRNNError, DataMismatchError, SchemaError
from corticalrnn.sheets import ALL_SHEETS, SHEET_INFO, normalize_sheet_name
from extract import safe_pickle
from extract.spikefile import (
    PARTS,
    PackedSpikes,
    Presentation,
    SheetLayout,
    SpikeFileWriter,
    WriterOptions,
)

RECORDINGS = "datastore.recordings.pickle"
IMAGE_STIMULUS = "NaturalImage"
END_BLANK = "EndOfSimulationBlank"
_NAME_RE = re.compile(r"""["']name["']\s*:\s*["']([^"']*)["']""")


@dataclass(frozen=True)
class SegmentRef:
    """Metadata of one recorded segment (one sheet, one stimulus, blank or not)."""

    identifier: str
    sheet: str
    stimulus: str
    null: bool
    rec_datetime: Any
    index: int  # position in the block's segment list


@dataclass(frozen=True)
class PlannedPresentation:
    """One NaturalImage presentation: its segments per sheet for each part (None: part not recorded)."""

    image_id: int
    trial: int
    order: int
    params: dict[str, Any]
    parts: dict[str, dict[str, SegmentRef] | None]


@dataclass(frozen=True)
class LoadedSegment:
    """Spikes of one segment: neuron ids, packed times (ms, from segment start), duration."""

    ids: np.ndarray
    packed: PackedSpikes
    duration_ms: float


def stimulus_name(stimulus: str) -> str:
    m = _NAME_RE.search(stimulus)
    return m.group(1) if m else ""


def parse_stimulus(stimulus: str, where: str) -> dict[str, Any]:
    """Mozaik stimulus string (a Python dict literal) -> dict, without evaluating code."""
    try:
        params = ast.literal_eval(stimulus)
    except (ValueError, SyntaxError) as exc:
        raise SchemaError(f"{where}: cannot parse stimulus string {stimulus[:120]!r} ({exc})") from None
    if not isinstance(params, dict):
        raise SchemaError(f"{where}: stimulus string is not a dict literal: {stimulus[:120]!r}")
    return params


def image_id_from_path(image_path: str, where: str) -> int:
    """``…/50000_img.png`` -> 50000 (Mozaik's ``image_path.split('/')[-1].split('_')[0]``)."""
    stem = str(image_path).replace("\\", "/").split("/")[-1].split("_")[0].split(".")[0]
    try:
        return int(stem)
    except ValueError:
        raise SchemaError(f"{where}: cannot read an image id from image_path {image_path!r}") from None


class Datastore:
    """A ``PickledDataStore`` folder: metadata loaded at once, segments on demand."""

    def __init__(self, path: str | os.PathLike[str], use_neo: bool = False) -> None:
        self.path = Path(path).resolve()
        self.use_neo = use_neo
        if not self.path.is_dir():
            raise CorticalRNNError(f"{self.path}: no such datastore folder")
        rec = self.path / RECORDINGS
        if not rec.is_file():
            raise SchemaError(f"{self.path}: not a Mozaik datastore (no {RECORDINGS})")
        block = safe_pickle.load(rec, use_neo)
        segments = getattr(block, "segments", None)
        if segments is None:
            raise SchemaError(f"{rec}: root object is {type(block).__name__}, not a neo Block")
        ann = dict(getattr(block, "annotations", None) or {})
        ids = ann.get("neuron_ids") or {}
        self.block_neuron_ids: dict[str, np.ndarray] = {
            str(k): np.asarray(v, dtype=np.int64).reshape(-1) for k, v in ids.items()
        }
        self.block_positions: dict[str, np.ndarray] = {
            str(k): np.asarray(v, dtype=np.float64) for k, v in (ann.get("neuron_positions") or {}).items()
        }
        #: sheet -> one annotation dict per neuron, in population order (Mozaik's neuron_annotations)
        self.block_annotations: dict[str, list[Any]] = {
            str(k): list(v or []) for k, v in (ann.get("neuron_annotations") or {}).items()
        }
        self.segments: list[SegmentRef] = []
        for i, seg in enumerate(segments):
            d = getattr(seg, "__dict__", {})
            a = d.get("annotations") or {}
            if "identifier" not in d or "sheet_name" not in a or "stimulus" not in a:
                raise SchemaError(
                    f"{rec}: segment {i} lacks identifier/sheet_name/stimulus (is this a PickledDataStore?)"
                )
            self.segments.append(
                SegmentRef(
                    identifier=str(d["identifier"]),
                    sheet=str(a["sheet_name"]),
                    stimulus=str(a["stimulus"]),
                    null=bool(d.get("null", False)),
                    rec_datetime=d.get("rec_datetime"),
                    index=i,
                )
            )
        present = {s.sheet for s in self.segments}
        self.sheets: list[str] = sorted(
            present, key=lambda s: (ALL_SHEETS.index(s) if s in ALL_SHEETS else len(ALL_SHEETS), s)
        )

    # -- pairing ---------------------------------------------------------------------------
    def _groups(self) -> list[tuple[str, dict[bool, dict[str, SegmentRef]]]]:
        """Segments grouped by stimulus string, in recording order."""
        groups: dict[str, dict[bool, dict[str, SegmentRef]]] = {}
        for s in self.segments:
            g = groups.setdefault(s.stimulus, {True: {}, False: {}})
            if s.sheet in g[s.null]:
                other = g[s.null][s.sheet].identifier
                raise DataMismatchError(
                    f"{self.path}: segments {other} and {s.identifier} both record sheet {s.sheet} "
                    f"(null={s.null}) for the same stimulus {s.stimulus[:100]!r}"
                )
            g[s.null][s.sheet] = s
        have_dt = all(s.rec_datetime is not None for s in self.segments)

        def key(item: tuple[str, dict[bool, dict[str, SegmentRef]]]) -> Any:
            refs = [*item[1][True].values(), *item[1][False].values()]
            # recording order; without rec_datetime fall back to the block's list order
            return min(r.rec_datetime for r in refs) if have_dt else min(r.index for r in refs)

        return sorted(groups.items(), key=key)

    def plan(self, sheets: Sequence[str]) -> list[PlannedPresentation]:
        """NaturalImage presentations with their blank before / stimulus / blank after segments."""
        groups = self._groups()
        out: list[PlannedPresentation] = []
        for rank, (stimulus, g) in enumerate(groups):
            if stimulus_name(stimulus) != IMAGE_STIMULUS:
                continue
            where = f"{self.path} (segment {next(iter(g[False].values() or g[True].values())).identifier})"
            params = parse_stimulus(stimulus, where)
            if "image_path" not in params:
                raise SchemaError(f"{where}: NaturalImage stimulus without image_path")
            stim = self._select(g[False], sheets, "image", stimulus, required=True)
            before = self._select(g[True], sheets, "blank before", stimulus, required=False)
            after = None
            if rank + 1 < len(groups):
                nstim, ng = groups[rank + 1]
                after = self._select(ng[True], sheets, "blank after", nstim, required=False)
                if after is None and stimulus_name(nstim) == END_BLANK:
                    after = self._select(ng[False], sheets, "blank after", nstim, required=False)
            out.append(
                PlannedPresentation(
                    image_id=image_id_from_path(params["image_path"], where),
                    trial=int(params.get("trial", 0)),
                    order=rank,
                    params=params,
                    parts={"blank_before": before, "stimulus": stim, "blank_after": after},
                )
            )
        if not out:
            raise DataMismatchError(f"{self.path}: no {IMAGE_STIMULUS} presentations in this datastore")
        return out

    def _select(
        self, by_sheet: dict[str, SegmentRef], sheets: Sequence[str], what: str, stimulus: str, required: bool
    ) -> dict[str, SegmentRef] | None:
        if not by_sheet and not required:
            return None
        missing = [s for s in sheets if s not in by_sheet]
        if missing:
            raise DataMismatchError(
                f"{self.path}: the {what} of stimulus {stimulus[:100]!r} has no segment for sheet(s) "
                f"{', '.join(missing)}"
            )
        return {s: by_sheet[s] for s in sheets}

    def resolve_sheets(self, requested: Sequence[str] | None) -> list[str]:
        if not requested:
            return list(self.sheets)
        out = []
        for name in requested:
            canonical = normalize_sheet_name(name) if name.replace("L23", "L2/3") in SHEET_INFO else name
            if canonical not in self.sheets:
                raise DataMismatchError(
                    f"{self.path}: sheet {name!r} is not in this datastore (sheets: {', '.join(self.sheets)})"
                )
            if canonical not in out:
                out.append(canonical)
        return out

    # -- segments --------------------------------------------------------------------------
    def segment_path(self, ref: SegmentRef) -> Path:
        return self.path / f"{ref.identifier}.pickle"

    def load_segment(self, ref: SegmentRef) -> LoadedSegment:
        """Load one ``SegmentN.pickle`` and pack its spike trains (sorted by neuron as recorded)."""
        path = self.segment_path(ref)
        seg = safe_pickle.load(path, self.use_neo)
        trains = getattr(seg, "spiketrains", None)
        if trains is None:
            raise SchemaError(f"{path}: not a neo Segment (got {type(seg).__name__})")
        data = [safe_pickle.spiketrain_data(st) for st in trains]
        if not data:
            raise DataMismatchError(f"{path}: segment of sheet {ref.sheet} has no spike trains")
        ids = self._neuron_ids(data, ref, path)
        durations = {round(t.duration_ms, 6) for t in data}
        if len(durations) != 1:
            raise DataMismatchError(f"{path}: spike trains have different durations {sorted(durations)}")
        counts = np.fromiter((t.times_ms.size for t in data), dtype=np.int64, count=len(data))
        times = np.concatenate([t.times_ms for t in data]) if counts.sum() else np.zeros(0)
        return LoadedSegment(ids=ids, packed=PackedSpikes(counts, times), duration_ms=data[0].duration_ms)

    def _neuron_ids(self, data: list[safe_pickle.TrainData], ref: SegmentRef, path: Path) -> np.ndarray:
        for key in ("source_id", "channel_id"):
            if all(key in t.annotations for t in data):
                return np.array([int(t.annotations[key]) for t in data], dtype=np.int64)
        block_ids = self.block_neuron_ids.get(ref.sheet)
        if block_ids is not None and block_ids.size == len(data):
            return block_ids.copy()
        raise SchemaError(
            f"{path}: spike trains carry no source_id/channel_id and the block has no matching "
            f"neuron_ids for sheet {ref.sheet}"
        )

    def population_rows(
        self, sheet: str, ids: np.ndarray, n_population: int | None = None
    ) -> np.ndarray | None:
        """Population index (Mozaik's neuron index in the sheet) of each of ``ids``, or None if unknown.

        The population order is the block's ``neuron_ids`` order; without them, the recorded order is
        taken when the population has exactly that many neurons.
        """
        block_ids = self.block_neuron_ids.get(sheet)
        if block_ids is None:
            if n_population is not None and n_population == ids.size:
                return np.arange(ids.size, dtype=np.int64)
            return None
        index = {int(n): i for i, n in enumerate(block_ids)}
        rows = [index.get(int(n)) for n in ids]
        if any(r is None for r in rows):
            return None
        return np.asarray(rows, dtype=np.int64)

    def properties(self, sheet: str, ids: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Numeric neuron annotations of ``ids`` (name -> float64 [N]) and name -> Mozaik key."""
        from extract.connections import numeric_annotations

        per_neuron = self.block_annotations.get(sheet)
        if not per_neuron:
            return {}, {}
        rows = self.population_rows(sheet, ids, len(per_neuron))
        if rows is None or (rows.size and rows.max() >= len(per_neuron)):
            return {}, {}
        cols, keys = numeric_annotations(per_neuron)
        return {name: np.ascontiguousarray(v[rows]) for name, v in cols.items()}, keys

    def positions(self, sheet: str, ids: np.ndarray) -> np.ndarray | None:
        """Positions [N, D] of ``ids`` from the block's ``neuron_positions`` (stored [D, N]), if any."""
        pos = self.block_positions.get(sheet)
        block_ids = self.block_neuron_ids.get(sheet)
        if pos is None or pos.ndim != 2:
            return None
        n_block = block_ids.size if block_ids is not None else ids.size
        if pos.shape[1] == n_block and pos.shape[0] in (1, 2, 3):
            pos = pos.T
        elif pos.shape[0] != n_block:
            return None
        if block_ids is None:
            return pos if pos.shape[0] == ids.size else None
        index = {int(n): i for i, n in enumerate(block_ids)}
        rows = [index.get(int(n)) for n in ids]
        if any(r is None for r in rows):
            return None
        return np.ascontiguousarray(pos[np.asarray(rows, dtype=np.int64)])


# ---------------------------------------------------------------------------------------------
# extraction of one folder


@dataclass
class ExtractOptions:
    """What to extract and how."""

    sheets: tuple[str, ...] | None = None  # None: every sheet in the datastore
    use_neo: bool = False  # unpickle into real neo objects (slower) instead of light stand-ins
    writer: WriterOptions = field(default_factory=WriterOptions)
    progress: bool = False  # a progress bar over presentations (stderr)
    connections: bool = True  # copy the Connections structures of datastore.analysis.pickle, if any


@dataclass
class ExtractResult:
    """Outcome of one folder (the CLI's summary row); ``error`` is set instead of raising in workers."""

    folder: str
    output: str
    n_presentations: int = 0
    n_spikes: int = 0
    n_synapses: int = 0
    seconds: float = 0.0
    skipped: bool = False
    error: str | None = None


class _SegmentCache:
    """Keeps the segments of the previous presentation's blank after (= this one's blank before)."""

    def __init__(self, store: Datastore) -> None:
        self.store = store
        self.kept: dict[str, LoadedSegment] = {}

    def get(self, ref: SegmentRef) -> LoadedSegment:
        hit = self.kept.get(ref.identifier)
        return hit if hit is not None else self.store.load_segment(ref)

    def keep(self, loaded: dict[str, LoadedSegment]) -> None:
        self.kept = loaded


def iter_presentations(
    store: Datastore, plan: list[PlannedPresentation], sheets: Sequence[str]
) -> Iterator[tuple[Presentation, dict[str, dict[str, PackedSpikes]], dict[str, np.ndarray]]]:
    """Yield (row, spikes[sheet][part], ids[sheet]) per presentation, loading segments one at a time."""
    cache = _SegmentCache(store)
    ids_ref: dict[str, tuple[np.ndarray, str]] = {}
    for pres in plan:
        spikes: dict[str, dict[str, PackedSpikes]] = {s: {} for s in sheets}
        durations: dict[str, float] = {}
        kept: dict[str, LoadedSegment] = {}
        for part in PARTS:
            refs = pres.parts[part]
            if refs is None:
                durations[part] = 0.0
                continue
            part_dur: set[float] = set()
            for sheet in sheets:
                ref = refs[sheet]
                seg = cache.get(ref)
                if part == "blank_after":
                    kept[ref.identifier] = seg
                packed = _align(seg, sheet, ref, store, ids_ref)
                spikes[sheet][part] = packed
                part_dur.add(round(seg.duration_ms, 6))
            if len(part_dur) != 1:
                raise DataMismatchError(
                    f"{store.path}: {part} of image {pres.image_id} trial {pres.trial} has different "
                    f"durations across sheets: {sorted(part_dur)} ms"
                )
            durations[part] = part_dur.pop()
        cache.keep(kept)
        row = Presentation(
            image_id=pres.image_id,
            trial=pres.trial,
            order=pres.order,
            stimulus=json.dumps(pres.params, sort_keys=True, default=str),
            blank_before_ms=durations["blank_before"],
            stimulus_ms=durations["stimulus"],
            blank_after_ms=durations["blank_after"],
        )
        yield row, spikes, {s: ids_ref[s][0] for s in sheets}


def _align(
    seg: LoadedSegment,
    sheet: str,
    ref: SegmentRef,
    store: Datastore,
    ids_ref: dict[str, tuple[np.ndarray, str]],
) -> PackedSpikes:
    """Check the segment's neuron ids against the sheet's first segment; reorder if only the order differs."""
    if sheet not in ids_ref:
        if np.unique(seg.ids).size != seg.ids.size:
            raise DataMismatchError(f"{store.segment_path(ref)}: duplicate neuron ids in sheet {sheet}")
        ids_ref[sheet] = (seg.ids, ref.identifier)
        return seg.packed
    ids, first = ids_ref[sheet]
    if np.array_equal(ids, seg.ids):
        return seg.packed
    if ids.size == seg.ids.size and np.array_equal(np.sort(ids), np.sort(seg.ids)):
        pos = {int(n): i for i, n in enumerate(seg.ids)}
        order = np.array([pos[int(n)] for n in ids])
        counts = seg.packed.counts
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        times = np.concatenate([seg.packed.times[starts[i] : starts[i] + counts[i]] for i in order])
        return PackedSpikes(counts[order], times)
    raise DataMismatchError(
        f"{store.segment_path(ref)}: neuron ids of sheet {sheet} differ from those in "
        f"{store.path / (first + '.pickle')} ({seg.ids.size} vs {ids.size} neurons, "
        f"{np.setxor1d(ids, seg.ids).size} ids not in both)"
    )


def extract_folder(
    folder: str | os.PathLike[str], output: str | os.PathLike[str], options: ExtractOptions | None = None
) -> ExtractResult:
    """Extract one datastore folder into one spike file (atomic: nothing under ``output`` on failure)."""
    options = options or ExtractOptions()
    t0 = time.perf_counter()
    store = Datastore(folder, use_neo=options.use_neo)
    sheets = store.resolve_sheets(options.sheets)
    plan = store.plan(sheets)
    output = Path(output)
    rows = iter_presentations(store, plan, sheets)
    first = next(rows)
    layouts = []
    for s in sheets:
        props, keys = store.properties(s, first[2][s])
        layouts.append(SheetLayout(s, first[2][s], store.positions(s, first[2][s]), props, keys))
    from tqdm import tqdm

    with (
        SpikeFileWriter(output, store.path, layouts, options.writer) as writer,
        tqdm(total=len(plan), desc=store.path.name, unit="presentation", leave=False,
             file=sys.stderr, disable=not options.progress) as bar,
    ):  # fmt: skip
        writer.append(first[0], first[1])
        bar.update(1)
        for row, spikes, _ in rows:
            writer.append(row, spikes)
            bar.update(1)
        n_spikes = writer.n_spikes
        n_synapses = (
            write_connections(store, writer, {s: first[2][s] for s in sheets}) if options.connections else 0
        )
    return ExtractResult(
        folder=str(store.path),
        output=str(output),
        n_presentations=len(plan),
        n_spikes=n_spikes,
        n_synapses=n_synapses,
        seconds=time.perf_counter() - t0,
    )


def write_connections(store: Datastore, writer: SpikeFileWriter, ids: dict[str, np.ndarray]) -> int:
    """Copy every stored projection between extracted sheets into ``writer`` (streamed, chunk by chunk).

    Mozaik indexes synapses by population index; they are mapped onto the file's neuron order.
    Synapses from or onto neurons that are not in the file are dropped and counted (``n_dropped``);
    a projection whose source or target sheet was not extracted is left out.
    """
    from extract.connections import read_connections

    total = 0
    for proj in read_connections(store.path, store.use_neo):
        if proj.source not in ids or proj.target not in ids:
            continue
        maps = {}
        for sheet in (proj.source, proj.target):
            n_pop = store.block_neuron_ids[sheet].size if sheet in store.block_neuron_ids else ids[sheet].size
            rows = store.population_rows(sheet, ids[sheet], n_pop)
            lookup = np.full(n_pop, -1, np.int64)
            if rows is not None:
                lookup[rows] = np.arange(rows.size)
            maps[sheet] = lookup
        dropped = [0]

        def remapped(proj=proj, maps=maps, dropped=dropped) -> Iterator[Any]:
            src, tgt = maps[proj.source], maps[proj.target]
            for c in proj.chunks():
                if c.pre.size and (
                    c.pre.min() < 0 or c.pre.max() >= src.size or c.post.min() < 0 or c.post.max() >= tgt.size
                ):
                    raise DataMismatchError(
                        f"{proj.where}: projection {proj.name} indexes neurons beyond the populations of "
                        f"{proj.source} ({src.size}) / {proj.target} ({tgt.size})"
                    )
                pre, post = src[c.pre], tgt[c.post]
                keep = (pre >= 0) & (post >= 0)
                dropped[0] += int(keep.size - keep.sum())
                if not keep.all():
                    c = type(c)(pre[keep], post[keep], c.weight[keep], c.delay[keep])
                    yield c
                else:
                    yield type(c)(pre, post, c.weight, c.delay)

        total += writer.add_connections(
            proj.name, proj.source, proj.target, remapped(), n_dropped=lambda d=dropped: d[0]
        )
    return total
