"""`corticalrnn trim`: store counts equal an independent np.histogram binning of the exact spike times."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from corticalrnn import trim as trim_mod
from corticalrnn.atomic import temporary_name as tmp_path_for
from corticalrnn.cli import main
from corticalrnn.errors import CorticalRNNError, DataMismatchError
from corticalrnn.store import open_store
from corticalrnn.trim import TrimConfig, WindowSpec, trim
from extract.spikefile import Presentation, SheetLayout, write_spikefile

SHEETS = {"X_ON": 5, "V1_Exc_L4": 7, "V1_Inh_L2/3": 3}
PARTS = ("blank_before", "stimulus", "blank_after")


def _times(rng: np.random.Generator, duration: float) -> np.ndarray:
    """Random spike times in [0, duration] plus times exactly on 1/5/10/20 ms edges and at t_stop."""
    if duration == 0:
        return np.zeros(0, np.float32)
    t = rng.uniform(0, duration, rng.poisson(duration * 0.02))
    edges = rng.choice(np.arange(0, int(duration) + 1, 5), size=rng.integers(0, 4))
    special = [duration] if rng.random() < 0.5 else []
    t = np.concatenate([t, edges, special, rng.integers(0, int(duration) + 1, 2)])
    return np.sort(t.astype(np.float32))


def make_file(
    path: Path,
    seed: int,
    n_pres: int = 4,
    blank_before=150.0,
    stim=560.0,
    blank_after=150.0,
    ids_offset: int = 0,
) -> dict:
    """Spike file whose last presentation has no blank after (like the end of a Mozaik folder)."""
    rng = np.random.default_rng(seed)
    layouts = [
        SheetLayout(s, np.arange(n) + 1000 * k + ids_offset) for k, (s, n) in enumerate(SHEETS.items())
    ]
    pres, truth = [], []
    for p in range(n_pres):
        bb = blank_before[p] if isinstance(blank_before, list) else blank_before
        ba = 0.0 if p == n_pres - 1 else blank_after
        pr = Presentation(
            image_id=100 * seed + p,
            trial=p % 2,
            order=p,
            stimulus="{}",
            blank_before_ms=bb,
            stimulus_ms=stim,
            blank_after_ms=ba,
        )
        durations = {"blank_before": bb, "stimulus": stim, "blank_after": ba}
        spikes = {
            s: {part: [_times(rng, durations[part]) for _ in range(n)] for part in PARTS}
            for s, n in SHEETS.items()
        }
        pres.append((pr, spikes))
        truth.append((pr, spikes))
    write_spikefile(path, f"/data/folder{seed}", layouts, pres)
    return {"path": path, "truth": truth}


def reference(truth, sheet: str, t0: float, bin_ms: int, n_bins: int) -> np.ndarray:
    """[P, T, N] counts by np.histogram per neuron in float64 on the image-onset time axis."""
    edges = t0 + np.arange(n_bins + 1, dtype=np.float64) * bin_ms
    out = []
    for pr, spikes in truth:
        offsets = {"blank_before": -pr.blank_before_ms, "stimulus": 0.0, "blank_after": pr.stimulus_ms}
        per_neuron = []
        for n in range(SHEETS[sheet]):
            x = np.concatenate([spikes[sheet][part][n].astype(np.float64) + offsets[part] for part in PARTS])
            per_neuron.append(np.histogram(x[x != edges[-1]], edges)[0])  # half-open bins
        out.append(np.stack(per_neuron, axis=1))
    return np.stack(out)


@pytest.fixture
def files(tmp_path: Path) -> list[dict]:
    return [make_file(tmp_path / f"f{i}.h5", seed=i + 1) for i in range(2)]


def _cfg(bin_ms: int | None, window: str | None = None, **kw) -> TrimConfig:
    return TrimConfig(bin_ms=bin_ms, window=WindowSpec.parse(window), progress=False, **kw)


@pytest.mark.parametrize(
    ("bin_ms", "window", "t0", "n_bins"),
    [
        (1, None, -75.0, 710),
        (5, None, -75.0, 142),
        (10, "before=40,after=10", -40.0, 61),
        (20, "remainder=drop", -75.0, 35),
        (2, "before=0.5,after=1.5", -0.5, 281),
    ],
)
def test_counts_equal_histogram(tmp_path: Path, files, bin_ms, window, t0, n_bins) -> None:
    out = trim([f["path"] for f in files], tmp_path / "s.zarr", _cfg(bin_ms, window))
    st = open_store(out)
    assert (st.bin_ms, st.n_bins) == (bin_ms, n_bins)
    assert st.window_def["t0_ms"] == t0
    for sheet in SHEETS:
        want = np.concatenate([reference(f["truth"][:-1], sheet, t0, bin_ms, n_bins) for f in files])
        assert np.array_equal(st.read(sheet, np.arange(len(st))), want), sheet
    # metadata per window
    t = st.windows
    assert t.image_id.tolist() == [100 * s + p for s in (1, 2) for p in range(3)]
    assert t.trial.tolist() == [p % 2 for _ in (1, 2) for p in range(3)]
    assert t.presentation.tolist() == [0, 1, 2, 0, 1, 2]
    assert not t.padded.any()
    assert (
        list(t.source_path) == [str(files[0]["path"].resolve())] * 3 + [str(files[1]["path"].resolve())] * 3
    )


def test_edge_spikes_are_exact(tmp_path: Path) -> None:
    """Hand-placed spikes on edges, at t_stop of every segment and at the window's ends."""
    layouts = [SheetLayout(s, np.arange(n)) for s, n in SHEETS.items()]
    spikes = {s: {p: [np.zeros(0, np.float32)] * n for p in PARTS} for s, n in SHEETS.items()}
    spikes["X_ON"] = {
        "blank_before": [np.array([0, 74.999, 75, 140, 150], np.float32)] + [np.zeros(0, np.float32)] * 4,
        "stimulus": [np.array([0, 0, 5, 559.999, 560], np.float32)] + [np.zeros(0, np.float32)] * 4,
        "blank_after": [np.array([0, 74, 75, 75.0001, 150], np.float32)] + [np.zeros(0, np.float32)] * 4,
    }
    pr = Presentation(1, 0, 0, "{}", 150.0, 560.0, 150.0)
    path = write_spikefile(tmp_path / "e.h5", "/x", layouts, [(pr, spikes)])
    st = open_store(trim([path], tmp_path / "s.zarr", _cfg(5)))
    counts = st.read("X_ON", [0], [0])[0, :, 0]
    got = {int(i): int(c) for i, c in zip(np.flatnonzero(counts), counts[counts > 0])}
    # axis: blank before -150..0, stimulus 0..560, after 560..710; window -75..635, bins of 5
    # -75 (t=75) -> bin 0; -10 (140) -> 13; 0 (150 before + 0, 0 stim twice) -> 15 x3; 5 -> 16;
    # 559.999 -> 126; 560 (stim end + after start) -> 127 x2; 634 -> 141; 635 (window end) is
    # outside: bins are half-open, it would be bin 0 of a window starting at 635
    assert got == {0: 1, 13: 1, 15: 3, 16: 1, 126: 1, 127: 2, 141: 1}


