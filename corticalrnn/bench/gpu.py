"""`corticalrnn bench gpu`: one call that checks and measures the model on a CUDA GPU.

Parts, in this order, each guarded (an exception is recorded in the JSON and the next part runs),
run in a worker thread with a time limit (a hung part is recorded as ``timeout`` and left behind),
and skipped when the ``--budget-s`` left, less the minimum needs of the parts after it, is too short:

``env``        device, torch/CUDA/NCCL versions, GEMM rates (bf16, fp32; best of 5 with spread) and
               device-copy bandwidth;
``precisions`` fp32 / bf16 / fp16 training steps through the trainer's own ``Trainer.train_step``
               (GradScaler for fp16), Dale's-law sign checks during and after many steps;
``ddp``        a one-GPU NCCL process group (world size 1, env:// on 127.0.0.1 and a free port):
               DDP training steps that must equal the same steps without DDP; destroyed afterwards;
``ten_percent``  the 10 % model at 1 ms bins (712 steps), batch 64: median step time (target
               <= 0.5 s) and peak GPU memory, bf16 and fp32, without CUDA graphs;
``local``      the largest full-size local model (distance masks, sparse weight storage) that fits,
               at 20 ms bins, batch 8 (tries 100 %, 50 %, 25 %): step time and peak memory;
``graphs``     ``compute.cuda_graphs``: outputs and gradients of captured-and-replayed chunks
               against the plain loop (teacher forcing on), fp32 and bf16;
``ten_percent_graphs``  the 10 % figure again with CUDA graphs;
``local_long`` the local model that fitted, over 712 steps (a 1 ms window's length).

The parts that capture CUDA graphs come after the plain figures: a failed capture could leave the
CUDA context unusable for what follows. The JSON is rewritten after every part (a part's partial
results are kept when it fails or hangs), so a run stopped from outside keeps what was measured.
The command exits 1 when a part did not pass, 3 when one was left running.

Without CUDA it stops with "needs CUDA". ``--device cpu --tiny`` (hidden options) runs every part at
tiny sizes on the CPU, the CUDA-only pieces replaced (graph capture -> the emulated chunked path,
NCCL -> gloo), so that the code is tested on machines without a GPU (tests/test_bench_gpu.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import socket
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from corticalrnn.bench.common import load_average, time_call
from corticalrnn.bench.model import (
    _data,
    _fast_model,
    _synced,
    gemm_stats,
    measure_fast,
    measure_sheet_local,
    scaled_sizes,
    train_flops,
)
from corticalrnn.errors import CorticalRNNError
from corticalrnn.jsonio import write_json
from corticalrnn.model.loss import poisson_nll
from corticalrnn.tables import format_table, human_bytes

TARGET_STEP_S = 0.5  # issue 14: 10 % size, 1 ms, batch 64


@dataclass(frozen=True)
class Sizes:
    """What each part runs; :data:`GPU` on a GPU, :data:`TINY` for the CPU test."""

    gemm_n: int = 8192
    copy_mib: int = 1024
    graph_scale: float = 0.03  # 2,812 V1 units: above 2,500 the init skips the exact eigenvalues
    graph_batch: int = 16
    graph_steps: int = 40
    graph_chunk: int = 8
    train_scale: float = 0.05
    train_batch: int = 32
    train_T: int = 36
    train_iters: int = 300
    check_every: int = 100
    ddp_scale: float = 0.01
    ddp_batch: int = 8
    ddp_T: int = 20
    ddp_iters: int = 3
    main_scale: float = 0.1
    main_batch: int = 64
    main_T: int = 712
    main_repeats: int = 3
    main_chunk: int = 16
    local_fractions: tuple[float, ...] = (1.0, 0.5, 0.25)
    local_batch: int = 8
    local_T: int = 36
    local_long_T: int = 712
    local_repeats: int = 2
    # seconds a part needs at least (skipped below) and may take at most (then abandoned)
    # in this order: what captures CUDA graphs (a failed capture could break the CUDA context for what
    # follows) after the plain figures, the long-window local run (least needed) last
    need_s: tuple[tuple[str, float, float], ...] = (
        ("env", 5, 60), ("cpu_vs_gpu", 10, 120), ("precisions", 20, 150), ("ddp", 10, 120),
        ("ten_percent", 20, 150), ("local", 45, 240), ("graphs", 15, 120), ("ten_percent_graphs", 20, 150),
        ("local_long", 45, 240))
    row_need_s: float = 10  # a case inside a part (one precision, one fraction) needs at least this


GPU = Sizes()
TINY = Sizes(gemm_n=128, copy_mib=4, graph_scale=0.002, graph_batch=2, graph_steps=6, graph_chunk=4,
             train_scale=0.002, train_batch=2, train_T=5, train_iters=4, check_every=2,
             ddp_scale=0.002, ddp_batch=2, ddp_T=4, ddp_iters=2,
             main_scale=0.002, main_batch=2, main_T=6, main_repeats=1, main_chunk=4,
             local_fractions=(0.004, 0.002), local_batch=2, local_T=4, local_long_T=8, local_repeats=1,
             need_s=tuple((n, 0.1, 120.0) for n, _, _ in GPU.need_s), row_need_s=0.0)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="wall-clock budget; parts that no longer fit are skipped, a part past its share is "
                        "left behind (default 420 s)")
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"],
                   help="matmul precision of the full-size local model (falls back to fp32 on an error)")
    p.add_argument("--main-precisions", default="bf16,fp32",
                   help="precisions of the 10 %% / 1 ms / batch-64 figure (each with and without graphs)")
    p.add_argument("--train-steps", type=int, default=0, help="steps per precision (0: the default, 300)")
    p.add_argument("--local-fractions", default="",
                   help="fractions of the full size to try for the local model, largest first "
                        "(default 1.0,0.5,0.25)")
    p.add_argument("--parts", default="", help="comma-separated subset of: " + ",".join(
        n for n, _, _ in GPU.need_s) + " (default all, in that order)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--inline", action="store_true",
                   help="run the parts in the main thread (no worker threads, so no protection from a hung "
                        "part; to rule the threads out when a result looks wrong)")
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: test the code path
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tiny sizes (CPU test)


# ------------------------------------------------------------------------------------------------ parts
def _cleanup(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


def part_env(out: dict[str, Any], s: Sizes, device: torch.device) -> None:
    """Versions, the device, and the rates that bound the step times."""
    out.update({"torch": torch.__version__, "cuda": torch.version.cuda, "device": str(device),
                "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
                "float32_matmul_precision": torch.get_float32_matmul_precision()})
    if device.type == "cuda":
        prop = torch.cuda.get_device_properties(device)
        out.update({"name": prop.name, "capability": f"{prop.major}.{prop.minor}",
                    "multiprocessors": prop.multi_processor_count, "memory_bytes": prop.total_memory,
                    "bf16_supported": torch.cuda.is_bf16_supported(),
                    "cudnn": torch.backends.cudnn.version()})
        try:
            v = torch.cuda.nccl.version()
            out["nccl"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
        except Exception as exc:  # noqa: BLE001 - informational
            out["nccl"] = _error(exc)
    dev = str(device)
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        g = gemm_stats(s.gemm_n, repeats=5, dtype=dtype, device=dev)
        out[f"gemm_{name}_tflops"], out[f"gemm_{name}_spread"] = g["gflops"] / 1e3, g["spread"]
    n = s.copy_mib * 2**20 // 4
    bufs = torch.rand(n, device=device), torch.empty(n, device=device)
    t = time_call(_synced(lambda: bufs[1].copy_(bufs[0]), dev), repeats=5)
    out["copy_gbs"] = 2 * 4 * n / t.best / 1e9  # bytes read + written


def _model_graph_run(model: Any, x: torch.Tensor, counts: torch.Tensor, mask: torch.Tensor,
                     iterations: int = 2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward (teacher-forced) + loss + backward ``iterations`` times (the second replays graphs);
    the last rates and gradients."""
    for _ in range(iterations):
        model.zero_grad(set_to_none=True)
        rates = model(x, counts, mask, 0.5, torch.Generator(x.device).manual_seed(1))
        poisson_nll(rates, counts, mask).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return rates.detach(), grads


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _graph_case(s: Sizes, device: torch.device, sizes: dict[str, int], data: tuple[torch.Tensor, ...],
                case: dict[str, Any], rtol: float, atol: float) -> None:
    """One precision: the plain loop, then chunks of ``graph_chunk`` steps captured and replayed."""
    x, counts, mask = data
    runs, seconds = {}, {}
    for chunk in (0, s.graph_chunk):
        model = _fast_model(sizes, 1.0, case["precision"], graph_chunk=chunk).to(device)
        if chunk and device.type != "cuda":
            model._graphs.emulate = True  # no capture without CUDA: the same chunked path, eagerly
        t0 = time.perf_counter()
        runs[chunk] = _model_graph_run(model, x, counts, mask)
        _synced(lambda: None, str(device))()
        seconds[chunk] = time.perf_counter() - t0
        if chunk:
            case.update({"captured": model._graphs.captured, "replays": model._graphs.replays})
        del model
    (r0, g0), (r1, g1) = runs[0], runs[s.graph_chunk]
    same_keys = sorted(g0) == sorted(g1)
    grad_rel = {n: _rel_diff(g1[n], g0[n]) for n in g0 if n in g1}
    close = same_keys and torch.allclose(r1, r0, rtol=rtol, atol=atol) and all(
        torch.allclose(g1[n], g0[n], rtol=rtol, atol=atol * max(1.0, float(g0[n].abs().max()))) for n in g0)
    worst = max(grad_rel, key=grad_rel.get) if grad_rel else None
    case.update({"plain_s": seconds[0], "graphs_s": seconds[s.graph_chunk],
                 "rates_rel_diff": _rel_diff(r1, r0), "grads_worst_rel_diff": grad_rel.get(worst, 0.0),
                 "grads_worst": worst, "n_grads": len(grad_rel), "same_grad_params": same_keys,
                 "rtol": rtol, "atol": atol, "match": bool(close)})
    if device.type == "cuda" and case["captured"] == 0:
        case.update({"match": False, "note": "no graph was captured"})


