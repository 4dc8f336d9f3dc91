"""``corticalrnn bench checkpoint``: checkpoint size against the parameter count.

Builds a model of each kind at each size (the fast path's generated models, as ``bench model``),
takes one optimiser step with EMA on, saves through the trainer and reports the file size. Kinds:
``dense`` (the default graph), ``local`` (distance masks, sparse weight storage), ``localdense``
(distance masks, dense storage), ``localid`` (``local`` with the sparse Gabor identity input).
Each case runs in a fresh process (peak memory of one case is not hidden by another's).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path
from typing import Any

KINDS = ("dense", "local", "localdense", "localid")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", type=float, nargs="+", default=[0.1],
                   help="fractions of the full model (1.0 = 93,750 V1 neurons)")
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))


def measure(frac: float, kind: str) -> dict[str, Any]:
    """Build, step once and save a model of ``kind`` at ``frac``; sizes in bytes."""
    import torch

    from corticalrnn.bench.model import SPARSE_LOCAL, _fast_model, scaled_sizes
    from corticalrnn.train.config import TrainConfig
    from corticalrnn.train.trainer import Trainer

    sizes = scaled_sizes(frac)
    t0 = time.perf_counter()
    if kind == "dense":
        model = _fast_model(sizes, 20.0, "fp32")
    else:
        local: dict[str, Any] = (SPARSE_LOCAL if kind == "localid" else
                                 {"connectivity.storage": "dense" if kind == "localdense" else "sparse"})
        model = _fast_model(sizes, 20.0, "fp32", local, sheet_mm=5.0 * math.sqrt(frac))
    build_s = time.perf_counter() - t0
    cfg = TrainConfig()
    cfg.train.progress, cfg.train.device, cfg.train.ema_decay = False, "cpu", 0.999

    class _OneWindow:
        def __len__(self) -> int:
            return 1

    with tempfile.TemporaryDirectory() as run:
        tr = Trainer(cfg, model, _OneWindow(), None, torch.ones(model.n_v1, dtype=torch.bool), Path(run),
                     {"model_config": model.config.to_dict(), "sizes": sizes}, None, tensorboard=False)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        tr.optimizer.step()
        tr.ema.update_parameters(model)
        t0 = time.perf_counter()
        size = tr.save("last.pt").stat().st_size
        save_s = time.perf_counter() - t0
    n_param = sum(p.numel() for p in model.parameters())
    real = model.n_synapses() + sum(p.numel() for n, p in model.named_parameters() if "weights." not in n)
    return {"fraction": frac, "kind": kind, "V1 neurons": model.n_v1, "parameters": n_param,
            "real parameters": min(real, n_param), "checkpoint_bytes": size,
            "bytes per real parameter": size / max(min(real, n_param), 1), "build_s": build_s,
            "save_s": save_s}


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    from corticalrnn.bench.model import _isolated
    from corticalrnn.tables import format_table, human_bytes

    rows = [_isolated(measure, 0, frac, kind) for frac in args.sizes for kind in args.kinds]
    print(format_table([{"size": f"{r['fraction']:.0%}", "kind": r["kind"], "V1 neurons": r["V1 neurons"],
                         "parameters (M)": r["parameters"] / 1e6, "real (M)": r["real parameters"] / 1e6,
                         "checkpoint": human_bytes(r["checkpoint_bytes"]),
                         "bytes/real param": r["bytes per real parameter"], "build_s": r["build_s"]}
                        for r in rows]))
    print("(checkpoint = weights + EMA copy + two Adam moments: 16 bytes per real fp32 parameter)")
    return {"rows": rows}
