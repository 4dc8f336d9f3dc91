"""A private single-node Slurm cluster for tests: munged + slurmctld + slurmd on free ports.

Everything lives under one directory (config, state, spool, logs, munge key and socket), the
daemons run in the foreground as child processes of the test process and are stopped by pid.
Several clusters can run side by side on one host (one per pytest-xdist worker): each has its
own ports, cluster name, munge socket and key.

Client commands (``sbatch``, ``scontrol``, ...) find the cluster through ``SLURM_CONF``; use
:meth:`SlurmCluster.env` for every subprocess that talks to it (jobs inherit it from ``sbatch``).
"""

from __future__ import annotations

import ctypes
import getpass
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "scontrol", "squeue", "scancel", "srun")
#: Job states after which a job will not run again by itself.
FINAL_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
)


class SlurmUnavailable(RuntimeError):
    """Slurm or munge is not installed, or the daemons could not be started here."""


@dataclass(frozen=True)
class SlurmBinaries:
    """Absolute paths of the daemons and client commands."""

    paths: Mapping[str, str]

    def __getitem__(self, name: str) -> str:
        return self.paths[name]


def find_binaries() -> SlurmBinaries:
    """Locate the daemons (also in ``/usr/sbin``, often not on a user's PATH) and the clients."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/local/sbin"])
    found: dict[str, str] = {}
    missing = []
    for name in DAEMONS + CLIENTS:
        path = shutil.which(name, path=search)
        if path is None:
            missing.append(name)
        else:
            found[name] = path
    if missing:
        raise SlurmUnavailable(
            f"not installed: {', '.join(missing)} (run .ci/install-slurm.sh to install Slurm and munge)"
        )
    return SlurmBinaries(found)


def free_port() -> int:
    """A TCP port that is free right now on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class ClusterConfig:
    """Knobs of the test cluster (defaults suit fast tests)."""

    cpus: int = 8  # advertised CPUs (overcommitted on purpose: array tasks run side by side)
    real_memory_mb: int = 65536  # advertised only (not enforced): lets jobs ask for --mem
    kill_wait_s: int = 10  # SIGTERM -> SIGKILL grace on cancel / requeue / preemption
    start_timeout_s: float = 60.0
    partition: str = "debug"
    gpus: int = 0  # fake GPUs (a gres count without devices) so scripts that ask for --gres=gpu run


def node_name() -> str:
    """The node's name: this host's short name (so that job scripts can resolve it, e.g. torchrun)."""
    return socket.gethostname().split(".")[0]


def _conf_text(root: Path, cfg: ClusterConfig, name: str, ctld_port: int, slurmd_port: int,
               munge_socket: Path) -> str:
    host = node_name()
    user = getpass.getuser()
    lines = {
        "ClusterName": name,
        "SlurmctldHost": f"{host}(127.0.0.1)",
        "SlurmctldPort": str(ctld_port),
        "SlurmdPort": str(slurmd_port),
        "SlurmUser": user,
        "SlurmdUser": user,
        "StateSaveLocation": str(root / "state"),
        "SlurmdSpoolDir": str(root / "spool"),
        "SlurmctldPidFile": str(root / "run" / "slurmctld.pid"),
        "SlurmdPidFile": str(root / "run" / "slurmd.pid"),
        "SlurmctldLogFile": str(root / "log" / "slurmctld.log"),
        "SlurmdLogFile": str(root / "log" / "slurmd.log"),
        "SlurmctldDebug": "info",
        "SlurmdDebug": "info",
        "AuthType": "auth/munge",
        "CredType": "cred/munge",
        "AuthInfo": f"socket={munge_socket}",
        "ProctrackType": "proctrack/linuxproc",
        "TaskPlugin": "task/none",
        "JobAcctGatherType": "jobacct_gather/none",
        "AccountingStorageType": "accounting_storage/none",
        "JobCompType": "jobcomp/none",
        "SchedulerType": "sched/builtin",
        "SelectType": "select/cons_tres",
        "SelectTypeParameters": "CR_Core",
        "SlurmdParameters": "config_overrides",
        "MpiDefault": "none",
        "SwitchType": "switch/none",
        "ReturnToService": "2",
        "MinJobAge": "3600",  # keep finished jobs visible to scontrol for the whole session
        "KillWait": str(cfg.kill_wait_s),
        "InactiveLimit": "0",
        "Waittime": "0",
        "SlurmctldTimeout": "30",
        "SlurmdTimeout": "60",
        "MaxArraySize": "1001",
        "TmpFS": str(root / "tmp"),
        "MailProg": shutil.which("true") or "/bin/true",
        "PlugStackConfig": str(root / "etc" / "plugstack.conf"),
    }
    if cfg.gpus:
        lines["GresTypes"] = "gpu"
    text = "".join(f"{k}={v}\n" for k, v in lines.items())
    gres = f" Gres=gpu:{cfg.gpus}" if cfg.gpus else ""
    text += (
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cfg.cpus} RealMemory={cfg.real_memory_mb}{gres} "
        f"State=UNKNOWN\n"
        f"PartitionName={cfg.partition} Nodes={host} Default=YES MaxTime=INFINITE State=UP\n"
    )
    return text


