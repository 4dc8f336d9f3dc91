"""extract: Mozaik datastore folders -> HDF5 spike files; exactness, pairing, bad input, CLI without torch."""

from __future__ import annotations

import argparse
import ast
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from corticalrnn.atomic import temporary_name as tmp_path_for
from corticalrnn.bench.extract import DatastoreSpec, write_datastore
from corticalrnn.errors import CorticalRNNError, DataMismatchError, SchemaError
from extract import cli as extract_cli
from extract.datastore import ExtractOptions, extract_folder
from extract.mozaik_types import MOZAIK_CLASSES
from extract.spikefile import PARTS, open_spikefile

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ds") / "gen_a"
    record = write_datastore(folder, DatastoreSpec(images=(50000, 50007, 50003), trials=2, seed=1))
    return folder, record


def _check_against_record(path: Path, record, sheets=None) -> int:
    n = 0
    with open_spikefile(path) as f:
        keys = {(img, tr) for img, tr, _, _ in record}
        assert f.n_presentations == len(keys)
        for p in range(f.n_presentations):
            row = f.presentation(p)
            for sheet in sheets or f.sheets:
                for part in PARTS:
                    trains = record.get((row.image_id, row.trial, part, sheet))
                    if trains is None:
                        assert row.duration_ms(part) == 0
                        continue
                    csr = f.read_part(sheet, part, p, p + 1)
                    for i, t in enumerate(trains):
                        got = csr.row(0, i)
                        if i == 0:
                            np.testing.assert_array_equal(got, f.spike_times(sheet, part, p, i))
                        np.testing.assert_array_equal(got, t.astype(np.float32))
                        n += t.size
    return n


@pytest.mark.parametrize("use_neo", [False, True])
def test_generated_exact_spikes(generated, tmp_path, use_neo):
    folder, record = generated
    res = extract_folder(folder, tmp_path / "a.h5", ExtractOptions(use_neo=use_neo))
    assert res.n_presentations == 6
    assert _check_against_record(tmp_path / "a.h5", record) == res.n_spikes
    with open_spikefile(tmp_path / "a.h5") as f:
        # recording order (trial-major), not file-name or block-list order
        assert list(f.presentations["image_id"]) == [50000, 50007, 50003] * 2
        assert list(f.presentations["trial"]) == [0, 0, 0, 1, 1, 1]
        assert np.all(np.diff(f.presentations["order"]) > 0)
        assert set(f.presentations["blank_after_ms"]) == {150.0}
        # a spike exactly at t_stop is kept
        csr = f.read_part("V1_Exc_L4", "stimulus")
        assert np.any(csr.times == np.float32(560.0)) and csr.times.max() == np.float32(560.0)
        assert f.neuron_ids("X_ON").tolist() == list(range(3, 9))
        assert f.positions("X_ON").shape == (6, 3)


@pytest.mark.parametrize("id_key", ["source_id", "channel_id", "block"])
def test_neuron_id_sources(tmp_path, id_key):
    spec = DatastoreSpec(sizes={"X_ON": 3, "V1_Exc_L2/3": 4}, images=(7,), id_key=id_key, end_blank=False)
    record = write_datastore(tmp_path / "ds", spec)
    extract_folder(tmp_path / "ds", tmp_path / "o.h5", ExtractOptions(sheets=("V1_Exc_L23",)))
    _check_against_record(tmp_path / "o.h5", record, sheets=["V1_Exc_L2/3"])
    with open_spikefile(tmp_path / "o.h5") as f:
        assert f.sheets == ["V1_Exc_L2/3"]
        assert f.presentation(0).blank_after_ms == 0.0  # nothing recorded after the last image


def _reference_from_shared(folder: Path):
    """Independent reading: plain pickle with real neo, pairing written out naively."""

    class U(pickle.Unpickler):
        def find_class(self, m, n):
            return MOZAIK_CLASSES.get((m, n)) or super().find_class(m, n)

    block = U(open(folder / "datastore.recordings.pickle", "rb")).load()
    segs = sorted(block.segments, key=lambda s: s.rec_datetime)
    stims = []
    for s in segs:
        if s.stimulus not in stims:
            stims.append(s.stimulus)
    out = []
    for i, st in enumerate(stims):
        params = ast.literal_eval(st)
        if params["name"] != "NaturalImage":
            continue
        nxt = stims[i + 1]
        parts = {}
        for s in segs:
            if s.stimulus == st:
                parts[("stimulus" if not s.null else "blank_before", s.sheet_name)] = s.identifier
            if s.stimulus == nxt and s.null:
                parts[("blank_after", s.sheet_name)] = s.identifier
        image = int(params["image_path"].split("/")[-1].split("_")[0])
        out.append((image, params["trial"], parts))
    return U, out