def part_graphs(out: dict[str, Any], s: Sizes, device: torch.device) -> None:
    """CUDA-graph replay (``cuda_graphs``) against the plain loop: rates and every gradient."""
    sizes = scaled_sizes(s.graph_scale)
    x, counts, observed = _data(sizes, s.graph_batch, s.graph_steps, seed=3, device=str(device))
    out.update({"sizes": sizes, "batch": s.graph_batch, "steps": s.graph_steps, "chunk": s.graph_chunk,
                "captured_on_gpu": device.type == "cuda", "cases": []})
    ok = True
    for precision, rtol, atol in (("fp32", 1e-4, 1e-6), ("bf16", 2e-2, 1e-4)):
        case: dict[str, Any] = {"precision": precision, "captured": 0, "replays": 0}
        out["cases"].append(case)
        try:
            _graph_case(s, device, sizes, (x, counts, observed.bool()), case, rtol, atol)
        except Exception as exc:  # noqa: BLE001 - recorded, the next precision runs
            case.update({"match": False, "error": _error(exc)})
        ok &= case["match"]
        _cleanup(device)
    out["ok"] = bool(ok)


def part_cpu_vs_gpu(out: dict[str, Any], s: Sizes, device: torch.device) -> None:
    """The same model (same seed) and the same data, drawn on the CPU, on the CPU and on ``device``:
    rates, loss and every gradient must agree in fp32 (the precisions part's size and batch at 20 ms,
    that size at the DDP part's batch, the DDP part's size at that batch, the graphs part's at 1 ms:
    where they differ tells size from batch)."""
    out["cases"] = []
    ok = True
    for scale, batch, steps, bin_ms in ((s.train_scale, s.train_batch, s.train_T, 20.0),
                                        (s.train_scale, s.ddp_batch, s.train_T, 20.0),
                                        (s.ddp_scale, s.train_batch, s.train_T, 20.0),
                                        (s.graph_scale, s.graph_batch, s.graph_steps, 1.0)):
        case: dict[str, Any] = {"scale": scale, "batch": batch, "steps": steps, "bin_ms": bin_ms}
        out["cases"].append(case)
        try:
            _compare_devices(scaled_sizes(scale), batch, steps, bin_ms, device, case)
        except Exception as exc:  # noqa: BLE001 - recorded, the next case runs
            case.update({"match": False, "error": _error(exc)})
        ok &= case["match"]
        _cleanup(device)
    out["ok"] = bool(ok)


