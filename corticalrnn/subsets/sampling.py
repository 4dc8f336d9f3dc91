"""How neurons are drawn: uniformly at random, or spread evenly over the cortical sheet.

Torch-free. Selection methods (:data:`METHODS`), usable for both stages of a subset (modelled
fraction of each sheet, observed fraction of the modelled neurons):

``random``
    uniform random sample without replacement.
``spatial``
    spatially balanced sample over the cortical sheet (x, y): systematic sampling along a Hilbert
    curve through the (randomly rotated) positions, see :func:`select_spatial`. Every neuron keeps
    inclusion probability exactly k/N, but the chosen neurons tile space far more evenly than a
    random sample (measured on 3,000 uniform neurons, k = 100: count variance over a 5 x 5 grid
    0.97 vs 3.55, largest distance to the nearest chosen neuron 0.47 vs 0.67 of random); exact
    ``k``; O(N log N), 0.03 s for 37,500 neurons.
``explicit``
    given id lists (nothing is drawn; see :func:`corticalrnn.subsets.make_subset`).
"""

from __future__ import annotations

import numpy as np

from corticalrnn.errors import CorticalRNNError, DataMismatchError
from corticalrnn.sheets import surface_xy

METHODS: tuple[str, ...] = ("random", "spatial", "explicit")
_HILBERT_ORDER = 16  # 65536 x 65536 grid over the bounding box of the positions


def hilbert_index(xy: np.ndarray, order: int = _HILBERT_ORDER) -> np.ndarray:
    """Position of each 2-D point along a Hilbert curve through the points' bounding box.

    ``xy`` is ``[N, 2]`` (floats); returns int64 ``[N]``. Points closer along the curve are close
    in space, which is what the spatial stratification relies on.
    """
    xy = np.asarray(xy, dtype=np.float64)
    n = 1 << order
    lo = xy.min(axis=0)
    span = np.maximum(xy.max(axis=0) - lo, np.finfo(np.float64).tiny)
    q = np.minimum(((xy - lo) / span * n).astype(np.int64), n - 1)
    x, y = q[:, 0].copy(), q[:, 1].copy()
    d = np.zeros(len(xy), dtype=np.int64)
    s = n // 2
    while s > 0:
        rx = (x & s) > 0
        ry = (y & s) > 0
        d += s * s * ((3 * rx.astype(np.int64)) ^ ry.astype(np.int64))
        flip = ~ry & rx
        x = np.where(flip, n - 1 - x, x)
        y = np.where(flip, n - 1 - y, y)
        swap = ~ry
        x, y = np.where(swap, y, x), np.where(swap, x, y)
        s //= 2
    return d


def select_random(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` of ``n`` row indices uniformly at random, sorted."""
    return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)


def select_spatial(positions: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` row indices spread evenly over the (x, y) plane, sorted.

    Systematic sampling along a Hilbert curve: the plane is rotated by a random angle, the
    neurons are ordered along a Hilbert curve through their rotated positions, and every
    ``n/k``-th neuron is taken from a random start. Consecutive picks are a stratum's length
    apart along a space-filling curve, so they tile space evenly; every neuron has inclusion
    probability exactly ``k/n`` (no boundary bias, unlike farthest-point sampling); the random
    rotation makes the possible samples a continuum rather than ``n/k`` shifts. Only the first
    two columns of ``positions`` are used (the cortical sheet is 2-D; a third column is depth).
    """
    positions = np.asarray(positions, dtype=np.float64)
    n = len(positions)
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    if k >= n:
        return np.arange(n, dtype=np.int64)
    theta = rng.uniform(0.0, 2.0 * np.pi)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    keys = hilbert_index(surface_xy(positions) @ rot.T)
    order = np.lexsort((rng.random(n), keys))  # random tie-break for neurons in one curve cell
    step = n / k
    picks = np.floor(rng.random() * step + step * np.arange(k)).astype(np.int64)
    return np.sort(order[picks])


def _count(fraction: float, n: int, what: str) -> int:
    if not 0.0 <= fraction <= 1.0:
        raise CorticalRNNError(f"{what} must be in [0, 1], got {fraction}")
    if fraction == 0.0 or n == 0:
        return 0
    return int(min(n, max(1, round(fraction * n))))


def _select(
    method: str,
    k: int,
    ids: np.ndarray,
    positions: np.ndarray | None,
    rng: np.random.Generator,
    where: str,
) -> np.ndarray:
    """Row indices (into ``ids``) of ``k`` neurons chosen by ``method``."""
    if method == "random":
        return select_random(len(ids), k, rng)
    if method == "spatial":
        if positions is None:
            raise CorticalRNNError(f"{where}: spatial selection needs neuron positions, which it lacks")
        if positions.ndim != 2 or positions.shape[0] != len(ids) or positions.shape[1] < 2:
            raise DataMismatchError(
                f"{where}: positions have shape {positions.shape}, expected ({len(ids)}, D >= 2)"
            )
        return select_spatial(positions, k, rng)
    raise CorticalRNNError(f"{where}: method {method!r} cannot draw neurons (explicit needs id lists)")