def test_shared_reference_datastores(shared_data, tmp_path):
    for folder in sorted((shared_data / "mozaik").iterdir()):
        res = extract_folder(folder, tmp_path / f"{folder.name}.h5")
        U, ref = _reference_from_shared(folder)
        cache: dict[str, list] = {}
        total, skipped = 0, False
        with open_spikefile(res.output) as f:
            assert f.n_presentations == len(ref)
            assert f.source == str(folder.resolve())
            csr = {(s, q): f.read_part(s, q) for s in f.sheets for q in PARTS}
            for p, (image, trial, parts) in enumerate(ref):
                assert (f.presentation(p).image_id, f.presentation(p).trial) == (image, trial)
                if 0 < trial < 4:  # keep the test fast: first and last trial of the test datastore
                    skipped = True
                    continue
                for (part, sheet), ident in parts.items():
                    if ident not in cache:
                        seg = U(open(folder / f"{ident}.pickle", "rb")).load()
                        cache[ident] = [
                            (int(st.annotations["source_id"]), np.asarray(st.magnitude), float(st.t_stop))
                            for st in seg.spiketrains
                        ]
                        assert all(str(st.units.dimensionality) == "ms" for st in seg.spiketrains)
                    trains = cache[ident]
                    assert f.neuron_ids(sheet).tolist() == [t[0] for t in trains]
                    assert f.presentation(p).duration_ms(part) == trains[0][2]
                    c = csr[(sheet, part)]
                    rows = c.indptr[p * len(trains) : (p + 1) * len(trains) + 1]
                    np.testing.assert_array_equal(np.diff(rows), [t[1].size for t in trains])
                    want = np.concatenate([t[1] for t in trains]).astype(np.float32)
                    np.testing.assert_array_equal(c.times[rows[0] : rows[-1]], want)
                    total += want.size
        assert skipped or total == res.n_spikes


# ---------------------------------------------------------------------------------------------
# bad input


def _copy(folder: Path, dst: Path) -> Path:
    shutil.copytree(folder, dst)
    return dst


def _segment_file(folder: Path, stimulus_part: str = "NaturalImage") -> Path:
    from extract.datastore import Datastore

    ds = Datastore(folder)
    ref = next(s for s in ds.segments if stimulus_part in s.stimulus and not s.null)
    return folder / f"{ref.identifier}.pickle"


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("use_neo", [False, True])
def test_forbidden_global_refused_nothing_executed(generated, tmp_path, use_neo):
    folder = _copy(generated[0], tmp_path / "evil")
    marker = tmp_path / "pwned"
    victim = _segment_file(folder)
    victim.write_bytes(pickle.dumps({"spiketrains": [_Evil(marker)]}))
    with pytest.raises(CorticalRNNError, match=r"forbidden global (posix|os)\.system") as info:
        extract_folder(folder, tmp_path / "out.h5", ExtractOptions(use_neo=use_neo))
    assert str(victim) in str(info.value)
    assert not marker.exists()
    assert not (tmp_path / "out.h5").exists() and not tmp_path_for(tmp_path / "out.h5").exists()


def _truncate(folder: Path) -> str:
    f = _segment_file(folder)
    f.write_bytes(f.read_bytes()[:300])
    return "truncated|not a readable"


def _delete(folder: Path) -> str:
    _segment_file(folder).unlink()
    return "missing"


def _not_datastore(folder: Path) -> str:
    (folder / "datastore.recordings.pickle").unlink()
    return "not a Mozaik datastore"


def _change_ids(folder: Path) -> str:
    import neo  # the test writes a Mozaik-format segment with one neuron id changed

    f = _segment_file(folder)
    seg = pickle.loads(f.read_bytes())
    st = seg.spiketrains[0]
    st.annotations["source_id"] = 99999
    st.annotations["channel_id"] = 99999
    assert isinstance(seg, neo.Segment)
    f.write_bytes(pickle.dumps(seg, protocol=4))
    return "neuron ids of sheet .* differ"


