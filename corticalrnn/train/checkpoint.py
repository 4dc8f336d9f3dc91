"""The checkpoint file format (one home): ``torch.save`` of a plain dict, written atomically.

Layout (schema ``corticalrnn.checkpoint``, version 1)::

    format, version, created, tool_version
    config        the full TrainConfig as a nested dict (corticalrnn.train.config)
    spec          what the model *is*: {"model_config": dict, "sizes": {sheet: n}, "input_sizes":
                  {sheet: n}, "neuron_ids": {sheet: int64 tensor}, "observed": {sheet: bool tensor},
                  "positions": {sheet: float tensor} | None, "bin_ms": float}
    model         state_dict of the trained weights
    ema           state_dict of the EMA weights, or None
    optimizer, scheduler, scaler   their state_dicts (scaler None without fp16)
    rng           {"torch": ByteTensor, "cuda": [ByteTensor, ...]}
    progress      {"step", "epoch", "batch_in_epoch", "best_val", "best_step", "windows_seen"}
    subset        the neuron-subset file's content (so a checkpoint is self-contained)
    split         the image split's content (train / validation / test image ids) or None
    precision     the trainer's precision (fp32 | bf16 | fp16)

Files are written to ``<name>.tmp`` and renamed; a reader meeting another format or version,
or a file that torch cannot read, raises :class:`~corticalrnn.errors.SchemaError` naming it.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import torch

from corticalrnn.atomic import atomic_path
from corticalrnn.errors import DataMismatchError, SchemaError

FORMAT = "corticalrnn.checkpoint"
VERSION = 1


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus format header) to ``path`` atomically; return the path."""
    from corticalrnn import __version__

    path = Path(path)
    data = {
        "format": FORMAT,
        "version": VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tool_version": __version__,
        **payload,
    }
    with atomic_path(path) as tmp:
        torch.save(data, tmp)
    return path


def not_a_checkpoint_file(path: Path) -> str:
    """Why ``path`` (not a file) is no checkpoint: a run folder, a Zarr store (arguments swapped), or
    missing; the message names what to give instead."""
    if path.is_dir():
        found = [path / name for name in ("best.pt", "last.pt") if (path / name).is_file()]
        if found:
            return f"{path}: a run folder, not a checkpoint; give {found[0]} (or {path / 'last.pt'})"
        if (path / "zarr.json").is_file() or path.suffix == ".zarr":
            return (f"{path}: a Zarr store, not a checkpoint; the checkpoint comes first "
                    f"(`corticalrnn evaluate RUN_DIR/best.pt {path}`)")
        return f"{path}: a folder, not a checkpoint file (RUN_DIR/best.pt or RUN_DIR/last.pt)"
    if path.suffix == ".pt" and (path.parent / "best.pt").is_file():
        return f"{path}: checkpoint file not found; {path.parent / 'best.pt'} exists"
    return f"{path}: checkpoint file not found"


def _load_problem(exc: Exception) -> str:
    """torch's message without its advice to retry unsafely (``weights_only=False`` runs code)."""
    text = str(exc)
    if "weights_only" in text or "WeightsUnpickler" in text:
        return (
            "it references objects other than tensors and plain data; they are never loaded, "
            "since unpickling them could run code: the file is not a corticalrnn checkpoint or "
            "has been altered"
        )
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check a checkpoint written by :func:`save_checkpoint`."""
    path = Path(path)
    if not path.is_file():
        raise SchemaError(not_a_checkpoint_file(path))
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt/foreign files
        raise SchemaError(f"{path}: not a readable corticalrnn checkpoint ({_load_problem(exc)})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise SchemaError(f"{path}: not a corticalrnn checkpoint (format {data.get('format')!r}, "
                          f"expected {FORMAT!r})" if isinstance(data, dict) else f"{path}: not a checkpoint")
    if data.get("version") != VERSION:
        raise SchemaError(f"{path}: checkpoint version {data.get('version')!r}; this tool reads {VERSION}")
    for key in ("config", "spec", "model", "progress"):
        if key not in data:
            raise SchemaError(f"{path}: checkpoint lacks {key!r}")
    return data


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): d}


def spec_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Keys where two model specs differ (tensors compared by value); empty when compatible."""
    fa, fb = _flat(a), _flat(b)
    diffs = []
    for key in sorted(set(fa) | set(fb)):
        va, vb = fa.get(key), fb.get(key)
        if isinstance(va, torch.Tensor) or isinstance(vb, torch.Tensor):
            same = (isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor)
                    and va.shape == vb.shape and bool(torch.equal(va.cpu(), vb.cpu())))
        else:
            same = va == vb
        if not same:
            diffs.append(key)
    return diffs


def check_same_architecture(ckpt_spec: dict[str, Any], spec: dict[str, Any], path: str | Path,
                            ignore: tuple[str, ...] = ("observed",)) -> None:
    """Raise :class:`DataMismatchError` naming the differing keys when ``spec`` is another architecture.

    ``ignore`` lists top-level spec keys allowed to differ (by default the observed set, so a
    trained model can be fine-tuned on another observed set).
    """
    diffs = [k for k in spec_differences(ckpt_spec, spec) if k.split(".")[0] not in ignore]
    if diffs:
        shown = ", ".join(diffs[:12]) + (f" (+{len(diffs) - 12} more)" if len(diffs) > 12 else "")
        raise DataMismatchError(f"{path}: checkpoint is of another architecture; differs in: {shown}")


def load_state_strict(module: torch.nn.Module, state: dict[str, Any], path: str | Path) -> None:
    """``module.load_state_dict(state)`` with a message naming the file on any mismatch."""
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise DataMismatchError(f"{path}: checkpoint weights do not fit this model: {exc}") from None
