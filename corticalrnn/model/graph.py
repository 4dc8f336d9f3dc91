"""Connectivity graph: populations, pathways, delays, signs, stages and weight blocks (numpy only).

Layout used by the fast path. Populations are grouped into *stages*: the topological levels of the
same-step (delay 0) pathways (default: stage 0 = L4 E/I, stage 1 = L2/3 E/I). Within one time step
stage 0 is computed first and later stages see its current rate. Internally the V1 vector is ordered
by (stage, canonical order) -- identical to the canonical order for the default graph.

For every (stage, delay) there is one dense weight *block* whose rows are the stage's neurons and
whose columns are the smallest contiguous span of presynaptic neurons; pairs of populations inside
the span without a pathway are structural zeros (none in the default graph). Input (LGN) pathways
form one block per delay in the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from corticalrnn.errors import CorticalRNNError, DataMismatchError
from corticalrnn.model.config import ModelConfig, PathwayConfig
from corticalrnn.sheets import (
    ALL_SHEETS,
    INPUT_SHEETS,
    SHEET_INFO,
    V1_SHEETS,
    normalize_sheet_name,
    surface_xy,
)


@dataclass(frozen=True)
class Block:
    """One weight matrix of the fast path: rows ``[row0, row1)`` of the internal V1 vector,
    columns ``[col0, col1)`` of the internal V1 vector (``source="v1"``) or of the input vector."""

    name: str
    source: str  # "v1" | "input"
    delay: int
    row0: int
    row1: int
    col0: int
    col1: int
    col_sign: np.ndarray  # int8 [cols], +1 / -1 from the presynaptic sheet
    pathways: tuple[PathwayConfig, ...]

    @property
    def shape(self) -> tuple[int, int]:
        return (self.row1 - self.row0, self.col1 - self.col0)


class Graph:
    """Populations and pathways of one model size, with the derived fast-path layout."""

    def __init__(self, config: ModelConfig, sizes: dict[str, int]) -> None:
        self.sizes = _check_sizes(sizes)
        self.pathways = tuple(p.normalized() for p in config.architecture.pathways)
        for p in self.pathways:
            if p.pre not in self.sizes or p.post not in self.sizes:
                raise DataMismatchError(f"pathway {p.pre} -> {p.post}: sheet missing from sizes "
                                        f"{sorted(self.sizes)}")
        self.inputs = [s for s in INPUT_SHEETS if s in self.sizes]
        self.stage_of = _stages(self.pathways)
        self.n_stages = max(self.stage_of.values()) + 1
        # internal order: by stage, then canonical
        self.v1_order = sorted(V1_SHEETS, key=lambda s: (self.stage_of[s], V1_SHEETS.index(s)))
        self.offset: dict[str, int] = {}
        o = 0
        for s in self.v1_order:
            self.offset[s] = o
            o += self.sizes[s]
        self.n_v1 = o
        io = 0
        for s in self.inputs:
            self.offset[s] = io
            io += self.sizes[s]
        self.n_in = io
        # canonical (external) index of each internal position; None when identical
        canon_off, c = {}, 0
        for s in V1_SHEETS:
            canon_off[s] = c
            c += self.sizes[s]
        perm = np.concatenate([np.arange(self.sizes[s]) + canon_off[s] for s in self.v1_order])
        self.internal_to_external: np.ndarray | None = (
            None if np.array_equal(perm, np.arange(self.n_v1)) else perm)
        self.stage_rows = []
        for st in range(self.n_stages):
            pops = [s for s in self.v1_order if self.stage_of[s] == st]
            self.stage_rows.append((self.offset[pops[0]], self.offset[pops[-1]] + self.sizes[pops[-1]]))
        self.blocks = self._make_blocks()

    def slice(self, sheet: str) -> slice:
        """Index range of ``sheet`` in the internal V1 vector or the input vector."""
        return slice(self.offset[sheet], self.offset[sheet] + self.sizes[sheet])

    def sign_vector(self) -> np.ndarray:
        """+1/-1 for every internal V1 neuron."""
        return np.concatenate([np.full(self.sizes[s], SHEET_INFO[s].sign, np.int8) for s in self.v1_order])

    def _make_blocks(self) -> list[Block]:
        blocks = []
        for st in range(self.n_stages):
            r0, r1 = self.stage_rows[st]
            for source in ("input", "v1"):
                for delay in (0, 1):
                    ps = tuple(p for p in self.pathways if self.stage_of.get(p.post) == st
                               and p.delay == delay and (p.pre in INPUT_SHEETS) == (source == "input"))
                    if not ps:
                        continue
                    c0 = min(self.offset[p.pre] for p in ps)
                    c1 = max(self.offset[p.pre] + self.sizes[p.pre] for p in ps)
                    order = self.inputs if source == "input" else self.v1_order
                    sign = np.concatenate([np.full(self.sizes[s], SHEET_INFO[s].sign, np.int8)
                                           for s in order])[c0:c1]
                    name = f"{'U' if source == 'input' else 'W'}{delay}_stage{st}"
                    blocks.append(Block(name, source, delay, r0, r1, c0, c1, sign, ps))
        return blocks

    def structure(self, block: Block) -> np.ndarray | None:
        """Bool [rows, cols] of pairs with a pathway in ``block``; ``None`` when all pairs have one."""
        m = np.zeros(block.shape, dtype=bool)
        for p in block.pathways:
            rs, cs = self.slice(p.post), self.slice(p.pre)
            m[rs.start - block.row0:rs.stop - block.row0, cs.start - block.col0:cs.stop - block.col0] = True
        return None if m.all() else m

    def block_of(self, pathway: PathwayConfig) -> Block:
        for b in self.blocks:
            if pathway in b.pathways:
                return b
        raise KeyError(pathway)


LogAffinity = Callable[[np.ndarray, np.ndarray], np.ndarray]


def distance_mask(pre_xy: np.ndarray, post_xy: np.ndarray, sigma_mm: float, p_max: float,
                  rng: np.random.Generator | None, self_connections: bool = True,
                  log_affinity: LogAffinity | None = None) -> np.ndarray:
    """Bernoulli mask [n_post, n_pre] with P(connect) = p_max * exp(-d^2 / (2 sigma^2)), d in the x, y
    plane (mm), times ``exp(log_affinity(post_idx, pre_idx))`` (``[len(post), len(pre)]``, <= 0) when
    given. Built in row chunks to bound memory. ``rng=None``: no draw, the probabilities themselves
    (float32)."""
    out = np.empty((len(post_xy), len(pre_xy)), dtype=bool if rng is not None else np.float32)
    pre, post = surface_xy(pre_xy), surface_xy(post_xy)
    step = max(1, 2_000_000 // max(len(pre), 1))
    for i in range(0, len(post), step):
        d2 = ((post[i:i + step, None, :] - pre[None, :, :]) ** 2).sum(-1)
        logp = -d2 / (2 * sigma_mm**2)
        if log_affinity is not None:
            logp = logp + log_affinity(np.arange(i, min(i + step, len(post))), np.arange(len(pre)))
        p = p_max * np.exp(logp)
        out[i:i + step] = p if rng is None else rng.random(logp.shape) < p
    if not self_connections:
        np.fill_diagonal(out, False)
    return out


def distance_pairs(pre_xy: np.ndarray, post_xy: np.ndarray, sigma_mm: float, p_max: float,
                   rng: np.random.Generator | None, radius_sigmas: float = 5.0,
                   log_affinity: LogAffinity | None = None, p_min: float = 0.0
                   ) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The connections of :func:`distance_mask` without the dense matrix: ``(post, pre)`` indices
    (int64, sorted by post then pre), sampled only among pairs closer than ``radius_sigmas * sigma``
    (a cell list of that size; farther pairs connect with probability below ``p_max * 3.7e-6`` at 5
    sigma and are dropped). Memory and time grow with the pairs inside the radius, not ``n_post *
    n_pre``. Another random stream than :func:`distance_mask`, so not the same draw.

    ``rng=None``: no draw; every pair with probability ``>= p_min``, and the probabilities as a third
    array (float32), for ``weight_init = "expected"``."""
    pre, post = surface_xy(pre_xy), surface_xy(post_xy)
    posts, pres, probs = [], [], []
    for group, cand in _neighbour_candidates(pre, post, radius_sigmas * sigma_mm):
        d2 = ((post[group, None, :] - pre[None, cand, :]) ** 2).sum(-1)
        logp = -d2 / (2 * sigma_mm**2)
        if log_affinity is not None:
            logp = logp + log_affinity(group, cand)
        p = p_max * np.exp(logp)
        hit = p >= p_min if rng is None else rng.random(d2.shape) < p
        i, j = np.nonzero(hit)
        posts.append(group[i])
        pres.append(cand[j])
        probs.append(p[i, j].astype(np.float32))
    if not posts:
        empty = np.zeros(0, np.int64)
        return (empty, empty) if rng is not None else (empty, empty, np.zeros(0, np.float32))
    a, b = np.concatenate(posts), np.concatenate(pres)
    srt = np.lexsort((b, a))
    return (a[srt], b[srt]) if rng is not None else (a[srt], b[srt], np.concatenate(probs)[srt])


