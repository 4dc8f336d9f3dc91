"""`corticalrnn import-npz`: the earlier thesis ``.npz`` layout -> a ``corticalrnn.windows`` store.

Input layout (``DIR``)::

    <split>/<SHEET>/spikes_<image>.npz           scipy.sparse CSR, neurons x bins, integer counts
    <split>/<SHEET>/spikes_trial_<t>_<image>.npz  same, one file per trial (trial 0 when absent)
    neuron_ids/neuron_ids_<SHEET>_<any>.npy        Mozaik (NEST) id of each row
    pos_ori_phase_dictionary.npz                   optional: "<SHEET>.x", ".y", ".ori", ".phase"

Sheet folder names use the thesis spelling (``V1_Exc_L23``) and are normalised to Mozaik names.
Every split must hold the same sheets and every sheet of a split the same (image, trial) files;
all matrices must be ``len(neuron_ids) x n_bins`` with one ``n_bins``. The split name is kept per
window (``windows/split``). Windows are ordered by split (sorted), image, trial.

The bin size is given (``--bin-ms``) or inferred as ``710 // n_bins`` (thesis windows: the 560 ms
image and the following 150 ms blank, cut to whole bins: 35 bins -> 20 ms); the store records
whether it was inferred. Provenance: one source per split, whose ``sha256`` is the digest of the
sorted lines ``<relative path> <sha256 of file>`` of all its files (``n_files`` recorded).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from tqdm import tqdm

from corticalrnn.atomic import temporary_name
from corticalrnn.binning import BinnedCSR, validate_bin_ms
from corticalrnn.errors import CorticalRNNError, DataMismatchError
from corticalrnn.locking import exclusive_lock
from corticalrnn.sheets import file_sheet_name, normalize_sheet_name, sort_sheets
from corticalrnn.store import SheetMeta, StoreMeta, StoreWriter, WindowBlock, sha256_file

THESIS_WINDOW_MS = 710
FILE_RE = re.compile(r"^spikes_(?:trial_(?P<trial>\d+)_)?(?P<image>\d+)\.npz$")


@dataclass(frozen=True)
class ImportConfig:
    """Options of an import (see module docstring)."""

    bin_ms: int | None = None
    positions: Path | None = None  # default: DIR/pos_ori_phase_dictionary.npz when present
    connections: Path | None = None  # a spike file (extract, v2) of the same network: its connectome
    overwrite: bool = False
    block_windows: int = 64
    progress: bool = True


@dataclass
class ImportPlan:
    """What was found in the folder: per split, sheet -> {(image, trial): file}; neuron ids per sheet."""

    root: Path
    sheets: list[str]
    files: dict[str, dict[str, dict[tuple[int, int], Path]]] = field(default_factory=dict)
    neuron_ids: dict[str, np.ndarray] = field(default_factory=dict)

    def keys(self, split: str) -> list[tuple[int, int]]:
        return sorted(self.files[split][self.sheets[0]])


def scan_folder(root: str | Path) -> ImportPlan:
    """Find splits, sheets, files and neuron ids; raise on missing sheets/files or bad names."""
    root = Path(root)
    if not root.is_dir():
        raise CorticalRNNError(f"{root}: not a folder")
    files: dict[str, dict[str, dict[tuple[int, int], Path]]] = {}
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "neuron_ids"):
        for sheet_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            npz = sorted(sheet_dir.glob("spikes_*.npz"))
            if not npz:
                continue
            try:
                sheet = normalize_sheet_name(sheet_dir.name)
            except ValueError as exc:
                raise DataMismatchError(f"{sheet_dir}: {exc}") from None
            entries: dict[tuple[int, int], Path] = {}
            for f in npz:
                m = FILE_RE.match(f.name)
                if m is None:
                    raise DataMismatchError(f"{f}: file name is not spikes_[trial_<t>_]<image>.npz")
                entries[(int(m["image"]), int(m["trial"] or 0))] = f
            files.setdefault(split_dir.name, {})[sheet] = entries
    if not files:
        raise DataMismatchError(f"{root}: no <split>/<SHEET>/spikes_*.npz files found")
    all_sheets = sort_sheets(sorted({s for split in files.values() for s in split}))
    for split, by_sheet in files.items():
        for sheet in all_sheets:
            if sheet not in by_sheet:
                raise DataMismatchError(
                    f"{root / split}: sheet {sheet} is missing (folder {file_sheet_name(sheet)}/ "
                    f"has no spikes_*.npz; other splits have it)"
                )
        ref_sheet = all_sheets[0]
        ref = set(by_sheet[ref_sheet])
        for sheet in all_sheets[1:]:
            keys = set(by_sheet[sheet])
            for img, trial in sorted(ref ^ keys)[:1]:
                has, lacks = (ref_sheet, sheet) if (img, trial) in ref else (sheet, ref_sheet)
                raise DataMismatchError(
                    f"{root / split}: image {img} trial {trial} exists for {has} but its file is "
                    f"missing for {lacks} (in {root / split / file_sheet_name(lacks)})"
                )
    plan = ImportPlan(root=root, sheets=all_sheets, files=files)
    id_dir = root / "neuron_ids"
    for sheet in all_sheets:
        cands = sorted(id_dir.glob(f"neuron_ids_{file_sheet_name(sheet)}_*.npy"))
        if sheet != file_sheet_name(sheet):
            cands += sorted(id_dir.glob(f"neuron_ids_{sheet.replace('/', '')}_*.npy"))
        if not cands:
            raise DataMismatchError(
                f"{id_dir}: no neuron_ids_{file_sheet_name(sheet)}_*.npy for sheet {sheet}"
            )
        ids = _load_ids(cands[0])
        for other in cands[1:]:
            if not np.array_equal(_load_ids(other), ids):
                raise DataMismatchError(f"{other}: neuron ids differ from {cands[0]}")
        plan.neuron_ids[sheet] = ids
    return plan


def _load_ids(path: Path) -> np.ndarray:
    """Neuron ids from a ``.npy``: integers (or integral floats) only, no pickled objects."""
    try:
        raw = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataMismatchError(f"{path}: not a numeric .npy array of neuron ids ({exc})") from None
    if raw.dtype.kind not in "iuf":
        raise DataMismatchError(f"{path}: neuron ids must be integers, got dtype {raw.dtype}")
    if raw.dtype.kind == "f" and not (np.all(np.isfinite(raw)) and np.all(raw == np.round(raw))):
        raise DataMismatchError(f"{path}: neuron ids must be integers (found non-integral values)")
    return raw.astype(np.int64).ravel()


def infer_bin_ms(n_bins: int, where: str) -> int:
    """Thesis windows are 710 ms cut to whole bins: ``710 // n_bins`` (35 bins -> 20 ms)."""
    b = THESIS_WINDOW_MS // n_bins if n_bins else 0
    if b < 1:
        raise CorticalRNNError(f"{where}: cannot infer the bin size from {n_bins} bins; give --bin-ms")
    return b


