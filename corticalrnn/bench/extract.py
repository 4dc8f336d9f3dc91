"""`corticalrnn bench extract`: extraction throughput vs plain neo unpickling + dense 1 ms arrays.

Generates a Mozaik-format datastore with the cat V1 model's sheet proportions (scaled down),
then times, in the same run, (a) :func:`extract.datastore.extract_folder` (restricted
unpickling into light stand-ins, exact times to HDF5) and (b) the thesis-style baseline: plain
``pickle.load`` of every segment into neo objects and a dense 1 ms count array per segment built
with ``np.histogram`` per neuron. Reports presentations/s, spikes/s, the ratio and peak memory.

:func:`write_datastore` (the small generator used here and by the extract tests) writes segments
with real neo objects exactly as Mozaik pickles them, and returns its own record of the spikes.
"""

from __future__ import annotations

import argparse
import datetime
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from corticalrnn.bench.common import PeakRSS, time_call
from corticalrnn.sheets import ALL_SHEETS, FULL_MODEL_SIZES
from corticalrnn.tables import format_table, human_bytes

#: neurons per sheet in the full cat V1 model (thesis data)


@dataclass
class DatastoreSpec:
    """A generated datastore: sizes, presentations, rates and quirks to exercise the reader."""

    sizes: dict[str, int] = field(default_factory=lambda: {s: 6 for s in ALL_SHEETS})
    images: tuple[int, ...] = (50000, 50001)
    trials: int = 1
    rate_hz: float = 20.0
    blank_ms: float = 150.0
    image_ms: float = 560.0
    seed: int = 0
    id_key: str = "both"  # "source_id", "channel_id", "both" or "block" (ids only in the block)
    spike_at_t_stop: bool = True
    internal_stimulus: bool = True  # a NoStimulation presentation first, as Mozaik does
    end_blank: bool = True  # EndOfSimulationBlank at the end


#: (image_id, trial, part, sheet) -> spike times (float64 ms) per neuron
SpikeRecord = dict[tuple[int, int, str, str], list[np.ndarray]]


def _stimulus(name: str, duration: float, trial: int, image: int | None = None) -> str:
    fields = {"duration": duration, "name": name, "trial": trial, "module_path": "mozaik.stimuli"}
    if image is not None:
        fields["image_path"] = f"/projects/imagenet/val/{image}_img.png"
        fields["size"] = 11.0
    return "{" + ", ".join(f'"{k}":{v!r}' for k, v in sorted(fields.items())) + "}"