def test_incomplete_pad_and_drop(tmp_path: Path, files) -> None:
    paths = [f["path"] for f in files]
    dropped = open_store(trim(paths, tmp_path / "d.zarr", _cfg(5)))
    padded = open_store(trim(paths, tmp_path / "p.zarr", _cfg(5, "incomplete=pad")))
    assert len(dropped) == 6 and len(padded) == 8
    t = padded.windows
    assert t.padded.tolist() == [False, False, False, True] * 2
    assert t.valid_bins.tolist() == [142, 142, 142, 127] * 2  # the 75 ms after the image were not recorded
    for sheet in SHEETS:
        want = np.concatenate([reference(f["truth"], sheet, -75.0, 5, 142) for f in files])
        got = padded.read(sheet, np.arange(8))
        assert np.array_equal(got, want)
        assert not got[3, 128:].any()  # bin 127 holds spikes exactly at the image end (560 ms)
    from corticalrnn.data import select_windows

    assert select_windows(padded).tolist() == [0, 1, 2, 4, 5, 6]
    assert select_windows(padded, include_padded=True).size == 8


def test_varying_blank_durations(tmp_path: Path) -> None:
    f = make_file(tmp_path / "v.h5", seed=5, n_pres=3, blank_before=[150.0, 170.0, 130.0])
    st = open_store(trim([f["path"]], tmp_path / "s.zarr", _cfg(5, "before=60,after=70,incomplete=pad")))
    for sheet in SHEETS:
        assert np.array_equal(st.read(sheet, [0, 1, 2]), reference(f["truth"], sheet, -60.0, 5, 138))


