"""LGN positions inferred from activity (``connectivity.lgn_positions = "inferred"``), for data that
records none (the thesis .npz layout), so the identity-conditioned Gabor input still applies.

Two steps, both on the training windows' residuals (counts minus their mean time course over windows,
z-scored per cell, so the stimulus-locked course shared by all cells does not dominate):

1. **Layout from LGN-LGN correlations.** Nearby LGN cells see the same pixels, so their residuals
   correlate (ON and OFF cells at one place anti-correlate: OFF cells' signs are flipped). Each cell is
   joined to its ``neighbours`` most correlated cells (edge length ``sqrt(2 (1 - r))``, plus a
   spanning tree so poor stretches stay joined); landmark Isomap (shortest paths from ``landmarks``
   cells, classical MDS, triangulation) lays the graph out in ``dims`` coordinates. Where few edges
   join ON and OFF cells (the thesis sample: 0.2 % of edges; the generator: 57 %) each sign is laid
   out on its own, since a few bridges would fold one layout onto the other.
2. **Position from observed V1 units.** An observed unit receiving LGN input correlates most with the
   LGN cells of its receptive field; the correlation-weighted mean layout coordinate of its
   ``anchor_inputs`` most correlated cells is its RF centre in layout coordinates. Least squares from
   those centres to the units' cortical positions (with as many layout coordinates as predict
   held-out units best, leave-one-out) gives the linear map, so the positions come out in the units'
   own cortical frame (mm), orientation and handedness fixed by the data rather than guessed; the
   Gabor input's learned retinotopic map then starts at the identity.

Measured on the LSV1M-like generator's training store (578 LGN cells; 12 / 38 observed L4 units at
10 / 30 % observed): median position error 0.5 grid steps (Gabor period ~7), anchors' R^2 0.96-0.98;
hidden L4 units with the Gabor input on these positions reach trial-average r 0.44-0.49 against 0.50
with the store's own positions (population baseline 0.29-0.34). On the thesis sample (14,400 LGN
cells, 68 training windows, 468 observed L4 units of a 10 % subset) the anchors' R^2 is only
0.13-0.26: its L4 units' spikes correlate weakly with single LGN cells (top correlations ~0.1, noise
s.d. 0.02), so the frame is rough there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from corticalrnn.errors import DataMismatchError

MIN_ANCHORS = 6  # observed units needed to fix a layout's frame
MIN_CROSS_SIGN = 0.05  # fraction of graph edges between ON and OFF cells needed to lay them out together


@dataclass(frozen=True)
class LayoutConfig:
    # graph degree of step 1; median layout error on the generator's training store 0.5 grid steps at 6,
    # 0.6-0.8 at 4 and 10, 0.7-1.0 at 14
    neighbours: int = 6
    anchor_inputs: int = 20  # LGN cells averaged per observed unit in step 2
    dims: int = 6  # layout coordinates at most (the anchors' leave-one-out fit picks how many)
    landmarks: int = 200  # Isomap landmarks (farthest-point choice)
    seed: int = 0  # first landmark


@dataclass(frozen=True)
class LGNLayout:
    """Inferred LGN positions and how well the data determined them."""

    xy: np.ndarray  # [N_lgn, 2] in the anchors' cortical frame (mm)
    polarity: np.ndarray  # [N_lgn] +1 ON, -1 OFF
    anchor_r2: np.ndarray  # [components, 2] R^2 of the anchors' positions from their RF centres (x, y)
    n_anchors: int
    n_placed: int  # LGN cells laid out by the graph; the rest (silent, small components) sit at the mean
    # per component laid out: the anchors' positions and the positions their RF centres map to [n, 2]
    anchor_xy: tuple[np.ndarray, ...] = ()
    anchor_fit: tuple[np.ndarray, ...] = ()

    def summary(self) -> str:
        r2 = ", ".join(f"x {a:.2f} y {b:.2f}" for a, b in self.anchor_r2)
        return (f"LGN positions inferred from activity: {self.n_placed} of {len(self.xy)} cells laid out in "
                f"{len(self.anchor_r2)} part(s), {self.n_anchors} observed units fix the frame (R^2 {r2})")


def _residuals(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[W, T, n]`` counts -> ``[W*T, n]`` float64 z-scores about each bin's mean over windows, and
    which cells vary at all."""
    x = np.asarray(x, np.float64)
    r = (x - x.mean(0, keepdims=True)).reshape(-1, x.shape[-1])
    r -= r.mean(0)
    sd = r.std(0)
    ok = sd > 0
    r[:, ok] /= sd[ok]
    r[:, ~ok] = 0.0
    return r, ok