def write_datastore(folder: str | Path, spec: DatastoreSpec | None = None) -> SpikeRecord:
    """Write a Mozaik ``PickledDataStore`` folder; returns the spikes written (the ground truth).

    Segment file numbers are shuffled so that file-name order differs from recording order.
    """
    import neo
    import quantities as pq

    from extract.mozaik_types import PickledDataStoreNeoWrapper, dumps_with_mozaik_names

    spec = spec or DatastoreSpec()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    ids: dict[str, np.ndarray] = {}
    first = 3
    for sheet, n in spec.sizes.items():
        ids[sheet] = np.arange(first, first + n, dtype=np.int64)
        first += n + 10
    # presentations in recording order: (stimulus string, [(null, duration)], image, trial)
    stims: list[tuple[str, int | None, int]] = []
    if spec.internal_stimulus:
        stims.append((_stimulus("InternalStimulus", 50.0, 0), None, 0))
    for trial in range(spec.trials):
        for image in spec.images:
            stims.append((_stimulus("NaturalImage", spec.image_ms, trial, image), image, trial))
    if spec.end_blank:
        stims.append((_stimulus("EndOfSimulationBlank", spec.blank_ms, 0), None, 0))
    n_segments = 2 * len(stims) * len(spec.sizes)
    numbers = rng.permutation(n_segments)
    wrappers: list[Any] = []
    record: SpikeRecord = {}
    clock = datetime.datetime(2026, 1, 1, 12, 0, 0)
    k = 0
    blanks: dict[tuple[int, str], list[np.ndarray]] = {}
    for si, (stimulus, image, trial) in enumerate(stims):
        duration = spec.image_ms if image is not None else (50.0 if "Internal" in stimulus else spec.blank_ms)
        for null, dur in ((True, spec.blank_ms), (False, duration)):
            for sheet, n in spec.sizes.items():
                trains = []
                for _ in range(n):
                    count = rng.poisson(spec.rate_hz * dur / 1000.0)
                    t = np.sort(np.round(rng.uniform(0.0, dur, count), 1))
                    if spec.spike_at_t_stop and rng.random() < 0.05:
                        t = np.append(t, dur)
                    trains.append(t)
                if null:
                    blanks[(si, sheet)] = trains
                if image is not None:
                    record[(image, trial, "blank_before" if null else "stimulus", sheet)] = trains
                seg = neo.Segment(name="segment000", rec_datetime=clock)
                sts = []
                for i, t in enumerate(trains):
                    ann: dict[str, Any] = {"source_population": sheet, "source_index": i}
                    if spec.id_key in ("source_id", "both"):
                        ann["source_id"] = int(ids[sheet][i])
                    if spec.id_key in ("channel_id", "both"):
                        ann["channel_id"] = int(ids[sheet][i])
                    sts.append(neo.SpikeTrain(t * pq.ms, t_stop=dur * pq.ms, t_start=0 * pq.ms, **ann))
                seg.spiketrains = sts
                seg.annotate(sheet_name=sheet, stimulus=stimulus)
                ident = f"Segment{numbers[k]}"
                k += 1
                with open(folder / f"{ident}.pickle", "wb") as fh:
                    pickle.dump(seg, fh, protocol=4)
                wrappers.append(
                    PickledDataStoreNeoWrapper(
                        annotations={"sheet_name": sheet, "stimulus": stimulus},
                        name="segment000",
                        rec_datetime=clock,
                        identifier=ident,
                        null=null,
                        full=False,
                        datastore_path=str(folder),
                    )
                )
                clock += datetime.timedelta(milliseconds=1)
    # blank after an image = the blank recorded before the next presentation (its null segments)
    for i, (_, image, trial) in enumerate(stims[:-1]):
        _, next_image, next_trial = stims[i + 1]
        if image is not None:
            for sheet in spec.sizes:
                record[(image, trial, "blank_after", sheet)] = blanks[(i + 1, sheet)]
    block = neo.Block(name="datastore")
    block.annotations["neuron_ids"] = {s: ids[s] for s in spec.sizes}
    block.annotations["neuron_positions"] = {s: rng.uniform(-1, 1, (3, n)) for s, n in spec.sizes.items()}
    # Mozaik's wrapper is a neo Segment subclass; the stand-in is not, so bypass ObjectList's type check
    order = rng.permutation(len(wrappers))  # the block's list order is not the recording order
    block._segments._items = [wrappers[i] for i in order]
    (folder / "datastore.recordings.pickle").write_bytes(dumps_with_mozaik_names(block))
    (folder / "datastore.analysis.pickle").write_bytes(pickle.dumps([], protocol=4))
    (folder / "info").write_text("{'model_name': 'generated'}")
    return record


# ---------------------------------------------------------------------------------------------
# the benchmark


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scale", type=float, default=0.02,
                        help="fraction of the full model's neurons per sheet (default 0.02: 2163 neurons)")
    parser.add_argument("--images", type=int, default=4, help="NaturalImage presentations (default 4)")
    parser.add_argument("--rate-hz", type=float, default=4.5,
                        help="mean rate (default 4.5 Hz: ~350,000 spikes per 712 ms window at full scale)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per method (median reported)")
    parser.add_argument("--workdir", type=Path, default=None, help="where to generate (default: a temp dir)")