def _compare_devices(sizes: dict[str, int], batch: int, steps: int, bin_ms: float, device: torch.device,
                     case: dict[str, Any]) -> None:
    x, counts, observed = _data(sizes, batch, steps, seed=11)
    runs = {}
    for where in ("cpu", "dev"):
        dev = torch.device("cpu") if where == "cpu" else device
        model = _fast_model(sizes, bin_ms, "fp32").to(dev)
        rates = model(x.to(dev))
        loss = poisson_nll(rates, counts.to(dev), observed.bool().to(dev))
        loss.backward()
        grads = {n: p.grad.detach().cpu() for n, p in model.named_parameters() if p.grad is not None}
        runs[where] = (rates.detach().cpu(), float(loss.detach()), grads)
        case[f"{where}_rates_max"] = float(rates.detach().max())
        case[f"{where}_nonfinite"] = int((~torch.isfinite(rates.detach())).sum())
        case[f"{where}_loss"] = runs[where][1]
        del model, rates, loss
    (r0, l0, g0), (r1, l1, g1) = runs["cpu"], runs["dev"]
    bad = ~torch.isclose(r1, r0, rtol=1e-3, atol=1e-5)
    grad_rel = {n: _rel_diff(g1[n], g0[n]) for n in g0 if n in g1}
    worst = max(grad_rel, key=grad_rel.get) if grad_rel else None
    case.update({"rates_rel_diff": _rel_diff(r1, r0), "loss_rel_diff": abs(l1 - l0) / max(abs(l0), 1e-30),
                 "first_bad_step": int(bad.any(2).any(0).nonzero()[0]) if bool(bad.any()) else None,
                 "grads_worst_rel_diff": grad_rel.get(worst, 0.0), "grads_worst": worst,
                 "match": bool(not bad.any() and sorted(g0) == sorted(g1)
                               and all(v <= 1e-3 for v in grad_rel.values()))})


