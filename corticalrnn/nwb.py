"""``corticalrnn export-nwb``: an extracted spike file (``extract.spikefile``) as an NWB file (pynwb).

What goes where (NWB 2.x, readable by pynwb, DANDI, spikeinterface, neo's NWBIO):

- **Units**: one row per neuron of every exported sheet; ``spike_times`` are the exact spike times
  (the file's float32 ms, converted to float64 s on the session timeline below); columns ``sheet``,
  ``neuron_id`` (Mozaik id), ``population`` (``L4 E`` ...; empty for LGN), ``position`` (``[D]``
  in the datastore's units: µm of cortex for V1, grid indices for LGN; ``NaN`` where a sheet has
  none) and one float column per Mozaik neuron annotation the file holds (``NaN`` where a sheet
  lacks it), with the Mozaik key in its description.
- **Trials**: one per NaturalImage presentation: ``start_time`` = start of the blank before the image,
  ``stop_time`` = end of the blank after it; ``image_id``, ``repeat`` (the file's ``trial``), ``order``
  (rank among all recorded presentations), ``stimulus_start_time`` / ``stimulus_stop_time``, and
  ``stimulus`` (the Mozaik stimulus parameters as JSON).
- **Epochs**: each ``blank_before`` / ``stimulus`` / ``blank_after`` interval, tagged so.
- **From an evaluation** (``--evaluation EVAL_DIR``, a folder of ``corticalrnn evaluate``), processing
  module ``misc`` (one of nwbinspector's recommended module names): table ``per_neuron_metrics``
  (one row per modelled V1 neuron, every column of the evaluation's ``per_neuron.csv``
  (:mod:`corticalrnn.results`), and ``unit``, the row of the neuron in ``units``) and, when the
  evaluation saved its predictions (``--save-predictions``), TimeSeries ``predicted_rates``
  (spikes/s, float32 ``[time, neurons]``; column j is row j of ``per_neuron_metrics``): the model's
  free-running rate in every bin of every test window that comes from this spike file, at the bin's
  start on the session timeline (``starting_time`` + ``rate`` when the windows lie back to back,
  else ``timestamps``). A window is
  matched to its presentation through the evaluation store's window table (the source file's
  sha256 and presentation row); without the store, by image id and repeat.
- **Session timeline**: presentations recorded back to back (consecutive ``order``) share their blank
  (Mozaik's blank after image *k* is the blank before image *k+1*; it is written once). Between
  presentations that were not consecutive (other stimuli were recorded in between and not extracted)
  the timeline leaves a gap of ``gap_s`` seconds, listed in ``invalid_times`` (no spikes there).

:func:`export_nwb` writes, :func:`read_units` reads back (pynwb), :func:`inspect` runs nwbinspector.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from corticalrnn.errors import CorticalRNNError

GAP_S = 1.0
RESOLUTION_MS = 0.1  # Mozaik's default simulation time step


@dataclass
class Timeline:
    """Start (s) of each presentation's blank before, and whether its blank after is written."""

    start_s: np.ndarray  # [P]
    write_after: np.ndarray  # bool [P]: False when the next presentation's blank before is the same data
    gaps: list[tuple[float, float]]  # unrecorded intervals (s)

    def part_start_s(self, part: str, before_ms: np.ndarray, stim_ms: np.ndarray) -> np.ndarray:
        if part == "blank_before":
            return self.start_s
        if part == "stimulus":
            return self.start_s + before_ms / 1e3
        return self.start_s + (before_ms + stim_ms) / 1e3


def _same_blank(sf: Any, p: int) -> bool:
    """True when presentation p's blank after holds exactly p+1's blank before (all sheets)."""
    for sheet in sf.sheets:
        a = sf.read_part(sheet, "blank_after", p, p + 1)
        b = sf.read_part(sheet, "blank_before", p + 1, p + 2)
        if not (np.array_equal(a.indptr, b.indptr) and np.array_equal(a.times, b.times)):
            return False
    return True


