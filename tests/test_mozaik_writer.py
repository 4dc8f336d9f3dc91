"""The Mozaik-format writer: structure identical to the reference datastores, spikes read back exactly."""

from __future__ import annotations

import ast
import pickle
import pickletools
import sys
from pathlib import Path

import numpy as np
import pytest
from synthdata import MozaikFreeUnpickler, make_datastore, read_datastore_plain

from corticalrnn.errors import CorticalRNNError
from corticalrnn.sheets import ALL_SHEETS
from corticalrnn.synth.mozaik_writer import MozaikDatastoreWriter, SheetLayout, stimulus_string
from extract.mozaik_types import (
    MOZAIK_CLASSES,
    WRAPPER_MODULE,
    WRAPPER_NAME,
    PickledDataStoreNeoWrapper,
    dumps_with_mozaik_names,
)

FILES = [
    "datastore.recordings.pickle",
    "datastore.analysis.pickle",
    "datastore.sensory.stimulus.pickle",
    "info",
    "parameters.json",
]
BLOCK_KEYS = {
    "neuron_ids",
    "neuron_positions",
    "neuron_annotations",
    "model_parameters",
    "sheet_parameters",
    "experiment_parameters",
    "simulation_log",
}
WRAPPER_KEYS = {
    "init_sp", "init_as", "annotations", "name", "description", "file_origin", "block", "_analogsignals",
    "_irregularlysampledsignals", "_spiketrains", "_events", "_epochs", "_channelviews", "_imagesequences",
    "file_datetime", "rec_datetime", "index", "identifier", "null", "full", "datastore_path",
}  # fmt: skip
TRAIN_KEYS = {"source_population", "source_index", "channel_id", "source_id"}


def _globals(path: Path) -> set[tuple[str, str]]:
    """Globals a pickle refers to, following the memo for the STACK_GLOBAL operands."""
    out: set[tuple[str, str]] = set()
    memo: dict[int, object] = {}
    pushed: list[object] = []  # recent pushed values (strings, or None for anything else)
    for op, arg, _ in pickletools.genops(path.read_bytes()):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
            pushed.append(arg)
        elif op.name in ("BINGET", "LONG_BINGET", "GET"):
            pushed.append(memo.get(int(arg)))
        elif op.name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[int(arg)] = pushed[-1] if pushed else None
        elif op.name == "STACK_GLOBAL":
            out.add((str(pushed[-2]), str(pushed[-1])))
            pushed.append(None)
        elif op.name == "GLOBAL":
            out.add(tuple(arg.split(" ", 1)))
            pushed.append(None)
        else:
            pushed.append(None)
    return out