@pytest.mark.parametrize(
    ("bin_ms", "window", "match"),
    [
        (0, None, "positive integer"),
        (-5, None, "positive integer"),
        (1000, None, "larger than the window"),
        (20, None, "not a multiple of 20 ms"),
        (5, "before=-1", "non-negative"),
        (5, "width=3", "cannot parse"),
        (5, "incomplete=maybe", "incomplete must be"),
    ],
)
def test_bad_bins_and_windows(tmp_path: Path, files, bin_ms, window, match) -> None:
    with pytest.raises(CorticalRNNError, match=match):
        trim([f["path"] for f in files], tmp_path / "s.zarr", _cfg(bin_ms, window))
    assert not (tmp_path / "s.zarr").exists()


def test_mismatched_inputs(tmp_path: Path, files) -> None:
    other = make_file(tmp_path / "o.h5", seed=9, ids_offset=1)
    with pytest.raises(DataMismatchError, match="neuron ids of sheet X_ON differ"):
        trim([files[0]["path"], other["path"]], tmp_path / "s.zarr", _cfg(5))
    slow = make_file(tmp_path / "slow.h5", seed=10, stim=300.0)
    with pytest.raises(DataMismatchError, match="different stimulus durations"):
        trim([files[0]["path"], slow["path"]], tmp_path / "s.zarr", _cfg(5))
    assert not (tmp_path / "s.zarr").exists() and not tmp_path_for(tmp_path / "s.zarr").exists()


def test_provenance(tmp_path: Path, files) -> None:
    st = open_store(trim([f["path"] for f in files], tmp_path / "s.zarr", _cfg(5)))
    assert [s["sha256"] for s in st.sources] == [
        hashlib.sha256(f["path"].read_bytes()).hexdigest() for f in files
    ]
    assert [s["n_windows"] for s in st.sources] == [3, 3]
    assert st.attrs["tool_version"].startswith("corticalrnn ")
    assert st.window_def == {
        "origin": "trim",
        "t0_ms": -75.0,
        "length_ms": 710,
        "before_ms": 75.0,
        "after_ms": 75.0,
        "stimulus_ms": 560.0,
        "incomplete": "drop",
    }


def test_resume_after_kill(tmp_path: Path, files, monkeypatch) -> None:
    paths = [f["path"] for f in files]
    clean = open_store(trim(paths, tmp_path / "clean.zarr", _cfg(5)))
    real = trim_mod.bin_presentations
    calls: list[str] = []

    def dies_on_second_file(path, a, b, win):
        calls.append(path)
        if path == str(paths[1].resolve()):
            raise KeyboardInterrupt
        return real(path, a, b, win)

    monkeypatch.setattr(trim_mod, "bin_presentations", dies_on_second_file)
    out = tmp_path / "s.zarr"
    with pytest.raises(KeyboardInterrupt):
        trim(paths, out, _cfg(5, chunk_windows=2))
    assert not out.exists()
    partial = open_store(tmp_path_for(out))
    assert len(partial) == 3 and len(partial.sources) == 1
    calls.clear()
    monkeypatch.setattr(trim_mod, "bin_presentations", lambda *a: (calls.append(a[0]), real(*a))[1])
    trim(paths, out, _cfg(5, chunk_windows=2))
    assert set(calls) == {str(paths[1].resolve())}  # the committed first file was not redone
    st = open_store(out)
    assert not tmp_path_for(out).exists()
    for sheet in SHEETS:
        assert np.array_equal(st.read(sheet, np.arange(6)), clean.read(sheet, np.arange(6)))
    assert st.windows.image_id.tolist() == clean.windows.image_id.tolist()


def test_resume_refuses_other_parameters(tmp_path: Path, files) -> None:
    out = tmp_path / "s.zarr"
    trim([files[0]["path"]], out, _cfg(5))
    out.rename(tmp_path_for(out))  # looks like an unfinished run with 5 ms bins
    with pytest.raises(CorticalRNNError, match="bin sizes differ.*remove"):
        trim([files[0]["path"]], out, _cfg(10))
    with pytest.raises(CorticalRNNError, match="holds inputs not given now"):
        trim([files[1]["path"]], out, _cfg(5))
    assert not out.exists()


