"""`corticalrnn bench {extract,bin,load,model,all}`: print a table; `--json PATH` writes the figures."""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

# name -> module exposing add_arguments(parser) and run_bench(args) -> dict (JSON-serialisable)
BENCHES: dict[str, tuple[str, str]] = {
    "extract": ("extract.bench", "extraction throughput vs plain neo unpickling + dense 1 ms arrays"),
    "bin": ("corticalrnn.bench.binning", "rebinning spikes/s vs np.histogram and elephant"),
    "load": ("corticalrnn.bench.load", "windows/s delivered as dense tensors"),
    "model": ("corticalrnn.bench.model", "training step time/memory: fast path vs naive vs FLOP bound"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name, (module, help_) in BENCHES.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--json", type=Path, default=None, help="write the figures to this JSON file")
        importlib.import_module(module).add_arguments(p)
    p = sub.add_parser("all", help="run every benchmark with its defaults")
    p.add_argument("--json", type=Path, default=None, help="write all figures to this JSON file")


def run(args: argparse.Namespace) -> int:
    names = list(BENCHES) if args.bench == "all" else [args.bench]
    results = {}
    for name in names:
        mod = importlib.import_module(BENCHES[name][0])
        if args.bench == "all":
            p = argparse.ArgumentParser()
            mod.add_arguments(p)
            bench_args = p.parse_args([])
        else:
            bench_args = args
        results[name] = mod.run_bench(bench_args)
    if args.json is not None:
        payload = results if args.bench == "all" else results[args.bench]
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(payload, indent=2, default=float))
        tmp.replace(args.json)
        print(f"wrote {args.json}")
    return 0
