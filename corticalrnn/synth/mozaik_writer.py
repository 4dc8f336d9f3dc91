"""Write a Mozaik ``PickledDataStore`` folder (the on-disk layout of ``../shared/data/mozaik/*``).

Uses neo and quantities, never Mozaik. Layout written, as Mozaik (with PyNN 0.13 / NEST) does:

- ``datastore.recordings.pickle``: a neo ``Block`` with annotations ``neuron_ids``,
  ``neuron_positions`` (``[3, N]`` per sheet), ``neuron_annotations``, ``model_parameters``,
  ``sheet_parameters``, ``experiment_parameters``, ``simulation_log``; its ``segments`` are
  ``mozaik.storage.neo_neurotools_wrapper.PickledDataStoreNeoWrapper`` metadata objects
  (written from :class:`extract.mozaik_types.PickledDataStoreNeoWrapper`).
- ``SegmentN.pickle``: one plain neo ``Segment`` per (stimulus, sheet, blank-or-not): spike trains
  sorted by neuron id, ms, ``t_start = 0``, ``t_stop`` = duration, annotations ``source_population``,
  ``source_index``, ``channel_id`` and ``source_id``; the PyNN ``SpikeTrainList`` also keeps the
  absolute-time arrays, as PyNN leaves them.
- per stimulus: 6 stimulus segments (one per sheet), then 6 blank segments (``null=True``,
  the blank recorded *before* that stimulus, carrying its stimulus string); blank ``rec_datetime``
  earlier than the stimulus'.
- ``neuron_annotations``: per sheet one ``OrderedDict`` per neuron (population order), holding the
  annotations given to the writer under Mozaik's keys (``LGNAfferentOrientation`` ...) as numpy
  float64 scalars, as ``Sheet.get_neuron_annotations`` returns them; empty dicts otherwise.
- ``datastore.analysis.pickle``: the list of analysis data structures: empty, or one
  ``mozaik.analysis.data_structures.Connections`` per projection given to :meth:`finish`
  (``Connector.store_connections``: ``weights`` / ``delays`` float64 ``[n, 3]`` arrays of
  (pre index, post index, value), ``source_size``, ``target_size`` and the parameters
  ``proj_name``, ``source_name``, ``target_name``, ``identifier='Connections'``,
  ``analysis_algorithm='connection storage'``, kept as param 1.x keeps them
  (``_<name>_param_value``)); ``datastore.sensory.stimulus.pickle`` (empty ``OrderedDict``),
  ``info``, ``parameters.json``.

Everything is written into a temporary sibling folder that is renamed to the final name at the end.
"""

from __future__ import annotations

import collections
import datetime
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from corticalrnn.errors import CorticalRNNError
from corticalrnn.sheets import ALL_SHEETS, INPUT_SHEETS
from extract.mozaik_types import (
    AnalysisDataStructure,
    Connections,
    PickledDataStoreNeoWrapper,
    SInteger,
    SString,
    dump_with_mozaik_names,
)

PICKLE_PROTOCOL = 4
_IMAGE_DIR = "/projects/imagenet/val_grayscale110x110"


def stimulus_string(name: str, duration_ms: float, trial: int, image_id: int | None = None) -> str:
    """A Mozaik stimulus string (``str(stimulus)``): module path first, then sorted parameters."""
    if name == "NaturalImage":
        if image_id is None:
            raise ValueError("NaturalImage needs an image id")
        module = "mozaik.stimuli.vision.topographica_based"
        params: dict[str, object] = {
            "background_luminance": 50.0,
            "density": 10.0,
            "direct_stimulation_name": None,
            "direct_stimulation_parameters": None,
            "duration": float(duration_ms),
            "frame_duration": 7.0,
            "image_path": f"{_IMAGE_DIR}/{int(image_id)}_img.png",
            "location_x": 0.0,
            "location_y": 0.0,
            "name": "NaturalImage",
            "size": 11.0,
            "size_x": 11.0,
            "size_y": 11.0,
            "trial": int(trial),
        }
    else:
        module = "mozaik.stimuli"
        params = {
            "direct_stimulation_name": None,
            "direct_stimulation_parameters": None,
            "duration": float(duration_ms),
            "frame_duration": float(duration_ms),
            "name": name,
            "trial": int(trial),
        }
    body = ", ".join(f'"{k}":{params[k]!r}' for k in sorted(params))
    return '{"module_path" :"' + module + '",' + body + "}"