def _load_matrix(path: Path, hasher_lines: list[str], root: Path) -> sp.csr_matrix:
    raw = path.read_bytes()
    hasher_lines.append(f"{path.relative_to(root).as_posix()} {hashlib.sha256(raw).hexdigest()}")
    try:
        m = sp.load_npz(io.BytesIO(raw))
    except Exception as exc:
        raise DataMismatchError(f"{path}: not a scipy.sparse .npz matrix ({exc})") from None
    m = sp.csr_matrix(m)
    m.sum_duplicates()  # also sorts indices
    m.eliminate_zeros()
    data = m.data
    if data.size and (
        not np.all(np.isfinite(data)) or np.any(data < 0) or np.any(np.asarray(data) != np.round(data))
    ):
        raise DataMismatchError(f"{path}: counts must be non-negative integers")
    if data.size and data.max() >= 1 << 16:
        raise DataMismatchError(f"{path}: a bin holds {data.max()} spikes (limit 65535)")
    return m


def _positions(path: Path | None, plan: ImportPlan) -> dict[str, dict[str, np.ndarray]]:
    """sheet -> {"positions": [N, D], "ori": [N], "phase": [N]} from the thesis dictionary."""
    if path is None:
        return {}
    try:
        d = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataMismatchError(f"{path}: cannot read positions ({exc})") from None
    out: dict[str, dict[str, np.ndarray]] = {}
    for sheet in plan.sheets:
        key = file_sheet_name(sheet)
        n = plan.neuron_ids[sheet].size
        entry: dict[str, np.ndarray] = {}
        coords = [d[f"{key}.{c}"] for c in ("x", "y", "z") if f"{key}.{c}" in d.files]
        for name, values in [("positions", np.column_stack(coords) if coords else None)] + [
            (p, d[f"{key}.{p}"] if f"{key}.{p}" in d.files else None) for p in ("ori", "phase")
        ]:
            if values is None:
                continue
            if values.shape[0] != n:
                raise DataMismatchError(
                    f"{path}: {key}.{name} has {values.shape[0]} entries, sheet has {n} neurons"
                )
            entry[name] = np.asarray(values, dtype=np.float64)
        if entry:
            out[sheet] = entry
    return out


