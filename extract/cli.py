"""`corticalrnn extract DATASTORE_DIR... -o OUTDIR`: datastore folders -> one HDF5 spike file each.

Folders run in parallel worker processes (spawn-safe), outputs that are already complete are
skipped (resume after a crash), a failing folder is reported and does not stop the others;
the exit status is 1 when any folder failed. On SIGTERM (Slurm time limit, preemption) the
workers are stopped, their temporary files removed, and the exit status is 143; running the same
command again resumes. Never imports torch.

Crash isolation: with ``-j N`` every folder runs in its own spawned process; one that dies
(segfault, OOM kill) fails only its folder (reported in the summary). Workers die with their
parent (``PR_SET_PDEATHSIG``, and a parent check). Each output is written under the exclusive lock
``<name>.h5.lock`` (a second run writing it gets "in use by PID"), through a staging name unique to
the process (``<name>.h5.<pid>.part.h5``, itself written via ``.tmp``) renamed into place; staging
files of killed runs are removed by the next run that takes the lock.
"""

from __future__ import annotations

import argparse
import glob
import os
import signal
import sys
import time
from pathlib import Path

from corticalrnn.errors import CorticalRNNError
from corticalrnn.locking import exclusive_lock
from corticalrnn.tables import format_table
from extract.datastore import ExtractOptions, ExtractResult, extract_folder
from extract.spikefile import WriterOptions, open_spikefile


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "folders", nargs="*", metavar="DATASTORE_DIR", help="datastore folders (globs allowed)"
    )
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR", help="output folder")
    parser.add_argument("-j", "--workers", type=int, default=1, help="parallel worker processes (default 1)")
    parser.add_argument("--sheets", nargs="+", default=None, help="sheets to extract (default: all)")
    parser.add_argument("--from-list", type=Path, default=None, metavar="FILE",
                        help="file listing datastore folders, one per line (# comments allowed)")
    parser.add_argument(
        "--compression",
        choices=["gzip", "lzf", "none"],
        default="gzip",
        help="HDF5 compression (default gzip: ~2.5x smaller, ~20%% slower than none; readable everywhere)",
    )
    parser.add_argument("--force", action="store_true", help="re-extract folders whose output exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def expand_folders(patterns: list[str], list_file: Path | None) -> list[Path]:
    """Folders from arguments and an optional list file; globs expanded; order kept, duplicates dropped."""
    items = list(patterns)
    if list_file is not None:
        try:
            lines = list_file.read_text().splitlines()
        except OSError as exc:
            raise CorticalRNNError(f"{list_file}: cannot read folder list ({exc.strerror})") from None
        items += [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    out: list[Path] = []
    for item in items:
        matches = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
        if not matches:
            raise CorticalRNNError(f"no folder matches {item!r}")
        for m in matches:
            p = Path(m).resolve()
            if p not in out:
                out.append(p)
    if not out:
        raise CorticalRNNError("no datastore folders given")
    return out


def output_names(folders: list[Path], outdir: Path) -> dict[Path, Path]:
    """``<outdir>/<folder name>.h5``; two folders with the same name are an error."""
    names: dict[str, Path] = {}
    for f in folders:
        if f.name in names:
            raise CorticalRNNError(f"two input folders are both named {f.name!r}: {names[f.name]} and {f}")
        names[f.name] = f
    return {f: outdir / f"{f.name}.h5" for f in folders}


def _done(output: Path, folder: Path) -> bool:
    """True when ``output`` is a complete spike file made from ``folder``."""
    if not output.exists():
        return False
    try:
        with open_spikefile(output) as f:
            return Path(f.source) == folder
    except CorticalRNNError:
        return False


def _staging(output: Path, pid: int | None = None) -> Path:
    """The per-process staging name of ``output`` (renamed into place when complete)."""
    return output.with_name(f"{output.name}.{os.getpid() if pid is None else pid}.part.h5")


def _clean_staging(output: Path) -> None:
    """Remove staging/temporary files of earlier (killed) runs; call with the output's lock held."""
    for f in output.parent.glob(glob.escape(output.name) + ".*.part.h5*"):
        f.unlink(missing_ok=True)
    (output.parent / (output.name + ".tmp")).unlink(missing_ok=True)  # older fixed temporary name


def _test_fault(folder: str) -> None:
    """Tests and ``bench resilience`` only: ``CORTICALRNN_TEST_WORKER_FAULT=<folder name>:segv|hang``."""
    fault = os.environ.get("CORTICALRNN_TEST_WORKER_FAULT", "")
    if fault and fault.partition(":")[0] == Path(folder).name:
        if fault.endswith(":hang"):
            time.sleep(3600)
        os.kill(os.getpid(), signal.SIGSEGV)


def _work(folder: str, output: str, options: ExtractOptions) -> ExtractResult:
    """Worker entry point (top level so it pickles under spawn); errors become results."""
    t0 = time.perf_counter()
    out = Path(output)
    stage = _staging(out)
    try:
        with exclusive_lock(out):
            _clean_staging(out)
            _test_fault(folder)
            result = extract_folder(folder, stage, options)
            if result.error is None:
                os.replace(stage, out)
                result.output = output
            return result
    except CorticalRNNError as exc:
        return ExtractResult(folder, output, seconds=time.perf_counter() - t0, error=str(exc))
    except Exception as exc:  # an unexpected bug in one folder must not stop the others
        msg = f"{folder}: unexpected {type(exc).__name__}: {exc}"
        return ExtractResult(folder, output, seconds=time.perf_counter() - t0, error=msg)
    finally:
        stage.unlink(missing_ok=True)
        stage.with_name(stage.name + ".tmp").unlink(missing_ok=True)


def run(args: argparse.Namespace) -> int:
    folders = expand_folders(args.folders, args.from_list)
    outputs = output_names(folders, args.output)
    args.output.mkdir(parents=True, exist_ok=True)
    options = ExtractOptions(
        sheets=tuple(args.sheets) if args.sheets else None,
        writer=WriterOptions(compression=None if args.compression == "none" else args.compression),
    )
    results: list[ExtractResult] = []
    todo: list[Path] = []
    for f in folders:
        if not args.force and _done(outputs[f], f):
            results.append(ExtractResult(str(f), str(outputs[f]), skipped=True))
        else:
            todo.append(f)
    # one worker: also a bar over the presentations of the folder being extracted
    options.progress = not args.no_progress and (args.workers <= 1 or len(todo) <= 1)
    t0 = time.perf_counter()
    bar = _progress(len(todo), disable=args.no_progress or not todo)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        if args.workers <= 1 or len(todo) <= 1:
            for f in todo:
                results.append(_work(str(f), str(outputs[f]), options))
                bar.update(1)
        else:
            _run_pool(todo, outputs, options, args.workers, results, bar)
    except _Terminated:
        bar.close()
        for f in todo:  # workers were stopped mid-file: remove their staging files
            _clean_staging(outputs[f])
        done = sum(1 for r in results if not r.error and not r.skipped)
        print(f"corticalrnn extract: terminated (SIGTERM) after {done} folder(s); "
              "run again to resume", file=sys.stderr)
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous)
    bar.close()
    wall = time.perf_counter() - t0
    _print_summary(results, wall)
    failed = [r for r in results if r.error]
    for r in failed:
        print(f"corticalrnn extract: FAILED {r.folder}: {r.error}", file=sys.stderr)
    return 1 if failed else 0


class _Terminated(BaseException):
    """SIGTERM arrived (Slurm time limit, preemption, scancel)."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated()


def _die_with_parent(parent: int) -> None:
    """Linux: SIGKILL this process when its parent dies; also exit if it already has."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
    if os.getppid() != parent:
        os._exit(1)


def _child(folder: str, output: str, options: ExtractOptions, conn, parent: int) -> None:  # type: ignore[no-untyped-def]
    """One folder in its own process; the result goes back through ``conn``."""
    _die_with_parent(parent)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    conn.send(_work(folder, output, options))
    conn.close()


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _run_pool(todo, outputs, options, workers, results, bar) -> None:  # type: ignore[no-untyped-def]
    """Each folder in its own spawned process, ``workers`` at a time: a worker that dies fails only
    its folder; on SIGTERM the workers are stopped at once."""
    import multiprocessing
    from multiprocessing.connection import wait

    ctx = multiprocessing.get_context("spawn")
    pending = list(todo)
    running: dict = {}  # process -> (folder, receiving end)
    try:
        while pending or running:
            while pending and len(running) < workers:
                f = pending.pop(0)
                recv, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(
                    target=_child, args=(str(f), str(outputs[f]), options, send, os.getpid()), daemon=True
                )
                proc.start()
                send.close()
                running[proc] = (f, recv)
            wait([r for _, r in running.values()] + [p.sentinel for p in running])
            for proc, (f, recv) in list(running.items()):
                result = None
                if recv.poll():
                    try:
                        result = recv.recv()
                    except (EOFError, OSError):
                        result = None
                if result is None and proc.is_alive():
                    continue
                proc.join()
                recv.close()
                if result is None:  # died without a result (segfault, OOM kill, ...)
                    _clean_staging_of(outputs[f], proc.pid)
                    result = ExtractResult(
                        str(f), str(outputs[f]),
                        error=f"{f}: worker process died ({_describe_exit(proc.exitcode)}); no output",
                    )
                results.append(result)
                bar.update(1)
                del running[proc]
    except _Terminated:
        for proc in running:
            proc.terminate()
        for proc in running:
            proc.join()
        raise


def _clean_staging_of(output: Path, pid: int | None) -> None:
    """After a worker died: take its (released) lock to remove its staging and lock files."""
    from corticalrnn.locking import LockedError

    try:
        with exclusive_lock(output):
            _clean_staging(output)
    except LockedError:  # someone else writes it now: remove only the dead worker's files
        if pid is not None:
            stage = _staging(output, pid)
            stage.unlink(missing_ok=True)
            stage.with_name(stage.name + ".tmp").unlink(missing_ok=True)


def _progress(total: int, disable: bool):  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    return tqdm(total=total, unit="folder", desc="extract", file=sys.stderr, disable=disable)


def _print_summary(results: list[ExtractResult], wall: float) -> None:
    done = [r for r in results if not r.error and not r.skipped]
    row = {
        "folders": len(results),
        "extracted": len(done),
        "skipped": sum(r.skipped for r in results),
        "failed": sum(bool(r.error) for r in results),
        "presentations": sum(r.n_presentations for r in done),
        "spikes": sum(r.n_spikes for r in done),
        "seconds": round(wall, 3),
    }
    print(format_table([row]))