def check_structure(folder: Path, max_stimuli: int | None = None) -> dict:
    """Every structural property a reader relies on; returns a few facts to compare between folders.

    Spike files are checked for the first ``max_stimuli`` stimuli and the last (all when None).
    """
    for name in FILES:
        assert (folder / name).is_file(), name
    rec_globals = _globals(folder / "datastore.recordings.pickle")
    assert (WRAPPER_MODULE, WRAPPER_NAME) in rec_globals
    assert {m.split(".")[0] for m, _ in rec_globals} <= {"mozaik", "neo", "numpy", "collections", "datetime"}
    ds = read_datastore_plain(folder, max_stimuli)
    ann = ds.block_annotations
    assert set(ann) == BLOCK_KEYS
    sheets = list(ann["neuron_ids"])
    assert sheets == [s for s in ALL_SHEETS if s in sheets] and set(sheets) <= set(ALL_SHEETS)
    for s in sheets:
        ids = ann["neuron_ids"][s]
        assert ids.dtype == np.int64 and np.all(np.diff(ids) > 0)
        assert ann["neuron_positions"][s].shape == (3, len(ids))

    # wrapper objects carry the same fields as Mozaik's
    with open(folder / "datastore.recordings.pickle", "rb") as f:
        blk = MozaikFreeUnpickler(f).load()
    for w in blk.segments:
        assert isinstance(w, PickledDataStoreNeoWrapper)
        assert set(w.__dict__) == WRAPPER_KEYS
        assert w.__dict__["block"] is blk

    # presentation order: (blank before s, s) for every stimulus, sheets in canonical order each
    order = ds.by_time()
    n_sheets = len(sheets)
    assert len(order) % (2 * n_sheets) == 0
    stimuli = []
    for k in range(0, len(order), 2 * n_sheets):
        blank, stim = order[k : k + n_sheets], order[k + n_sheets : k + 2 * n_sheets]
        assert [s.sheet for s in blank] == sheets and [s.sheet for s in stim] == sheets
        assert all(s.null for s in blank) and not any(s.null for s in stim)
        assert len({s.stimulus for s in blank + stim}) == 1  # the blank carries the next stimulus' string
        stimuli.append(stim[0].params)
        for seg in blank + stim:
            p = seg.params
            assert {"name", "trial", "duration"} <= set(p)
            keys = list(ast.literal_eval(seg.stimulus))
            assert keys[0] == "module_path" and keys[1:] == sorted(keys[1:])
            if seg.spikes is None:
                continue
            assert seg.t_start == 0.0
            assert seg.t_stop == (150.0 if seg.null else p["duration"])
            assert list(seg.spikes) == list(ann["neuron_ids"][seg.sheet])  # sorted by id, all neurons
            for a in seg.annotations:
                assert TRAIN_KEYS <= set(a) and int(a["source_id"]) == int(a["channel_id"])
            for times in seg.spikes.values():
                assert np.all(times >= 0) and np.all(times <= seg.t_stop) and np.all(np.diff(times) >= 0)
    assert stimuli[0]["name"] == "InternalStimulus" and stimuli[-1]["name"] == "EndOfSimulationBlank"
    images = stimuli[1:-1]
    for p in images:
        assert p["name"] == "NaturalImage" and p["duration"] == 560.0
        assert int(p["image_path"].split("/")[-1].split("_")[0]) >= 0
    # stimulus segments first, then blanks, in file numbering
    first = [int(s.identifier.removeprefix("Segment")) for s in ds.segments]
    assert first == list(range(len(first)))
    assert [s.null for s in ds.segments[: 2 * n_sheets]] == [False] * n_sheets + [True] * n_sheets
    return {
        "sheets": sheets,
        "rec_globals": rec_globals,
        "seg_globals": _globals(folder / f"{ds.segments[2 * n_sheets].identifier}.pickle"),
        "n_images": len(images),
        "trials": sorted({p["trial"] for p in images}),
        "stimulus_keys": sorted(ast.literal_eval(ds.segments[2 * n_sheets].stimulus)),
    }


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_datastore(tmp_path_factory.mktemp("w"), images=(50000, 50001), trials=2, seed=3)


@pytest.fixture(scope="module")
def small_facts(small_store: Path) -> dict:
    return check_structure(small_store)


def test_generated_structure(small_facts: dict) -> None:
    assert small_facts["sheets"] == list(ALL_SHEETS)
    assert small_facts["n_images"] == 4 and small_facts["trials"] == [0, 1]


@pytest.mark.parametrize("name", ["train_50000", "test_300050"])
def test_reference_structure_matches_writer(shared_data: Path, small_facts: dict, name: str) -> None:
    ref = check_structure(shared_data / "mozaik" / name, max_stimuli=2)
    ours = small_facts
    assert ours["sheets"] == ref["sheets"]
    assert ours["rec_globals"] == ref["rec_globals"]
    assert ours["seg_globals"] == ref["seg_globals"]
    assert ours["stimulus_keys"] == ref["stimulus_keys"]