def import_npz(root: str | Path, out: str | Path, config: ImportConfig | None = None) -> Path:
    """Import a thesis folder into a new store at ``out`` (built under ``out.tmp``, then renamed).

    Holds ``out``'s write lock throughout; rerunning a finished import of the same files is a no-op.
    """
    with exclusive_lock(out):
        return _import_npz(Path(root), Path(out), config or ImportConfig())


def _split_digest(plan: ImportPlan, split: str, root: Path) -> str:
    """The source digest of one split (as recorded by an import), from the files alone."""
    lines = [
        f"{f.relative_to(root).as_posix()} {sha256_file(f)}"
        for sheet in plan.sheets
        for f in plan.files[split][sheet].values()
    ]
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()


def _finished(out: Path, root: Path, plan: ImportPlan, bin_ms: int | None, config: ImportConfig) -> bool:
    from corticalrnn.store import open_store

    try:
        store = open_store(out)
    except CorticalRNNError:
        return False
    if store.window_def.get("origin") != "import-npz" or (bin_ms is not None and store.bin_ms != bin_ms):
        return False
    recorded = sorted(str(s.get("sha256")) for s in store.sources)
    if recorded != sorted(_split_digest(plan, split, root) for split in plan.files):
        return False
    if config.progress:
        print(f"import-npz: {out} already holds {root}; nothing to do", file=sys.stderr)
    return True


