"""`corticalrnn bench {extract,bin,load,model,eval,gpu,all}`: print a table; `--json PATH` writes figures.

Only the benchmark that runs is imported: `bench extract` works without torch installed.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from corticalrnn.bench.common import load_average
from corticalrnn.jsonio import write_json

# name -> module exposing add_arguments(parser) and run_bench(args) -> dict (JSON-serialisable)
BENCHES: dict[str, tuple[str, str]] = {
    "extract": ("corticalrnn.bench.extract",
                "extraction throughput vs plain neo unpickling + dense 1 ms arrays"),
    "bin": ("corticalrnn.bench.binning", "rebinning spikes/s vs np.histogram and elephant"),
    "load": ("corticalrnn.bench.load", "windows/s delivered as dense tensors"),
    "model": ("corticalrnn.bench.model", "training step time/memory: fast path vs naive vs FLOP bound"),
    "eval": ("corticalrnn.bench.evaluate", "streaming evaluate: peak RSS and time vs test images"),
    "checkpoint": ("corticalrnn.bench.checkpoint", "checkpoint size vs parameters (dense, local, identity)"),
    "science": ("corticalrnn.bench.science", "hidden neurons vs the population baseline on LSV1M-like data"),
    "gpu": ("corticalrnn.bench.gpu", "one-call CUDA check: graphs, fp32/bf16/fp16 + signs, NCCL DDP, sizes"),
    "resilience": ("corticalrnn.bench.resilience", "random kill -9 of extract/trim/import-npz vs clean runs"),
}
# checks that need hardware (CUDA) `all` may lack: run on their own
NOT_IN_ALL = {"gpu", "science", "resilience", "eval"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    names = "\n".join(f"  {n:8s} {h}" for n, (_, h) in BENCHES.items())
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = f"benchmarks:\n{names}\n  all      every benchmark with its defaults (except gpu)\n\n" + (
        "`corticalrnn bench NAME --help` lists a benchmark's options."
    )
    parser.add_argument("bench", choices=[*BENCHES, "all"], metavar="BENCH", help="which benchmark")
    parser.add_argument("options", nargs=argparse.REMAINDER, help="options of that benchmark")


def _bench_parser(name: str) -> argparse.ArgumentParser:
    module, help_ = BENCHES[name]
    p = argparse.ArgumentParser(prog=f"corticalrnn bench {name}", description=help_)
    p.add_argument("--json", type=Path, default=None, help="write the figures to this JSON file")
    importlib.import_module(module).add_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    if args.bench == "all":
        top = argparse.ArgumentParser(prog="corticalrnn bench all")
        top.add_argument("--json", type=Path, default=None, help="write all figures to this JSON file")
        json_path = top.parse_args(args.options).json
        results = {}
        for name in (n for n in BENCHES if n not in NOT_IN_ALL):
            print(f"\n== bench {name} ==")
            bench_args = _bench_parser(name).parse_args([])
            results[name] = _run_one(name, bench_args)
        payload: dict = results
    else:
        bench_args = _bench_parser(args.bench).parse_args(args.options)
        json_path = bench_args.json
        payload = _run_one(args.bench, bench_args)
    if json_path is not None:
        write_json(json_path, payload, indent=2, default=float)
        print(f"wrote {json_path}")
    return 0


def _run_one(name: str, bench_args: argparse.Namespace) -> dict:
    """One benchmark, with the load average it ran under (printed and kept in its figures): on a
    shared machine the figures mean little without it."""
    start = load_average()
    payload = importlib.import_module(BENCHES[name][0]).run_bench(bench_args)
    end = load_average()
    print(f"load average (1/5/15 min): {'/'.join(map(str, start))} at start, "
          f"{'/'.join(map(str, end))} at end")
    if isinstance(payload, dict):
        payload.setdefault("load_average", {"start": start, "end": end})
    return payload
