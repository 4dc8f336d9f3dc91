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
from corticalrnn.sheets import ALL_SHEETS, INPUT_SHEETS, V1_SHEETS, normalize_sheet_name, sort_sheets
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
) -> SynthSummary:
    """Simulate ``trials`` presentations of each image and write the datastore plus its ground truth.

    The datastore goes to ``outdir`` (must not exist or be empty), the ground truth to
    :func:`truth_path` (``<outdir>.truth.h5``). Both are written under temporary names first.
    ``sheets`` limits the recorded sheets (default: all six); the ground truth always has all.
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
    with MozaikDatastoreWriter(outdir, layouts, null_stimulus_period=config.blank_ms) as writer:
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
            writer.finish()
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