@pytest.mark.parametrize("damage", [_truncate, _delete, _not_datastore, _change_ids])
def test_bad_folder_fails_cleanly_others_complete(generated, tmp_path, damage, capsys):
    bad = _copy(generated[0], tmp_path / "bad")
    message = damage(bad)
    good = generated[0]
    out = tmp_path / "out"
    args = argparse.Namespace(
        folders=[str(good), str(bad)], output=out, workers=1, sheets=None, from_list=None,
        compression=None, force=False, no_progress=True,
    )
    assert extract_cli.run(args) == 1
    err = capsys.readouterr().err
    assert f"FAILED {bad.resolve()}" in err
    import re

    assert re.search(message, err), err
    assert (out / "gen_a.h5").exists()
    assert sorted(p.name for p in out.iterdir()) == ["gen_a.h5"]


def test_no_natural_images(tmp_path):
    spec = DatastoreSpec(sizes={"X_ON": 2}, images=())
    write_datastore(tmp_path / "ds", spec)
    with pytest.raises(DataMismatchError, match="no NaturalImage presentations"):
        extract_folder(tmp_path / "ds", tmp_path / "o.h5")
    assert not (tmp_path / "o.h5").exists()


def test_requested_sheet_absent(generated, tmp_path):
    folder = generated[0]
    with pytest.raises(DataMismatchError, match=r"sheet 'V1_Inh_L5' is not in this datastore"):
        extract_folder(folder, tmp_path / "o.h5", ExtractOptions(sheets=("V1_Inh_L5",)))


def test_not_a_folder(tmp_path):
    with pytest.raises(CorticalRNNError, match="no such datastore folder"):
        extract_folder(tmp_path / "nope", tmp_path / "o.h5")


def test_corrupt_recordings_pickle(generated, tmp_path):
    folder = _copy(generated[0], tmp_path / "c")
    (folder / "datastore.recordings.pickle").write_bytes(b"\x80\x04garbage")
    with pytest.raises(SchemaError, match="datastore.recordings.pickle"):
        extract_folder(folder, tmp_path / "o.h5")


# ---------------------------------------------------------------------------------------------
# CLI


def _torchless_env(tmp_path: Path) -> dict[str, str]:
    """Environment whose Python (and every spawned worker) cannot import torch."""
    site = tmp_path / "notorch"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO)])
    return env