def _knn_graph(z: np.ndarray, sign: np.ndarray, k: int, chunk: int = 2048) -> Any:
    """Symmetric graph (scipy CSR of edge lengths ``sqrt(2 (1 - c))``) joining each cell to the ``k`` cells
    of highest signed correlation ``c = sign_i sign_j corr_ij``, plus the minimum spanning tree of the
    ``3 k``-nearest graph among cells of one sign, so that stretches of poor data a small ``k`` leaves
    apart stay joined through their best-correlated pairs. ON and OFF cells stay joined only where at
    least ``MIN_CROSS_SIGN`` of the edges join them (57 % on the generator, whose ON and OFF cells at
    one place anti-correlate strongly; 0.2 % on the thesis sample): a few bridges would fold one sign's
    layout onto the other's, so then each sign is laid out and framed on its own."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import minimum_spanning_tree

    n, s = z.shape[1], len(z)
    wide = min(3 * k, n - 1)
    idx = np.empty((n, wide), np.int64)
    val = np.empty((n, wide))
    for a in range(0, n, chunk):
        c = (z[:, a:a + chunk].T @ z) / s * sign[a:a + chunk, None] * sign[None]
        c[np.arange(c.shape[0]), np.arange(a, a + c.shape[0])] = -np.inf
        part = np.argpartition(-c, wide - 1, axis=1)[:, :wide]
        cv = np.take_along_axis(c, part, 1)
        order = np.argsort(-cv, axis=1)
        idx[a:a + chunk] = np.take_along_axis(part, order, 1)
        val[a:a + chunk] = np.take_along_axis(cv, order, 1)
    length = np.sqrt(np.maximum(2.0 * (1.0 - val), 1e-6))
    rows = np.repeat(np.arange(n), wide).reshape(n, wide)

    def graph(cols: slice, same_sign: bool = False) -> Any:
        keep = sign[rows[:, cols]] == sign[idx[:, cols]] if same_sign else np.ones(rows[:, cols].shape, bool)
        return csr_matrix((length[:, cols][keep], (rows[:, cols][keep], idx[:, cols][keep])), shape=(n, n))

    g = graph(slice(0, k)).maximum(minimum_spanning_tree(graph(slice(0, wide), same_sign=True)))
    g = g.maximum(g.T).tocoo()
    cross = sign[g.row] != sign[g.col]
    if cross.mean() < MIN_CROSS_SIGN:  # a few bridges would fold one sign's layout onto the other's
        g = csr_matrix((g.data[~cross], (g.row[~cross], g.col[~cross])), shape=(n, n))
    return g.tocsr()


def _isomap(g: Any, dims: int, landmarks: int, seed: int) -> np.ndarray:
    """Landmark Isomap ``[n, dims]``: shortest-path lengths on the graph ``g`` (CSR of edge lengths) from
    ``landmarks`` cells (farthest-point choice from a seeded start), classical MDS of the landmarks,
    every cell placed by distance-based triangulation (de Silva & Tenenbaum 2003)."""
    from scipy.sparse.csgraph import dijkstra

    n = g.shape[0]
    m = min(landmarks, n)
    chosen = [int(np.random.default_rng(seed).integers(n))]
    dist = np.empty((m, n))
    nearest = np.full(n, np.inf)
    for i in range(m):
        dist[i] = dijkstra(g, directed=False, indices=chosen[i])
        nearest = np.minimum(nearest, dist[i])
        if i + 1 < m:
            chosen.append(int(np.argmax(np.where(np.isfinite(nearest), nearest, -1.0))))
    d2 = dist ** 2
    dl = d2[:, chosen]
    j = np.eye(m) - 1.0 / m
    b = -0.5 * j @ dl @ j
    vals, vecs = np.linalg.eigh(b)
    order = np.argsort(-vals)[:dims]
    vals, vecs = np.maximum(vals[order], 1e-12), vecs[:, order]
    pinv = vecs / np.sqrt(vals)  # [m, dims]
    return -0.5 * (d2 - dl.mean(1, keepdims=True)).T @ pinv


def infer_lgn_positions(lgn: np.ndarray, polarity: np.ndarray, v1: np.ndarray, v1_xy: np.ndarray,
                        config: LayoutConfig = LayoutConfig(), where: str = "training data") -> LGNLayout:
    """LGN positions in the cortical frame of ``v1_xy`` (module docstring).

    ``lgn [W, T, N]`` counts of the LGN cells, ``polarity [N]`` +1 ON / -1 OFF; ``v1 [W, T, n]`` counts
    of observed units that receive LGN input, at cortical positions ``v1_xy [n, 2]`` (mm).
    """
    lgn, v1 = np.asarray(lgn), np.asarray(v1)
    v1_xy = np.asarray(v1_xy, np.float64)[:, :2]
    if lgn.ndim != 3 or v1.ndim != 3 or lgn.shape[:2] != v1.shape[:2] or lgn.shape[0] < 2:
        raise DataMismatchError(f"{where}: LGN counts {lgn.shape} and V1 counts {v1.shape} must be "
                                "[windows, bins, cells] over the same windows (at least 2) and bins")
    if len(polarity) != lgn.shape[2] or len(v1_xy) != v1.shape[2]:
        raise DataMismatchError(f"{where}: {len(polarity)} polarities for {lgn.shape[2]} LGN cells, "
                                f"{len(v1_xy)} positions for {v1.shape[2]} V1 units")
    k = config.neighbours
    z, active = _residuals(lgn)
    n_active = int(active.sum())
    if n_active <= max(k, 3):
        raise DataMismatchError(f"{where}: only {n_active} LGN cells vary over the training windows; "
                                f"inferring their positions needs more than {max(k, 3)}")
    act = np.flatnonzero(active)
    g = _knn_graph(z[:, act], np.asarray(polarity, np.float64)[act], k)
    from scipy.sparse.csgraph import connected_components

    _, label = connected_components(g, directed=False)
    v, v_ok = _residuals(v1)
    xy = np.full((lgn.shape[2], 2), np.nan)
    r2s, targets, fits, n_anchors = [], [], [], 0
    # each sizeable component (the spanning tree joins all with any well-correlated pair) is laid out
    # and framed on its own
    for comp in np.flatnonzero(np.bincount(label) >= max(2 * k, 20)):
        inside = np.flatnonzero(label == comp)
        members = act[inside]
        emb = _isomap(g[inside][:, inside], config.dims, config.landmarks, config.seed)
        fit = _frame(emb, np.abs(v[:, v_ok].T @ z[:, members]) / len(z), v1_xy[v_ok], config.anchor_inputs)
        if fit is None:
            continue
        coef, r2, target, fitted = fit
        xy[members] = np.c_[emb[:, :len(coef) - 1], np.ones(len(emb))] @ coef
        r2s.append(r2)
        targets.append(target)
        fits.append(fitted)
        n_anchors = max(n_anchors, len(target))
    placed = np.isfinite(xy[:, 0])
    if not r2s:
        raise DataMismatchError(f"{where}: fewer than {MIN_ANCHORS} observed units receiving LGN input have "
                                f"spikes correlated with the LGN; fixing the LGN layout's frame needs at "
                                f"least {MIN_ANCHORS}")
    xy[~placed] = xy[placed].mean(0)
    return LGNLayout(xy, np.asarray(polarity, np.float64), np.asarray(r2s), n_anchors, int(placed.sum()),
                     tuple(targets), tuple(fits))


def _frame(emb: np.ndarray, corr: np.ndarray, v1_xy: np.ndarray, m: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Affine map ``[d + 1, 2]`` from layout coordinates ``emb [n, d]`` to the cortical frame: each anchor's
    RF centre (the ``corr``-weighted mean layout coordinate of its ``m`` most correlated cells; ``corr
    [anchors, n]``) regressed onto its position; with the fit's R^2 per axis, and the anchors' positions
    and fitted positions (the anchors used)."""
    m = min(m, corr.shape[1])
    top = np.argpartition(-corr, m - 1, axis=1)[:, :m]
    w = np.take_along_axis(corr, top, 1)
    good = w.sum(1) > 0
    if good.sum() < MIN_ANCHORS:
        return None
    centre = np.einsum("im,imd->id", w[good], emb[top[good]]) / w[good].sum(1, keepdims=True)
    target = v1_xy[good]
    # how many layout coordinates: the count whose linear map predicts held-out anchors best
    # (leave-one-out, closed form), at most one per two anchors
    best = None
    for d in range(2, min(emb.shape[1], (int(good.sum()) - 2) // 2) + 1):
        x = np.c_[centre[:, :d], np.ones(len(centre))]
        coef, *_ = np.linalg.lstsq(x, target, rcond=None)
        hat = np.einsum("ij,ji->i", x, np.linalg.pinv(x))
        press = float((((x @ coef - target) / np.maximum(1.0 - hat, 1e-9)[:, None]) ** 2).sum())
        if best is None or press < best[0]:
            best = (press, coef, x)
    _, coef, x = best
    r2 = 1.0 - ((x @ coef - target) ** 2).sum(0) / np.maximum(((target - target.mean(0)) ** 2).sum(0), 1e-300)
    return coef, r2, target, x @ coef


def layout_from_windows(data: Any, subset: Any, positions: dict[str, np.ndarray], receiving: list[str],
                        config: LayoutConfig = LayoutConfig(), where: str = "training data",
                        chunk: int = 64) -> tuple[LGNLayout, dict[str, np.ndarray]]:
    """:func:`infer_lgn_positions` on the trainer's batches ``data`` of a
    :class:`~corticalrnn.subsets.NeuronSubset` (``corticalrnn.data.batches.subset_windows``: LGN columns
    per LGN sheet in ``INPUT_SHEETS`` order, V1 columns in the subset's canonical order): its LGN cells,
    and its observed units of the ``receiving`` sheets (those fed by LGN) at ``positions`` (sheet ->
    ``[modelled, >= 2]``) as anchors. Read in chunks of ``chunk`` windows, keeping only the anchors' V1
    columns. Returns the layout and the positions per LGN sheet (subset order)."""
    from corticalrnn.sheets import INPUT_SHEETS, input_polarity, surface_xy

    lgn_sheets = [s for s in INPUT_SHEETS if s in subset.sheets]
    sizes = [len(subset.sheets[s].modelled) for s in lgn_sheets]
    polarity = input_polarity(lgn_sheets, sizes)
    labels = subset.v1_sheet_labels()
    anchor = subset.observed_mask() & np.isin(labels, [s for s in receiving if positions.get(s) is not None])
    if not anchor.any():
        raise DataMismatchError(f"{where}: connectivity.lgn_positions='inferred' needs observed units with "
                                f"positions in the sheets LGN feeds ({', '.join(receiving)})")
    xy = np.concatenate([surface_xy(positions[s])[subset.sheets[s].observed_mask()]
                         for s in subset.v1_sheets if s in receiving and positions.get(s) is not None])
    lgn, v1 = [], []
    for a in range(0, len(data), chunk):
        b = data.batch(np.arange(a, min(a + chunk, len(data))))
        lgn.append(b["lgn"].numpy())
        v1.append(b["v1"].numpy()[..., anchor])
    layout = infer_lgn_positions(np.concatenate(lgn), polarity, np.concatenate(v1), xy, config, where)
    bounds = np.cumsum([0, *sizes])
    return layout, {s: layout.xy[a:b] for s, a, b in zip(lgn_sheets, bounds[:-1], bounds[1:], strict=True)}
