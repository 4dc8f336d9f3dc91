"""``corticalrnn train``: train the E/I network on a Zarr store.

Examples::

    corticalrnn train --print-config > my.toml      # the example config: every key, its default
    corticalrnn train --config my.toml --run-dir runs/a
    corticalrnn train --config configs/v1_sample.toml --run-dir runs/b --set optim.lr=1e-3
    torchrun --nproc_per_node 4 -m corticalrnn train --config c.toml --run-dir runs/c --resume

``--resume`` (bare) continues from ``RUN_DIR/last.pt`` when it exists and starts fresh otherwise,
so a requeued Slurm job can use the same command line. Exit codes: 0 finished; 1 error (bad
input, or training diverged: the message names the last good checkpoint); 75 stopped by SIGTERM
or SIGUSR1 after writing ``last.pt`` (requeue and run again with ``--resume``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from corticalrnn.errors import CorticalRNNError


def example_config_text() -> str:
    """The packaged example config (every key with its default and a comment)."""
    from importlib.resources import files

    return files("corticalrnn").joinpath("configs", "example.toml").read_text(encoding="utf-8")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None,
                        help="TOML config file (start from `corticalrnn train --print-config > my.toml`)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the example config (every key, its default and what it does) and exit")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="directory for checkpoints (last.pt, best.pt), metrics.csv/jsonl, config "
                             "(required)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=1e-3 (repeatable)")
    parser.add_argument("--store", default=None, help="shortcut for --set data.store=PATH")
    parser.add_argument("--subset", default=None, help="shortcut for --set data.subset=PATH")
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                        help="continue exactly from CHECKPOINT (bare: RUN_DIR/last.pt if it exists)")
    parser.add_argument("--init-from", type=Path, default=None, metavar="CHECKPOINT",
                        help="start from these trained weights (fine-tuning; the observed set may differ)")


def run(args: argparse.Namespace) -> int:
    if args.print_config:
        sys.stdout.write(example_config_text())
        return 0
    if args.run_dir is None:
        raise CorticalRNNError("--run-dir is required (where checkpoints and metrics go)")
    from corticalrnn.train.checkpoint import load_checkpoint
    from corticalrnn.train.config import apply_overrides, load_config
    from corticalrnn.train.setup import train
    from corticalrnn.train.trainer import EXIT_REQUEUE

    overrides = list(args.overrides)
    if args.store:
        overrides.append(f'data.store="{args.store}"')
    if args.subset:
        overrides.append(f'data.subset="{args.subset}"')
    quiet = os.environ.get("RANK", "0") != "0"  # under torchrun only rank 0 reports
    resume = None
    if args.resume is not None:
        resume = args.run_dir / "last.pt" if args.resume == "auto" else Path(args.resume)
        if args.resume == "auto" and not resume.exists():
            if not quiet:
                print(f"corticalrnn train: no {resume} yet; starting a new run", file=sys.stderr)
            resume = None
    if resume is not None and args.config is None:
        # the checkpoint's own config, with overrides (e.g. a longer train.max_steps)
        from corticalrnn.train.config import config_from_dict

        data = apply_overrides(load_checkpoint(resume)["config"], overrides)
        cfg = config_from_dict(data, f"{resume} (config)")
    else:
        if args.config is None and not overrides:
            raise CorticalRNNError(
                "give --config FILE and/or --set KEY=VALUE (at least data.store, data.subset)")
        cfg = load_config(args.config, overrides)
    from corticalrnn.train.distributed import shutdown

    try:
        result = train(cfg, args.run_dir, resume=resume, init_from=args.init_from)
    finally:
        shutdown()
    if result.status == "interrupted":
        if not quiet:
            print(f"stopped on a signal at step {result.step}; checkpoint {result.last_checkpoint}; "
                  f"resume with --resume", file=sys.stderr)
        return EXIT_REQUEUE
    if not quiet:
        print(f"finished {result.step} steps; best validation loss {result.best_val:.5g} at step "
              f"{result.best_step}; checkpoints in {result.run_dir}")
    return 0