def timeline(sf: Any, gap_s: float = GAP_S) -> Timeline:
    """Lay the presentations of spike file ``sf`` on one session timeline (see the module docstring)."""
    pres = sf.presentations
    before, stim, after = (np.asarray(pres[c], np.float64) for c in
                           ("blank_before_ms", "stimulus_ms", "blank_after_ms"))
    order = np.asarray(pres["order"], np.int64)
    n = before.size
    start = np.zeros(n)
    write_after = np.ones(n, bool)
    gaps: list[tuple[float, float]] = []
    t = 0.0
    for p in range(n):
        if p > 0:
            q = p - 1
            shared = (order[p] == order[q] + 1 and abs(after[q] - before[p]) < 1e-9 and _same_blank(sf, q))
            end_q = start[q] + (before[q] + stim[q]) / 1e3
            if shared:
                write_after[q] = False
                t = end_q  # p's blank before starts where q's stimulus ended
            else:
                end_q += after[q] / 1e3
                gaps.append((end_q, end_q + gap_s))
                t = end_q + gap_s
        start[p] = t
    return Timeline(start, write_after, gaps)


def _sheet_spikes(sf: Any, sheet: str, tl: Timeline) -> list[np.ndarray]:
    """Per neuron of ``sheet``, all its spike times (float64 s, sorted) on the session timeline."""
    pres = sf.presentations
    before = np.asarray(pres["blank_before_ms"], np.float64)
    stim = np.asarray(pres["stimulus_ms"], np.float64)
    n = sf.n_neurons(sheet)
    neuron_parts, time_parts = [], []
    for part in ("blank_before", "stimulus", "blank_after"):
        csr = sf.read_part(sheet, part)
        counts = np.diff(csr.indptr)
        rows = np.repeat(np.arange(counts.size), counts)
        p, neuron = rows // n, rows % n
        t = tl.part_start_s(part, before, stim)[p] + csr.times.astype(np.float64) / 1e3
        if part == "blank_after":
            keep = tl.write_after[p]
            t, neuron = t[keep], neuron[keep]
        neuron_parts.append(neuron)
        time_parts.append(t)
    neuron = np.concatenate(neuron_parts)
    t = np.concatenate(time_parts)
    idx = np.lexsort((t, neuron))
    bounds = np.searchsorted(neuron[idx], np.arange(n + 1))
    t = t[idx]
    return [t[bounds[i]:bounds[i + 1]] for i in range(n)]


def _session_start(sf: Any) -> _dt.datetime:
    created = sf.attrs.get("created")
    try:
        when = _dt.datetime.fromisoformat(str(created))
    except (TypeError, ValueError):
        when = _dt.datetime.now(_dt.timezone.utc)
    return when if when.tzinfo else when.replace(tzinfo=_dt.timezone.utc)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _identifier(path: Path, digest: str | None = None) -> str:
    """Deterministic per input file content (re-exporting the same file gives the same identifier)."""
    return str(uuid.UUID((digest or _sha256(path))[:32]))


def _prediction_presentations(sf: Any, digest: str, report: dict[str, Any], pred: Any
                              ) -> tuple[np.ndarray, str]:
    """For every predicted window ``[images, trials]``: its presentation row in spike file ``sf``
    (-1: the window comes from another file), and how they were matched."""
    from corticalrnn.store import open_store

    pres_rows = -np.ones(pred.windows.shape, np.int64)
    store_path = report.get("store")
    try:
        st = open_store(store_path) if store_path else None
    except Exception:  # noqa: BLE001 - a moved or deleted store: match by image and repeat
        st = None
    if st is not None:
        sources = [src.get("sha256") for src in st.sources]
        src = np.asarray(st.windows.source, np.int64)[pred.windows]
        row = np.asarray(st.windows.presentation, np.int64)[pred.windows]
        mine = np.array([sources[int(i)] == digest for i in src.ravel()]).reshape(src.shape)
        pres_rows[mine] = row[mine]
        return pres_rows, f"matched through the window table of {store_path} (source sha256, presentation)"
    key = {(int(i), int(t)): p for p, (i, t) in enumerate(zip(sf.presentations["image_id"],
                                                              sf.presentations["trial"]))}
    for a, img in enumerate(pred.image_ids):
        for b, tr in enumerate(pred.trials[a]):
            pres_rows[a, b] = key.get((int(img), int(tr)), -1)
    return pres_rows, "matched by image id and repeat (the evaluation store was not available)"