def _trainer(model: Any, device: torch.device, precision: str, steps: int, x: torch.Tensor,
             counts: torch.Tensor, observed: torch.Tensor, run_dir: str) -> Any:
    """The project's Trainer around ``model`` (its ``train_step``: scaler, clipping, projection)."""
    from corticalrnn.data import TensorWindows
    from corticalrnn.train.config import TrainConfig
    from corticalrnn.train.trainer import Trainer

    cfg = TrainConfig()
    cfg.train.device, cfg.train.precision = str(device), precision
    cfg.train.max_steps, cfg.train.progress = steps, False
    cfg.validate()
    return Trainer(cfg, model, TensorWindows(x, counts), None, observed.bool(), run_dir, {}, poisson_nll,
                   project=model.project_, autocast=False, tensorboard=False)


def _all_finite(model: Any) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _train_precision(s: Sizes, device: torch.device, sizes: dict[str, int], data: tuple[torch.Tensor, ...],
                     row: dict[str, Any], run_dir: str) -> None:
    """``train_iters`` trainer steps in ``row["precision"]``; sign checks every ``check_every``."""
    x, counts, observed = data
    precision = row["precision"]
    model = _fast_model(sizes, 20.0, precision)
    tr = _trainer(model, device, precision, s.train_iters, x, counts, observed, run_dir)
    scaler = tr.scaler
    row.update({"trainer_precision": tr.precision, "grad_scaler": scaler.is_enabled(),
                "lgn_max": float(x.max()), "counts_max": float(counts.max())})
    with torch.no_grad():  # the untrained network's rates: a diverging forward shows here
        r0 = model(x)
    row.update({"initial_rates_max": float(r0.nan_to_num(posinf=math.inf).max()),
                "initial_rates_nonfinite": int((~torch.isfinite(r0)).sum())})
    del r0
    batch = {"lgn": x, "v1": counts}
    losses, checks, skipped = [], [], 0
    t0 = time.perf_counter()
    for i in range(s.train_iters):
        scale = scaler.get_scale() if scaler.is_enabled() else 1.0
        losses.append(tr.train_step(batch)[0])
        if scaler.is_enabled() and scaler.get_scale() < scale:
            skipped += 1  # fp16 overflow: the scaler skipped this step and backed off
        if (i + 1) % s.check_every == 0 or i + 1 == s.train_iters:
            checks.append(sum(model.sign_violations().values()))
    seconds = time.perf_counter() - t0
    model.assert_constraints()
    finite = _all_finite(model)
    row.update({"status": "ok" if finite and not any(checks) else "FAIL", "step_s": seconds / s.train_iters,
                "loss_first": losses[0], "loss_last": losses[-1], "violations_at_checks": checks,
                "skipped_steps": skipped, "params_finite": finite,
                "final_scale": scaler.get_scale() if scaler.is_enabled() else None})


def part_precisions(out: dict[str, Any], s: Sizes, device: torch.device,
                    remaining: Callable[[], float]) -> None:
    """fp32 / bf16 / fp16 training steps with sign checks every ``check_every`` steps and at the end."""
    sizes = scaled_sizes(s.train_scale)
    data = _data(sizes, s.train_batch, s.train_T, seed=5, device=str(device))
    out.update({"sizes": sizes, "batch": s.train_batch, "steps_T": s.train_T, "iterations": s.train_iters,
                "rows": []})
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as run_dir:
        for precision in ("fp32", "bf16", "fp16"):
            row: dict[str, Any] = {"precision": precision}
            out["rows"].append(row)
            if remaining() < s.row_need_s:
                row["status"] = "skipped (budget)"
                continue
            try:
                _train_precision(s, device, sizes, data, row, run_dir)
            except Exception as exc:  # noqa: BLE001 - recorded, the next precision runs
                row.update({"status": "error", "error": _error(exc)})
            ok &= row["status"] == "ok"
            _cleanup(device)
    out["ok"] = bool(ok)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sk:
        sk.bind(("127.0.0.1", 0))
        return int(sk.getsockname()[1])