def _baseline(folder: Path) -> int:
    """Thesis-style reading: plain pickle into neo objects, one dense 1 ms count array per segment."""
    from extract.datastore import Datastore
    from extract.mozaik_types import MOZAIK_CLASSES

    class _Unpickler(pickle.Unpickler):  # plain unpickling; only Mozaik's class needs a stand-in
        def find_class(self, module: str, name: str) -> Any:
            return MOZAIK_CLASSES.get((module, name)) or super().find_class(module, name)

    store = Datastore(folder)  # same pairing as the fast path (not part of what differs)
    plan = store.plan(store.sheets)
    with open(folder / "datastore.recordings.pickle", "rb") as fh:
        _Unpickler(fh).load()
    total = 0
    for pres in plan:
        for refs in pres.parts.values():
            for ref in (refs or {}).values():
                with open(store.segment_path(ref), "rb") as fh:
                    seg = _Unpickler(fh).load()
                trains = seg.spiketrains
                duration = float(trains[0].t_stop.rescale("ms").magnitude)
                edges = np.arange(0.0, np.floor(duration) + 1.0)
                dense = np.zeros((len(trains), edges.size - 1), dtype=np.uint8)
                for i, st in enumerate(trains):
                    dense[i] = np.histogram(st.rescale("ms").magnitude, bins=edges)[0]
                total += int(dense.sum())
    return total


def run_bench(args: argparse.Namespace) -> dict:
    from extract.datastore import extract_folder

    sizes = {s: max(1, int(round(n * args.scale))) for s, n in FULL_MODEL_SIZES.items()}
    spec = DatastoreSpec(sizes=sizes, images=tuple(range(50000, 50000 + args.images)), trials=1,
                         rate_hz=args.rate_hz, seed=0)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp) / "bench_datastore"
        write_datastore(folder, spec)
        seg_sizes = [p.stat().st_size for p in folder.glob("Segment*.pickle")]
        out = Path(tmp) / "out.h5"
        result: dict[str, Any] = {}

        def ours() -> None:
            result["r"] = extract_folder(folder, out)

        t_ours = time_call(ours, repeats=args.repeats, warmup=1)
        n_pres, n_spikes = result["r"].n_presentations, result["r"].n_spikes
        import neo  # noqa: F401  (imported before timing; the baseline is too slow for a warm-up run)

        t_base = time_call(lambda: _baseline(folder), repeats=args.repeats, warmup=0)
        with PeakRSS() as mem_ours:
            ours()
        with PeakRSS() as mem_base:
            _baseline(folder)
        out_bytes = out.stat().st_size
    figures = {
        "neurons": sum(sizes.values()),
        "presentations": n_pres,
        "spikes": n_spikes,
        "segments": len(seg_sizes),
        "datastore_bytes": int(sum(seg_sizes)),
        "largest_segment_bytes": int(max(seg_sizes)),
        "output_bytes": int(out_bytes),
        "extract_median_s": t_ours.median,
        "baseline_median_s": t_base.median,
        "extract_presentations_per_s": n_pres / t_ours.median,
        "baseline_presentations_per_s": n_pres / t_base.median,
        "extract_spikes_per_s": n_spikes / t_ours.median,
        "baseline_spikes_per_s": n_spikes / t_base.median,
        "speedup": t_base.median / t_ours.median,
        "extract_peak_rss_growth_bytes": mem_ours.growth_bytes,
        "baseline_peak_rss_growth_bytes": mem_base.growth_bytes,
    }
    rows = [
        {"method": name, "median s": figures[f"{key}_median_s"],
         "presentations/s": figures[f"{key}_presentations_per_s"],
         "Mspikes/s": figures[f"{key}_spikes_per_s"] / 1e6,
         "peak RSS growth": human_bytes(figures[f"{key}_peak_rss_growth_bytes"])}
        for name, key in (("extract (safe, HDF5)", "extract"), ("baseline (neo + dense 1 ms)", "baseline"))
    ]  # fmt: skip
    print(
        f"datastore: {figures['neurons']} neurons, {n_pres} presentations, {n_spikes} spikes, "
        f"{len(seg_sizes)} segments, {human_bytes(figures['datastore_bytes'])} "
        f"(largest segment {human_bytes(figures['largest_segment_bytes'])})"
    )
    print(format_table(rows))
    print(f"speedup (median): {figures['speedup']:.2f}x")
    return figures
