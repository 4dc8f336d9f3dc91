"""The slurm/*.sbatch scripts on a real single-node Slurm (tests/slurm_cluster.py).

Each pytest-xdist worker (module scope) starts its own private cluster on free ports, so
``pytest -n 2`` is safe. Skipped, with the reason, only where Slurm/munge are not installed or
their daemons cannot start (``.ci/install-slurm.sh`` installs them).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from itertools import product
from pathlib import Path

import pytest
from slurm_cluster import ClusterConfig, SlurmCluster, SlurmUnavailable, free_port, start_cluster

REPO = Path(__file__).resolve().parents[1]
SLURM = REPO / "slurm"
VENV_BIN = Path(sys.executable).parent  # corticalrnn, torchrun of the interpreter running the tests

pytestmark = pytest.mark.slurm


# ------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    root = tmp_path_factory.mktemp("slurm")
    try:
        cluster = start_cluster(root, ClusterConfig(gpus=2))
    except SlurmUnavailable as exc:
        pytest.skip(f"cannot run a Slurm cluster here: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()


def job_env(**extra: str) -> dict[str, str]:
    """Environment for submitted jobs: the test interpreter's bin dir first on PATH."""
    env = {"PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1"}
    env.update(extra)
    return env


def wait_for(what: str, predicate: Callable[[], bool], timeout: float, slurm: SlurmCluster,
             log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
            raise TimeoutError(f"{what} not reached after {timeout} s\n--- job log ---\n{tail}\n"
                               f"--- slurmctld ---\n{slurm.log_tail('slurmctld')}")
        time.sleep(0.1)


def run_cli(*args: str | Path) -> None:
    """``corticalrnn ARGS`` in this process (no interpreter start-up per call)."""
    from corticalrnn.cli import main

    assert main([str(a) for a in args]) == 0, args


def make_datastores(root: Path, names: list[str], images: str = "50000-50001",
                    image_ms: float = 200.0) -> list[Path]:
    """Small synthetic Mozaik datastores (the same network), one per name."""
    from corticalrnn.synth import CortexConfig, generate
    from corticalrnn.synth.cli import parse_image_ids

    folders = []
    for name in names:
        folder = root / name
        generate(folder, parse_image_ids(images), 1, seed=3,
                 config=CortexConfig(scale=0.1, image_ms=image_ms), progress=False)
        folders.append(folder)
    return folders


def assert_same_as_uninterrupted(run_dir: Path, ref_dir: Path, ref: subprocess.Popen) -> None:
    """The interrupted run's final checkpoint equals the uninterrupted reference run's, bit for bit."""
    import torch
    out, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0, out
    got = torch.load(run_dir / "last.pt", weights_only=True)
    want = torch.load(ref_dir / "last.pt", weights_only=True)
    assert got["progress"]["step"] == want["progress"]["step"] == TRAIN_STEPS
    assert got["model"].keys() == want["model"].keys()
    for name, tensor in want["model"].items():
        assert torch.equal(got["model"][name], tensor), f"weights {name} differ from the uninterrupted run"


# ------------------------------------------------------------------------------ script basics
@pytest.mark.parametrize("script", sorted(p.name for p in SLURM.glob("*.sbatch")))
def test_help_and_syntax(script: str) -> None:
    path = SLURM / script
    subprocess.run(["bash", "-n", str(path)], check=True)
    out = subprocess.run(["bash", str(path), "--help"], capture_output=True, text=True, check=True).stdout
    assert "Usage:" in out and "#SBATCH" not in out
    text = path.read_text()
    for directive in ("#SBATCH --signal=B:USR1@", "#SBATCH --requeue", "#SBATCH --open-mode=append"):
        assert directive in text, f"{script} lacks {directive}"
    assert "/home/" not in text and "/work/" not in text  # no hard-coded paths
    bad = subprocess.run(["bash", str(path)], capture_output=True, text=True)
    assert bad.returncode == 2 and "error" in bad.stderr


def test_multinode_srun_gets_the_cpus_per_task() -> None:
    """Slurm 22.05-23.02: srun does not inherit --cpus-per-task; without it each node's torchrun
    and its trainers share one CPU."""
    text = (SLURM / "train-multinode.sbatch").read_text()
    srun = next(line for line in text.splitlines() if "hook srun " in line)
    assert '${SRUN_CPUS[@]+"${SRUN_CPUS[@]}"}' in srun
    assert 'SRUN_CPUS=(--cpus-per-task="$SLURM_CPUS_PER_TASK")' in text


# ---------------------------------------------------------------------------------- extraction
def test_extract_array_job_and_resubmission(slurm: SlurmCluster, tmp_path: Path) -> None:
    from extract.spikefile import open_spikefile

    folders = make_datastores(tmp_path / "data", ["ds_a", "ds_b", "ds_c"])
    listing = tmp_path / "folders.txt"
    listing.write_text(f"# datastores of one campaign\n{folders[0]}\n\n   {folders[1]}  \n{folders[2]}\n")
    script = SLURM / "extract.sbatch"
    count = subprocess.run(["bash", str(script), "--count", str(listing)], capture_output=True, text=True,
                           env={**os.environ, "CHUNK": "2"}, check=True).stdout.strip()
    assert count == "2"

    out = tmp_path / "h5"
    opts = ["--array=0-1", f"--output={tmp_path}/extract-%A_%a.out", "--cpus-per-task=1"]
    job = slurm.sbatch(script, str(listing), str(out), "--no-progress", options=opts, cwd=tmp_path,
                       env=job_env(CHUNK="2"))
    tasks = slurm.wait(job, timeout=180)
    assert [(t["array_task_id"], t["state"], t["exit_code"]) for t in tasks] == \
        [(0, "COMPLETED", "0:0"), (1, "COMPLETED", "0:0")], tasks
    outputs = sorted(out.iterdir())
    assert [p.name for p in outputs] == ["ds_a.h5", "ds_b.h5", "ds_c.h5"]
    for folder in folders:
        with open_spikefile(out / f"{folder.name}.h5") as sf:
            assert Path(sf.source) == folder
            assert sf.attrs["n_presentations"] == 2
    task0_log = (tmp_path / f"extract-{job}_0.out").read_text()
    assert "2 of 3 folders" in task0_log

    # Re-submit after losing one output, with more tasks than needed: only ds_b is extracted
    # again, finished files are left alone, surplus tasks succeed doing nothing.
    stamps = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in outputs}
    (out / "ds_b.h5").unlink()
    job2 = slurm.sbatch(script, str(listing), str(out), "--no-progress",
                        options=["--array=0-3", f"--output={tmp_path}/again-%A_%a.out", "--cpus-per-task=1"],
                        cwd=tmp_path, env=job_env(CHUNK="2"))
    tasks = slurm.wait(job2, timeout=180)
    assert [t["state"] for t in tasks] == ["COMPLETED"] * 4, tasks
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()}
    assert sorted(after) == ["ds_a.h5", "ds_b.h5", "ds_c.h5"]
    assert after["ds_a.h5"] == stamps["ds_a.h5"] and after["ds_c.h5"] == stamps["ds_c.h5"]
    with open_spikefile(out / "ds_b.h5") as sf:
        assert Path(sf.source) == folders[1]
    assert "nothing to do" in (tmp_path / f"again-{job2}_3.out").read_text()
    assert not list(out.glob("*.tmp"))


