"""The checkpoint file format (one home): ``torch.save`` of a plain dict, written atomically.

Layout (schema ``corticalrnn.checkpoint``, version 1)::

    format, version, created, tool_version
    config        the full TrainConfig as a nested dict (corticalrnn.train.config)
    spec          what the model *is* (sizes, neuron ids, positions, ...; made, checked and turned back
                  into a model by corticalrnn.train.spec)
    model         state_dict of the trained weights
    ema           state_dict of the EMA weights, or None
    optimizer, scheduler, scaler   their state_dicts (scaler None without fp16)
    rng           {"torch": ByteTensor, "cuda": [ByteTensor, ...]}
    progress      {"step", "epoch", "batch_in_epoch", "best_val", "best_step", "windows_seen"}
    subset        the neuron-subset file's content (so a checkpoint is self-contained)
    split         the image split's content (train / validation / test image ids) or None
    precision     the trainer's precision (fp32 | bf16 | fp16)

Size: O(parameters). Nothing the configuration and spec rebuild is stored: masks, sparsity patterns
and permutations are non-persistent buffers (a masked block keeps a 3-number ``fingerprint`` of its
mask, checked on load), and a masked dense block's parameter, EMA copy and Adam moments are stored as
their values on the mask (1-D, :func:`pack_masked`) whenever every entry outside the mask is exactly
0 (always so in ``projected`` mode; checked, so the packing is lossless), and scattered back on load
(``SignedWeight._load_from_state_dict``, :func:`unpack_optimizer`). Checkpoints that hold the dense
tensors or the mask itself still load.

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


def load_state_strict(module: torch.nn.Module, state: dict[str, Any], path: str | Path) -> None:
    """``module.load_state_dict(state)`` with a message naming the file on any mismatch."""
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise DataMismatchError(f"{path}: checkpoint weights do not fit this model: {exc}") from None


def masked_params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``{parameter name: bool mask}`` of the model's masked blocks stored dense (``SignedWeight``)."""
    out = {}
    for name, mod in model.named_modules():
        mask = getattr(mod, "mask", None)
        param = getattr(mod, "param", None)
        if isinstance(mask, torch.Tensor) and isinstance(param, torch.Tensor) and mask.shape == param.shape:
            out[f"{name}.param" if name else "param"] = mask
    return out


def _pack(value: Any, mask: torch.Tensor) -> Any:
    if not isinstance(value, torch.Tensor) or value.shape != mask.shape:
        return value
    m = mask.to(value.device)
    if bool((value[~m] != 0).any()):
        return value  # not representable by its values on the mask: kept dense (lossless)
    return value[m]


def pack_masked(state: dict[str, Any], masks: dict[str, torch.Tensor], prefix: str = "") -> dict[str, Any]:
    """A copy of a state dict with each masked parameter (``prefix + name`` in ``masks``) replaced by
    its values on the mask when everything outside the mask is 0."""
    out = dict(state)
    for name, mask in masks.items():
        if prefix + name in out:
            out[prefix + name] = _pack(out[prefix + name], mask)
    return out


def _optimizer_masks(model: torch.nn.Module, optimizer_state: dict[str, Any]) -> dict[Any, torch.Tensor]:
    """Optimizer state ids -> mask, by the order of ``model.parameters()`` (the trainer builds its
    optimizer from exactly those, one parameter group)."""
    masks = masked_params(model)
    names = [n for n, _ in model.named_parameters()]
    ids = [i for g in optimizer_state.get("param_groups", []) for i in g["params"]]
    if len(ids) != len(names):
        return {}
    return {i: masks[n] for i, n in zip(ids, names) if n in masks}


def pack_optimizer(optimizer_state: dict[str, Any], model: torch.nn.Module) -> dict[str, Any]:
    """An optimizer state dict whose per-parameter tensors of masked blocks (Adam's moments) are
    packed like :func:`pack_masked`."""
    masks = _optimizer_masks(model, optimizer_state)
    state = {i: ({k: _pack(v, masks[i]) for k, v in st.items()} if i in masks else st)
             for i, st in optimizer_state["state"].items()}
    return {**optimizer_state, "state": state}


def unpack_optimizer(optimizer_state: dict[str, Any], model: torch.nn.Module) -> dict[str, Any]:
    """Inverse of :func:`pack_optimizer` (dense states pass unchanged)."""
    from corticalrnn.model.dale import unpack_masked_tensor

    masks = _optimizer_masks(model, optimizer_state)
    state = {i: ({k: unpack_masked_tensor(v, masks[i]) if isinstance(v, torch.Tensor) and v.dim() == 1
                  and masks[i].dim() == 2 else v for k, v in st.items()} if i in masks else st)
             for i, st in optimizer_state["state"].items()}
    return {**optimizer_state, "state": state}
