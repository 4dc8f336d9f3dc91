"""`corticalrnn bench model`: training-step time and memory of the network.

In one run, on the same sizes and data:
(a) the fast path (``CorticalRNN``: weights built once, one input GEMM, custom autograd recurrence
    with one weight-gradient GEMM over all steps);
(b) a naive baseline in the style of the earlier code: per-layer RNNCell-style cells, sign
    constraints re-applied at every time step, ``x[:, t]`` indexing, autograd through everything;
(c) the FLOP lower bound: 3 x forward FLOPs (forward, input-gradient and weight-gradient GEMMs)
    divided by the GEMM rate of a large square matmul (best of ``--gemm-repeats``), measured right
    before each case so that the case and its bound run under the same load.
Plus dense x mask vs a sparse (CSR) kernel for the per-step product at several densities.
A training step = forward + Poisson loss on 10% observed neurons + backward + Adam step (+ projection);
the fast path uses the trainer's optimizer (fused AdamW), the baseline torch's default Adam.
"""

from __future__ import annotations

import argparse
import functools
import math
import multiprocessing as mp
import statistics
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from corticalrnn.bench.common import PeakRSS, load_average, time_call
from corticalrnn.sheets import FULL_MODEL_SIZES
from corticalrnn.tables import format_table, human_bytes