def add_evaluation(nwb: Any, eval_dir: str | Path, sf: Any, tl: Timeline, digest: str) -> dict[str, Any]:
    """Add an evaluation's per-neuron metrics and (when saved) predicted rates to ``nwb`` (module
    docstring); returns ``{"neurons": N, "windows": matched windows, "note": ...}``."""
    from hdmf.common import DynamicTable, DynamicTableRegion, VectorData
    from pynwb import TimeSeries

    from corticalrnn.results import load_results

    saved = load_results(eval_dir, frame=False)
    report, table = saved.report, saved.per_neuron
    columns = report.get("per_neuron_columns") or {}
    units = nwb.units
    unit_row = {(str(sh), int(i)): r
                for r, (sh, i) in enumerate(zip(units["sheet"].data, units["neuron_id"].data))}
    rows = [unit_row.get((str(sh), int(i)), -1) for sh, i in zip(table["sheet"], table["neuron_id"])]
    if min(rows, default=0) < 0:
        missing = sorted({str(sh) for sh, r in zip(table["sheet"], rows) if r < 0})
        raise CorticalRNNError(f"{eval_dir}: the evaluated neurons of {', '.join(missing)} are not among "
                               f"the exported units (export their sheets; or is the evaluation of another "
                               f"network?)")
    module = nwb.create_processing_module(
        name="misc",
        description=f"E/I recurrent network model (corticalrnn) evaluated on held-out test presentations: "
                    f"checkpoint {report.get('checkpoint')}, store {report.get('store')}, step "
                    f"{report.get('step')}, {report.get('trials_per_image')} trial(s) per test image")
    n = len(rows)
    cols = [DynamicTableRegion(name="unit", description="this neuron's row in the units table",
                               data=rows, table=units)]
    for name, values in table.items():
        v = np.asarray(values)
        data = v.astype(str).tolist() if v.dtype == object else v
        cols.append(VectorData(name=name, description=columns.get(name, name), data=data))
    module.add(DynamicTable(
        name="per_neuron_metrics",
        description="per-neuron metrics of the model and of the baseline predictors on the test "
                    "presentations (corticalrnn.results; NaN: undefined for that neuron)", columns=cols))
    out: dict[str, Any] = {"neurons": n, "windows": 0, "note": "no saved predictions"}
    if saved.file("predictions") is None:
        return out
    pred = saved.predictions()
    pres_rows, how = _prediction_presentations(sf, digest, report, pred)
    window = report.get("window") or {}
    t0_s = float(window.get("t0_ms", 0.0)) / 1e3
    bin_s = float(pred.bin_ms) / 1e3
    n_t = pred.rates.shape[2]
    before = np.asarray(sf.presentations["blank_before_ms"], np.float64) / 1e3
    pieces, stamps = [], []
    for a, b in zip(*np.nonzero(pres_rows >= 0)):
        p = int(pres_rows[a, b])
        onset = float(tl.start_s[p]) + before[p]
        stamps.append(onset + t0_s + np.arange(n_t) * bin_s)
        pieces.append(np.asarray(pred.rates[a, b], np.float32) / np.float32(bin_s))
    out.update(windows=len(pieces), note=how)
    if not pieces:
        out["note"] = f"no predicted window comes from this spike file ({how})"
        return out
    t = np.concatenate(stamps)
    order = np.argsort(t, kind="stable")
    t, data = t[order], np.concatenate(pieces)[order]
    if np.any(np.diff(t) <= 0):
        raise CorticalRNNError(f"{eval_dir}: predicted windows overlap on the session timeline")
    regular = bool(np.allclose(np.diff(t), bin_s, rtol=0, atol=1e-9 * max(1.0, float(t[-1]))))
    timing: dict[str, Any] = ({"starting_time": float(t[0]), "rate": 1.0 / bin_s} if regular else
                              {"timestamps": t})  # back-to-back windows: a regular series
    module.add(TimeSeries(
        name="predicted_rates", data=data, unit="Hz", **timing,
        description=f"free-running predicted firing rate of each modelled V1 neuron (column j = row j of "
                    f"per_neuron_metrics) in {pred.bin_ms:g} ms bins (time: bin start) of the "
                    f"{len(pieces)} test windows from this recording, each driven by its own trial's LGN "
                    f"input; windows {how}",
        comments=f"windows {float(window.get('t0_ms', 0.0)):g} ms .. "
                 f"{float(window.get('t0_ms', 0.0)) + n_t * pred.bin_ms:g} ms from image onset"))
    return out


