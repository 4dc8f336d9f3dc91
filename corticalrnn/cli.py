"""The `corticalrnn` command: one entry point, subcommands imported lazily.

Each subcommand lives in the module that owns its work and exposes
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only for the
subcommand that runs, so ``corticalrnn extract`` works without torch installed.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("corticalrnn.synth.cli", "generate a ground-truth synthetic cortex as a Mozaik datastore"),
    "extract": ("extract.cli", "Mozaik datastore folders -> HDF5 files of exact spike times (no torch)"),
    "trim": ("corticalrnn.trim", "HDF5 spike-time files -> Zarr store of binned windows"),
    "import-npz": ("corticalrnn.import_npz", "import the earlier thesis .npz layout into a Zarr store"),
    "subset": ("corticalrnn.subsets", "make and save a neuron subset (modelled / observed neurons)"),
    "train": ("corticalrnn.train.cli", "train the E/I network on a Zarr store"),
    "evaluate": ("corticalrnn.evaluate", "evaluate a checkpoint on test windows: metrics, report, figures"),
    "bench": ("corticalrnn.bench.cli", "benchmarks: extract, bin, load, model"),
    "demo": ("corticalrnn.demo", "end-to-end demo on built-in synthetic data"),
}


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="corticalrnn",
        description="Fit biologically constrained recurrent networks to simulated cortex (Mozaik V1).",
    )
    from corticalrnn import __version__

    parser.add_argument("--version", action="version", version=f"corticalrnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == chosen:
            mod = importlib.import_module(module)
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    from corticalrnn.errors import CorticalRNNError

    try:
        return int(args._run(args) or 0)
    except CorticalRNNError as exc:
        print(f"corticalrnn {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
