"""``corticalrnn synth OUTDIR``: simulate the ground-truth cortex and write a Mozaik datastore.

Example: a training folder and a test folder of the same network (same ``--seed``)::

    corticalrnn synth data/train --images 50000-50019 --trials 1 --seed 1
    corticalrnn synth data/test  --images 300000-300004 --trials 5 --seed 1
"""

from __future__ import annotations

import argparse
import collections
import re
import sys

from corticalrnn.errors import CorticalRNNError
from corticalrnn.synth.cortex import CortexConfig

MAX_IMAGES = 1_000_000


def parse_image_ids(text: str) -> list[int]:
    """``"50000-50003,50010"`` -> [50000, 50001, 50002, 50003, 50010] (order kept, ranges inclusive)."""
    ids: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if m is None:
            raise CorticalRNNError(
                f"--images: cannot read {part!r}; use ids and ranges like 50000-50019,50030"
            )
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise CorticalRNNError(f"--images: empty range {part!r}")
        if len(ids) + hi - lo + 1 > MAX_IMAGES:
            raise CorticalRNNError(f"--images: more than {MAX_IMAGES} images")
        ids.extend(range(lo, hi + 1))
    if not ids:
        raise CorticalRNNError("--images: no image ids given")
    dup = sorted(i for i, n in collections.Counter(ids).items() if n > 1)
    if dup:
        raise CorticalRNNError(f"--images: repeated image ids {dup[:5]}")
    return ids


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "outdir", metavar="OUTDIR", help="datastore folder to create (must not exist or be empty)"
    )
    parser.add_argument(
        "--images",
        default="50000-50019",
        help="image ids: ranges and lists, e.g. 50000-50019,50100 (default %(default)s)",
    )
    parser.add_argument("--trials", type=int, default=1, help="presentations per image (default %(default)s)")
    parser.add_argument(
        "--scale",
        type=float,
        default=CortexConfig.scale,
        help="network size; 1.0 = 400 E + 100 I per V1 layer and 12x12 LGN grids (default %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="network seed; same seed = same neurons and weights"
    )
    parser.add_argument("--sheets", default=None, help="comma-separated sheets to record (default: all six)")
    parser.add_argument("--image-ms", type=float, default=560.0, help="image duration (default %(default)s)")
    parser.add_argument(
        "--batch", type=int, default=32, help="presentations simulated together (memory/speed)"
    )
    parser.add_argument(
        "--connections",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="store the synapses as Mozaik Connections in datastore.analysis.pickle "
        "(default: on up to 10^7 synapses)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from corticalrnn.synth import generate
    from corticalrnn.tables import format_table, human_bytes

    image_ids = parse_image_ids(args.images)
    if args.trials < 1:
        raise CorticalRNNError(f"--trials must be >= 1, got {args.trials}")
    sheets = [s for s in args.sheets.split(",") if s.strip()] if args.sheets is not None else None
    config = CortexConfig(scale=args.scale, image_ms=args.image_ms, batch=args.batch)
    summary = generate(
        args.outdir,
        image_ids,
        args.trials,
        seed=args.seed,
        config=config,
        sheets=[s.strip() for s in sheets] if sheets is not None else None,
        progress=not args.quiet,
        connections=args.connections,
    )
    rows = [
        {
            "sheet": s,
            "neurons": summary.neurons[s],
            "spikes": summary.spikes[s],
            "mean rate (Hz)": round(summary.mean_rate_hz[s], 2),
        }
        for s in summary.spikes
    ]
    print(format_table(rows))
    print(
        f"wrote {summary.outdir}: {summary.n_segments} segments, {summary.n_presentations} image "
        f"presentations ({len(image_ids)} images x {args.trials} trials), seed {args.seed}, "
        f"scale {args.scale}"
    )
    print(f"ground truth: {summary.truth}")
    print(f"size on disk {human_bytes(summary.bytes_on_disk)}, {summary.seconds:.1f} s")
    sys.stdout.flush()
    return 0