@dataclass(frozen=True)
class SheetLayout:
    """A recorded population: NEST ids (sorted) and Mozaik positions ``[3, N]``."""

    name: str
    ids: np.ndarray  # int64 [N], increasing
    positions: np.ndarray  # float64 [3, N]
    structure: str  # "Grid2D" or "RandomStructure"

    def description(self) -> str:
        return (
            f'Population "{self.name}"\n    Structure   : {self.structure}\n'
            f"    Local cells : {len(self.ids)}\n    Cell type   : IF_cond_exp\n"
            f"    ID range    : {self.ids[0]}-{self.ids[-1]}\n    First cell on this node:\n"
            f"      ID: {self.ids[0]}\n      {{}}"
        )


Spikes = tuple[np.ndarray, np.ndarray]  # (neuron index within the sheet, time ms in (0, duration])


@dataclass(frozen=True)
class ProjectionSpec:
    """One projection to store as a Mozaik ``Connections`` structure (indices: population order)."""

    name: str
    source: str
    target: str
    pre: np.ndarray  # int [M], index into the source sheet
    post: np.ndarray  # int [M], index into the target sheet
    weight: np.ndarray  # float [M], magnitude (Mozaik: nS, sign by the source sheet)
    delay: np.ndarray  # float [M], ms


def _parameter(cls: type, name: str, owner: type, doc: str) -> object:
    """A param 1.x parameter object's slot state, as pickled inside ``expanded_paramset_params_dict``."""
    return cls(
        name=name,
        _internal_name=f"_{name}_param_value",
        default=None,
        doc=doc,
        precedence=None,
        instantiate=True,
        constant=False,
        readonly=False,
        pickle_default_value=True,
        allow_None=True,
        per_instance=True,
        owner=owner,
        units=None,
        period=None,
    )


def connections_structure(
    spec: ProjectionSpec, sizes: Mapping[str, tuple[int, int]], root: str
) -> Connections:
    """The ``Connections`` object Mozaik's ``Connector.store_connections`` adds to the datastore."""
    pre = np.asarray(spec.pre, np.float64)
    post = np.asarray(spec.post, np.float64)
    weights = np.column_stack([pre, post, np.asarray(spec.weight, np.float64)])
    delays = np.column_stack([pre, post, np.asarray(spec.delay, np.float64)])
    params = {
        "name": "Connections",
        "identifier": "Connections",
        "analysis_algorithm": "connection storage",
        "neuron": None,
        "sheet_name": None,
        "stimulus_id": None,
        "proj_name": spec.name,
        "source_name": spec.source,
        "target_name": spec.target,
    }
    declared = {
        "name": (SString, AnalysisDataStructure),
        "identifier": (SString, AnalysisDataStructure),
        "analysis_algorithm": (SString, AnalysisDataStructure),
        "neuron": (SInteger, AnalysisDataStructure),
        "sheet_name": (SString, AnalysisDataStructure),
        "stimulus_id": (SString, AnalysisDataStructure),
        "proj_name": (SString, Connections),
        "source_name": (SString, Connections),
        "target_name": (SString, Connections),
    }
    state: dict[str, object] = {f"_{k}_param_value": v for k, v in params.items()}
    state.update(
        initialized=True,
        _instance__params={},
        cached_get_param_values=None,
        module_path="mozaik.analysis.data_structures",
        paramset_params_names=[],
        expanded_paramset_params=[],
        expanded_params_names=[],
        expanded_paramset_params_dict={
            k: _parameter(cls, k, owner, f"the {k} parameter") for k, (cls, owner) in declared.items()
        },
        datastore_path=root,
        tags=[],
        weights=weights,
        delays=delays,
        source_size=sizes[spec.source],
        target_size=sizes[spec.target],
    )
    return Connections(**state)