def _stimulus_columns(stimuli: list[str]) -> dict[str, list[Any]]:
    """The Mozaik stimulus parameters (JSON per presentation) as one column per scalar parameter
    (``stim_<name>``; numbers as float, NaN where missing; strings and None as str)."""
    params = [json.loads(s) for s in stimuli]
    keys = sorted({k for d in params for k in d})
    out: dict[str, list[Any]] = {}
    for k in keys:
        vals = [d.get(k) for d in params]
        if all(isinstance(v, int | float) and not isinstance(v, bool) or v is None for v in vals) and any(
                v is not None for v in vals):
            out[f"stim_{k}"] = [float("nan") if v is None else float(v) for v in vals]
        else:
            out[f"stim_{k}"] = ["" if v is None else v if isinstance(v, str) else json.dumps(v) for v in vals]
    return out


def export_nwb(spikefile: str | Path, out: str | Path, *, sheets: list[str] | None = None,
               gap_s: float = GAP_S, resolution_ms: float = RESOLUTION_MS,
               session_description: str | None = None, experimenter: list[str] | None = None,
               institution: str | None = None, evaluation: str | Path | None = None) -> Path:
    """Write the NWB file ``out`` from the extracted spike file ``spikefile``; returns ``out``.

    ``resolution_ms``: the simulator's time step (spike times lie on that grid; Mozaik's default is
    0.1 ms); an input neuron may spike twice in one step, which NWB accepts at that resolution.
    ``evaluation``: a ``corticalrnn evaluate`` output folder whose per-neuron metrics and saved
    predictions are added as processed data (:func:`add_evaluation`)."""
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.file import Subject

    from corticalrnn.schema import tool_version
    from corticalrnn.sheets import SHEET_INFO
    from extract.spikefile import open_spikefile

    spikefile, out = Path(spikefile), Path(out)
    if out.suffix != ".nwb":
        raise CorticalRNNError(f"{out}: NWB files end in .nwb")
    with open_spikefile(spikefile) as sf:
        chosen = sf.sheets if sheets is None else sheets
        missing = sorted(set(chosen) - set(sf.sheets))
        if missing:
            raise CorticalRNNError(f"{spikefile}: no sheet(s) {', '.join(missing)} "
                                   f"(it has {', '.join(sf.sheets)})")
        if sf.n_presentations == 0:
            raise CorticalRNNError(f"{spikefile}: no presentations to export")
        tl = timeline(sf, gap_s)
        digest = _sha256(spikefile)
        nwb = NWBFile(
            session_description=session_description or (
                f"Spiking activity of a simulated cat V1 (Mozaik model) during natural-image presentations, "
                f"extracted from {sf.source or spikefile.name} by {tool_version()}"),
            identifier=_identifier(spikefile, digest),
            session_start_time=_session_start(sf),
            experiment_description="In-silico experiment: Mozaik spiking model of cat primary visual "
                                   "cortex (LGN X_ON/X_OFF, V1 layers 4 and 2/3, excitatory and "
                                   "inhibitory) shown natural images separated by blanks.",
            source_script=f"{tool_version()} export-nwb",
            source_script_file_name="corticalrnn/nwb.py",
            keywords=["simulation", "Mozaik", "V1", "natural images", "spiking network"],
            experimenter=experimenter or None,
            institution=institution,
        )
        nwb.subject = Subject(subject_id="mozaik-model", species="Felis catus", sex="U", age="P0D",
                              description="Not an animal: a simulated cat V1 (Mozaik spiking network "
                                          "model); age and sex do not apply.")
        pres = sf.presentations
        before = np.asarray(pres["blank_before_ms"], np.float64) / 1e3
        stim = np.asarray(pres["stimulus_ms"], np.float64) / 1e3
        after = np.asarray(pres["blank_after_ms"], np.float64) / 1e3
        for name, desc in (("image_id", "natural image id (from the image file name)"),
                           ("repeat", "repetition of this image (the Mozaik trial)"),
                           ("order", "rank of the presentation among all recorded presentations"),
                           ("stimulus_start_time", "image onset (s)"),
                           ("stimulus_stop_time", "image offset (s)")):
            nwb.add_trial_column(name=name, description=desc)
        stim_cols = _stimulus_columns([str(x) for x in pres["stimulus"]])
        for name in stim_cols:
            nwb.add_trial_column(name=name, description=f"Mozaik stimulus parameter {name[5:]}")
        for p in range(sf.n_presentations):
            t0 = float(tl.start_s[p])
            nwb.add_trial(start_time=t0, stop_time=t0 + before[p] + stim[p] + after[p],
                          image_id=int(pres["image_id"][p]), repeat=int(pres["trial"][p]),
                          order=int(pres["order"][p]), stimulus_start_time=t0 + before[p],
                          stimulus_stop_time=t0 + before[p] + stim[p],
                          **{k: v[p] for k, v in stim_cols.items()})
        epochs = []
        for p in range(sf.n_presentations):
            t0 = float(tl.start_s[p])
            for part, a, b in (("blank_before", 0.0, before[p]), ("stimulus", before[p], before[p] + stim[p]),
                               ("blank_after", before[p] + stim[p], before[p] + stim[p] + after[p])):
                if b > a:
                    epochs.append((t0 + a, t0 + b, part, int(pres["image_id"][p])))
        for a, b, part, image in sorted(epochs):
            nwb.add_epoch(start_time=a, stop_time=b, tags=[part, f"image_{image}"])
        for a, b in tl.gaps:
            nwb.add_invalid_time_interval(start_time=a, stop_time=b)

        props: dict[str, str] = {}
        for sheet in chosen:
            for name, key in sf.property_keys(sheet).items():
                props.setdefault(name, key)
        dims = {sf.positions(s).shape[1] for s in chosen if sf.positions(s) is not None} or {0}
        dim = max(dims)
        from pynwb.misc import Units

        nwb.units = Units(name="units", description="neurons of the simulated network (exact spike times)",
                          resolution=resolution_ms / 1e3)
        nwb.add_unit_column(name="sheet", description="Mozaik sheet (X_ON, X_OFF, V1_Exc_L4, ...)")
        nwb.add_unit_column(name="neuron_id", description="Mozaik neuron id (unique within the model)")
        nwb.add_unit_column(name="population", description="V1 population (L4 E, L4 I, L2/3 E, L2/3 I); "
                                                           "empty for LGN inputs")
        if dim:
            nwb.add_unit_column(name="position", description=(
                "neuron position as the datastore stores it (x, y[, z]): µm of cortex for V1 sheets, "
                "grid indices in visual space for LGN; NaN where the sheet has none"))
        for name in props:
            nwb.add_unit_column(name=name, description=f"Mozaik neuron annotation {props[name]} "
                                                       f"(NaN where the sheet lacks it)")
        for sheet in chosen:
            ids = sf.neuron_ids(sheet)
            pos = sf.positions(sheet)
            sheet_props = sf.property_keys(sheet) and sf.properties(sheet)
            info = SHEET_INFO.get(sheet)
            pop = f"{info.layer} {'E' if info.excitatory else 'I'}" if info and info.layer != "LGN" else ""
            for i, times in enumerate(_sheet_spikes(sf, sheet, tl)):
                row: dict[str, Any] = {"spike_times": times, "sheet": sheet, "neuron_id": int(ids[i]),
                                       "population": pop}
                if dim:
                    v = np.full(dim, np.nan)
                    if pos is not None:
                        v[:pos.shape[1]] = pos[i]
                    row["position"] = v
                for name in props:
                    vals = sheet_props.get(name) if sheet_props else None
                    row[name] = float(vals[i]) if vals is not None else float("nan")
                nwb.add_unit(**row)
        if evaluation is not None:
            add_evaluation(nwb, evaluation, sf, tl, digest)
        tmp = out.with_name(out.stem + ".tmp.nwb")
        out.parent.mkdir(parents=True, exist_ok=True)
        with NWBHDF5IO(str(tmp), "w") as io:
            io.write(nwb)
        tmp.replace(out)
    return out