def scaled_sizes(frac: float) -> dict[str, int]:
    """Sizes at a fraction of the full model (0.1 -> 720/720 LGN, 3750/937/3750/937 V1)."""
    return {k: max(2, int(v * frac)) for k, v in FULL_MODEL_SIZES.items()}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scale", type=float, default=0.1, help="main size as a fraction of full (0.1 = 10%%)")
    p.add_argument("--sizes", default="0.01,0.025,0.05,0.1",
                   help="comma-separated fractions for the scaling table (fast path, 20 ms bins)")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--window-ms", type=float, default=712.0, help="window at the coarse bin size")
    p.add_argument("--bin-ms", type=float, default=20.0)
    p.add_argument("--fine-bin-ms", type=float, default=1.0)
    p.add_argument("--fine-window-ms", type=float, default=24.0,
                   help="shorter window for the fine-bin measurement")
    p.add_argument("--repeats", type=int, default=2, help="timed training steps of the fast path")
    p.add_argument("--rounds", type=int, default=3,
                   help="run every case this many times, round-robin; ratios are medians of per-round "
                        "ratios (their two sides measured minutes apart at most), with their spread")
    p.add_argument("--naive-repeats", type=int, default=1)
    p.add_argument("--naive-max-steps", type=int, default=8,
                   help="run the naive baseline on at most this many time steps and extrapolate "
                        "linearly (it keeps one copy of every weight per step: ~12 GB at 10%% x 36)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--gemm-repeats", type=int, default=5,
                   help="GEMM rate = best of this many products, measured right before each case")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads for every measurement (0 = torch default); on shared, busy cores "
                        "1 thread can beat 2 by several x because OpenMP threads wait on each other")
    p.add_argument("--device", default="cpu",
                   help="cpu, or cuda[:N] for the GPU figures (memory is then the CUDA allocator's peak)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="fast path with ModelConfig.cuda_graphs (chunks of steps replayed as CUDA graphs)")
    p.add_argument("--graph-chunk", type=int, default=16, help="steps per captured CUDA graph")
    p.add_argument("--sheet-local", type=float, default=0.0, metavar="FRAC",
                   help="also time a local model with sparse weight storage at this fraction of the full "
                        "size (1.0 = 93,750 V1 neurons), neurons at the full model's density on a 5 x 5 mm "
                        "sheet (sheet side 5 mm x sqrt(FRAC)); batch --sheet-batch, 20 ms bins")
    p.add_argument("--sheet-batch", type=int, default=8)
    p.add_argument("--identity-input", action="store_true",
                   help="the --sheet-local model's LGN input is identity-conditioned (Gabor RFs from each "
                        "unit's orientation / phase) and stored sparse on each RF's footprint")
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument("--skip-sparse", action="store_true")
    p.add_argument("--quick", action="store_true",
                   help="small everything (main scale 0.025, table 0.01/0.025, 1 repeat): ~1 minute")


class NaiveLayered(nn.Module):
    """Earlier-code style: per-layer cells, constraints re-applied per step, autograd throughout."""

    def __init__(self, sizes: dict[str, int], bin_ms: float, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.n_in = sizes["X_ON"] + sizes["X_OFF"]
        self.e4, self.i4, self.e23, self.i23 = (sizes[s] for s in
                                                ("V1_Exc_L4", "V1_Inh_L4", "V1_Exc_L2/3", "V1_Inh_L2/3"))
        n4, n23 = self.e4 + self.i4, self.e23 + self.i23
        k4, k23 = self.n_in + n4 + self.e23, self.e4 + n23
        self.v4 = nn.Parameter(torch.rand(n4, k4, generator=g) / math.sqrt(k4))
        self.v23 = nn.Parameter(torch.rand(n23, k23, generator=g) / math.sqrt(k23))
        self.b4 = nn.Parameter(torch.full((n4,), -2.0))
        self.b23 = nn.Parameter(torch.full((n23,), -2.0))
        self.register_buffer("s4", torch.cat([torch.ones(self.n_in + self.e4), -torch.ones(self.i4),
                                              torch.ones(self.e23)]))
        self.register_buffer("s23", torch.cat([torch.ones(self.e4 + self.e23), -torch.ones(self.i23)]))
        self.log_tau = nn.Parameter(torch.tensor([math.log(20.0)] * 2))
        self.bin_ms = bin_ms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        n4, n23 = self.e4 + self.i4, self.e23 + self.i23
        r4, r23 = x.new_zeros(B, n4), x.new_zeros(B, n23)
        v4, v23 = x.new_zeros(B, n4), x.new_zeros(B, n23)
        out = []
        for t in range(T):
            a = -torch.expm1(-self.bin_ms / self.log_tau.exp())
            w4 = F.relu(self.v4) * self.s4  # Dale re-applied every step
            w23 = F.relu(self.v23) * self.s23
            v4 = v4 + a[0] * (F.linear(torch.cat([x[:, t], r4, r23[:, :self.e23]], 1), w4, self.b4) - v4)
            r4 = F.softplus(v4)
            v23 = v23 + a[1] * (F.linear(torch.cat([r4[:, :self.e4], r23], 1), w23, self.b23) - v23)
            r23 = F.softplus(v23)
            out.append(torch.cat([r4, r23], 1))
        return torch.stack(out, 1)


def gemm_stats(n: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32,
               device: str = "cpu") -> dict[str, float]:
    """GFLOP/s of one large square matmul, best of ``repeats`` (the least disturbed run on a shared
    machine), with the spread of the repeats (slowest / fastest - 1) and the 1-minute load average.
    :func:`run_bench` measures it right before each case, so that a case and its bound see the same
    load: measured once per run, the rate moved from 52 to 177 GFLOP/s between runs here."""
    a, b = torch.rand(n, n, device=device).to(dtype), torch.rand(n, n, device=device).to(dtype)
    t = time_call(_synced(lambda: a @ b, device), repeats=repeats)
    return {"gflops": 2 * n**3 / t.best / 1e9, "spread": t.spread, "repeats": repeats,
            "load_1min": load_average()[0]}


def gemm_rate(n: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32,
              device: str = "cpu") -> float:
    """FLOP/s of one large square matmul (best of ``repeats``)."""
    return gemm_stats(n, repeats, dtype, device)["gflops"] * 1e9


def _synced(fn: Any, device: str) -> Any:
    """``fn`` followed by a device synchronisation (GPU work is asynchronous)."""
    if not device.startswith("cuda"):
        return fn

    def call() -> None:
        fn()
        torch.cuda.synchronize(device)
    return call


class _Memory:
    """Peak memory growth of a block: RSS on CPU, the CUDA allocator's peak on a GPU."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._rss = None if device.startswith("cuda") else PeakRSS()
        self.growth_bytes = 0

    def __enter__(self) -> _Memory:
        if self._rss is not None:
            self._rss.__enter__()
        else:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._rss is not None:
            self._rss.__exit__(*exc)
            self.growth_bytes = self._rss.growth_bytes
        else:
            torch.cuda.synchronize(self.device)
            self.growth_bytes = torch.cuda.max_memory_allocated(self.device) - self._start


def _step_fn(model: nn.Module, x: torch.Tensor, counts: torch.Tensor, observed: torch.Tensor,
             opt: torch.optim.Optimizer, project: bool, last: list[torch.Tensor] | None = None):
    """One training step; ``last`` (if given) holds the latest loss (no synchronisation)."""
    def step() -> None:
        opt.zero_grad(set_to_none=True)
        rates = model(x)
        r = rates.clamp_min(1e-8)
        loss = ((r - counts * torch.log(r)) * observed).sum() / observed.sum().clamp_min(1) / rates.shape[0]
        if last is not None:
            last[:] = [loss.detach()]
        loss.backward()
        opt.step()
        if project:
            model.project_()
    return step


def _data(sizes: dict[str, int], B: int, T: int, seed: int = 0, device: str = "cpu"):
    """Poisson input and counts, 10 % of the V1 units observed. Drawn on a GPU when ``device`` is one:
    at 1 ms sizes (~4e8 counts) the CPU takes 10-20 s per batch, the GPU milliseconds."""
    dev = str(device) if str(device).startswith("cuda") else "cpu"
    g = torch.Generator(dev).manual_seed(seed)
    n_in = sizes["X_ON"] + sizes["X_OFF"]
    n_v1 = sum(v for k, v in sizes.items() if k.startswith("V1"))
    x = torch.poisson(torch.full((B, T, n_in), 0.5, device=dev), generator=g)
    counts = torch.poisson(torch.full((B, T, n_v1), 0.2, device=dev), generator=g)
    observed = (torch.rand(n_v1, generator=g, device=dev) < 0.1).float()
    return x.to(device), counts.to(device), observed.to(device)


#: a local model at scale: sparse recurrent storage and identity-conditioned (Gabor) LGN input stored
#: sparse on each receptive field's footprint (with :func:`fast_config`'s distance masks)
SPARSE_LOCAL: dict[str, Any] = {"connectivity.storage": "sparse", "connectivity.input_rule": "gabor",
                                "connectivity.input_storage": "sparse"}


def fast_config(bin_ms: float, precision: str, local: dict[str, Any] | None = None, graph_chunk: int = 0):
    """The benchmarks' ModelConfig: dense, or with ``local`` (ModelConfig overrides by dotted key:
    ``compute.sparse_below``, ``connectivity.storage``, ...) distance masks; ``graph_chunk > 0`` turns on
    ``cuda_graphs``."""
    from corticalrnn.model import ModelConfig
    base = ModelConfig(bin_ms=bin_ms).with_values({"compute.precision": precision,
                                                   "compute.cuda_graphs": graph_chunk > 0,
                                                   "compute.graph_chunk": max(1, graph_chunk)})
    if local is None:
        return base
    return base.with_values({"connectivity.rule": "distance",
                             "connectivity.distance_sigma_mm": {"exc": 0.1, "inh": 0.08}, **local})


def random_identity(sizes: dict[str, int], sheet_mm: float = 2.0, seed: int = 0
                    ) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
    """Positions uniform on a ``sheet_mm`` square (every sheet) and, for V1, random orientation and
    phase (for the Gabor input; timing and memory do not depend on their values)."""
    rng = np.random.default_rng(seed)
    pos = {s: rng.random((n, 2)) * sheet_mm for s, n in sizes.items()}
    props = {s: {"ori": rng.uniform(0, np.pi, n), "phase": rng.uniform(0, 2 * np.pi, n)}
             for s, n in sizes.items() if s.startswith("V1")}
    return pos, props


def _fast_model(sizes: dict[str, int], bin_ms: float, precision: str,
                local: dict[str, Any] | None = None, graph_chunk: int = 0, sheet_mm: float = 2.0):
    """The fast path (:func:`fast_config`); a local model places its neurons with
    :func:`random_identity` (~1-2 % density at 10 % size on 2 mm)."""
    from corticalrnn.model import CorticalRNN
    cfg = fast_config(bin_ms, precision, local, graph_chunk)
    if local is None:
        return CorticalRNN(cfg, sizes)
    return CorticalRNN(cfg, sizes, *random_identity(sizes, sheet_mm))


def _trainer_step(model: nn.Module, sizes: dict[str, int], B: int, T: int, device: str,
                  last: list[torch.Tensor] | None = None) -> Any:
    """One training step of ``model`` on generated data, with the trainer's optimizer (fused AdamW)."""
    from corticalrnn.train.config import OptimConfig
    from corticalrnn.train.trainer import adamw
    x, counts, observed = _data(sizes, B, T, device=device)
    opt = adamw(model.parameters(), OptimConfig(lr=1e-4))
    return _synced(_step_fn(model, x, counts, observed, opt, True, last), device)


def _finite(model: nn.Module, last: list[torch.Tensor]) -> dict[str, Any]:
    """The last timed step's loss and whether it and every weight are finite (a fast step that
    diverged is no figure)."""
    loss = float(last[0]) if last else math.nan
    ok = math.isfinite(loss) and all(bool(torch.isfinite(p).all()) for p in model.parameters())
    return {"loss": loss, "finite": ok}


def _isolated(fn: Any, threads: int, *args: Any) -> dict[str, Any]:
    """Run ``fn(*args)`` in a fresh (spawned) process so that RSS-based peak memory of one case is
    not hidden by memory the allocator kept from an earlier case."""
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as ex:
        return ex.submit(_child, fn, threads, *args).result()


def _child(fn: Any, threads: int, *args: Any) -> dict[str, Any]:
    if threads:
        torch.set_num_threads(threads)
    return fn(*args)


def measure_fast(sizes: dict[str, int], B: int, T: int, bin_ms: float, precision: str,
                 repeats: int, local: dict[str, Any] | None = None, device: str = "cpu",
                 graph_chunk: int = 0) -> dict[str, Any]:
    t0 = time.perf_counter()
    model = _fast_model(sizes, bin_ms, precision, local, graph_chunk).to(device)
    build_s = time.perf_counter() - t0
    last: list[torch.Tensor] = []
    step = _trainer_step(model, sizes, B, T, device, last)
    with _Memory(device) as mem:
        t = time_call(step, repeats=repeats, warmup=1)
    n_w = model.n_synapses()
    assert not any(model.sign_violations().values())
    finite = _finite(model, last)
    del model, step
    return {"step_s": t.median, "peak_bytes": mem.growth_bytes, "weights": n_w, "build_s": build_s, **finite}


def measure_sheet_local(frac: float, B: int, T: int, bin_ms: float, precision: str, repeats: int,
                        device: str = "cpu", identity_input: bool = False) -> dict[str, Any]:
    """Build and train a local model (distance masks, sparse weight storage) at ``frac`` of the full
    size with the full model's neuron density (93,750 V1 neurons on 5 x 5 mm); ``identity_input``:
    Gabor input weights stored sparse on each RF's footprint instead of dense LGN input."""
    sizes = scaled_sizes(frac)
    side = 5.0 * math.sqrt(frac)
    local = SPARSE_LOCAL if identity_input else {"connectivity.storage": "sparse"}
    with _Memory(device) as mem:  # construction included: it is part of what must fit
        t0 = time.perf_counter()
        model = _fast_model(sizes, bin_ms, precision, local, sheet_mm=side).to(device)
        build_s = time.perf_counter() - t0
        last: list[torch.Tensor] = []
        t = time_call(_trainer_step(model, sizes, B, T, device, last), repeats=repeats, warmup=1)
    rec = sum(model.weights[n].n_synapses for n in model._v1_blocks)
    return {"fraction": frac, "V1 neurons": model.n_v1, "sheet_mm": side, "recurrent_synapses": rec,
            "input_weights": model.n_synapses() - rec, "build_s": build_s, "step_s": t.median,
            "peak_bytes": mem.growth_bytes, **_finite(model, last)}


def measure_naive(sizes: dict[str, int], B: int, T: int, bin_ms: float, repeats: int,
                  max_steps: int, device: str = "cpu") -> dict[str, Any]:
    T_run = min(T, max_steps)
    model = NaiveLayered(sizes, bin_ms).to(device)
    x, counts, observed = _data(sizes, B, T_run, device=device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    step = _synced(_step_fn(model, x, counts, observed, opt, False), device)
    with _Memory(device) as mem:
        t = time_call(step, repeats=repeats, warmup=1)
    scale = T / T_run
    del model, opt
    return {"step_s": t.median * scale, "measured_steps": T_run, "peak_bytes": mem.growth_bytes * scale,
            "extrapolated": T_run < T}


def train_flops(sizes: dict[str, int], B: int, T: int) -> float:
    """3 x forward GEMM FLOPs (forward, dL/dr, dL/dW) for the default (dense) graph."""
    from corticalrnn.model.config import ModelConfig
    from corticalrnn.model.graph import Graph
    g = Graph(ModelConfig(), sizes)
    n_w = sum(b.shape[0] * b.shape[1] for b in g.blocks)
    return 3 * 2 * B * T * n_w


def sparse_vs_dense(rows: int, cols: int, B: int, densities: list[float], pairs: int = 15
                    ) -> list[dict[str, Any]]:
    """Per-step product W @ r^T: dense W (masked, zeros stored) vs CSR W (torch.sparse.mm), the two
    alternated ``pairs`` times; times are medians, the speedup the median of the per-pair ratios."""
    out = []
    g = torch.Generator().manual_seed(0)
    r = torch.rand(cols, B, generator=g)
    for d in densities:
        w = torch.rand(rows, cols, generator=g) * (torch.rand(rows, cols, generator=g) < d)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
            ws = w.to_sparse_csr()
        dense, csr = functools.partial(torch.mm, w, r), functools.partial(torch.mm, ws, r)
        dense(), csr()  # warm-up
        td, tsp = [], []
        for _ in range(pairs):
            td.append(time_call(dense, repeats=1, warmup=0).best)
            tsp.append(time_call(csr, repeats=1, warmup=0).best)
        speedup, spread = _per_round(td, tsp)
        out.append({"density": d, "dense_ms": statistics.median(td) * 1e3,
                    "csr_ms": statistics.median(tsp) * 1e3, "csr_speedup": speedup, "pairs": pairs})
        del w, ws
    return out


def _per_round(a: list[float], b: list[float]) -> tuple[float, float]:
    """Median over rounds of the ratio ``a_i / b_i`` (both measured in round i, minutes apart at most)
    and the spread of those ratios (largest / smallest - 1)."""
    r = [x / y for x, y in zip(a, b)]
    return statistics.median(r), max(r) / min(r) - 1


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Every case runs once per round in a fresh process, round-robin over ``--rounds`` rounds; each
    ratio is the median of its per-round ratios, whose two sides ran minutes apart at most, so load
    that drifts over the run cancels (a case measured once, 10 minutes after its baseline, moved the
    ratios by up to 79 % between runs here)."""
    if args.quick:
        args.scale, args.sizes, args.repeats = 0.025, "0.01,0.025", 1
    B, dev, R = args.batch, args.device, max(1, args.rounds)
    chunk = args.graph_chunk if args.cuda_graphs else 0
    T = int(round(args.window_ms / args.bin_ms))
    T_fine = int(round(args.fine_window_ms / args.fine_bin_ms))
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    if args.threads:
        torch.set_num_threads(args.threads)
    th = torch.get_num_threads()
    # the bound uses the rate of the precision the fast path computes in (bf16/fp16 on a GPU)
    mm_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    gemms: list[dict[str, float]] = []

    def gemm_now() -> dict[str, float]:
        """The GEMM rate right before a case (that case's bound uses it)."""
        g = gemm_stats(device=dev, dtype=mm_dtype, repeats=max(1, args.gemm_repeats))
        gemms.append(g)
        return g

    log(f"threads={th}; device {dev}; GEMM rate measured before each case; {R} round(s)")
    results: dict[str, Any] = {"gemm_gflops": gemm_now()["gflops"], "threads": th, "device": dev,
                               "batch": B, "precision": args.precision, "cuda_graphs": bool(chunk),
                               "rounds": R}
    # the cases: name -> (function, args); each returns a dict with step_s
    main_sizes = scaled_sizes(args.scale)
    fracs = [float(x) for x in args.sizes.split(",") if x]
    cases: dict[str, tuple[Any, tuple[Any, ...], bool]] = {}  # name -> (fn, args, with a GEMM rate)
    for label, bin_ms, steps in (("coarse", args.bin_ms, T), ("fine", args.fine_bin_ms, T_fine)):
        cases[f"{label}/fast"] = (measure_fast, (main_sizes, B, steps, bin_ms, args.precision, args.repeats,
                                                 None, dev, chunk), True)
        if not args.skip_naive:
            cases[f"{label}/naive"] = (measure_naive, (main_sizes, B, steps, bin_ms, args.naive_repeats,
                                                       args.naive_max_steps, dev), True)
    for frac in fracs:
        if frac != args.scale:  # the main coarse measurement is that row
            cases[f"scaling/{frac}"] = (measure_fast, (scaled_sizes(frac), B, T, args.bin_ms, args.precision,
                                                       max(1, args.repeats), None, dev, chunk), True)
    kernels = (("dense x mask", {"compute.sparse_below": 0.0, "compute.sparse_grad_below": 0.0}),
               ("CSR products", {"compute.sparse_below": 0.1, "compute.sparse_grad_below": 0.0}),
               ("CSR products + SDDMM grads (default)", {}),
               ("sparse storage (connectivity.storage=sparse)", {"connectivity.storage": "sparse"}))
    if not args.skip_sparse:
        for label, thr in kernels:
            cases[f"local/{label}"] = (measure_fast, (main_sizes, B, T, args.bin_ms, args.precision,
                                                      max(1, args.repeats), thr, dev), False)
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in cases}
    for r in range(R):
        for name, (fn, fargs, with_gemm) in cases.items():
            log(f"round {r + 1}/{R}: {name}")
            g = gemm_now() if with_gemm else None
            runs[name].append({**_isolated(fn, th, *fargs), "gemm": g})

    def bound_ratio(name: str, sizes: dict[str, int], steps: int) -> tuple[float, float]:
        """(step / FLOP bound), each round's step against the GEMM rate measured right before it."""
        f = train_flops(sizes, B, steps)
        return _per_round([x["step_s"] for x in runs[name]],
                          [f / (x["gemm"]["gflops"] * 1e9) for x in runs[name]])

    def summary(name: str) -> dict[str, Any]:
        """The case's median round, with every round's step time."""
        xs = sorted(runs[name], key=lambda x: x["step_s"])
        return {**xs[(len(xs) - 1) // 2], "round_step_s": [x["step_s"] for x in runs[name]]}

    main_rows = []
    for label, bin_ms, steps in (("coarse", args.bin_ms, T), ("fine", args.fine_bin_ms, T_fine)):
        fast = summary(f"{label}/fast")
        fb, fb_spread = bound_ratio(f"{label}/fast", main_sizes, steps)
        rates = [x["gemm"]["gflops"] for x in runs[f"{label}/fast"]]
        row = {"case": f"{args.scale:.1%} {bin_ms:g}ms x{steps}", "fast_s": fast["step_s"],
               "fast_mem": human_bytes(fast["peak_bytes"]), "bound_s": fast["step_s"] / fb,
               "fast/bound": fb, "GFLOP/s": statistics.median(rates), "spread": max(rates) / min(rates) - 1}
        if R > 1:
            row["fast/bound spread"] = fb_spread
        res = {"sizes": main_sizes, "steps": steps, "bin_ms": bin_ms, "fast": fast,
               "flop_bound_s": row["bound_s"], "gemm": fast["gemm"], "fast_over_bound": fb,
               "fast_over_bound_spread": fb_spread}
        if not args.skip_naive:
            naive = summary(f"{label}/naive")
            nf, nf_spread = _per_round([x["step_s"] for x in runs[f"{label}/naive"]],
                                       [x["step_s"] for x in runs[f"{label}/fast"]])
            nb, _ = bound_ratio(f"{label}/naive", main_sizes, steps)
            res["naive"], res["naive_gemm"] = naive, naive["gemm"]
            res["naive_over_fast"], res["naive_over_fast_spread"] = nf, nf_spread
            # naive/bound: the most ANY implementation doing these dense FLOPs at this GEMM rate
            # could gain over the naive baseline (its bound at the rate measured right before it)
            row.update({"naive_s": naive["step_s"], "naive_mem": human_bytes(naive["peak_bytes"]),
                        "naive/fast": nf, **({"naive/fast spread": nf_spread} if R > 1 else {}),
                        "naive/bound": nb,
                        "naive_note": f"extrap. from {naive['measured_steps']} steps"
                        if naive["extrapolated"] else "measured"})
        results[label] = res
        main_rows.append(row)
    print(f"GEMM rate (best of {args.gemm_repeats}, right before each case; spread = slowest/fastest - 1 "
          f"over rounds): {args.precision}, {dev}, {th} threads; batch {B}; step = fwd + Poisson loss + bwd "
          f"+ Adam; {R} round(s), ratios = median of per-round ratios"
          + (f"; CUDA graphs of {chunk} steps" if chunk else ""))
    print(format_table(main_rows))
    if not args.skip_naive:
        print("naive/bound = the largest speedup over the naive baseline that any exact dense "
              "implementation could reach at this GEMM rate")

    table = []
    for frac in fracs:
        sizes = scaled_sizes(frac)
        name = "coarse/fast" if frac == args.scale else f"scaling/{frac}"
        fast = summary(name)
        sb, sb_spread = bound_ratio(name, sizes, T)
        n_v1 = sum(v for k, v in sizes.items() if k.startswith("V1"))
        rates = [x["gemm"]["gflops"] for x in runs[name]]
        table.append({"size": f"{frac:.1%}", "V1 neurons": n_v1, "weights (M)": fast["weights"] / 1e6,
                      "step_s": fast["step_s"], "peak_mem": human_bytes(fast["peak_bytes"]),
                      "bound_s": fast["step_s"] / sb, "step/bound": sb,
                      **({"step/bound spread": sb_spread} if R > 1 else {}),
                      "GFLOP/s": statistics.median(rates)})
    print(f"\nscaling ({args.bin_ms:g} ms bins, {T} steps, batch {B}, fast path)")
    print(format_table(table))
    results["scaling"] = table

    if not args.skip_sparse:
        s = main_sizes
        rows, cols = s["V1_Exc_L4"] + s["V1_Inh_L4"], s["V1_Exc_L4"] + s["V1_Inh_L4"] + s["V1_Exc_L2/3"]
        log("sparse vs dense x mask")
        sp = sparse_vs_dense(rows, cols, B, [0.01, 0.05, 0.2])
        print(f"\nper-step product [{rows} x {cols}] @ [{cols} x {B}] (CPU): dense x mask vs CSR, "
              f"alternated, median of {sp[0]['pairs']} pairs")
        print(format_table(sp))
        results["sparse_vs_dense"] = sp
        local = []
        base = f"local/{kernels[0][0]}"
        for label, _ in kernels:
            name = f"local/{label}"
            r = summary(name)
            sp_up, sp_spread = _per_round([x["step_s"] for x in runs[base]],
                                          [x["step_s"] for x in runs[name]])
            local.append({"kernel": label, "step_s": r["step_s"], "peak_mem": human_bytes(r["peak_bytes"]),
                          "synapses (M)": r["weights"] / 1e6, "speedup": sp_up,
                          **({"speedup spread": sp_spread} if R > 1 else {})})
        print(f"\nlocal {args.scale:.1%} model (distance masks, ~1-2 % density), {T} steps, batch {B}: "
              "training step")
        print(format_table(local))
        results["local_sparse_step"] = local
    if args.sheet_local > 0:
        log(f"local model with sparse storage at {args.sheet_local:.0%} size")
        r = _isolated(measure_sheet_local, th, args.sheet_local, args.sheet_batch, T, args.bin_ms,
                      args.precision, max(1, args.repeats), dev, args.identity_input)
        print(f"\nlocal model, sparse weight storage{', sparse Gabor input' if args.identity_input else ''}, "
              f"{args.sheet_local:.0%} size on a "
              f"{r['sheet_mm']:.2f} mm sheet ({T} steps of {args.bin_ms:g} ms, batch {args.sheet_batch})")
        print(format_table([{"V1 neurons": r["V1 neurons"],
                             "recurrent synapses (M)": r["recurrent_synapses"] / 1e6,
                             "input weights (M)": r["input_weights"] / 1e6, "build_s": r["build_s"],
                             "step_s": r["step_s"], "peak_mem": human_bytes(r["peak_bytes"])}]))
        results["sheet_local"] = r
    rates = [g["gflops"] for g in gemms]
    results["gemm"] = {"measurements": gemms, "gflops_min": min(rates), "gflops_max": max(rates),
                       "max_spread": max(g["spread"] for g in gemms)}
    print(f"\nGEMM rate over the run: {min(rates):.4g}-{max(rates):.4g} GFLOP/s in {len(rates)} "
          f"measurements (each best of {args.gemm_repeats}; largest spread within one "
          f"{results['gemm']['max_spread']:.0%})")
    return results
