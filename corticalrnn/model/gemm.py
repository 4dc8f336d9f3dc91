"""Which BLAS runs the weight-gradient GEMMs on CPU.

The weight gradient of a recurrent block is one GEMM over all steps and the batch,
``dW = dI[n_post, T*B] @ r~[n_pre, T*B]^T`` (see ``recurrence.py``): a third of a training step's
FLOPs. Torch's CPU BLAS is MKL, which on AMD processors runs this shape at well below its own
square-matmul rate; numpy's bundled OpenBLAS does not. Measured on the 2-core AMD EPYC (Zen 3) dev
box, [4687 x 1800] @ [1800 x 8437] fp32, same arrays, same process (GFLOP/s):

=========  ==========  ================
threads     MKL         OpenBLAS (numpy)
=========  ==========  ================
1           39 - 40     74 - 82  (1.9-2.0x)
2           78 - 89     159 - 160 (1.8-2.0x)
=========  ==========  ================

while the thin per-step products (batch columns) were equal within noise (0.87-1.18x), so only the
weight gradients are routed. ``backend``: ``"torch"`` (always torch), ``"openblas"`` (numpy when it
links OpenBLAS; CPU float32/float64 only), ``"auto"`` (``"openblas"`` on non-Intel CPUs when numpy
links OpenBLAS and torch links MKL, else ``"torch"``). OpenBLAS gets as many threads as torch has.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import numpy as np
import torch

from corticalrnn.model.config import CPU_BLAS as BACKENDS


@functools.cache
def numpy_blas() -> str:
    """Internal API of the BLAS numpy links (``"openblas"``, ``"mkl"``, ...; ``""`` if unknown)."""
    try:
        import threadpoolctl
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        return ""
    for info in threadpoolctl.threadpool_info():
        if info.get("user_api") == "blas" and "numpy" in str(info.get("filepath", "")):
            return str(info.get("internal_api", ""))
    return ""


@functools.cache
def _cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def resolve(backend: str) -> str:
    """``"torch"`` or ``"openblas"`` for a configured backend (see module docstring)."""
    if backend not in BACKENDS:
        raise ValueError(f"cpu_blas={backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "torch":
        return "torch"
    has_openblas = numpy_blas() == "openblas"
    if backend == "openblas":
        return "openblas" if has_openblas else "torch"
    torch_mkl = torch.backends.mkl.is_available()
    return "openblas" if has_openblas and torch_mkl and _cpu_vendor() != "GenuineIntel" else "torch"


def uses_numpy(backend: str, *tensors: torch.Tensor) -> bool:
    """Whether :func:`matmul_nt` with ``backend`` (already resolved) goes through numpy."""
    return backend == "openblas" and all(
        t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) for t in tensors)


@contextlib.contextmanager
def blas_threads(backend: str) -> Iterator[None]:
    """Give OpenBLAS torch's thread count for the duration (a no-op for ``"torch"``)."""
    if backend != "openblas":
        yield
        return
    import threadpoolctl
    with threadpoolctl.threadpool_limits(limits=torch.get_num_threads(), user_api="blas"):
        yield


def matmul_nt(a: torch.Tensor, b: torch.Tensor, backend: str) -> torch.Tensor:
    """``a @ b.T`` for 2-D ``a [m, k]`` and ``b [n, k]`` of one dtype.

    With ``backend="openblas"`` on CPU float tensors numpy computes it into a new tensor, sharing
    memory with the operands (no copies beyond those a non-contiguous operand needs); call inside
    :func:`blas_threads` to give it torch's thread count.
    """
    if not uses_numpy(backend, a, b):
        return a @ b.t()
    res = torch.empty(a.shape[0], b.shape[0], dtype=a.dtype)
    np.matmul(a.detach().contiguous().numpy(), b.detach().contiguous().numpy().T, out=res.numpy())
    return res
