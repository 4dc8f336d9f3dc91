"""`corticalrnn bench resilience --kills N`: random ``kill -9`` of extract, trim, trim --append and
import-npz, each rerun to completion and compared, by content, with an uninterrupted run.

Per command: one clean run gives the reference content digest and its duration; then ``--kills``
trials each start the command, ``SIGKILL`` it after a random delay in ``[0, duration]`` (seeded),
rerun it, and compare. Counted: ``differ`` (rerun exit 0 but content differs: a silent loss),
``rerun_failed`` (the rerun exited non-zero), ``killed`` (the kill landed before the command ended).
Then two concurrent ``trim --append`` of different inputs on one store: both must end with either
success or "in use by PID", and the store must hold exactly the inputs that reported success.
Inputs are small generated datastores (torch-free); the commands run as subprocesses.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from corticalrnn.tables import format_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kills", type=int, default=25, help="random kill -9 trials per command")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill delays")
    parser.add_argument("--commands", nargs="+", default=["extract", "trim", "trim-append", "import-npz"],
                        choices=["extract", "trim", "trim-append", "import-npz"], help="commands to test")
    parser.add_argument("--concurrent", type=int, default=3, help="concurrent trim --append trials")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the files here (default: temp)")


# ---------------------------------------------------------------------------------------------
# content digests


def _h(h: Any, a: Any) -> None:
    a = np.ascontiguousarray(np.asarray(a))
    h.update(str((a.dtype.str, a.shape)).encode())
    h.update(a.tobytes() if a.dtype != object else repr(a.tolist()).encode())


def store_digest(path: Path) -> str:
    from corticalrnn.store import open_store

    st = open_store(path)
    h = hashlib.sha256()
    t = st.windows
    for col in ("image_id", "trial", "presentation", "padded", "valid_bins", "split", "source_path"):
        _h(h, getattr(t, col))
    h.update(repr([(s.get("sha256"), s.get("n_windows")) for s in st.sources]).encode())
    for sheet in st.sheets:
        _h(h, st.neuron_ids(sheet))
        sp = st.sparse(sheet, np.arange(len(st)))
        for a in (sp.window, sp.bin, sp.column, sp.count):
            _h(h, a)
    return h.hexdigest()


def spikes_digest(folder: Path) -> str:
    from extract.spikefile import PARTS, open_spikefile

    h = hashlib.sha256()
    for f in sorted(folder.glob("*.h5")):
        h.update(f.name.encode())
        with open_spikefile(f) as sf:
            for k in sorted(sf.presentations):
                _h(h, sf.presentations[k])
            for sheet in sf.sheets:
                _h(h, sf.neuron_ids(sheet))
                for part in PARTS:
                    csr = sf.read_part(sheet, part)
                    _h(h, csr.indptr)
                    _h(h, csr.times)
    h.update(repr(sorted(p.name for p in folder.iterdir())).encode())  # no leftovers
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# inputs


def _npz_folder(root: Path, seed: int = 0) -> None:
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    sizes = {"X_ON": 6, "V1_Exc_L4": 9}
    (root / "neuron_ids").mkdir(parents=True, exist_ok=True)
    for k, (sheet, n) in enumerate(sizes.items()):
        np.save(root / "neuron_ids" / f"neuron_ids_{sheet}_0.npy", np.arange(n) + 100 * k)
    for split, keys in {"train": [(i, 0) for i in range(1, 40)], "test": [(7, t) for t in range(20)]}.items():
        for sheet, n in sizes.items():
            d = root / split / sheet
            d.mkdir(parents=True, exist_ok=True)
            for img, trial in keys:
                m = sp.csr_matrix(rng.poisson(0.3, (n, 35)))
                sp.save_npz(d / f"spikes_trial_{trial}_{img}.npz", m)


def _inputs(work: Path) -> dict[str, Any]:
    from corticalrnn.bench.extract import DatastoreSpec, write_datastore

    ds = [work / "in" / f"ds{i}" for i in range(3)]
    for i, f in enumerate(ds):
        if not f.exists():
            write_datastore(f, DatastoreSpec(images=tuple(range(50000, 50012)), trials=2, seed=i))
    h5 = work / "h5"
    if not h5.exists():
        _cli(["extract", *map(str, ds), "-o", str(h5), "--no-progress"], check=True)
    npz = work / "in" / "npz"
    if not npz.exists():
        _npz_folder(npz)
    return {"datastores": ds, "h5": sorted(h5.glob("*.h5")), "npz": npz}


def _cli(argv: list[str], check: bool = False) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "corticalrnn", *argv], capture_output=True, text=True)
    if check and r.returncode:
        raise RuntimeError(f"corticalrnn {' '.join(argv)} failed: {r.stderr[-2000:]}")
    return r


def _commands(inp: dict[str, Any], out: Path) -> dict[str, dict[str, Any]]:
    h5 = [str(p) for p in inp["h5"]]
    return {
        "extract": {"argv": ["extract", *map(str, inp["datastores"]), "-o", str(out / "x"), "-j", "2",
                             "--no-progress"], "digest": lambda: spikes_digest(out / "x"), "prepare": None},
        "trim": {"argv": ["trim", *h5, "-o", str(out / "t.zarr"), "--bin-ms", "5", "--no-progress"],
                 "digest": lambda: store_digest(out / "t.zarr"), "prepare": None},
        "trim-append": {
            "argv": ["trim", *h5[1:], "-o", str(out / "a.zarr"), "--append", "--no-progress"],
            "digest": lambda: store_digest(out / "a.zarr"),
            "prepare": ["trim", h5[0], "-o", str(out / "a.zarr"), "--bin-ms", "5", "--no-progress"],
        },
        "import-npz": {"argv": ["import-npz", str(inp["npz"]), "-o", str(out / "n.zarr"), "--no-progress"],
                       "digest": lambda: store_digest(out / "n.zarr"), "prepare": None},
    }


def _fresh(out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)


def _trial(
    cmd: dict[str, Any], out: Path, delay: float | None
) -> tuple[bool, subprocess.CompletedProcess[str]]:
    """Run (and kill after ``delay`` s) then rerun; returns (kill landed, rerun result)."""
    _fresh(out)
    if cmd["prepare"]:
        _cli(cmd["prepare"], check=True)
    killed = False
    if delay is not None:
        p = subprocess.Popen([sys.executable, "-m", "corticalrnn", *cmd["argv"]],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            p.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            killed = True
        time.sleep(0.05)
    return killed, _cli(cmd["argv"])


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="resilience-")
        work = Path(tmp.name)
    else:
        work = args.workdir
        work.mkdir(parents=True, exist_ok=True)
    try:
        inp = _inputs(work)
        out = work / "out"
        cmds = _commands(inp, out)
        rows = []
        for name in args.commands:
            cmd = cmds[name]
            t0 = time.perf_counter()
            _, r = _trial(cmd, out, None)
            duration = time.perf_counter() - t0
            if r.returncode:
                raise RuntimeError(f"clean {name} failed: {r.stderr[-2000:]}")
            ref = cmd["digest"]()
            row = {"command": name, "trials": 0, "killed": 0, "differ": 0, "rerun_failed": 0,
                   "clean_s": round(duration, 2)}
            for _ in range(args.kills):
                killed, r = _trial(cmd, out, rng.uniform(0.0, duration))
                row["trials"] += 1
                row["killed"] += killed
                if r.returncode:
                    row["rerun_failed"] += 1
                    print(f"{name}: rerun failed: {r.stderr.strip()[-500:]}", file=sys.stderr)
                elif cmd["digest"]() != ref:
                    row["differ"] += 1
                    print(f"{name}: rerun exit 0 but content differs (silent loss)", file=sys.stderr)
            rows.append(row)
        rows.append(_concurrent(inp, out, args.concurrent))
        print(format_table(rows))
        return {"rows": rows}
    finally:
        if tmp is not None:
            tmp.cleanup()


def _concurrent(inp: dict[str, Any], out: Path, trials: int) -> dict[str, Any]:
    """Two ``trim --append`` of different inputs at once on one store: nothing may be lost."""
    from corticalrnn.store import open_store

    h5 = [str(p) for p in inp["h5"]]
    row = {"command": "2x trim --append", "trials": 0, "killed": 0, "differ": 0, "rerun_failed": 0,
           "clean_s": 0.0}
    for _ in range(trials):
        _fresh(out)
        store = out / "c.zarr"
        _cli(["trim", h5[0], "-o", str(store), "--bin-ms", "5", "--no-progress"], check=True)
        argv = [[sys.executable, "-m", "corticalrnn", "trim", f, "-o", str(store), "--append",
                 "--no-progress"]
                for f in h5[1:3]]
        procs = [subprocess.Popen(a, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for a in argv]
        results = [(f, *p.communicate(), p.returncode) for f, p in zip(h5[1:3], procs)]
        ok = {str(Path(f).resolve()) for f, _, _, rc in results if rc == 0}
        refused = [f for f, _, err, rc in results if rc != 0 and "in use by PID" in err]
        held = {s["path"] for s in open_store(store).sources} - {str(Path(h5[0]).resolve())}
        row["trials"] += 1
        if held != ok:
            row["differ"] += 1  # an update reported as done is missing (or vice versa)
        if len(ok) + len(refused) != 2:
            row["rerun_failed"] += 1
    return row