def _import_npz(root: Path, out: Path, config: ImportConfig) -> Path:
    plan = scan_folder(root)
    if out.exists():
        if not config.overwrite:
            if _finished(out, root, plan, config.bin_ms, config):
                return out
            raise CorticalRNNError(
                f"{out}: already exists with other contents (use --overwrite to replace it)"
            )
    splits = sorted(plan.files)
    first = next(iter(plan.files[splits[0]][plan.sheets[0]].values()))
    n_bins = _load_matrix(first, [], root).shape[1]
    bin_ms = validate_bin_ms(config.bin_ms) if config.bin_ms is not None else infer_bin_ms(n_bins, str(first))
    pos_path = config.positions
    if pos_path is None and (root / "pos_ori_phase_dictionary.npz").exists():
        pos_path = root / "pos_ori_phase_dictionary.npz"
    extra = _positions(pos_path, plan)
    sheets_meta = [
        SheetMeta(
            s,
            plan.neuron_ids[s],
            positions=extra.get(s, {}).get("positions"),
            properties={k: v for k, v in extra.get(s, {}).items() if k != "positions"},
        )
        for s in plan.sheets
    ]
    window = {
        "origin": "import-npz",
        "t0_ms": 0.0,
        "length_ms": n_bins * bin_ms,
        "bin_ms_inferred": config.bin_ms is None,
        "source_layout": "thesis npz: image onset, image and following blank",
    }
    tmp = temporary_name(out)
    if tmp.exists():
        shutil.rmtree(tmp)
    writer = StoreWriter.create(tmp, StoreMeta(bin_ms, n_bins, window, sheets_meta))
    total = sum(len(plan.keys(s)) for s in splits)
    bar = tqdm(total=total, desc="import-npz", unit="win", file=sys.stderr, disable=not config.progress)
    try:
        for split in splits:
            keys = plan.keys(split)
            lines: list[str] = []
            src = writer.add_source(path=str((root / split).resolve()), kind="npz-folder", sha256="")
            for b0 in range(0, len(keys), config.block_windows):
                chunk = keys[b0 : b0 + config.block_windows]
                events: dict[str, BinnedCSR] = {}
                for sheet in plan.sheets:
                    n = plan.neuron_ids[sheet].size
                    mats = []
                    for key in chunk:
                        f = plan.files[split][sheet][key]
                        m = _load_matrix(f, lines, root)
                        if m.shape != (n, n_bins):
                            raise DataMismatchError(
                                f"{f}: matrix is {m.shape[0]} x {m.shape[1]}, expected {n} neurons "
                                f"(neuron_ids) x {n_bins} bins"
                            )
                        mats.append(m)
                    stacked = sp.vstack(mats, format="csr")
                    events[sheet] = BinnedCSR(
                        stacked.indptr.astype(np.int64),
                        stacked.indices.astype(np.int32),
                        stacked.data.astype(np.int32),
                        n_bins,
                    )
                writer.append(
                    WindowBlock(
                        image_id=np.array([k[0] for k in chunk]),
                        trial=np.array([k[1] for k in chunk]),
                        events=events,
                        split=split,
                    ),
                    src,
                )
                bar.update(len(chunk))
            writer.sources[src]["sha256"] = hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()
            writer.sources[src]["n_files"] = len(lines)
            writer.commit()
        if config.connections is not None:
            writer.write_connections(connections_by_id(config.connections, plan.neuron_ids))
    except BaseException:
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    bar.close()
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def connections_by_id(
    path: Path, neuron_ids: dict[str, np.ndarray], chunk: int = 1 << 20
) -> Iterator[tuple[str, str, str, Iterator[dict[str, np.ndarray]], Callable[[], int]]]:
    """The connectome of a spike file, re-indexed onto ``neuron_ids`` (matched by neuron id).

    Synapses of neurons absent from ``neuron_ids`` are dropped (added to ``n_dropped``); projections
    of sheets absent from it are left out. For :meth:`StoreWriter.write_connections`.
    """
    from extract.spikefile import open_spikefile

    with open_spikefile(path) as sf:
        if not sf.connections:
            raise DataMismatchError(
                f"{path}: holds no connectome (extract it from a datastore with Connections)"
            )
        lookup: dict[str, np.ndarray] = {}
        for sheet in sf.sheets:
            if sheet not in neuron_ids:
                continue
            file_ids = sf.neuron_ids(sheet)
            pos = {int(n): i for i, n in enumerate(neuron_ids[sheet])}
            lookup[sheet] = np.array([pos.get(int(n), -1) for n in file_ids], dtype=np.int64)
        for c in sf.connections:
            if c.source not in lookup or c.target not in lookup:
                continue
            dropped = [c.n_dropped]
            src, tgt = lookup[c.source], lookup[c.target]
            chunks = _remap_chunks(sf, c.name, c.n_synapses, src, tgt, chunk, dropped)
            yield c.name, c.source, c.target, chunks, lambda d=dropped: d[0]


def _remap_chunks(
    sf: Any, name: str, n: int, src: np.ndarray, tgt: np.ndarray, chunk: int, dropped: list[int]
) -> Iterator[dict[str, np.ndarray]]:
    for a in range(0, n, chunk):
        d = sf.read_connections(name, a, min(n, a + chunk))
        pre, post = src[d["pre"]], tgt[d["post"]]
        keep = (pre >= 0) & (post >= 0)
        dropped[0] += int(keep.size - keep.sum())
        yield {"pre": pre[keep], "post": post[keep], "weight": d["weight"][keep], "delay": d["delay"][keep]}


# ---------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "folder", type=Path, help="thesis folder with <split>/<SHEET>/spikes_*.npz and neuron_ids/"
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="store to create (STORE.zarr)")
    parser.add_argument(
        "--bin-ms", type=int, default=None, help="bin size in ms (default: inferred, 710 // n_bins)"
    )
    parser.add_argument(
        "--positions",
        type=Path,
        default=None,
        help="pos_ori_phase_dictionary.npz (default: FOLDER/ if present)",
    )
    parser.add_argument(
        "--connections",
        type=Path,
        default=None,
        help="spike file (corticalrnn extract, v2) of the same network whose connectome to import",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output store")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    cfg = ImportConfig(
        bin_ms=args.bin_ms,
        positions=args.positions,
        connections=args.connections,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    out = import_npz(args.folder, args.output, cfg)
    from corticalrnn.store import open_store

    store = open_store(out)
    t = store.windows
    per_split = ", ".join(f"{s}: {int((t.split == s).sum())}" for s in store.splits if s)
    print(
        f"wrote {out}: {len(store)} windows ({per_split}), "
        f"{store.n_bins} bins of {store.bin_ms} ms, sheets {', '.join(store.sheets)}, {store.n_events} events"
    )
    return 0