def test_reference_stimulus_strings_are_reproduced(shared_data: Path) -> None:
    ds = read_datastore_plain(shared_data / "mozaik" / "test_300050", max_stimuli=0)
    seen = {}
    for s in ds.segments:
        p = s.params
        image = int(p["image_path"].split("/")[-1].split("_")[0]) if "image_path" in p else None
        seen[s.stimulus] = stimulus_string(p["name"], p["duration"], p["trial"], image)
    assert all(k == v for k, v in seen.items())


def _layouts(n: int = 3) -> dict[str, SheetLayout]:
    out, start = {}, 10
    for s in ALL_SHEETS:
        ids = np.arange(start, start + n, dtype=np.int64)
        out[s] = SheetLayout(s, ids, np.zeros((3, n)), "RandomStructure")
        start += 100
    return out


def test_spikes_read_back_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    lay = _layouts()
    written = []
    with MozaikDatastoreWriter(tmp_path / "ds", lay) as w:
        for name, dur, image in (
            ("InternalStimulus", 50.0, None),
            ("NaturalImage", 560.0, 7),
            ("EndOfSimulationBlank", 150.0, None),
        ):  # noqa: E501
            parts = []
            for d in (150.0, dur):
                sp = {}
                for s in lay:
                    k = int(rng.integers(0, 20))
                    idx = rng.integers(0, 3, k)
                    t = np.round(rng.uniform(0, d, k), 1)
                    if s == "X_ON":  # a spike exactly at t_stop is kept
                        idx, t = np.append(idx, 0), np.append(t, d)
                    sp[s] = (idx, t)
                parts.append(sp)
            w.add_stimulus(stimulus_string(name, dur, 0, image), parts[0], 150.0, parts[1], dur)
            written.append(parts)
        w.finish()
    ds = read_datastore_plain(tmp_path / "ds")
    order = ds.by_time()
    assert len(order) == 3 * 2 * 6
    for k, parts in enumerate(written):
        for j, null in enumerate((True, False)):
            segs = order[12 * k + 6 * j : 12 * k + 6 * (j + 1)]
            for seg in segs:
                assert seg.null is null
                idx, t = parts[j][seg.sheet]
                ids = lay[seg.sheet].ids
                for n in range(3):
                    np.testing.assert_array_equal(seg.spikes[int(ids[n])], np.sort(t[idx == n]))
    assert not list(tmp_path.glob(".ds.*"))  # no temporary folder left


def test_refuses_nonempty_and_cleans_up_on_error(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    with pytest.raises(CorticalRNNError, match="not empty"):
        MozaikDatastoreWriter(tmp_path / "full", _layouts())
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["x"]
    with pytest.raises(RuntimeError):
        with MozaikDatastoreWriter(tmp_path / "new", _layouts()) as w:
            w.add_stimulus(stimulus_string("InternalStimulus", 50.0, 0), *_empty(), 150.0, *_empty(), 50.0)
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]
    with pytest.raises(CorticalRNNError, match="unknown sheet"):
        MozaikDatastoreWriter(tmp_path / "bad", {"V1_Exc_L5": _layouts()["X_ON"]})


def _empty() -> tuple[dict, ...]:
    return ({s: (np.zeros(0, np.int64), np.zeros(0)) for s in ALL_SHEETS},)


def test_stand_in_pickles_under_mozaik_name_without_shim() -> None:
    w = PickledDataStoreNeoWrapper(identifier="Segment3", null=True, annotations={"sheet_name": "X_ON"})
    data = dumps_with_mozaik_names([w, w])
    assert "mozaik" not in sys.modules
    with pytest.raises(ModuleNotFoundError):
        pickle.loads(data)  # a plain reader needs Mozaik (or a mapping): the name really is Mozaik's

    class Mapped(pickle.Unpickler):
        def find_class(self, m: str, n: str) -> type:
            return MOZAIK_CLASSES[(m, n)]

    import io

    a, b = Mapped(io.BytesIO(data)).load()
    assert a is b and a.identifier == "Segment3" and a.null and a.sheet_name == "X_ON"