def test_append(tmp_path: Path, files) -> None:
    a, b = (f["path"] for f in files)
    both = open_store(trim([a, b], tmp_path / "both.zarr", _cfg(5)))
    out = trim([a], tmp_path / "s.zarr", _cfg(5))
    trim([b], out, _cfg(None, append=True))
    trim([a, b], out, _cfg(5, append=True))  # already there: skipped, nothing added
    st = open_store(out)
    assert len(st) == 6 and [s["path"] for s in st.sources] == [str(a.resolve()), str(b.resolve())]
    for sheet in SHEETS:
        assert np.array_equal(st.read(sheet, np.arange(6)), both.read(sheet, np.arange(6)))
    with pytest.raises(DataMismatchError, match="different bin sizes cannot be mixed"):
        trim([b], out, _cfg(10, append=True))
    other = make_file(tmp_path / "o.h5", seed=9, ids_offset=1)
    with pytest.raises(DataMismatchError, match="neuron ids of sheet X_ON differ"):
        trim([other["path"]], out, _cfg(None, append=True))
    with pytest.raises(CorticalRNNError, match="already exists"):
        trim([a], out, _cfg(5))


def test_parallel_equals_serial(tmp_path: Path, files) -> None:
    paths = [f["path"] for f in files]
    one = open_store(trim(paths, tmp_path / "a.zarr", _cfg(5, chunk_windows=2)))
    two = open_store(trim(paths, tmp_path / "b.zarr", _cfg(5, jobs=2, chunk_windows=2)))
    for sheet in SHEETS:
        assert np.array_equal(one.read(sheet, np.arange(6)), two.read(sheet, np.arange(6)))


def test_cli(tmp_path: Path, files, capsys) -> None:
    out = tmp_path / "s.zarr"
    args = ["trim", str(files[0]["path"]), "-o", str(out), "--bin-ms", "10", "--window", "before=50,after=50"]
    assert main([*args, "--no-progress"]) == 0
    assert "3 windows" in capsys.readouterr().out
    assert open_store(out).n_bins == 66
    assert main(["trim", str(files[0]["path"]), "-o", str(tmp_path / "x.zarr"), "--bin-ms", "7"]) == 1
    assert "not a multiple of 7 ms" in capsys.readouterr().err
    shutil.rmtree(out)


# ---------------------------------------------------------------------------------------------
# one commit point, verified resume, no-op rerun, locking (issue 15)


def _same_store(a, b) -> None:
    assert len(a) == len(b)
    for sheet in SHEETS:
        assert np.array_equal(a.read(sheet, np.arange(len(a))), b.read(sheet, np.arange(len(b))))
    for col in ("image_id", "trial", "presentation", "padded", "valid_bins"):
        assert np.array_equal(getattr(a.windows, col), getattr(b.windows, col))
    assert [s["sha256"] for s in a.sources] == [s["sha256"] for s in b.sources]
    assert [s["n_windows"] for s in a.sources] == [s["n_windows"] for s in b.sources]