def part_ddp(out: dict[str, Any], s: Sizes, device: torch.device) -> None:
    """A one-process DDP job (NCCL on a GPU, gloo on CPU): its steps equal the same steps without it."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from corticalrnn.train import distributed as ddp

    backend = "nccl" if device.type == "cuda" else "gloo"
    if dist.is_initialized():
        raise CorticalRNNError("a process group is already initialised in this process")
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    sizes = scaled_sizes(s.ddp_scale)
    x, counts, observed = _data(sizes, s.ddp_batch, s.ddp_T, seed=7, device=str(device))
    out.update({"backend": backend, "sizes": sizes, "iterations": s.ddp_iters})
    try:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        t0 = time.perf_counter()
        dist.init_process_group(backend, init_method="env://", rank=0, world_size=1,
                                timeout=timedelta(seconds=60))
        out["init_s"] = time.perf_counter() - t0
        t = torch.arange(4.0, device=device)
        dist.all_reduce(t)
        out["all_reduce_ok"] = bool(torch.equal(t.cpu(), torch.arange(4.0)))
        with tempfile.TemporaryDirectory(prefix="bench-gpu-ddp-") as run_dir:
            trainers = [_trainer(_fast_model(sizes, 20.0, "fp32"), device, "fp32", s.ddp_iters, x, counts,
                                 observed, run_dir) for _ in range(2)]
            wrapped = trainers[1]
            # as Trainer does for world_size > 1 (buffers are fixed at construction: no broadcast)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # newer torch renames broadcast_buffers
                wrapped.model = DistributedDataParallel(
                    wrapped.raw_model, device_ids=[device.index] if device.type == "cuda" else None,
                    broadcast_buffers=False)
            batch = {"lgn": x, "v1": counts}
            losses = [[tr.train_step(batch)[0] for _ in range(s.ddp_iters)] for tr in trainers]
            t1 = time.perf_counter()
            wrapped.train_step(batch)
            _synced(lambda: None, str(device))()
            out["ddp_step_s"] = time.perf_counter() - t1
            trainers[0].train_step(batch)
            ddp.barrier()
        pa = dict(trainers[0].raw_model.named_parameters())
        # relative to each parameter's size: GPU kernels with atomics may differ in the last bits
        diff = max(_rel_diff(p.detach(), pa[n].detach()) for n, p in wrapped.raw_model.named_parameters())
        same_losses = all(math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7) for a, b in zip(*losses))
        out.update({"losses_single": losses[0], "losses_ddp": losses[1], "max_param_diff": diff,
                    "same_losses": same_losses,
                    "sign_violations": sum(wrapped.raw_model.sign_violations().values())})
        out["ok"] = bool(out["all_reduce_ok"] and diff <= 1e-5 and out["sign_violations"] == 0
                         and same_losses)
    finally:
        ddp.shutdown()
        out["destroyed"] = not dist.is_initialized()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def part_ten_percent(out: dict[str, Any], s: Sizes, device: torch.device, precisions: list[str],
                     remaining: Callable[[], float], graphs: bool) -> None:
    """The 10 % model, 1 ms bins, batch 64: median training step and peak memory, with CUDA graphs
    (chunks of ``main_chunk`` steps) or without."""
    sizes = scaled_sizes(s.main_scale)
    dev = str(device)
    out.update({"sizes": sizes, "batch": s.main_batch, "steps": s.main_T, "bin_ms": 1.0,
                "target_step_s": TARGET_STEP_S, "rows": [], "best": None, "meets_target": False})
    ok = True
    chunk = s.main_chunk if graphs else 0
    for precision in precisions:
        row: dict[str, Any] = {"precision": precision, "cuda_graphs": graphs}
        out["rows"].append(row)
        if remaining() < s.row_need_s:
            row["status"] = "skipped (budget)"
            continue
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        try:  # the GEMM rate right before the case it bounds
            rate = gemm_stats(min(s.gemm_n, 4096), repeats=5, dtype=dtype, device=dev)["gflops"] * 1e9
        except Exception:  # noqa: BLE001 - the bound is informational
            rate = float("nan")
        try:
            r = measure_fast(sizes, s.main_batch, s.main_T, 1.0, precision, s.main_repeats, None, dev, chunk)
            row.update({"status": "ok" if r["finite"] else "FAIL (not finite)", "step_s": r["step_s"],
                        "peak_mem": human_bytes(r["peak_bytes"]), "peak_bytes": r["peak_bytes"],
                        "build_s": r["build_s"], "weights": r["weights"], "loss": r["loss"],
                        "flop_bound_s": train_flops(sizes, s.main_batch, s.main_T) / rate,
                        "meets_target": r["step_s"] <= TARGET_STEP_S})
            ok &= r["finite"]
        except Exception as exc:  # noqa: BLE001 - recorded, the next case runs
            row.update({"status": "error", "error": _error(exc)})
            ok = False
        _cleanup(device)
        done = [r for r in out["rows"] if r["status"] == "ok"]
        if done:
            out["best"] = min(done, key=lambda r: r["step_s"])
            out["meets_target"] = bool(out["best"]["meets_target"])
    out["ok"] = bool(ok)


def part_local(out: dict[str, Any], s: Sizes, device: torch.device, precision: str, fractions: list[float],
               remaining: Callable[[], float]) -> None:
    """The largest local model (sparse weight storage) that fits: try ``fractions`` largest first; an
    error other than out-of-memory is retried in fp32."""
    dev = str(device)
    out.update({"batch": s.local_batch, "steps": s.local_T, "bin_ms": 20.0, "attempts": [], "largest": None})
    for frac in fractions:
        for prec in dict.fromkeys([precision, "fp32"]):
            if remaining() < s.row_need_s:
                out["attempts"].append({"fraction": frac, "precision": prec, "status": "skipped (budget)"})
                break
            row: dict[str, Any] = {"fraction": frac, "precision": prec, "steps": s.local_T}
            out["attempts"].append(row)
            try:
                r = measure_sheet_local(frac, s.local_batch, s.local_T, 20.0, prec, s.local_repeats, dev)
                row.update({**r, "status": "ok" if r["finite"] else "FAIL (not finite)",
                            "peak_mem": human_bytes(r["peak_bytes"])})
                out["largest"] = row  # it fits; whether its numbers are finite is checked below
            except Exception as exc:  # noqa: BLE001 - recorded; OOM -> next fraction, else fp32
                oom = _is_oom(exc)
                row.update({"status": "out of memory" if oom else "error", "error": _error(exc)})
                if oom:
                    break
            finally:
                _cleanup(device)
            if out["largest"] is not None:
                break
        if out["largest"] is not None or remaining() < s.row_need_s:
            break
    if 1.0 in fractions:
        out["full_size_fits"] = out["largest"] is not None and out["largest"]["fraction"] >= 1.0
    out["ok"] = out["largest"] is not None and bool(out["largest"]["finite"])


def part_local_long(out: dict[str, Any], s: Sizes, device: torch.device, local: dict[str, Any]) -> None:
    """The local model that fitted, over a 1 ms window's number of steps."""
    fit = local.get("largest")
    if not fit:
        raise CorticalRNNError("no local model fitted (see part local)")
    out.update({"fraction": fit["fraction"], "precision": fit["precision"], "batch": s.local_batch,
                "steps": s.local_long_T,
                "note": "a 1 ms window's number of steps; the model's bin_ms (20) only sets constants"})
    try:
        r = measure_sheet_local(fit["fraction"], s.local_batch, s.local_long_T, 20.0, fit["precision"], 1,
                                str(device))
        out.update({"V1 neurons": r["V1 neurons"], "build_s": r["build_s"], "step_s": r["step_s"],
                    "peak_bytes": r["peak_bytes"], "peak_mem": human_bytes(r["peak_bytes"]),
                    "loss": r["loss"], "finite": r["finite"], "ok": r["finite"]})
    except Exception as exc:
        if not _is_oom(exc):
            raise
        out.update({"out_of_memory": True, "error": _error(exc), "ok": False})
    finally:
        _cleanup(device)