def _neighbour_candidates(pre: np.ndarray, post: np.ndarray, r: float
                          ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per group of postsynaptic units sharing a cell of side ``r``, ``(group, candidates)``: the
    presynaptic units in that cell and its 8 neighbours (every pair closer than ``r``, and some farther)."""
    lo = np.minimum(pre.min(0), post.min(0)) if len(pre) and len(post) else np.zeros(2)
    cell_pre = np.floor((pre - lo) / r).astype(np.int64)
    cell_post = np.floor((post - lo) / r).astype(np.int64)
    ny = int(max(cell_pre[:, 1].max(initial=0), cell_post[:, 1].max(initial=0))) + 3
    key_pre = (cell_pre[:, 0] + 1) * ny + (cell_pre[:, 1] + 1)
    order = np.argsort(key_pre, kind="stable")
    sorted_keys = key_pre[order]
    post_key = (cell_post[:, 0] + 1) * ny + (cell_post[:, 1] + 1)
    post_order = np.argsort(post_key, kind="stable")
    bounds = np.flatnonzero(np.diff(post_key[post_order])) + 1
    for group in np.split(post_order, bounds):
        if not group.size:
            continue
        k = post_key[group[0]]
        cand = np.concatenate([order[np.searchsorted(sorted_keys, k + dx * ny + dy):
                                     np.searchsorted(sorted_keys, k + dx * ny + dy, side="right")]
                               for dx in (-1, 0, 1) for dy in (-1, 0, 1)])
        if cand.size:
            yield group, cand


def _check_sizes(sizes: dict[str, int]) -> dict[str, int]:
    out = {}
    for name, n in sizes.items():
        try:
            s = normalize_sheet_name(name)
        except ValueError as exc:
            raise DataMismatchError(f"model sizes: {exc}") from exc
        if int(n) < 1:
            raise DataMismatchError(f"model sizes: sheet {s} has {n} neurons; need at least 1")
        out[s] = int(n)
    missing = [s for s in V1_SHEETS if s not in out]
    if missing:
        raise DataMismatchError(f"model sizes: V1 sheet(s) {', '.join(missing)} missing")
    if not any(s in out for s in INPUT_SHEETS):
        raise DataMismatchError("model sizes: no input sheet (X_ON / X_OFF)")
    return {s: out[s] for s in ALL_SHEETS if s in out}


def _stages(pathways: tuple[PathwayConfig, ...]) -> dict[str, int]:
    """Topological level of each V1 sheet under the delay-0 pathways; cycles raise."""
    level = {s: 0 for s in V1_SHEETS}
    same_step = [(p.pre, p.post) for p in pathways if p.delay == 0 and p.pre in V1_SHEETS]
    for _ in range(len(V1_SHEETS) + 1):
        changed = False
        for pre, post in same_step:
            if level[post] < level[pre] + 1:
                level[post] = level[pre] + 1
                changed = True
        if not changed:
            return level
    raise CorticalRNNError("model config: the same-step (delay 0) pathways form a cycle "
                           f"({', '.join(f'{a}->{b}' for a, b in same_step)})")