def test_commit_writes_root_attributes_once_never_key_by_key(tmp_path: Path, files, monkeypatch) -> None:
    from zarr.core.attributes import Attributes

    real_set = Attributes.__setitem__

    def per_key(self, key, value):  # zarr writes the whole document once per key here
        if self._obj.path in ("", "/"):
            raise AssertionError(f"per-key write of root attribute {key!r}")
        real_set(self, key, value)

    monkeypatch.setattr(Attributes, "__setitem__", per_key)
    puts: list[set] = []
    real_put = Attributes.put
    monkeypatch.setattr(Attributes, "put", lambda self, d: (puts.append(set(d)), real_put(self, d))[1])
    st = open_store(trim([f["path"] for f in files], tmp_path / "s.zarr", _cfg(5)))
    assert len(st) == 6
    commits = [keys for keys in puts if "committed" in keys]
    assert commits and all({"sources", "splits", "committed", "schema"} <= k for k in commits)


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_kill_at_any_attribute_write_resumes_to_the_clean_store(
    tmp_path: Path, files, monkeypatch, fail_at
) -> None:
    """A kill at the creation's or at a commit's attribute write: the rerun gives the clean store."""
    from zarr.core.attributes import Attributes

    paths = [f["path"] for f in files]
    clean = open_store(trim(paths, tmp_path / "clean.zarr", _cfg(5)))
    real_put, n = Attributes.put, [0]

    def dies(self, d):
        n[0] += 1
        if n[0] == fail_at:  # 1: creation, 2: first commit, 3: second commit
            raise KeyboardInterrupt
        return real_put(self, d)

    monkeypatch.setattr(Attributes, "put", dies)
    out = tmp_path / "s.zarr"
    with pytest.raises(KeyboardInterrupt):
        trim(paths, out, _cfg(5, chunk_windows=2))
    monkeypatch.setattr(Attributes, "put", real_put)
    _same_store(open_store(trim(paths, out, _cfg(5, chunk_windows=2))), clean)
    assert not tmp_path_for(out).exists() and not list(out.rglob("*.partial"))


def test_resume_redoes_a_recorded_input_whose_windows_are_damaged(
    tmp_path: Path, files, monkeypatch, capsys
) -> None:
    import zarr

    paths = [f["path"] for f in files]
    clean = open_store(trim(paths, tmp_path / "clean.zarr", _cfg(5)))
    real = trim_mod.bin_presentations

    def dies_on_second_file(path, a, b, win):
        if path == str(paths[1].resolve()):
            raise KeyboardInterrupt
        return real(path, a, b, win)

    monkeypatch.setattr(trim_mod, "bin_presentations", dies_on_second_file)
    out = tmp_path / "s.zarr"
    with pytest.raises(KeyboardInterrupt):
        trim(paths, out, _cfg(5))
    monkeypatch.setattr(trim_mod, "bin_presentations", real)
    tmp = tmp_path_for(out)
    root = zarr.open_group(str(tmp), mode="r+")
    root["windows/trial"][0] = 77  # the recorded input's windows no longer match its content digest
    (tmp / "events" / "stray.partial").write_bytes(b"x")  # a killed write's temporary file
    _same_store(open_store(trim(paths, out, _cfg(5))), clean)
    assert "redoing it" in capsys.readouterr().err
    assert not list(out.rglob("*.partial"))


def test_append_refuses_when_an_earlier_input_is_damaged(tmp_path: Path, files) -> None:
    import zarr

    a, b = (f["path"] for f in files)
    out = trim([a], tmp_path / "s.zarr", _cfg(5))
    trim([b], out, _cfg(None, append=True))
    zarr.open_group(str(out), mode="r+")["windows/image_id"][0] = 5
    with pytest.raises(CorticalRNNError, match="is recorded but its windows do not match"):
        trim([a], out, _cfg(None, append=True))


def test_rerun_of_a_finished_trim_is_a_noop(tmp_path: Path, files) -> None:
    paths = [f["path"] for f in files]
    out = trim(paths, tmp_path / "s.zarr", _cfg(5))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert trim(paths, out, _cfg(5)) == out
    assert trim(list(reversed(paths)), out, _cfg(5)) == out
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    with pytest.raises(CorticalRNNError, match="already exists"):
        trim(paths, out, _cfg(10))  # other options: not a rerun
    with pytest.raises(CorticalRNNError, match="already exists"):
        trim(paths[:1], out, _cfg(5))


def test_second_writer_gets_in_use_by_pid(tmp_path: Path, files) -> None:
    import os

    from corticalrnn.locking import LockedError, exclusive_lock

    paths = [f["path"] for f in files]
    out = trim(paths[:1], tmp_path / "s.zarr", _cfg(5))
    with exclusive_lock(out):
        with pytest.raises(LockedError, match=f"in use by PID {os.getpid()}"):
            trim(paths[1:], out, _cfg(None, append=True))
        with pytest.raises(LockedError, match="in use by PID"):
            trim(paths, tmp_path / "s.zarr", _cfg(5, overwrite=True))
    assert len(open_store(out)) == 3
    trim(paths[1:], out, _cfg(None, append=True))  # released: works
    assert len(open_store(out)) == 6 and not (tmp_path / "s.zarr.lock").exists()