# ------------------------------------------------------------------------------------------- runner
class _Runner:
    """Runs parts in worker threads under the budget; rewrites the JSON after each one."""

    def __init__(self, budget_s: float, json_path: Path | None, results: dict[str, Any],
                 inline: bool = False) -> None:
        self.t0 = time.perf_counter()
        self.budget_s, self.json_path, self.results, self.inline = budget_s, json_path, results, inline
        self.abandoned: list[str] = []
        self.reserve = 0.0  # kept for the parts still to come (their minimum needs)

    def remaining(self) -> float:
        """Seconds the running part may still use."""
        return self.budget_s - (time.perf_counter() - self.t0) - self.reserve

    def save(self) -> None:
        self.results["wall_s"] = time.perf_counter() - self.t0
        if self.json_path is not None:
            write_json(self.json_path, self.results, indent=2, default=str)

    def part(self, name: str, need_s: float, max_s: float, fn: Callable[[dict[str, Any]], None]) -> None:
        """``fn(out)`` fills ``out`` as it goes (``out["ok"] = False`` marks a failed check); what it
        filled is kept when it raises or hangs."""
        left = self.remaining()
        if left < need_s:
            self.results["parts"][name] = {"status": "skipped", "reason": f"budget: {left:.0f} s left, "
                                                                          f"needs about {need_s:.0f} s"}
            self.save()
            return
        print(f"[bench gpu] {name} ({left:.0f} s of budget left)", file=sys.stderr, flush=True)
        out: dict[str, Any] = {}
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                fn(out)
            except BaseException as exc:  # noqa: BLE001 - every failure is a result
                box["error"] = _error(exc)
                box["traceback"] = traceback.format_exc(limit=-6)

        t0 = time.perf_counter()
        if self.inline:
            target()
            th = None
        else:
            th = threading.Thread(target=target, name=f"bench-gpu-{name}", daemon=True)
            th.start()
            th.join(timeout=max(0.1, min(max_s, left)))
        seconds = time.perf_counter() - t0
        if th is not None and th.is_alive():
            self.abandoned.append(name)
            res = {"status": "timeout", "reason": f"still running after {seconds:.0f} s; left behind",
                   **_snapshot(out)}
        elif "error" in box:
            res = {"status": "error", **out, **box}
        else:
            res = {"status": "ok" if out.get("ok", True) else "FAIL", **out}
        res.pop("ok", None)
        res["seconds"] = seconds
        self.results["parts"][name] = res
        print(f"[bench gpu] {name}: {res['status']} in {seconds:.1f} s"
              + (f" ({res['error']})" if "error" in res else ""), file=sys.stderr, flush=True)
        self.save()