# ------------------------------------------------------------------------------------ training
# Long enough (~50 ms per step here) that the interruptions below land well before the end even on
# a fast machine; each interruption is sent once the log shows the run got past a given step.
TRAIN_STEPS = 150


@pytest.fixture(scope="module")
def train_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny but real training setup: synth -> extract -> trim -> subset -> TOML config."""
    root = tmp_path_factory.mktemp("train-data")
    (folder,) = make_datastores(root, ["ds"], images="50000-50007", image_ms=150.0)
    run_cli("extract", folder, "-o", root / "h5", "--no-progress")
    run_cli("trim", root / "h5" / "ds.h5", "-o", root / "store.zarr", "--bin-ms", "10", "--no-progress")
    run_cli("subset", root / "store.zarr", "-o", root / "subset.json", "--fraction", "0.5", "--seed", "0")
    config = root / "train.toml"
    config.write_text(
        f'[data]\nstore = "{root / "store.zarr"}"\nsubset = "{root / "subset.json"}"\nval_fraction = 0.25\n\n'
        f"[train]\nmax_steps = {TRAIN_STEPS}\nbatch_size = 2\nseed = 7\ndevice = \"cpu\"\neval_every = 50\n"
        "checkpoint_every = 1000\nlog_every = 1\nprogress = false\n"
    )
    return config


def train_rows(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [r for r in csv.DictReader(fh) if r["split"] == "train"]


def last_step(run_dir: Path) -> int:
    rows = train_rows(run_dir)
    return int(rows[-1]["step"]) if rows else 0


def release(slurm: SlurmCluster, job: int, log: Path) -> None:
    """Wait for the requeued job to be pending again and let it start now (skips Slurm's hold).

    The hold exists because slurmd revokes the old run's credential with a 1-s timestamp: a new
    run started within the same second is rejected ("Job credential revoked"), so wait 2 s.
    """
    slurm.wait(job, until={"PENDING"}, timeout=90)
    time.sleep(2.0)
    slurm.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    slurm.wait(job, until={"RUNNING", "COMPLETED"}, timeout=90)


def test_train_preempted_twice_resumes_to_uninterrupted_result(slurm: SlurmCluster, tmp_path: Path,
                                                                train_config: Path) -> None:

    # The uninterrupted reference run, outside Slurm, concurrently with the Slurm job.
    ref_dir = tmp_path / "reference"
    ref = subprocess.Popen([str(VENV_BIN / "corticalrnn"), "train", "--config", str(train_config),
                            "--run-dir", str(ref_dir)], env={**os.environ, **job_env()},
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    run_dir = tmp_path / "run"
    log = tmp_path / "train.out"
    job = slurm.sbatch(SLURM / "train.sbatch", str(run_dir), "--config", str(train_config),
                       options=[f"--output={log}", "--cpus-per-task=1", "--time=15"], cwd=tmp_path,
                       env=job_env())
    # 1. The time-limit path: the batch shell gets SIGUSR1 (as from --signal=B:USR1@600), the
    #    trainer checkpoints and exits 75, the script requeues the job.
    wait_for("step 8", lambda: last_step(run_dir) >= 8, 180, slurm, log)
    slurm.run("scancel", "--batch", "--signal=USR1", str(job))
    release(slurm, job, log)
    # 2. The preemption path: `scontrol requeue` (SIGTERM to every process of the job; Slurm requeues).
    wait_for("step 40 after the first resume",
             lambda: slurm.state(job)["restarts"] == 1 and last_step(run_dir) >= 40, 180, slurm, log)
    slurm.run("scontrol", "requeue", str(job))
    release(slurm, job, log)
    (final,) = slurm.wait(job, timeout=240)
    text = log.read_text()
    assert (final["state"], final["exit_code"], final["restarts"]) == ("COMPLETED", "0:0", 2), text
    assert "requeueing job" in text and "SIGTERM" in text
    assert "stopped on a signal" in text and f"finished {TRAIN_STEPS} steps" in text

    assert_same_as_uninterrupted(run_dir, ref_dir, ref)
    # the per-step training losses match too (each resumed run drops and repeats rows after last.pt)
    assert [(r["step"], r["loss"]) for r in train_rows(run_dir)] == \
        [(r["step"], r["loss"]) for r in train_rows(ref_dir)]


# ---------------------------------------------------------------------------------------- sweep
STUB_TRAINER = """\
import json, pathlib, sys
args = sys.argv[1:]
run_dir = pathlib.Path(args[args.index("--run-dir") + 1])
(run_dir / "argv.json").write_text(json.dumps(args))
"""


def test_sweep_array_expands_the_grid(slurm: SlurmCluster, tmp_path: Path) -> None:
    """Array task i trains grid point i (last axis fastest) in its own run directory."""
    stub = tmp_path / "stub_trainer.py"
    stub.write_text(STUB_TRAINER)
    stores = ["stores/bin5.zarr", "stores/bin10.zarr", "stores/bin20.zarr"]
    subsets = ["subsets/obs05.json", "subsets/obs20.json"]
    axes = [f"data.store={','.join(stores)}", f"data.subset={','.join(subsets)}"]
    train_args = ["--", "--config", "base.toml", "--set", "train.max_steps=5"]
    script = SLURM / "sweep.sbatch"
    out = tmp_path / "sweep"

    listing = subprocess.run(["bash", str(script), "--list", str(out), *axes, *train_args],
                             capture_output=True, text=True, check=True)
    rows = [line.split("\t") for line in listing.stdout.splitlines()]
    assert "--array=0-5" in listing.stderr and [int(r[0]) for r in rows] == list(range(6))

    env = job_env(CORTICALRNN=f"{sys.executable} {stub}")
    job = slurm.sbatch(script, str(out), *axes, *train_args,
                       options=["--array=0-5", f"--output={tmp_path}/sweep-%A_%a.out", "--cpus-per-task=1"],
                       cwd=tmp_path, env=env)
    tasks = slurm.wait(job, timeout=120)
    assert [t["state"] for t in tasks] == ["COMPLETED"] * 6, tasks

    points = []
    for (index, run_dir, sets), (store, subset) in zip(rows, product(stores, subsets)):
        argv = json.loads((Path(run_dir) / "argv.json").read_text())
        assert argv == ["train", "--run-dir", run_dir, "--resume", "--config", "base.toml",
                        "--set", "train.max_steps=5", *sets.split(" ")], index
        assert argv[-4:] == ["--set", f"data.store={store}", "--set", f"data.subset={subset}"]
        points.append((store, subset))
    assert sorted(points) == sorted(product(stores, subsets))
    assert len({r[1] for r in rows}) == 6 and sorted(p.name for p in out.iterdir()) == sorted(
        Path(r[1]).name for r in rows)
    assert Path(rows[3][1]).name == "003_store-bin10_subset-obs20"

    # an array index outside the grid fails with a message instead of training something
    bad = slurm.sbatch(script, str(out), *axes, *train_args,
                       options=["--array=6", f"--output={tmp_path}/bad-%A_%a.out"], cwd=tmp_path, env=env)
    (task,) = slurm.wait(bad, timeout=60)
    assert (task["state"], task["exit_code"]) == ("FAILED", "2:0")
    assert "outside the grid of 6 points" in (tmp_path / f"bad-{bad}_6.out").read_text()


def test_multinode_script_ddp_preempted_resumes(slurm: SlurmCluster, tmp_path: Path,
                                                train_config: Path) -> None:
    """srun + torchrun rendezvous (one node here, 2 CPU processes on gloo), stopped by the
    time-limit warning, requeued and resumed: same weights as an uninterrupted torchrun run."""

    ref_dir = tmp_path / "reference"
    ref = subprocess.Popen([str(VENV_BIN / "torchrun"), "--standalone", "--nproc-per-node=2", "-m",
                            "corticalrnn", "train", "--config", str(train_config), "--run-dir", str(ref_dir)],
                           env={**os.environ, **job_env()}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    run_dir = tmp_path / "run"
    log = tmp_path / "multinode.out"
    job = slurm.sbatch(SLURM / "train-multinode.sbatch", str(run_dir), "--config", str(train_config),
                       options=[f"--output={log}", "--nodes=1", "--gpus-per-node=2", "--cpus-per-task=2",
                                "--time=15"],
                       cwd=tmp_path, env=job_env(NPROC_PER_NODE="2", RDZV_PORT=str(free_port())))
    wait_for("step 8", lambda: last_step(run_dir) >= 8, 240, slurm, log)
    slurm.run("scancel", "--batch", "--signal=USR1", str(job))
    release(slurm, job, log)
    (final,) = slurm.wait(job, timeout=300)
    text = log.read_text()
    assert (final["state"], final["exit_code"], final["restarts"]) == ("COMPLETED", "0:0", 1), text
    assert "1 node(s) x 2 process(es)" in text and "requeueing job" in text
    assert "stopped on a signal" in text and f"finished {TRAIN_STEPS} steps" in text

    assert_same_as_uninterrupted(run_dir, ref_dir, ref)