@dataclass
class SlurmCluster:
    """A running private cluster; use :func:`start_cluster` to make one and :meth:`stop` to end it."""

    root: Path
    binaries: SlurmBinaries
    config: ClusterConfig
    conf_path: Path
    munge_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    # -- plumbing -----------------------------------------------------------------------------
    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for client commands: the caller's plus ``SLURM_CONF`` and the Slurm bin dirs."""
        env = dict(os.environ)
        for key in list(env):  # a surrounding Slurm job's variables would confuse sbatch/srun
            if key.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")):
                del env[key]
        env["SLURM_CONF"] = str(self.conf_path)
        bindirs = {str(Path(self.binaries[n]).parent) for n in CLIENTS}
        env["PATH"] = os.pathsep.join([*sorted(bindirs), env.get("PATH", "")])
        if extra:
            env.update(extra)
        return env

    def run(self, *args: str, check: bool = True, cwd: Path | None = None,
            env: Mapping[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command against this cluster."""
        cmd = [self.binaries[args[0]] if args[0] in self.binaries.paths else args[0], *args[1:]]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=self.env(env),
                              timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
                               f"\n--- slurmctld log tail ---\n{self.log_tail('slurmctld')}")
        return proc

    def log_tail(self, daemon: str, lines: int = 30) -> str:
        path = self.root / "log" / f"{daemon}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # -- jobs ---------------------------------------------------------------------------------
    def sbatch(self, script: Path | str, *args: str, options: Sequence[str] = (), cwd: Path | None = None,
               env: Mapping[str, str] | None = None) -> int:
        """Submit ``script args...`` with extra sbatch ``options``; return the job id."""
        proc = self.run("sbatch", "--parsable", *options, str(script), *args, cwd=cwd, env=env)
        return int(proc.stdout.strip().split(";")[0])

    def jobs(self, job_id: int) -> list[dict[str, str]]:
        """``scontrol show job -o`` records of a job (one per array task; unstarted tasks may share one)."""
        proc = self.run("scontrol", "show", "job", "-o", str(job_id))
        return [parse_record(line) for line in proc.stdout.splitlines() if line.strip()]

    def state(self, job_id: int) -> dict[str, object]:
        """State, exit code and restart count of a (non-array) job."""
        (job,) = self.jobs(job_id)
        return summarize(job)

    def wait(self, job_id: int, timeout: float = 120, until: Iterable[str] = FINAL_STATES,
             poll: float = 0.5) -> list[dict[str, object]]:
        """Wait until every task of the job is in one of ``until``; return their summaries."""
        until = frozenset(until)
        deadline = time.monotonic() + timeout
        while True:
            records = [summarize(j) for j in self.jobs(job_id)]
            # A pending array's unstarted tasks are one record with a task range; wait for it too.
            if records and all(r["state"] in until for r in records):
                return sorted(records, key=lambda r: (r["array_task_id"] is None, r["array_task_id"]))
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} not in {sorted(until)} after {timeout} s: {records}\n"
                                   f"--- slurmctld log ---\n{self.log_tail('slurmctld')}\n"
                                   f"--- slurmd log ---\n{self.log_tail('slurmd')}")
            time.sleep(poll)

    # -- lifecycle ----------------------------------------------------------------------------
    def stop(self) -> None:
        """Terminate the daemons by pid (slurmd, slurmctld, munged), SIGKILL stragglers."""
        for name in reversed(list(self.processes)):
            proc = self.processes[name]
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        self.processes.clear()
        shutil.rmtree(self.munge_dir, ignore_errors=True)


_FIELD = re.compile(r"(?:^|\s)([A-Za-z][\w/:]*)=")


def parse_record(line: str) -> dict[str, str]:
    """Split one ``scontrol show ... -o`` line into ``{Key: value}`` (values may contain spaces)."""
    matches = list(_FIELD.finditer(line))
    out = {}
    for m, nxt in zip(matches, matches[1:] + [None]):
        end = nxt.start() if nxt is not None else len(line)
        out[m.group(1)] = line[m.end():end].strip()
    return out


def summarize(job: Mapping[str, str]) -> dict[str, object]:
    """The fields tests need from one ``scontrol show job -o`` record."""
    task = job.get("ArrayTaskId", "")
    return {
        "job_id": int(job["JobId"]),
        "array_job_id": int(job["ArrayJobId"]) if "ArrayJobId" in job else None,
        "array_task_id": int(task) if task.isdigit() else None,
        "array_task_string": task,  # e.g. "3-7" for tasks that have not started yet
        "state": job.get("JobState", ""),
        "reason": job.get("Reason", ""),
        "exit_code": job.get("ExitCode", ""),
        "restarts": int(job.get("Restarts", "0") or 0),
        "stdout": job.get("StdOut", ""),
    }


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: have the daemon receive SIGTERM if the test process dies without stopping it."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _wait_ready(cluster: SlurmCluster, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        for name, proc in cluster.processes.items():
            if proc.poll() is not None:
                raise SlurmUnavailable(f"{name} exited with {proc.returncode} during start-up:\n"
                                       f"{cluster.log_tail(name)}")
        proc = cluster.run("sinfo" if "sinfo" in cluster.binaries.paths else "scontrol",
                           *(["-h", "-o", "%T"] if "sinfo" in cluster.binaries.paths else
                             ["show", "node", node_name()]), check=False, timeout=20)
        last = proc.stdout + proc.stderr
        states = last.lower()
        if proc.returncode == 0 and "idle" in states and "drain" not in states and "down" not in states:
            return
        time.sleep(0.3)
    raise SlurmUnavailable(f"Slurm node not idle after {timeout} s ({last.strip()}):\n"
                           f"{cluster.log_tail('slurmctld')}\n{cluster.log_tail('slurmd')}")


def start_cluster(root: Path, config: ClusterConfig | None = None) -> SlurmCluster:
    """Start munged, slurmctld and slurmd under ``root``; raise :class:`SlurmUnavailable` on failure.

    The caller must call :meth:`SlurmCluster.stop` (the daemons are its child processes).
    """
    config = config or ClusterConfig()
    binaries = find_binaries()
    paths = dict(binaries.paths)
    sinfo = shutil.which("sinfo", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin"]))
    if sinfo:
        paths["sinfo"] = sinfo
    binaries = SlurmBinaries(paths)
    root = Path(root)
    for sub in ("etc", "state", "spool", "run", "log", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    # Unix socket paths are limited to ~107 bytes; keep munge's in a short private dir.
    munge_dir = Path(tempfile.mkdtemp(prefix="crnn-munge-"))
    os.chmod(munge_dir, 0o755)
    key = munge_dir / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o600)
    sock = munge_dir / "munge.sock"
    (root / "etc" / "plugstack.conf").write_text("")
    if config.gpus:  # fake GPU "devices": character devices that exist everywhere
        devices = []
        for i in range(config.gpus):
            dev = root / "dev" / f"gpu{i}"
            dev.parent.mkdir(exist_ok=True)
            if not dev.exists():
                dev.symlink_to("/dev/null" if i % 2 == 0 else "/dev/zero")
            devices.append(str(dev))
        (root / "etc" / "gres.conf").write_text(
            "".join(f"NodeName={node_name()} Name=gpu File={d}\n" for d in devices))
    name = f"crnn{os.getpid()}"
    conf = root / "etc" / "slurm.conf"
    cluster = SlurmCluster(root, binaries, config, conf, munge_dir)
    try:
        with open(root / "log" / "munged.out", "wb") as out:
            cluster.processes["munged"] = subprocess.Popen(
                [binaries["munged"], "--foreground", "--force", f"--socket={sock}", f"--key-file={key}",
                 f"--pid-file={munge_dir / 'munged.pid'}", f"--log-file={root / 'log' / 'munged.log'}",
                 f"--seed-file={munge_dir / 'munged.seed'}"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                        preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 15
        while not sock.exists():
            if cluster.processes["munged"].poll() is not None or time.monotonic() > deadline:
                raise SlurmUnavailable(f"munged did not start:\n{cluster.log_tail('munged')}\n"
                                       f"{(root / 'log' / 'munged.out').read_text(errors='replace')}")
            time.sleep(0.05)
        for _attempt in range(3):
            ctld_port, slurmd_port = free_port(), free_port()
            conf.write_text(_conf_text(root, config, name, ctld_port, slurmd_port, sock))
            env = cluster.env()
            for daemon, extra in (("slurmctld", ["-i"]), ("slurmd", [])):
                with open(root / "log" / f"{daemon}.out", "ab") as out:
                    cluster.processes[daemon] = subprocess.Popen(
                        [binaries[daemon], "-D", "-f", str(conf), *extra], env=env,
                        stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                        preexec_fn=_die_with_parent)
            try:
                _wait_ready(cluster, config.start_timeout_s)
                return cluster
            except SlurmUnavailable:
                logs = cluster.log_tail("slurmctld") + cluster.log_tail("slurmd")
                if "Address already in use" not in logs:
                    raise
                for daemon in ("slurmd", "slurmctld"):  # port race with another worker: try new ports
                    proc = cluster.processes.pop(daemon)
                    proc.kill()
                    proc.wait()
        raise SlurmUnavailable("could not find free ports for slurmctld/slurmd")
    except BaseException:
        cluster.stop()
        raise