def _snapshot(out: dict[str, Any]) -> dict[str, Any]:
    """A copy of what a part still running has filled in so far (it may change meanwhile)."""
    for _ in range(5):
        try:
            return json.loads(json.dumps(out, default=str))
        except RuntimeError:  # changed size during iteration
            time.sleep(0.01)
    return {}


def _summary(name: str, r: dict[str, Any]) -> str:
    """One line of what a part found."""
    if r["status"] in ("skipped", "timeout"):
        return r.get("reason", "")
    if r["status"] == "error":
        return r["error"][:120]
    try:
        return _found(name, r)
    except (KeyError, TypeError, ValueError):  # a part that failed half-way
        return "see the JSON"


def _found(name: str, r: dict[str, Any]) -> str:
    if name == "env":
        return (f"{r.get('name', r['device'])}, torch {r['torch']}, bf16 GEMM {r['gemm_bf16_tflops']:.3g} "
                f"TFLOP/s, fp32 {r['gemm_fp32_tflops']:.3g}, copy {r['copy_gbs']:.4g} GB/s")
    if name == "graphs":
        return "; ".join(f"{c['precision']}: {c['error'][:60]}" if "error" in c else
                         f"{c['precision']}: {'match' if c['match'] else 'DIFFER'} "
                         f"(rates {c['rates_rel_diff']:.1e}, grads {c['grads_worst_rel_diff']:.1e}), "
                         + (f"{c['captured']} graphs captured" if r["captured_on_gpu"]
                            else f"{c['replays']} chunks emulated on CPU") for c in r["cases"])
    if name == "precisions":
        return "; ".join(f"{w['precision']}: {w['status']}" + (
            f" {r['iterations']} steps, violations "
            f"{max(w['violations_at_checks'])}, loss {w['loss_first']:.4g}->{w['loss_last']:.4g}"
            + (f", {w['skipped_steps']} skipped" if w.get("grad_scaler") else "")
            if "loss_first" in w else f" {w.get('error', '')[:60]}") for w in r["rows"])
    if name == "cpu_vs_gpu":
        return "; ".join(f"{c['scale'] * 100:g} % B{c['batch']} {c['bin_ms']:g} ms: " + (
            c["error"][:60] if "error" in c else
            f"{'match' if c['match'] else 'DIFFER'} (rates {c['rates_rel_diff']:.1e}, grads "
            f"{c['grads_worst_rel_diff']:.1e}, max rate cpu {c['cpu_rates_max']:.3g} / "
            f"gpu {c['dev_rates_max']:.3g})")
            for c in r["cases"])
    if name == "ddp":
        return (f"{r['backend']}: {r['iterations']} steps, max rel. param diff vs single "
                f"{r['max_param_diff']:.1e}, destroyed {r['destroyed']}")
    if name in ("ten_percent", "ten_percent_graphs"):
        b = r["best"]
        return (f"best {b['precision']}{' + graphs' if b['cuda_graphs'] else ''}: {b['step_s']:.3g} s/step "
                f"(target {TARGET_STEP_S} s: {'met' if b['meets_target'] else 'NOT met'}), {b['peak_mem']}"
                if b else "no case ran")
    if name == "local":
        f = r["largest"]
        return (f"{f['fraction'] * 100:g} % ({f['V1 neurons']} V1 neurons, {f['precision']}): "
                f"{f['step_s']:.3g} s/step, {f['peak_mem']}" if f else "nothing fitted")
    if name == "local_long":
        return (f"{r['fraction'] * 100:g} %, {r['steps']} steps, batch {r['batch']}: "
                f"{r['step_s']:.3g} s/step, {r['peak_mem']}" if "step_s" in r else r.get("error", "")[:100])
    return ""


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise CorticalRNNError(f"bench gpu needs CUDA: torch {torch.__version__} ({build}) sees no "
                                   "CUDA device here; run it on a GPU machine")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    s = TINY if args.tiny else GPU
    threads = torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, s, device)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace, s: Sizes, device: torch.device) -> dict[str, Any]:
    if args.train_steps > 0:
        s = dataclasses.replace(s, train_iters=args.train_steps, check_every=max(1, args.train_steps // 3))
    if args.local_fractions:
        s = dataclasses.replace(s, local_fractions=tuple(float(f) for f in args.local_fractions.split(",")))
    main_precisions = [p for p in args.main_precisions.split(",") if p]
    names = [n for n, _, _ in s.need_s]
    wanted = [p for p in args.parts.split(",") if p] or names
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        raise CorticalRNNError(f"bench gpu: unknown parts {unknown}; choose from {names}")
    results: dict[str, Any] = {"device": str(device), "tiny": bool(args.tiny), "budget_s": args.budget_s,
                               "inline": bool(args.inline),
                               "loadavg_start": load_average(), "sizes": dataclasses.asdict(s), "parts": {}}
    runner = _Runner(args.budget_s, args.json, results, args.inline)
    rem = runner.remaining
    fns: dict[str, Callable[[dict[str, Any]], None]] = {
        "env": lambda out: part_env(out, s, device),
        "cpu_vs_gpu": lambda out: part_cpu_vs_gpu(out, s, device),
        "graphs": lambda out: part_graphs(out, s, device),
        "precisions": lambda out: part_precisions(out, s, device, rem),
        "ddp": lambda out: part_ddp(out, s, device),
        "ten_percent": lambda out: part_ten_percent(out, s, device, main_precisions, rem, False),
        "ten_percent_graphs": lambda out: part_ten_percent(out, s, device, main_precisions, rem, True),
        "local": lambda out: part_local(out, s, device, args.precision, list(s.local_fractions), rem),
        "local_long": lambda out: part_local_long(out, s, device, results["parts"].get("local", {})),
    }
    todo = [(n, need, limit) for n, need, limit in s.need_s if n in wanted]
    for i, (name, need, limit) in enumerate(todo):
        runner.reserve = sum(later for _, later, _ in todo[i + 1:])
        runner.part(name, need, limit, fns[name])
    runner.reserve = 0.0
    results["loadavg_end"] = load_average()
    runner.save()
    _print(results)
    if runner.abandoned:  # a thread is stuck (in a collective, say): do not wait for it at exit
        print(f"parts left running: {runner.abandoned}; exiting without waiting for them", flush=True)
        sys.stderr.flush()
        os._exit(3)
    bad = [n for n, r in results["parts"].items() if r["status"] not in ("ok", "skipped")]
    if bad:
        where = f"; figures in {args.json}" if args.json else ""
        raise CorticalRNNError(f"GPU check: {', '.join(bad)} did not pass{where}")
    return results


def _print(results: dict[str, Any]) -> None:
    parts = results["parts"]
    print(f"bench gpu on {results['device']}{' (tiny sizes)' if results['tiny'] else ''}: "
          f"{results['wall_s']:.0f} s of a {results['budget_s']:.0f} s budget; load average "
          f"{results['loadavg_start'][0]:.2f} at start, {results['loadavg_end'][0]:.2f} at end")
    width = max(map(len, parts), default=4)
    print(f"{'part':<{width}}  {'status':<7}  {'s':>6}  result")
    for n, r in parts.items():
        print(f"{n:<{width}}  {r['status']:<7}  {r.get('seconds', 0.0):6.1f}  {_summary(n, r)}")
    tens = [parts[n] for n in ("ten_percent", "ten_percent_graphs") if parts.get(n, {}).get("rows")]
    if tens:
        print(f"\n10 % model, 1 ms bins x {tens[0]['steps']} steps, batch {tens[0]['batch']}: training step "
              f"(target <= {TARGET_STEP_S} s)")
        print(format_table([{k: r.get(k, "") for k in ("precision", "cuda_graphs", "status", "step_s",
                                                       "flop_bound_s", "peak_mem", "build_s", "loss")}
                            for t in tens for r in t["rows"]]))
    loc, long = parts.get("local", {}), parts.get("local_long", {})
    if loc.get("attempts"):
        print(f"\nlocal model, sparse weight storage, 20 ms bins, batch {loc['batch']}")
        rows = [*loc["attempts"]]
        if "step_s" in long:
            rows.append({**long, "status": long["status"]})
        print(format_table([{k: r.get(k, "") for k in ("fraction", "precision", "status", "V1 neurons",
                                                       "steps", "build_s", "step_s", "peak_mem", "loss")}
                            for r in rows]))
