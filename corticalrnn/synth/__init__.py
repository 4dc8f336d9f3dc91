"""Built-in ground-truth cortex: simulate it (``cortex``), write a Mozaik datastore
(``mozaik_writer``) and its ground truth beside it (``truth``).

``generate(outdir, image_ids, trials, seed=..., config=...)`` does all three.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from corticalrnn.errors import CorticalRNNError
from corticalrnn.sheets import (
    ALL_SHEETS,
    INPUT_SHEETS,
    SHEET_INFO,
    V1_SHEETS,
    normalize_sheet_name,
    sort_sheets,
)
from corticalrnn.synth.cortex import (
    CortexConfig,
    ElementResult,
    Network,
    Stimulus,
    build_network,
    simulate,
    stimulus_sequence,
)
from corticalrnn.synth.mozaik_writer import (
    MozaikDatastoreWriter,
    ProjectionSpec,
    SheetLayout,
    check_output_folder,
    mozaik_positions,
    stimulus_string,
)
from corticalrnn.synth.truth import GroundTruth, read_truth, truth_path, write_truth

__all__ = [
    "CortexConfig",
    "GroundTruth",
    "SynthSummary",
    "build_network",
    "generate",
    "read_truth",
    "truth_path",
]


@dataclass
class SynthSummary:
    """What :func:`generate` wrote."""

    outdir: Path
    truth: Path
    n_segments: int
    n_presentations: int
    neurons: dict[str, int]
    spikes: dict[str, int]
    mean_rate_hz: dict[str, float]  # over all recorded time (blanks included)
    bytes_on_disk: int
    seconds: float
    extra: dict = field(default_factory=dict)


def sheet_layouts(net: Network) -> dict[str, SheetLayout]:
    """The datastore's view of the network's populations (ids, Mozaik positions)."""
    side = int(round(np.sqrt(net.sizes["X_ON"])))
    out = {}
    for s in INPUT_SHEETS + V1_SHEETS:
        structure = "Grid2D" if s in INPUT_SHEETS else "RandomStructure"
        out[s] = SheetLayout(s, net.neuron_ids[s], mozaik_positions(net.positions_mm[s], s, side), structure)
    return out


#: synapses up to which generate() stores the connectome by default
CONNECTIONS_DEFAULT_MAX = 10_000_000
#: synaptic delay written for every synthetic synapse (ms)
SYNTH_DELAY_MS = 1.0
_SHORT = {"V1_Exc_L4": "L4Exc", "V1_Inh_L4": "L4Inh", "V1_Exc_L2/3": "L23Exc", "V1_Inh_L2/3": "L23Inh"}


def projection_name(source: str, target: str) -> str:
    """Mozaik-style connector name (LSV1M: ``V1L4ExcL4InhConnection``, ``V1AffConnectionOn`` ...)."""
    if source in INPUT_SHEETS:
        polarity = "On" if source == "X_ON" else "Off"
        middle = {"V1_Exc_L4": "", "V1_Inh_L4": "Inh"}.get(target, _SHORT[target])
        return f"V1Aff{middle}Connection{polarity}"
    return f"V1{_SHORT[source]}{_SHORT[target]}Connection"


def network_projections(net: Network, delay_ms: float = SYNTH_DELAY_MS) -> list[ProjectionSpec]:
    """The network's synapses as one projection per (source sheet, target sheet) with any synapse.

    From ``W`` (V1 x V1, post x pre, signed) and ``U`` (V1 x LGN): indices into each sheet,
    weights as magnitudes (Mozaik keeps the sign in the source sheet's synapse type), ``delay_ms``.
    """
    out: list[ProjectionSpec] = []
    blocks = [(net.W, net.v1_slices), (net.U, net.lgn_slices)]
    for matrix, pre_slices in blocks:
        for source, pre_sl in pre_slices.items():
            for target, post_sl in net.v1_slices.items():
                sub = matrix[post_sl, pre_sl].tocoo()
                if sub.nnz == 0:
                    continue
                values = np.asarray(sub.data, np.float64)
                sign = SHEET_INFO[source].sign if source in V1_SHEETS else 1
                if np.any(values * sign < 0):
                    raise CorticalRNNError(f"synapses from {source} have the wrong sign for the sheet")
                order = np.lexsort((sub.col, sub.row))  # post-major, then pre
                out.append(
                    ProjectionSpec(
                        name=projection_name(source, target),
                        source=source,
                        target=target,
                        pre=np.asarray(sub.col[order], np.int64),
                        post=np.asarray(sub.row[order], np.int64),
                        weight=np.abs(values[order]),
                        delay=np.full(sub.nnz, float(delay_ms)),
                    )
                )
    return out


def _recorded_sheets(sheets: Sequence[str] | None) -> list[str]:
    if sheets is None:
        return list(ALL_SHEETS)
    out = []
    for name in sheets:
        try:
            canonical = normalize_sheet_name(name)
        except ValueError as exc:
            raise CorticalRNNError(str(exc)) from None
        if canonical not in out:
            out.append(canonical)
    if not out:
        raise CorticalRNNError("no sheets to record")
    return sort_sheets(out)


def _split(
    net: Network, res: ElementResult, part: str, sheets: Collection[str]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for v1, slices in ((True, net.v1_slices), (False, net.lgn_slices)):
        idx, t = res.spikes(part, v1=v1)
        for s, sl in slices.items():
            m = (idx >= sl.start) & (idx < sl.stop)
            out[s] = (idx[m] - sl.start, t[m])
    return out


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def generate(
    outdir: str | os.PathLike,
    image_ids: Sequence[int],
    trials: int,
    *,
    seed: int = 0,
    config: CortexConfig | None = None,
    sheets: Sequence[str] | None = None,
    progress: bool = False,
    connections: bool | None = None,
) -> SynthSummary:
    """Simulate ``trials`` presentations of each image and write the datastore plus its ground truth.

    The datastore goes to ``outdir`` (must not exist or be empty), the ground truth to
    :func:`truth_path` (``<outdir>.truth.h5``). Both are written under temporary names first.
    ``sheets`` limits the recorded sheets (default: all six); the ground truth always has all.
    The network's annotations (``Network.annotations``, Mozaik keys) go into the block annotations;
    with ``connections`` (default: when the network has at most ``CONNECTIONS_DEFAULT_MAX``
    synapses) its synapses go into ``datastore.analysis.pickle`` as Mozaik ``Connections``.
    """
    t0 = time.perf_counter()
    config = config or CortexConfig()
    outdir = Path(outdir).absolute()
    check_output_folder(outdir)
    tpath = truth_path(outdir)
    if tpath.exists():
        raise CorticalRNNError(
            f"{tpath}: ground-truth file already exists; remove it or choose another OUTDIR"
        )
    recorded = _recorded_sheets(sheets)
    stims = stimulus_sequence(list(image_ids), trials, config.image_ms)
    net = build_network(config, seed)
    layouts = {s: lay for s, lay in sheet_layouts(net).items() if s in recorded}
    rb = config.rate_bin_ms
    n_img = len(stims) - 2
    n_bins = int(2 * config.blank_ms + config.image_ms) // rb
    rates_v1 = np.zeros((n_img, n_bins, net.n_v1), np.float32)
    rates_lgn = np.zeros((n_img, n_bins, net.n_lgn), np.float32)
    spikes = dict.fromkeys(layouts, 0)
    recorded_ms = 0.0

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(stims), desc="synth", unit="stimulus", leave=False)
    annotations = getattr(net, "annotations", None) or {}
    if connections is None:
        connections = net.W.nnz + net.U.nnz <= CONNECTIONS_DEFAULT_MAX
    with MozaikDatastoreWriter(
        outdir, layouts, null_stimulus_period=config.blank_ms, annotations=annotations
    ) as writer:
        prev: ElementResult | None = None
        p = 0
        for res in simulate(net, stims):
            stim: Stimulus = res.stim
            blank = _split(net, res, "pre", layouts) if prev is None else _split(net, prev, "post", layouts)
            now = _split(net, res, "stim", layouts)
            image_id = stim.image_id if stim.kind == "NaturalImage" else None
            name = "InternalStimulus" if stim.kind == "NoStimulation" else stim.kind
            writer.add_stimulus(
                stimulus_string(name, stim.duration_ms, stim.trial, image_id),
                blank,
                config.blank_ms,
                now,
                stim.duration_ms,
            )
            for s in layouts:
                spikes[s] += len(blank[s][0]) + len(now[s][0])
            recorded_ms += config.blank_ms + stim.duration_ms
            if stim.kind == "NaturalImage":
                assert prev is not None
                for v1, target in ((True, rates_v1), (False, rates_lgn)):
                    target[p] = np.concatenate(
                        [prev.rates("post", v1), res.rates("stim", v1), res.rates("post", v1)]
                    )
                p += 1
            prev = res
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()

        img = np.array([s.image_id for s in stims if s.kind == "NaturalImage"], np.int64)
        trial = np.array([s.trial for s in stims if s.kind == "NaturalImage"], np.int64)
        uniq = np.array(sorted(set(img.tolist())), np.int64)
        avg = np.stack([rates_v1[img == i].mean(0) for i in uniq]) if len(uniq) else rates_v1[:0]
        truth = GroundTruth(
            seed=int(seed),
            config=config.to_dict(),
            datastore=str(outdir),
            rate_bin_ms=rb,
            window_ms=(config.blank_ms, config.image_ms, config.blank_ms),
            neuron_ids=net.neuron_ids,
            positions_mm=net.positions_mm,
            W=net.W,
            U=net.U,
            bias=net.bias,
            tau_ms=net.tau_ms,
            image_id=img,
            trial=trial,
            rates_v1=rates_v1,
            rates_lgn=rates_lgn,
            avg_image_id=uniq,
            avg_rates_v1=avg,
        )
        write_truth(tpath, truth)
        try:
            writer.finish(network_projections(net) if connections else ())
        except BaseException:
            tpath.unlink(missing_ok=True)
            raise
        n_segments = writer.n_segments
    return SynthSummary(
        outdir=outdir,
        truth=tpath,
        n_segments=n_segments,
        n_presentations=n_img,
        neurons=dict(net.sizes),
        spikes=spikes,
        mean_rate_hz={s: spikes[s] / net.sizes[s] / (recorded_ms / 1000.0) for s in layouts},
        bytes_on_disk=_folder_bytes(outdir) + tpath.stat().st_size,
        seconds=time.perf_counter() - t0,
    )
