"""The model's spec, one home: what a checkpoint needs to rebuild the model, and the way back.

A spec is a plain dict of tensors and numbers (stored as ``spec`` in every checkpoint,
:mod:`corticalrnn.train.checkpoint`)::

    model_config  the ModelConfig as a (nested) dict, without ``compute.precision`` (a runtime choice);
                  checkpoints from before the model's sections hold the flat layout: read with
                  :func:`spec_model_config`
    sizes         {sheet: number of modelled neurons}
    neuron_ids    {sheet: int64 tensor}, the modelled neurons (subset order)
    observed      {sheet: int64 tensor}, the observed ones among them
    positions     {sheet: float64 tensor, a row per neuron} or None
    inferred_positions  [sheet, ...]: sheets whose positions were laid out from the training data
                  (``connectivity.lgn_positions = "inferred"``), absent otherwise
    properties    {sheet: {name: tensor}} (orientation preference, ...) or None
    connectome    {"pre->post": {"post", "pre", "weight": tensor}} or None (only where the model uses it)
    bin_ms        the store's bin size

- config + subset + store -> spec: :func:`make_spec`;
- spec -> fresh model: :func:`build_model`; checkpoint file -> trained model: :func:`model_from_checkpoint`;
- checks on a spec: :func:`check_checkpoint` (before anything is allocated from it),
  :func:`check_store_fits` (a store against a spec), :func:`check_same_architecture` (two specs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from corticalrnn.errors import CorticalRNNError, DataMismatchError


def rebin_hint(bin_ms: float) -> str:
    """The command that makes a store with ``bin_ms`` bins from the extracted spike files."""
    b = int(bin_ms) if float(bin_ms).is_integer() else bin_ms
    return (f"rebin the same extracted spike files: `corticalrnn trim SPIKES/*.h5 -o STORE_{b}ms.zarr "
            f"--bin-ms {b}`")


def check_store_fits(spec: dict[str, Any], subset: Any, store: Any, checkpoint: str | Path,
                     atol_mm: float = 1e-6) -> None:
    """Raise DataMismatchError unless ``store`` can be fed to the model of ``spec`` (a checkpoint's):
    the same bin size (else: the ``trim --bin-ms`` command) and, where both have them, the same
    neuron positions (same ids but other positions: a store of another network, e.g. another synth
    seed or Mozaik run). Missing neuron ids are reported by ``subset.indices``."""
    trained = float(spec["bin_ms"])
    if float(store.bin_ms) != trained:
        raise DataMismatchError(f"{store.path}: {store.bin_ms} ms bins, but {checkpoint} was trained on "
                                f"{trained:g} ms bins; {rebin_hint(trained)}")
    saved = spec.get("positions") or {}
    if not saved:
        return
    here = subset.positions(store)
    inferred = set(spec.get("inferred_positions") or ())  # laid out from data, not the store's own
    for sheet, want in saved.items():
        got = here.get(sheet)
        if got is None or sheet in inferred:
            continue
        want = np.asarray(want.cpu().numpy() if hasattr(want, "cpu") else want, dtype=np.float64)
        got = np.asarray(got, dtype=np.float64)
        if got.shape != want.shape:
            raise DataMismatchError(f"{store.path}: sheet {sheet} positions have shape {got.shape}, "
                                    f"{checkpoint} has {want.shape}")
        bad = ~np.isclose(got, want, rtol=0, atol=atol_mm).all(axis=1)
        if bad.any():
            raise DataMismatchError(
                f"{store.path}: the neuron ids match {checkpoint} but the positions of {int(bad.sum())} of "
                f"{bad.size} {sheet} neurons differ (by up to {np.abs(got - want).max():.3g}): a store of "
                f"another network (another synth seed or Mozaik model)? Evaluate on a store extracted "
                f"from the same network the model was trained on")


def make_spec(mcfg: Any, subset: Any, store: Any) -> dict[str, Any]:
    """What the model *is*, for checkpoints (the layout: this module's docstring)."""
    spec_cfg = mcfg.to_dict()
    spec_cfg["compute"].pop("precision")  # a runtime choice (bf16 on GPU, fp32 on CPU), not architecture
    from corticalrnn.subsets import subset_identity

    positions = subset.positions(store)
    ident = subset_identity(subset, store)
    props = {s: p for s, p in ident.properties.items() if p}
    uses_connectome = (mcfg.connectivity.rule == "simulator"
                       or any(p.mask == "simulator" for p in mcfg.architecture.pathways))
    return {
        "model_config": spec_cfg,
        "sizes": {s: int(n) for s, n in subset.sizes().items()},
        "neuron_ids": {s: torch.as_tensor(sub.modelled) for s, sub in subset.sheets.items()},
        "observed": {s: torch.as_tensor(sub.observed) for s, sub in subset.sheets.items()},
        "positions": {s: torch.as_tensor(np.asarray(p, dtype=np.float64))
                      for s, p in positions.items() if p is not None} or None,
        "properties": {s: {k: torch.as_tensor(v) for k, v in p.items()} for s, p in props.items()} or None,
        # the simulator's connectome among modelled neurons, only where the model uses it (can be large)
        "connectome": _connectome_spec(ident.projections) if uses_connectome else None,
        "bin_ms": float(store.bin_ms),
    }


def infer_spec_lgn_positions(spec: dict[str, Any], mcfg: Any, subset: Any, data: Any, where: str) -> Any:
    """``connectivity.lgn_positions = "inferred"``: put LGN positions laid out from the training batches
    ``data`` (:mod:`corticalrnn.lgn_layout`) into ``spec`` (cortical frame, mm; listed under
    ``inferred_positions`` so they are not compared with a store's own) and return the
    :class:`~corticalrnn.lgn_layout.LGNLayout`."""
    from corticalrnn.lgn_layout import layout_from_windows
    from corticalrnn.sheets import INPUT_SHEETS, V1_SHEETS

    fed = {p.normalized().post for p in mcfg.architecture.pathways if p.normalized().pre in INPUT_SHEETS}
    positions = {s: p.cpu().numpy() for s, p in (spec.get("positions") or {}).items()}
    layout, xy = layout_from_windows(data, subset, positions, [s for s in V1_SHEETS if s in fed], where=where)
    spec["positions"] = dict(spec.get("positions") or {}) | {
        s: torch.as_tensor(v, dtype=torch.float64) for s, v in xy.items()}
    spec["inferred_positions"] = sorted(xy)
    return layout


def _connectome_spec(projections: list[Any]) -> dict[str, dict[str, torch.Tensor]] | None:
    """The subset's connectome for the spec: per ``"pre->post"`` sheet pair the synapses of every
    stored projection between them (``post``, ``pre`` indices in subset order, ``weight``)."""
    out: dict[str, dict[str, list[np.ndarray]]] = {}
    for p in projections:
        d = out.setdefault(f"{p.source}->{p.target}", {"post": [], "pre": [], "weight": []})
        d["post"].append(np.asarray(p.post, np.int64))
        d["pre"].append(np.asarray(p.pre, np.int64))
        d["weight"].append(np.asarray(p.weight, np.float32))
    return {k: {n: torch.as_tensor(np.concatenate(v)) for n, v in d.items()} for k, d in out.items()} or None


def _observed_mask(spec: dict[str, Any]) -> np.ndarray | None:
    """Bool per modelled V1 neuron (canonical order) from the spec's modelled and observed ids."""
    from corticalrnn.sheets import V1_SHEETS

    ids, obs = spec.get("neuron_ids") or {}, spec.get("observed") or {}
    if not all(s in ids for s in V1_SHEETS):
        return None
    return np.concatenate([np.isin(np.asarray(ids[s].cpu()), np.asarray(obs[s].cpu()) if s in obs else [])
                           for s in V1_SHEETS])


def _connectome_arg(spec: dict[str, Any]) -> dict[tuple[str, str], tuple[np.ndarray, ...]] | None:
    if not spec.get("connectome"):
        return None
    return {tuple(k.split("->")): (d["post"].cpu().numpy(), d["pre"].cpu().numpy(), d["weight"].cpu().numpy())
            for k, d in spec["connectome"].items()}


def spec_model_config(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec's model config in today's nested layout: a checkpoint from before the model's sections
    holds flat keys (moved to their sections) and the training keys (``loss``, ``tbptt_steps``,
    ``teacher``: dropped, they are in the checkpoint's training config)."""
    from corticalrnn.model.config import TRAINING_KEYS, migrate_flat

    d, _ = migrate_flat(dict(spec.get("model_config") or {}))
    d.get("compute", {}).pop("precision", None)
    return {k: v for k, v in d.items() if k not in TRAINING_KEYS}


def build_model(spec: dict[str, Any], precision: str = "fp32", initialize: bool = True) -> Any:
    """A fresh CorticalRNN for ``spec`` (weights initialised from the config's seed; ``initialize=False``:
    not scaled to the initial spectral radius, for weights a checkpoint's state replaces)."""
    from corticalrnn.model import CorticalRNN, ModelConfig

    mcfg = ModelConfig.from_dict(spec_model_config(spec), "checkpoint spec")
    mcfg = mcfg.with_values({"compute.precision": precision})
    positions = properties = None
    if spec.get("positions") is not None:
        positions = {s: p.cpu().numpy() for s, p in spec["positions"].items()}
    if spec.get("properties") is not None:
        properties = {s: {k: v.cpu().numpy() for k, v in p.items()} for s, p in spec["properties"].items()}
    return CorticalRNN(mcfg, dict(spec["sizes"]), positions, properties, _connectome_arg(spec),
                       _observed_mask(spec), initialize=initialize)


MAX_SHEET_SIZE = 10_000_000  # neurons of one sheet in a checkpoint's spec (Mozaik's V1: ~10^5)


def model_bytes_lower_bound(spec: dict[str, Any]) -> int:
    """Bytes a model of ``spec`` certainly allocates: one float32 copy of its dense weight matrices
    (V1 x (V1 + input); V1 x input only with ``weight_storage = "sparse"``). The real footprint is a few
    times this; the bound only refuses what cannot fit at all."""
    from corticalrnn.sheets import INPUT_SHEETS, V1_SHEETS, normalize_sheet_name

    sizes = {normalize_sheet_name(k): int(v) for k, v in spec["sizes"].items()}
    n_v1 = sum(v for k, v in sizes.items() if k in V1_SHEETS)
    n_in = sum(v for k, v in sizes.items() if k in INPUT_SHEETS)
    sparse = spec_model_config(spec).get("connectivity", {}).get("storage") == "sparse"
    return 4 * n_v1 * (n_in + (0 if sparse else n_v1))


def _memory_available(device: torch.device) -> tuple[int | None, str]:
    """Total memory of ``device`` in bytes (None: unknown) and its name for messages."""
    import os

    if device.type == "cuda" and torch.cuda.is_available():
        try:
            return int(torch.cuda.mem_get_info(device)[1]), f"GPU memory of {device}"
        except Exception:  # noqa: BLE001 - a query that fails leaves the bound unchecked
            return None, str(device)
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES")), "this machine's memory"
    except (ValueError, OSError, AttributeError):
        return None, "memory"


def check_checkpoint(ck: dict[str, Any], path: str | Path, store: Any = None,
                     device: str | torch.device = "cpu") -> Any:
    """Check what a checkpoint declares before anything is allocated from it; returns its
    :class:`~corticalrnn.subsets.NeuronSubset` (None when it holds none).

    The spec's ``sizes`` must be sheet names with counts in ``0 .. MAX_SHEET_SIZE``, equal to the
    number of its ``neuron_ids`` per sheet and to the checkpoint's subset (same ids); with ``store``,
    the store must hold every one of those neurons, with the same bin size and positions
    (:func:`check_store_fits`); and a lower bound of the model's memory
    (:func:`model_bytes_lower_bound`) must fit ``device``. Raises :class:`DataMismatchError` (or
    ``SchemaError`` for a malformed spec) naming the checkpoint."""
    from corticalrnn.errors import SchemaError
    from corticalrnn.sheets import normalize_sheet_name
    from corticalrnn.subsets import NeuronSubset
    from corticalrnn.tables import human_bytes

    spec = ck.get("spec")
    sizes = spec.get("sizes") if isinstance(spec, dict) else None
    if not isinstance(sizes, dict) or not sizes:
        raise SchemaError(f"{path}: checkpoint spec has no neuron counts ('sizes')")
    declared: dict[str, int] = {}
    for name, n in sizes.items():
        try:
            sheet = normalize_sheet_name(str(name))
        except ValueError as exc:
            raise SchemaError(f"{path}: checkpoint spec: {exc}") from None
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= int(n) <= MAX_SHEET_SIZE:
            raise SchemaError(f"{path}: checkpoint spec declares {n!r} neurons for {sheet} (expected an "
                              f"integer 0 .. {MAX_SHEET_SIZE:,})")
        declared[sheet] = int(n)
    ids = spec.get("neuron_ids") or {}
    for sheet, n in declared.items():
        got = ids.get(sheet)
        count = None if got is None else int(np.asarray(got.cpu() if hasattr(got, "cpu") else got).size)
        if count != n:
            raise DataMismatchError(f"{path}: checkpoint spec declares {n:,} {sheet} neurons but lists "
                                    f"{'no' if count is None else f'{count:,}'} neuron ids for it")
    subset = None
    if ck.get("subset") is not None:
        subset = NeuronSubset.from_json_dict(ck["subset"], f"{path} (subset)")
        if subset.sizes() != declared:
            raise DataMismatchError(f"{path}: the model's declared sizes {declared} differ from its neuron "
                                    f"subset's {subset.sizes()}")
        for sheet, sub in subset.sheets.items():
            spec_ids = np.asarray(ids[sheet].cpu() if hasattr(ids[sheet], "cpu") else ids[sheet])
            if not np.array_equal(spec_ids, np.asarray(sub.modelled)):
                raise DataMismatchError(f"{path}: the model's {sheet} neuron ids differ from its subset's")
    if store is not None:
        if subset is not None:
            subset.indices(store, "modelled", name=str(store.path))  # names missing sheets/ids
            check_store_fits(spec, subset, store, path)
        else:
            for sheet in declared:
                want = np.asarray(ids[sheet].cpu() if hasattr(ids[sheet], "cpu") else ids[sheet])
                have = store.neuron_ids(sheet) if sheet in store.sheets else np.zeros(0, np.int64)
                missing = want[~np.isin(want, have)]
                if missing.size:
                    raise DataMismatchError(f"{store.path}: lacks {missing.size:,} of the {sheet} neurons "
                                            f"of {path} (e.g. {missing[:5].tolist()})")
    need = model_bytes_lower_bound(spec)
    have_bytes, where = _memory_available(torch.device(device))
    if have_bytes is not None and need > have_bytes:
        raise DataMismatchError(f"{path}: the model it declares ({sum(declared.values()):,} neurons) needs "
                                f"at least {human_bytes(need)}, more than the {human_bytes(have_bytes)} "
                                f"of {where}")
    return subset


def model_from_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                          weights: str = "auto", store: Any = None,
                          ck: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """Rebuild the trained model of a checkpoint (EMA weights when present unless ``weights="raw"``).

    Before building, :func:`check_checkpoint` checks the declared sizes (against ``store`` too, when
    given) and a memory bound. ``ck``: the checkpoint already read with ``load_checkpoint(path)``.
    Returns ``(model, checkpoint_dict)``; the model is in eval mode on ``device``.
    """
    from corticalrnn.train.checkpoint import load_checkpoint, load_state_strict

    ck = load_checkpoint(path) if ck is None else ck
    device = torch.device(device)
    check_checkpoint(ck, path, store, device)
    model = build_model(ck["spec"], "fp32" if device.type == "cpu" else ck.get("precision", "fp32"),
                        initialize=False)  # every weight comes from the state below
    state = ck["model"]
    if weights == "auto" and ck.get("ema") is not None:
        state = {k[len("module."):]: v for k, v in ck["ema"].items() if k.startswith("module.")}
    load_state_strict(model, state, path)
    return model.to(device).eval(), ck


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): d}


def _complete_model_config(spec: dict[str, Any]) -> dict[str, Any]:
    """:func:`spec_model_config` with every key a checkpoint from before it was added lacks set to its
    default (and values normalised as the config stores them); as stored when it does not parse."""
    from corticalrnn.model import ModelConfig

    d = spec_model_config(spec)
    try:
        full = ModelConfig.from_dict(d, "checkpoint spec").to_dict()
    except CorticalRNNError:
        return d
    full["compute"].pop("precision", None)
    return full


def spec_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Keys where two model specs differ (tensors compared by value; model configs in today's layout,
    :func:`spec_model_config`); empty when compatible."""
    fa, fb = (_flat({**s, "model_config": _complete_model_config(s)}) for s in (a, b))
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