def test_cli_without_torch_parallel_resume(generated, tmp_path):
    folder = generated[0]
    second = _copy(folder, tmp_path / "gen_b")
    env = _torchless_env(tmp_path)
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True)
    assert probe.returncode != 0  # the guard works
    listing = tmp_path / "list.txt"
    listing.write_text(f"# folders\n{second}\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "corticalrnn", "extract", str(folder), "--from-list", str(listing),
           "-o", str(out), "-j", "2", "--sheets", "X_ON", "V1_Exc_L4"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "presentations" in r.stdout and "torch" not in r.stderr
    for name in ("gen_a", "gen_b"):
        with open_spikefile(out / f"{name}.h5") as f:
            assert f.sheets == ["X_ON", "V1_Exc_L4"] and f.n_presentations == 6
    _check_against_record(out / "gen_a.h5", generated[1], sheets=["X_ON", "V1_Exc_L4"])
    mtime = (out / "gen_a.h5").stat().st_mtime_ns
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (out / "gen_a.h5").stat().st_mtime_ns == mtime  # resumed: complete output skipped
    lines = r.stdout.splitlines()
    header, values = lines[0].split(), lines[2].split()
    assert dict(zip(header, values))["skipped"] == "2"


def test_duplicate_folder_names_rejected(tmp_path):
    (tmp_path / "a" / "x").mkdir(parents=True)
    (tmp_path / "b" / "x").mkdir(parents=True)
    folders = extract_cli.expand_folders([str(tmp_path / "*" / "x")], None)
    with pytest.raises(CorticalRNNError, match="both named 'x'"):
        extract_cli.output_names(folders, tmp_path / "out")


def test_bench_runs_and_reports_consistent_figures(tmp_path, capsys):
    from corticalrnn.bench import extract as bench

    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    args = p.parse_args(["--scale", "0.001", "--images", "1", "--repeats", "1", "--workdir", str(tmp_path)])
    fig = bench.run_bench(args)
    assert fig["presentations"] == 1 and fig["neurons"] == 108
    assert fig["spikes"] > 0
    assert fig["extract_spikes_per_s"] == pytest.approx(fig["spikes"] / fig["extract_median_s"])
    assert fig["speedup"] == pytest.approx(fig["baseline_median_s"] / fig["extract_median_s"])
    assert "speedup" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []  # the generated datastore is removed


def test_sigterm_stops_cleanly_and_resumes(generated, tmp_path, monkeypatch, capsys):
    import signal

    folder = generated[0]
    second = _copy(folder, tmp_path / "gen_b")
    real = extract_cli.extract_folder

    def killed_midway(src, output, options):
        if Path(src).name == "gen_b":
            tmp_path_for(output).write_bytes(b"partial")
            os.kill(os.getpid(), signal.SIGTERM)  # as Slurm does before the time limit
        return real(src, output, options)

    monkeypatch.setattr(extract_cli, "extract_folder", killed_midway)
    out = tmp_path / "out"
    args = argparse.Namespace(
        folders=[str(folder), str(second)], output=out, workers=1, sheets=["X_ON"], from_list=None,
        compression=None, force=False, no_progress=True,
    )
    assert extract_cli.run(args) == 143
    assert "terminated (SIGTERM)" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["gen_a.h5"]  # no partial or temporary file
    monkeypatch.setattr(extract_cli, "extract_folder", real)
    assert extract_cli.run(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["gen_a.h5", "gen_b.h5"]
    assert "skipped" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# crash isolation, locking, staging names (issue 15)


def _extract_args(folders, out, workers=2):
    return argparse.Namespace(
        folders=[str(f) for f in folders], output=out, workers=workers, sheets=["X_ON"], from_list=None,
        compression="none", force=False, no_progress=True,
    )


def test_a_worker_segfault_fails_only_its_folder(generated, tmp_path, monkeypatch, capsys):
    folder = generated[0]
    others = [_copy(folder, tmp_path / n) for n in ("gen_b", "gen_c")]
    out = tmp_path / "out"
    out.mkdir()
    (out / "gen_c.h5.4242.part.h5.tmp").write_bytes(b"left by a killed run")
    monkeypatch.setenv("CORTICALRNN_TEST_WORKER_FAULT", "gen_b:segv")
    assert extract_cli.run(_extract_args([folder, *others], out)) == 1
    cap = capsys.readouterr()
    assert "FAILED" in cap.err and "gen_b: worker process died (killed by SIGSEGV)" in cap.err
    header, _, values = cap.out.splitlines()[:3]
    row = dict(zip(header.split(), values.split()))
    assert row["failed"] == "1" and row["extracted"] == "2"
    assert sorted(p.name for p in out.iterdir()) == ["gen_a.h5", "gen_c.h5"]  # no staging/lock files
    monkeypatch.delenv("CORTICALRNN_TEST_WORKER_FAULT")
    assert extract_cli.run(_extract_args([folder, *others], out)) == 0  # rerun completes the failed one


def test_output_in_use_is_refused_with_pid(generated, tmp_path, capsys):
    from corticalrnn.locking import exclusive_lock

    out = tmp_path / "out"
    out.mkdir()
    with exclusive_lock(out / "gen_a.h5"):
        assert extract_cli.run(_extract_args([generated[0]], out, workers=1)) == 1
    assert f"in use by PID {os.getpid()}" in capsys.readouterr().err
    assert not (out / "gen_a.h5").exists()


def test_workers_die_with_their_parent(generated, tmp_path):
    import signal
    import time

    folder = generated[0]
    second = _copy(folder, tmp_path / "gen_b")
    env = {**os.environ, "CORTICALRNN_TEST_WORKER_FAULT": "gen_b:hang"}
    cmd = [sys.executable, "-m", "corticalrnn", "extract", str(folder), str(second), "-o",
           str(tmp_path / "out"), "-j", "2", "--no-progress", "--sheets", "X_ON"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    parent = subprocess.Popen(cmd, env=env, cwd=tmp_path, **quiet)
    lock = tmp_path / "out" / "gen_b.h5.lock"
    deadline = time.time() + 60
    while not (lock.exists() and lock.read_text().strip()) and time.time() < deadline:
        time.sleep(0.05)
    worker = int(lock.read_text())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(worker, signal.SIGKILL)
        raise AssertionError("the worker outlived its parent")
