"""Which device training and evaluation run on, chosen and said out loud.

``device = "auto"`` picks this rank's GPU when CUDA works and the CPU otherwise, *unless* the
environment says a GPU was requested or allocated (``CUDA_VISIBLE_DEVICES``, Slurm's GPU
variables): then a CPU run is almost always a mistake (a forgotten ``--nv``, a driver too old for
this torch, a CPU build of torch) that would turn a 1 h GPU job into a 24 h CPU job, so it is an
error that says why CUDA is unusable and how to fix it. ``cpu`` is always honoured. ``cuda`` /
``cuda:N`` without a usable GPU is the same clear error, never torch's ``AssertionError``.
:func:`describe` is the line ``train`` and ``evaluate`` print at start.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from corticalrnn.errors import CorticalRNNError

# Variables that mean "this job was given (or asked for) GPUs". Slurm sets SLURM_JOB_GPUS /
# SLURM_STEP_GPUS / SLURM_GPUS_ON_NODE for an allocation with GPUs and SLURM_GPUS* for requests;
# CUDA_VISIBLE_DEVICES is set by Slurm's gres plugin, by schedulers and by hand.
GPU_VARIABLES = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE",
                 "SLURM_GPUS", "SLURM_GPUS_PER_NODE", "SLURM_GPUS_PER_TASK")
# GPU id lists ("0" is GPU 0) versus counts or counts with a type ("0" is none, "a100:2" two)
_ID_LISTS = {"CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS"}
_NO_GPU_VALUES = {"", "-1", "none", "nodevfiles", "(null)", "n/a"}


class DeviceError(CorticalRNNError):
    """The requested or allocated device cannot be used; the message says how to fix it."""


def gpu_requests(environ: Mapping[str, str] | None = None) -> list[str]:
    """``NAME=value`` for every environment variable that says GPUs were requested or allocated."""
    env = os.environ if environ is None else environ
    out = []
    for name in GPU_VARIABLES:
        value = env.get(name, "").strip()
        if value.lower() in _NO_GPU_VALUES or (name == "CUDA_VISIBLE_DEVICES" and value.startswith("-")):
            continue
        if name not in _ID_LISTS and value.rsplit(":", 1)[-1] in ("0", ""):
            continue
        out.append(f"{name}={value}")
    return out


def cuda_problem() -> str:
    """Why CUDA cannot be used here, with the fix (assumes ``torch.cuda.is_available()`` is False)."""
    if torch.version.cuda is None:
        return (f"this torch ({torch.__version__}) is a CPU build; install a CUDA build of the same "
                f"version (README \"Install\": `make TORCH_INDEX=default`, or `pip install "
                f"torch=={torch.__version__.split('+')[0]} --index-url "
                f"https://download.pytorch.org/whl/cu126` for drivers older than CUDA 13's), or use the "
                f"GPU container image")
    detail = ""
    try:
        torch.cuda.init()
    except Exception as exc:  # torch raises RuntimeError/AssertionError with the driver's reason
        detail = f" ({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''})"
    return (f"torch {torch.__version__} (built for CUDA {torch.version.cuda}) finds no usable GPU{detail}: "
            f"in a container pass the GPUs through (`apptainer exec --nv`, `docker run --gpus all`); "
            f"check that `nvidia-smi` works on this node and that its driver supports CUDA "
            f"{torch.version.cuda} (else install a torch built for an older CUDA, README \"Install\")")


def resolve_device(name: str = "auto", *, cpu_hint: str = "--set train.device=cpu",
                   environ: Mapping[str, str] | None = None) -> torch.device:
    """``auto`` -> this rank's GPU (``LOCAL_RANK``) when CUDA works, else the CPU unless a GPU was
    requested or allocated (then :class:`DeviceError`). ``cpu``, ``cuda``, ``cuda:N``, ``mps``
    are checked. ``cpu_hint`` is how the caller's user asks for the CPU explicitly."""
    env = os.environ if environ is None else environ
    if name == "auto":
        if torch.cuda.is_available():
            return _cuda_device(int(env.get("LOCAL_RANK", "0")), "auto (LOCAL_RANK)")
        requested = gpu_requests(env)
        if requested:
            raise DeviceError(f"a GPU was requested or allocated ({', '.join(requested)}) but "
                              f"{cuda_problem()}. To run on the CPU on purpose: {cpu_hint}")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise DeviceError(f"device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} was asked for but {cuda_problem()}. "
                              f"To run on the CPU: {cpu_hint}")
        return _cuda_device(0 if dev.index is None else dev.index, repr(name))
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise DeviceError(f"device {name!r}: this torch or machine has no MPS. To run on the CPU: {cpu_hint}")
    return dev


def _cuda_device(index: int, what: str) -> torch.device:
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(f"device {what} is GPU {index}, but this process sees {count} GPU(s) "
                          f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
                          f"start one process per visible GPU (torchrun --nproc-per-node {count})")
    return torch.device("cuda", index)


def describe(device: torch.device, precision: str, requested_precision: str | None = None,
             workers: int | None = None) -> str:
    """One line: device (GPU name, memory, CUDA), matmul precision, CPU threads, torch version."""
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        where = (f"cuda:{idx} ({props.name}, {props.total_memory / 2**30:.0f} GiB, "
                 f"CUDA {torch.version.cuda})")
    else:
        build = "CPU build" if torch.version.cuda is None else f"CUDA {torch.version.cuda} build, no GPU used"
        where = f"{device} ({build})"
    prec = precision
    if requested_precision not in (None, "auto", precision):
        prec += f" (precision {requested_precision} asked for; the CPU runs fp32)"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    line = (f"device {where}, precision {prec}, {torch.get_num_threads()} torch threads "
            f"({cpus} CPUs available)")
    if workers is not None:
        line += f", {workers} loader workers"
    return line + f", torch {torch.__version__}"
