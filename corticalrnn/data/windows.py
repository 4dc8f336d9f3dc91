"""Window candidates of a store: which windows to train, validate and test on, and trial grouping.

- :func:`select_windows` picks window indices by image, trial, split and padding.
- :func:`test_window_candidates`: the windows usable for testing a run (never an image it trained or
  validated on); :func:`group_test_windows` arranges them ``[images, trials]``, dropping images with
  fewer trials than the most common count.
- :func:`group_trials` (every image with the same trial count, else an error) / :func:`read_grouped`
  arrange repeated trials as ``[images, trials, T, N]``.

Both groupings order the windows of an image by trial (ties: in the given order) through one helper,
:func:`windows_by_image`. Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from corticalrnn.errors import CorticalRNNError, DataMismatchError
from corticalrnn.store import WindowStore


def select_windows(
    store: WindowStore,
    images: Sequence[int] | np.ndarray | None = None,
    trials: Sequence[int] | np.ndarray | None = None,
    split: str | Sequence[str] | None = None,
    include_padded: bool = False,
) -> np.ndarray:
    """Indices (ascending) of the windows matching all given criteria; padded windows excluded by default."""
    t = store.windows
    keep = np.ones(len(t), dtype=bool)
    if images is not None:
        keep &= np.isin(t.image_id, np.asarray(images, dtype=np.int64))
    if trials is not None:
        keep &= np.isin(t.trial, np.asarray(trials, dtype=np.int64))
    if split is not None:
        names = [split] if isinstance(split, str) else list(split)
        unknown = [s for s in names if s not in store.splits]
        if unknown:
            raise CorticalRNNError(
                f"{store.path}: no split {unknown} (splits: {[s for s in store.splits if s]})"
            )
        keep &= np.isin(t.split.astype(str), names)
    if not include_padded:
        keep &= ~t.padded
    return np.flatnonzero(keep)


def windows_by_image(image_ids: np.ndarray, trials: np.ndarray, windows: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(images, counts, ordered)``: the images of ``windows`` (ascending), how many of the windows show
    each, and the windows ordered by image, then trial (a stable sort: ties keep their given order), so
    that image ``images[i]``'s windows are ``ordered[sum(counts[:i]) : sum(counts[:i + 1])]``."""
    w = np.asarray(windows, dtype=np.int64).ravel()
    img, trial = image_ids[w], trials[w]
    order = np.lexsort((trial, img))
    images, counts = np.unique(img[order], return_counts=True)
    return images, counts, w[order]


def test_window_candidates(store: Any, split: dict[str, Any] | None) -> np.ndarray:
    """Window indices usable for testing: never an image of the run's training or validation split;
    when the store marks windows ``test``, only those."""
    table = store.windows
    image_ids = np.asarray(table.image_id, dtype=np.int64)
    marked = np.asarray(table.split) == "test"
    ok = marked.copy() if marked.any() else np.ones(len(image_ids), bool)
    ok &= ~np.asarray(table.padded, dtype=bool)
    if split is not None:
        seen = np.concatenate([np.asarray(split.get("train", []), np.int64),
                               np.asarray(split.get("validation", []), np.int64)])
        ok &= ~np.isin(image_ids, seen)
    cand = np.flatnonzero(ok)
    if cand.size == 0:
        raise DataMismatchError(f"{store.path}: no test windows: every window shows an image the model "
                                f"was trained or validated on")
    return cand


test_window_candidates.__test__ = False  # type: ignore[attr-defined]  # not a pytest test when imported


def group_test_windows(image_ids: np.ndarray, trials: np.ndarray, candidates: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Group the candidate windows by image into a rectangular ``[images, trials]`` index table:
    ``(images, trials, windows, notes)``.

    Images with fewer trials than the most common count are dropped (with a note) so that every
    image has the same number of trials, as the trial metrics need.
    """
    notes: list[str] = []
    images, counts, ordered = windows_by_image(image_ids, trials, candidates)
    k = int(np.bincount(counts).argmax())
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    keep = counts >= k
    dropped = [int(i) for i in images[~keep]]
    if dropped:
        notes.append(f"dropped images {dropped} with fewer than {k} trials")
    if np.any(counts[keep] > k):
        notes.append(f"used the first {k} trials of images with more")
    win = (starts[keep][:, None] + np.arange(k)[None, :]).astype(np.int64)
    win = ordered[win].reshape(int(keep.sum()), k)
    return images[keep].astype(np.int64), trials[win], win, notes


group_test_windows.__test__ = False  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------
# repeated trials


@dataclass(frozen=True)
class TrialGroups:
    """Repeated trials: ``windows[i, r]`` is the window of image ``images[i]``, trial ``trials[i, r]``."""

    images: np.ndarray  # int64 [I]
    trials: np.ndarray  # int64 [I, R]
    windows: np.ndarray  # int64 [I, R]


def group_trials(store: WindowStore, windows: Sequence[int] | np.ndarray | None = None) -> TrialGroups:
    """Group windows by image (ascending), trials ascending; every image needs the same trial count."""
    w = select_windows(store) if windows is None else np.asarray(windows, dtype=np.int64).ravel()
    t = store.windows
    if w.size == 0:
        raise DataMismatchError(f"{store.path}: no windows to group")
    images, counts, w = windows_by_image(t.image_id, t.trial, w)
    if np.any(counts != counts[0]):
        bad = {int(i): int(c) for i, c in zip(images, counts) if c != counts[0]}
        raise DataMismatchError(
            f"{store.path}: images have different numbers of trials ({int(counts[0])} for image "
            f"{int(images[0])}, but {bad}); select windows with equal trials"
        )
    R = int(counts[0])
    return TrialGroups(images, t.trial[w].reshape(-1, R), w.reshape(-1, R))


def read_grouped(
    store: WindowStore,
    sheet: str,
    groups: TrialGroups,
    neurons: np.ndarray | None = None,
    dtype: np.dtype | type = np.float32,
) -> np.ndarray:
    """Counts ``[images, trials, T, n]`` of one sheet for the grouped windows."""
    n_images, n_trials = groups.windows.shape
    dense = store.read(sheet, groups.windows.ravel(), neurons, dtype=dtype)
    return dense.reshape(n_images, n_trials, *dense.shape[1:])