def read_units(path: str | Path) -> list[dict[str, Any]]:
    """The units of an exported file as dicts (``spike_times`` float64 s, ``sheet``, ``neuron_id`` ...)."""
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(path), "r") as io:
        nwb = io.read()
        df = nwb.units.to_dataframe()
        return [{"id": int(i), **{k: (np.asarray(v) if k in ("spike_times", "position") else v)
                                  for k, v in row.items()}} for i, row in df.iterrows()]


def inspect(path: str | Path) -> list[Any]:
    """nwbinspector's messages for ``path`` (empty: nothing to report)."""
    from nwbinspector import inspect_nwbfile

    return list(inspect_nwbfile(nwbfile_path=str(path)))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spikefile", type=Path, help="HDF5 spike file written by `corticalrnn extract`")
    parser.add_argument("-o", "--out", type=Path, required=True, help="output .nwb file")
    parser.add_argument("--sheets", nargs="+", default=None, help="only these sheets (default: all)")
    parser.add_argument("--gap-s", type=float, default=GAP_S,
                        help="seconds left between presentations not recorded back to back (default 1)")
    parser.add_argument("--resolution-ms", type=float, default=RESOLUTION_MS,
                        help="the simulator's time step (Units resolution; default 0.1, Mozaik's default)")
    parser.add_argument("--experimenter", action="append", default=None, help="'Last, First' (repeatable)")
    parser.add_argument("--institution", default=None)
    parser.add_argument("--evaluation", type=Path, default=None, metavar="EVAL_DIR",
                        help="also write this `corticalrnn evaluate` folder's per-neuron metrics and saved "
                             "predictions (evaluate --save-predictions) as processed data")
    parser.add_argument("--inspect", action="store_true", help="run nwbinspector on the result")


def run(args: argparse.Namespace) -> int:
    out = export_nwb(args.spikefile, args.out, sheets=args.sheets, gap_s=args.gap_s,
                     resolution_ms=args.resolution_ms, experimenter=args.experimenter,
                     institution=args.institution, evaluation=args.evaluation)
    print(f"wrote {out}")
    if args.inspect:
        messages = inspect(out)
        for m in messages:
            print(f"nwbinspector: {m.importance.name} {m.check_function_name}: {m.message} "
                  f"({m.object_type} {m.object_name})", file=sys.stderr)
        print(f"nwbinspector: {len(messages)} message(s)")
        if any(m.importance.name in ("CRITICAL", "PYNWB_VALIDATION", "ERROR") for m in messages):
            return 1
    return 0