class MozaikDatastoreWriter:
    """Streams stimuli into a new datastore folder; use as a context manager, then :meth:`finish`.

    >>> with MozaikDatastoreWriter(out, sheets) as w:   # doctest: +SKIP
    ...     w.add_stimulus(stim_string, blank_spikes, 150.0, stim_spikes, 560.0)
    ...     w.finish()
    """

    def __init__(
        self,
        outdir: str | os.PathLike,
        sheets: Mapping[str, SheetLayout],
        *,
        start: datetime.datetime = datetime.datetime(2024, 1, 1, 12, 0, 0),
        model_name: str = "SyntheticCortex",
        run_name: str = "corticalrnn-synth",
        null_stimulus_period: float = 150.0,
        experiments: list[tuple[str, str]] | None = None,
        annotations: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    ) -> None:
        self.outdir = Path(outdir).absolute()
        unknown = [s for s in sheets if s not in ALL_SHEETS]
        if unknown:
            raise CorticalRNNError(f"unknown sheet names {unknown}; known: {', '.join(ALL_SHEETS)}")
        for s, lay in sheets.items():
            ids = np.asarray(lay.ids)
            if ids.ndim != 1 or len(ids) == 0 or np.any(np.diff(ids) <= 0):
                raise CorticalRNNError(f"sheet {s}: neuron ids must be a non-empty increasing 1-D array")
            if np.asarray(lay.positions).shape != (3, len(ids)):
                raise CorticalRNNError(f"sheet {s}: positions must have shape (3, {len(ids)})")
        check_output_folder(self.outdir)
        self.annotations: dict[str, dict[str, np.ndarray]] = {}
        for s, keys in (annotations or {}).items():
            if s not in sheets:
                continue
            n = len(sheets[s].ids)
            self.annotations[s] = {}
            for key, values in keys.items():
                v = np.asarray(values, np.float64)
                if v.shape != (n,):
                    raise CorticalRNNError(
                        f"sheet {s}: annotation {key} must have shape ({n},), got {v.shape}"
                    )
                self.annotations[s][str(key)] = v
        self.sheets = dict(sheets)
        self._clock_ms = 0.0
        self._start = start
        self._null_period = float(null_stimulus_period)
        self._model_name = model_name
        self._run_name = run_name
        self._experiments = experiments or [
            ("<class 'mozaik.experiments.NoStimulation'>", "{'duration': 50}"),
            ("<class 'mozaik.experiments.vision.MeasureNaturalImages'>", "{...}"),
        ]
        self._wrappers: list[PickledDataStoreNeoWrapper] = []
        self._n_files = 0
        self.n_spikes = 0
        self.outdir.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(
            tempfile.mkdtemp(prefix=f".{self.outdir.name}.", suffix=".tmp", dir=self.outdir.parent)
        )
        self._done = False

    # -- context manager: remove the temporary folder unless finish() ran
    def __enter__(self) -> MozaikDatastoreWriter:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._done:
            self.abort()

    def abort(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._done = True

    def add_stimulus(
        self,
        stimulus: str,
        blank: Mapping[str, Spikes],
        blank_ms: float,
        stim: Mapping[str, Spikes],
        stim_ms: float,
    ) -> None:
        """Record one stimulus: the blank before it (``null``) and the stimulus itself, every sheet.

        ``blank``/``stim`` map sheet name -> (neuron index in the sheet, spike time in ms relative to
        the segment start, in ``(0, duration]``), any order.
        """
        for part in (blank, stim):
            missing = set(self.sheets) - set(part)
            if missing:
                raise CorticalRNNError(f"spikes missing for sheets {sorted(missing)}")
        t_blank = self._clock_ms
        t_stim = t_blank + blank_ms
        # Mozaik writes the stimulus segments first, then the blank ones (file numbering).
        for null, spikes, t0, dur in ((False, stim, t_stim, stim_ms), (True, blank, t_blank, blank_ms)):
            for k, sheet in enumerate(self.sheets):
                # recording time: the segment's own simulated time, one sheet after the other (µs apart)
                when = self._start + datetime.timedelta(milliseconds=t0, microseconds=k)
                self._write_segment(sheet, stimulus, null, spikes[sheet], t0, float(dur), when)
        self._clock_ms = t_stim + stim_ms

    def _write_segment(
        self,
        sheet: str,
        stimulus: str,
        null: bool,
        spikes: Spikes,
        t0_ms: float,
        dur: float,
        when: datetime.datetime,
    ) -> None:
        import neo
        import quantities as pq
        from neo.core.spiketrainlist import SpikeTrainList

        lay = self.sheets[sheet]
        idx, times = (np.asarray(a) for a in spikes)
        n = len(lay.ids)
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            raise CorticalRNNError(f"sheet {sheet}: spike neuron index out of range")
        if len(times) and (times.min() < 0 or times.max() > dur):
            raise CorticalRNNError(f"sheet {sheet}: spike times outside [0, {dur}] ms")
        order = np.lexsort((times, idx))
        idx, times = idx[order], times[order].astype(np.float64)
        bounds = np.searchsorted(idx, np.arange(n + 1))
        identifier = f"Segment{self._n_files}"
        self._n_files += 1
        desc = lay.description()
        ann = {"sheet_name": sheet, "stimulus": stimulus}

        seg = neo.Segment(name="segment000", description=desc, rec_datetime=when)
        seg.annotations.update(ann)
        block = neo.Block(name=sheet, description=desc, rec_datetime=when)
        block.annotations.update(
            size=n,
            first_index=0,
            last_index=n,
            first_id=int(lay.ids[0]),
            last_id=int(lay.ids[-1]),
            label=sheet,
            simulator="NEST",
            dt=0.1,
            mpi_processes=1,
        )
        block.segments.append(seg)
        seg.block = block

        t_start = pq.Quantity(0.0, "ms")
        t_stop = pq.Quantity(dur, "ms")
        rate = pq.Quantity(1.0, "Hz")
        ms_dim = t_start.dimensionality
        trains = []
        for i in range(n):
            # SpikeTrain(...) validates every train (≈0.1-1 ms each); a view with the attributes neo's
            # constructor would set pickles identically and is ~20x faster.
            st = times[bounds[i] : bounds[i + 1]].view(neo.SpikeTrain)
            st._dimensionality = ms_dim
            st.t_start, st.t_stop, st.sampling_rate = t_start, t_stop, rate
            st.waveforms = st.left_sweep = st.unit = None
            st.name = st.file_origin = st.description = None
            st.array_annotations = neo.core.dataobject.ArrayDict(len(st))
            st.annotations = {
                "source_population": sheet,
                "source_index": np.int64(i),
                "channel_id": np.int64(lay.ids[i]),
                "source_id": int(lay.ids[i]),
            }
            st.segment = seg
            trains.append(st)
        # PyNN's SpikeTrainList keeps the absolute-time arrays next to the materialised trains.
        abs_order = np.argsort(times, kind="stable")
        stl = SpikeTrainList.from_spike_time_array(
            times[abs_order] + t0_ms,
            lay.ids[idx[abs_order]],
            np.asarray(lay.ids, np.int64),
            t_stop=pq.Quantity(t0_ms + dur, "ms"),
            units="ms",
            t_start=pq.Quantity(t0_ms, "ms"),
            source_population=sheet,
            source_index=np.arange(n),
        )
        stl._items = trains
        stl.segment = seg
        seg._spiketrains = stl
        with open(self._tmp / f"{identifier}.pickle", "wb") as f:
            pickle.dump(seg, f, protocol=PICKLE_PROTOCOL)
        self.n_spikes += len(times)
        self._wrappers.append(
            PickledDataStoreNeoWrapper(
                init_sp=2,
                init_as=True,
                annotations=dict(ann),
                name="segment000",
                description=desc,
                file_origin=None,
                block=None,
                _analogsignals=None,
                _irregularlysampledsignals=None,
                _spiketrains=None,
                _events=None,
                _epochs=None,
                _channelviews=None,
                _imagesequences=None,
                file_datetime=None,
                rec_datetime=when,
                index=None,
                identifier=identifier,
                null=null,
                full=False,
                datastore_path=str(self.outdir),
            )
        )

    def _neuron_annotations(self, sheet: str) -> list[collections.OrderedDict]:
        keys = self.annotations.get(sheet, {})
        n = len(self.sheets[sheet].ids)
        return [collections.OrderedDict((k, np.float64(v[i])) for k, v in keys.items()) for i in range(n)]

    def finish(self, connections: Sequence[ProjectionSpec] = ()) -> Path:
        """Write the metadata files and move the folder to its final name; returns that path.

        ``connections`` become ``Connections`` structures in ``datastore.analysis.pickle`` (only
        projections between recorded sheets).
        """
        import neo
        from neo.core.objectlist import ObjectList
        from neo.core.spiketrainlist import SpikeTrainList

        block = neo.Block()
        ids = collections.OrderedDict((s, np.asarray(lay.ids, np.int64)) for s, lay in self.sheets.items())
        pos = collections.OrderedDict(
            (s, np.asarray(lay.positions, np.float64)) for s, lay in self.sheets.items()
        )
        block.annotations.update(
            neuron_ids=ids,
            neuron_positions=pos,
            neuron_annotations=collections.OrderedDict((s, self._neuron_annotations(s)) for s in self.sheets),
            model_parameters=repr({"null_stimulus_period": self._null_period, "name": self._model_name}),
            sheet_parameters=repr({s: {"name": s} for s in self.sheets}),
            experiment_parameters=list(self._experiments),
            simulation_log={"explosion_detected": False},
        )
        contents = _segment_contents()
        for w in self._wrappers:
            d = w.__dict__
            d["block"] = block
            for key, allowed in contents.items():
                d[key] = ObjectList(allowed, parent=w)
            stl = SpikeTrainList()
            stl.segment = w
            d["_spiketrains"] = stl
        # neo's ObjectList only accepts neo Segments; the stand-ins go in as Mozaik's wrappers would.
        block._segments._items = list(self._wrappers)
        with open(self._tmp / "datastore.recordings.pickle", "wb") as f:
            dump_with_mozaik_names(block, f, protocol=PICKLE_PROTOCOL)
        sizes = {s: _sheet_size(lay) for s, lay in self.sheets.items()}
        analysis = [
            connections_structure(c, sizes, str(self.outdir))
            for c in connections
            if c.source in self.sheets and c.target in self.sheets
        ]
        with open(self._tmp / "datastore.analysis.pickle", "wb") as f:
            dump_with_mozaik_names(analysis, f, protocol=PICKLE_PROTOCOL)
        del analysis
        with open(self._tmp / "datastore.sensory.stimulus.pickle", "wb") as f:
            pickle.dump(collections.OrderedDict(), f, protocol=PICKLE_PROTOCOL)
        (self._tmp / "info").write_text(
            repr(
                {
                    "model_class": self._run_name,
                    "simulation_run_name": self._run_name,
                    "model_name": self._model_name,
                }
            )
        )
        (self._tmp / "parameters.json").write_text(json.dumps({"null_stimulus_period": self._null_period}))
        check_output_folder(self.outdir)
        if self.outdir.exists():
            self.outdir.rmdir()  # empty (checked): replace it
        os.replace(self._tmp, self.outdir)
        self._done = True
        return self.outdir

    @property
    def n_segments(self) -> int:
        return len(self._wrappers)


def _segment_contents() -> dict[str, tuple[type, ...]]:
    import neo

    return {
        "_analogsignals": (neo.AnalogSignal,),
        "_irregularlysampledsignals": (neo.IrregularlySampledSignal,),
        "_events": (neo.Event,),
        "_epochs": (neo.Epoch,),
        "_channelviews": (neo.ChannelView,),
        "_imagesequences": (neo.ImageSequence,),
    }


def _sheet_size(lay: SheetLayout) -> tuple[int, int]:
    """(size_x, size_y) recorded in Connections (Mozaik: the sheet's extent; here: grid side or N x 1)."""
    n = len(lay.ids)
    if lay.structure == "Grid2D":
        side = int(round(np.sqrt(n)))
        if side * side == n:
            return side, side
    return n, 1


def check_output_folder(outdir: Path) -> None:
    """Refuse an existing non-empty folder (or a file) at ``outdir``."""
    if outdir.exists():
        if not outdir.is_dir():
            raise CorticalRNNError(f"{outdir}: exists and is not a folder")
        if any(outdir.iterdir()):
            raise CorticalRNNError(f"{outdir}: output folder exists and is not empty; choose a new one")


def mozaik_positions(xy_mm: np.ndarray, sheet: str, grid_side: int | None = None) -> np.ndarray:
    """Positions as Mozaik stores them, ``[3, N]``: V1 in µm of cortex (z = 0), LGN as grid indices."""
    xy_mm = np.asarray(xy_mm, np.float64)
    if sheet in INPUT_SHEETS:
        side = grid_side or int(round(np.sqrt(len(xy_mm))))
        k = np.arange(len(xy_mm))
        return np.stack([k % side, k // side, np.zeros(len(k))]).astype(np.float64)
    return np.stack([xy_mm[:, 0] * 1000.0, xy_mm[:, 1] * 1000.0, np.zeros(len(xy_mm))])
