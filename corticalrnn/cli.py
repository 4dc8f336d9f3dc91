"""The `corticalrnn` command: one entry point, subcommands imported lazily.

Each subcommand lives in the module that owns its work and exposes
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only for the
subcommand that runs, so ``corticalrnn extract`` works without torch installed.

Errors: a :class:`~corticalrnn.errors.CorticalRNNError` prints its message; any other exception
from a subcommand (a ``ValueError`` or ``OSError`` from numpy, zarr, h5py, torch ...) prints one line
naming the command and the exception, exit status 1; the traceback only with ``--debug`` (before or
after the command) or the environment variable ``CORTICALRNN_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("corticalrnn.synth.cli", "generate a ground-truth synthetic cortex as a Mozaik datastore"),
    "extract": ("extract.cli", "Mozaik datastore folders -> HDF5 files of exact spike times (no torch)"),
    "trim": ("corticalrnn.trim", "HDF5 spike-time files -> Zarr store of binned windows"),
    "import-npz": ("corticalrnn.import_npz", "import the earlier thesis .npz layout into a Zarr store"),
    "subset": ("corticalrnn.subsets", "make and save a neuron subset (modelled / observed neurons)"),
    "train": ("corticalrnn.train.cli", "train the E/I network on a Zarr store"),
    "evaluate": ("corticalrnn.evaluate", "evaluate a checkpoint on test windows: metrics, report, figures"),
    "export-nwb": ("corticalrnn.nwb", "extracted spike file -> NWB (units with exact spike times, trials)"),
    "bench": ("corticalrnn.bench.cli", "benchmarks: extract, bin, load, model; gpu (one-call CUDA check)"),
    "demo": ("corticalrnn.demo", "end-to-end demo on built-in synthetic data"),
}


# optional dependency -> the extra that installs it (pyproject.toml [project.optional-dependencies])
EXTRAS: dict[str, str] = {"torch": "train", "matplotlib": "train", "threadpoolctl": "train",
                          "neo": "neo", "quantities": "neo", "pynwb": "nwb", "hdmf": "nwb",
                          "nwbinspector": "nwb"}


DEBUG_ENV = "CORTICALRNN_DEBUG"
DEBUG_HELP = f"show the full traceback of an unexpected error (also: {DEBUG_ENV}=1)"


def debug_requested(args: argparse.Namespace | None = None) -> bool:
    """``--debug`` given, or ``CORTICALRNN_DEBUG`` set to anything but empty / 0 / false / no."""
    env = os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
    return env or bool(getattr(args, "debug", False))


def unexpected_error_message(command: str | None, exc: BaseException, limit: int = 400) -> str:
    """One line for an exception that is not a CorticalRNNError: command, type, first line of the
    message (shortened to ``limit`` characters) and how to see the traceback."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    if len(text) > limit:
        text = text[:limit - 3] + "..."
    where = f"corticalrnn {command}" if command else "corticalrnn"
    what = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return (f"{where}: error: {what} (unexpected; rerun with --debug or {DEBUG_ENV}=1 for the traceback, "
            f"and please report it if the input looks right)")


class MissingDependency(SystemExit):
    """A subcommand needs an optional dependency that is not installed (exit status 1)."""


def missing_dependency_message(command: str, exc: ModuleNotFoundError) -> str | None:
    """What to install when ``command`` failed to import ``exc.name`` (None: not an optional one)."""
    top = (exc.name or "").split(".")[0]
    extra = EXTRAS.get(top)
    if extra is None:
        return None
    return (f"corticalrnn {command}: error: needs {top}, which this installation lacks (the base install "
            f"is the torch-free data-server one). Install the {extra!r} extra: "
            f"pip install 'corticalrnn[{extra}]' (from a checkout: pip install -e '.[{extra}]'; "
            f"everything: '.[all]'). README \"Install\" says which torch build fits your machine.")


def import_subcommand(name: str) -> Any:
    """The module of subcommand ``name``; a missing optional dependency exits 1 naming the extra."""
    try:
        return importlib.import_module(SUBCOMMANDS[name][0])
    except ModuleNotFoundError as exc:
        msg = missing_dependency_message(name, exc)
        if msg is None:
            raise
        print(msg, file=sys.stderr)
        raise MissingDependency(1) from None


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="corticalrnn",
        description="Fit biologically constrained recurrent networks to simulated cortex (Mozaik V1).",
    )
    from corticalrnn import __version__

    parser.add_argument("--version", action="version", version=f"corticalrnn {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (_module, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        # SUPPRESS: an absent sub-level flag must not reset a top-level --debug
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        if name == chosen:
            mod = import_subcommand(name)
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(argv)
    except MissingDependency:
        return 1
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    from corticalrnn.errors import CorticalRNNError

    debug = debug_requested(args)
    try:
        return int(args._run(args) or 0)
    except CorticalRNNError as exc:
        if debug:
            traceback.print_exc()
        print(f"corticalrnn {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # any other library error: one line, the traceback only on request
        msg = (missing_dependency_message(args.command, exc) if isinstance(exc, ModuleNotFoundError)
               else None)  # an optional dependency imported lazily by the command
        if msg is not None:
            print(msg, file=sys.stderr)
            return 1
        if debug:
            raise
        print(unexpected_error_message(args.command, exc), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
