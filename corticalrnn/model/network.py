"""`CorticalRNN`: the E/I-constrained LGN -> L4 -> L2/3 network (see docs/ARCHITECTURE.md)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from corticalrnn.errors import CorticalRNNError, DataMismatchError
from corticalrnn.model import gemm
from corticalrnn.model.config import ModelConfig
from corticalrnn.model.connectivity import RuleContext, sheet_properties, unit_positions
from corticalrnn.model.connectivity import rule as conn_rule
from corticalrnn.model.dale import (
    SignedWeight,
    SparseSignedWeight,
    balanced_magnitudes,
    balanced_values,
    softplus_inv,
    spectral_radius,
)
from corticalrnn.model.graph import Block, Graph
from corticalrnn.model.input_rules import input_rule
from corticalrnn.model.neurons import make_unit
from corticalrnn.model.recurrence import LeakyRecurrence, RecBlock, RecLayout, generic_recurrence
from corticalrnn.model.step_graphs import StepGraphs
from corticalrnn.model.tied import Borrow, BorrowedHidden, TiedHidden, neighbour_kernel
from corticalrnn.sheets import V1_SHEETS, file_sheet_name, surface_xy

_CDTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class CorticalRNN(nn.Module):
    """E/I network of the modelled V1 neurons driven by LGN input.

    ``forward(lgn [B,T,N_in]) -> rates [B,T,N_v1]`` (expected spike counts per bin, >= 0), V1
    neurons in canonical sheet order. Call :meth:`project_` after every optimiser step (it is a no-op
    in reparametrised mode).
    """

    def __init__(self, config: ModelConfig, sizes: dict[str, int],
                 positions: dict[str, np.ndarray] | None = None,
                 properties: dict[str, dict[str, np.ndarray]] | None = None,
                 connectome: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
                 observed: np.ndarray | None = None, initialize: bool = True) -> None:
        """``properties``: per sheet, per-neuron identity (``ori``, ``phase``, ...; modelled neurons in
        model order), used by ``feature`` connectivity and ``gabor`` input; ``connectome``: the
        simulator's connections among modelled neurons, ``(pre, post) -> (post_idx, pre_idx, weight)``,
        used by ``simulator`` connectivity; ``observed``: bool per V1 neuron (canonical order), needed by
        ``hidden_weights = "tied"``; ``initialize=False`` skips scaling the initial weights to the
        configured spectral radius (for weights about to be replaced by a checkpoint's: at 10 % size the
        radius estimate alone takes ~10 s)."""
        super().__init__()
        self.config = config
        self.graph = g = Graph(config, sizes)
        self.sizes = g.sizes
        self.n_in, self.n_v1 = g.n_in, g.n_v1
        gen = torch.Generator().manual_seed(config.seed)
        rng = np.random.default_rng(config.seed)
        ctx = RuleContext(config, positions, properties, connectome, rng)
        perm = g.internal_to_external
        self.register_buffer("_perm", None if perm is None else torch.as_tensor(perm), persistent=False)
        self.register_buffer("_inv_perm", None if perm is None else torch.as_tensor(np.argsort(perm)),
                             persistent=False)

        # weight_storage = "sparse": recurrent blocks are built as their entries only (never dense)
        sparse = config.connectivity.storage == "sparse"
        masks: dict[str, np.ndarray | None] = {}
        expected: dict[str, np.ndarray | None] = {}  # weight_init = "expected": initial magnitudes
        pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        # input blocks: the input rule's own weight module, or a mask (model/input_rules.py)
        in_rule = input_rule(config.connectivity.input_rule)
        own = {b.name: w for b in g.blocks
               if b.source == "input" and (w := in_rule.weight(g, b, ctx)) is not None}
        for b in g.blocks:
            if sparse and b.source == "v1":
                rows_, cols_, expected[b.name] = self._block_pairs(b, ctx)
                pairs[b.name] = (rows_, cols_)
            elif b.source == "input" and b.name not in own:
                masks[b.name] = in_rule.mask(g, b, ctx)
            elif b.name not in own:
                masks[b.name], expected[b.name] = self._block_mask(b, ctx)
        arch = config.architecture
        mags: dict[str, torch.Tensor] = {}
        for st in range(g.n_stages):
            v1b = [b for b in g.blocks if b.row0 == g.stage_rows[st][0] and b.source == "v1"]
            shapes, signs = [b.shape for b in v1b], [b.col_sign for b in v1b]
            vals = (balanced_values(shapes, signs, [pairs[b.name] for b in v1b], gen,
                                    [expected.get(b.name) for b in v1b]) if sparse else
                    balanced_magnitudes(shapes, signs, [masks[b.name] for b in v1b], gen,
                                        [expected.get(b.name) for b in v1b]))
            mags.update(zip([b.name for b in v1b], vals))
            for b in g.blocks:
                if b.row0 == g.stage_rows[st][0] and b.source == "input" and b.name not in own:
                    m = torch.rand(b.shape, generator=gen)
                    if masks[b.name] is not None:
                        m *= torch.as_tensor(masks[b.name])
                    mags[b.name] = m * (arch.input_gain / m.sum(1, keepdim=True).clamp_min(1e-12))
        radius = self._radius([b for b in g.blocks if b.source == "v1"], mags, pairs) if initialize else 0.0
        if radius > 0:
            for b in g.blocks:
                if b.source == "v1":
                    mags[b.name] *= arch.spectral_radius / radius
        mode, rp = arch.sign_mode, arch.reparam
        self.weights = nn.ModuleDict({
            b.name: own[b.name] if b.name in own else
            SparseSignedWeight(mags.pop(b.name), b.col_sign, *pairs[b.name], b.shape, mode, rp)
            if b.name in pairs else SignedWeight(mags.pop(b.name), b.col_sign, masks[b.name], mode, rp)
            for b in g.blocks})
        if config.neurons.hidden_weights == "tied":
            self._tie_hidden(observed)
        self.borrow: Borrow | None = None
        if config.neurons.hidden_weights == "borrowed":
            self._borrow_hidden(observed, ctx)
        self.bias = nn.Parameter(torch.full(
            (g.n_v1,), float(softplus_inv(torch.tensor(arch.init_rate * arch.rate_scale)))))
        # centres of presynaptic activity (ModelConfig.centered): V1 from the config, LGN from data
        self.register_buffer("rate_center", torch.full((g.n_v1,), arch.init_rate * arch.rate_scale),
                             persistent=arch.centered)
        self.register_buffer("input_center", torch.zeros(g.n_in), persistent=arch.centered)
        # stimulus-locked drive (ArchitectureConfig.time_drive): [population (canonical order), window bin]
        self.time_drive: nn.Parameter | None = None
        if arch.time_drive:
            if arch.time_drive_bins < 1:
                raise CorticalRNNError("model config: architecture.time_drive needs time_drive_bins >= 1 "
                                       "(the trainer sets it to the store's window length)")
            # [driven sheet (architecture.time_drive order), window bin]; other sheets' units index the
            # zero row appended after the last
            self.time_drive = nn.Parameter(torch.zeros(len(arch.time_drive), arch.time_drive_bins))
            k = len(arch.time_drive)
            pop = np.concatenate([np.full(g.sizes[s], arch.time_drive.index(s) if s in arch.time_drive else k)
                                  for s in g.v1_order])
            self.register_buffer("_drive_pop", torch.as_tensor(pop, dtype=torch.long), persistent=False)
        self.units = nn.ModuleDict({
            file_sheet_name(s): make_unit(config.neurons.model, config.neurons.tau_ms[s], config.bin_ms,
                                          config.neurons.hidden, config.neurons.learn_tau, gen)
            for s in g.v1_order})
        density = {n: 1.0 if m is None else float(np.mean(m)) for n, m in masks.items()}
        density.update(dict.fromkeys(own, 1.0))
        for b in g.blocks:
            if b.name in pairs:
                density[b.name] = pairs[b.name][0].numel() / (b.shape[0] * b.shape[1])
        stored = {b.name: b.name in pairs for b in g.blocks}
        self.layout = RecLayout(tuple(g.stage_rows), tuple(
            RecBlock(st, b.delay, b.row0, b.row1, b.col0, b.col1,
                     stored[b.name] or density[b.name] < config.compute.sparse_below,
                     stored[b.name] or density[b.name] < config.compute.sparse_grad_below, stored[b.name])
            for b in g.blocks if b.source == "v1"
            for st in [next(i for i, (r0, _) in enumerate(g.stage_rows) if r0 == b.row0)]),
            gemm.resolve(config.compute.cpu_blas))
        self._v1_blocks = [b.name for b in g.blocks if b.source == "v1"]
        self._graphs = StepGraphs(config.compute.graph_chunk) if config.compute.cuda_graphs else None
        for name, b in zip(self._v1_blocks, self.layout.blocks):
            if (b.sparse or b.sparse_grad) and not b.stored_sparse:
                self.weights[name].enable_pattern()
        if config.compute.cuda_graphs and any(b.sparse for b in self.layout.blocks):
            raise CorticalRNNError("model config: cuda_graphs needs dense per-step products; blocks "
                                   f"below sparse_below={config.compute.sparse_below} density would use CSR "
                                   "(set sparse_below = 0)")
        self._in_blocks = [b for b in g.blocks if b.source == "input"]

    # -- construction helpers -------------------------------------------------------------------
    def _block_mask(self, b: Block, ctx: RuleContext) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Mask of a recurrent block from each pathway's connectivity rule (``model/connectivity.py``),
        and with ``weight_init = "expected"`` the initial magnitudes (the connection probability where the
        rule has one, uniform random elsewhere; else None)."""
        g, cfg = self.graph, self.config
        conn = cfg.connectivity
        m = g.structure(b)
        base = None
        for p in b.pathways:
            rule = conn_rule(p.mask or conn.rule)
            n_pre, n_post = g.sizes[p.pre], g.sizes[p.post]
            prob = (rule.probability(ctx, p.pre, p.post, n_pre, n_post) if conn.weight_init == "expected"
                    else None)
            pm = rule.mask(ctx, p.pre, p.post, n_pre, n_post) if prob is None else (
                prob >= conn.expected_p_min * conn.distance_p_max)
            rs, cs = g.slice(p.post), g.slice(p.pre)
            at = (slice(rs.start - b.row0, rs.stop - b.row0), slice(cs.start - b.col0, cs.stop - b.col0))
            if prob is not None:
                if base is None:
                    base = ctx.rng.random(b.shape).astype(np.float32)
                base[at] = prob
            if pm is None:
                continue
            if m is None:
                m = np.ones(b.shape, dtype=bool)
            m[at] = pm
        return m, base

    def _block_pairs(self, b: Block, ctx: RuleContext
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Entries ``(rows, cols)`` (int64, sorted row-major) of a recurrent block for sparse storage,
        drawn by each pathway's connectivity rule (``model/connectivity.py``), and with ``weight_init =
        "expected"`` their initial magnitudes (else None; see :meth:`_block_mask`)."""
        g, cfg = self.graph, self.config
        rows, cols, vals = [], [], []
        for p in b.pathways:
            rs, cs = g.slice(p.post), g.slice(p.pre)
            rule = conn_rule(p.mask or cfg.connectivity.rule)
            args = (ctx, p.pre, p.post, g.sizes[p.pre], g.sizes[p.post])
            got = rule.expected_pairs(*args) if cfg.connectivity.weight_init == "expected" else None
            r, c, v = got if got is not None else (*rule.pairs(*args), None)
            rows.append(r + (rs.start - b.row0))
            cols.append(c + (cs.start - b.col0))
            vals.append(v)
        r, c = np.concatenate(rows), np.concatenate(cols)
        order = np.lexsort((c, r))
        base = None
        if any(v is not None for v in vals):
            base = np.concatenate([ctx.rng.random(len(rr)).astype(np.float32) if v is None else v
                                   for rr, v in zip(rows, vals)])[order]
        return (torch.as_tensor(r[order], dtype=torch.int64), torch.as_tensor(c[order], dtype=torch.int64),
                None if base is None else torch.as_tensor(base))

    def _tie_hidden(self, observed: np.ndarray | None) -> None:
        """Wrap each recurrent block holding a hidden unit of ``neurons.tied_sheets`` in
        :class:`TiedHidden` (``hidden_weights = "tied"``); only those hidden units are tied."""
        g = self.graph
        obs = self._observed_internal(observed, "tied")
        pop = np.concatenate([np.full(g.sizes[s], i) for i, s in enumerate(g.v1_order)])
        tied = np.concatenate([np.full(g.sizes[s], s in self.config.neurons.tied_sheets) for s in g.v1_order])
        for b in g.blocks:  # blocks without a tied hidden row stay as they are
            if b.source == "v1" and (tied[b.row0:b.row1] & ~obs[b.row0:b.row1]).any():
                self.weights[b.name] = TiedHidden(self.weights[b.name], obs[b.row0:b.row1],
                                                  pop[b.row0:b.row1], pop[b.col0:b.col1],
                                                  tied[b.row0:b.row1])

    def _observed_internal(self, observed: np.ndarray | None, what: str) -> np.ndarray:
        g = self.graph
        if observed is None or len(observed) != g.n_v1:
            raise DataMismatchError(f"model: hidden_weights={what!r} needs the observed mask of all {g.n_v1} "
                                    "V1 neurons")
        obs = np.asarray(observed, bool)
        return obs if g.internal_to_external is None else obs[g.internal_to_external]

    def _borrow_hidden(self, observed: np.ndarray | None, ctx: RuleContext) -> None:
        """``hidden_weights = "borrowed"``: every hidden unit's bias and its rows of the dense input blocks
        (and of the recurrent blocks with ``borrow_recurrent``; a ``gabor`` input has identity already) are
        the identity-weighted average of observed units of its population
        (:func:`~corticalrnn.model.tied.neighbour_kernel`)."""
        g, cfg = self.graph, self.config
        obs = self._observed_internal(observed, "borrowed")
        xy = np.concatenate([surface_xy(unit_positions(ctx.positions, s, g.sizes[s])) for s in g.v1_order])

        def prop(key: str) -> np.ndarray:
            return np.concatenate([np.asarray(sheet_properties(ctx, s).get(key, np.full(g.sizes[s], np.nan)),
                                              np.float64) for s in g.v1_order])

        pop = np.concatenate([np.full(g.sizes[s], i) for i, s in enumerate(g.v1_order)])
        nc = cfg.neurons
        hid, src, w = neighbour_kernel(xy, prop("ori"), prop("phase"), pop, obs, nc.borrow_neighbours,
                                       nc.borrow_sigma_mm, nc.borrow_kappa)
        self.borrow = Borrow(hid, src, w, g.n_v1)
        for b in g.blocks:
            inner = self.weights[b.name]
            own_identity = getattr(inner, "identity_conditioned", False)  # gabor, embedding
            if own_identity or (b.source == "v1" and not nc.borrow_recurrent):
                continue
            if inner.stored_sparse:
                raise CorticalRNNError("model config: hidden_weights='borrowed' needs dense weight storage "
                                       "(weight_storage = 'dense')")
            keep = (hid >= b.row0) & (hid < b.row1)
            self.weights[b.name] = BorrowedHidden(inner, Borrow(hid[keep] - b.row0, src[keep] - b.row0,
                                                                w[keep], b.row1 - b.row0))

    def unit_bias(self) -> torch.Tensor:
        """Each unit's bias ``b`` (internal order); hidden units' are borrowed (``hidden_weights``)."""
        return self.bias if self.borrow is None else self.borrow(self.bias)

    def _radius(self, blocks: list[Block], mags: dict[str, torch.Tensor],
                pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> float:
        """Spectral radius of the signed V1 connectivity (all delays summed); blocks in ``pairs`` have
        their values ``[nnz]`` in ``mags``. Exact eigenvalues up to ``EXACT_RADIUS_MAX`` neurons; above,
        the larger of the circular-law estimate of the random bulk and a power-iteration estimate of
        the largest eigenvalue (E/I structure can leave an outlier far outside the bulk: measured 12.3
        against a bulk of 0.9 at 2,812 neurons, which made larger dense models blow up)."""
        n = self.graph.n_v1

        def signed(b: Block) -> torch.Tensor:
            sign = torch.as_tensor(b.col_sign, dtype=torch.float64)
            return mags[b.name].double() * (sign[pairs[b.name][1]] if b.name in pairs else sign)

        if n <= EXACT_RADIUS_MAX:
            w = torch.zeros(n, n, dtype=torch.float64)
            for b in blocks:
                if b.name in pairs:
                    r, c = pairs[b.name]
                    w.index_put_((r + b.row0, c + b.col0), signed(b), accumulate=True)
                else:
                    w[b.row0:b.row1, b.col0:b.col1] += signed(b)
            return spectral_radius(w)
        sq = torch.zeros(n, dtype=torch.float64)
        s1 = torch.zeros(n, dtype=torch.float64)
        ws = {b.name: signed(b) for b in blocks}
        for b in blocks:
            w = ws[b.name]
            if b.name in pairs:
                r = pairs[b.name][0] + b.row0
                sq.index_add_(0, r, w**2)
                s1.index_add_(0, r, w)
            else:
                sq[b.row0:b.row1] += (w**2).sum(1)
                s1[b.row0:b.row1] += w.sum(1)
        bulk = math.sqrt(float((sq - s1**2 / n).sum()) / n)

        def matvec(v: torch.Tensor) -> torch.Tensor:
            out = torch.zeros_like(v)
            for b in blocks:
                w = ws[b.name]
                if b.name in pairs:
                    r, c = pairs[b.name]
                    out.index_add_(0, r + b.row0, w[:, None] * v[c + b.col0])
                else:
                    out[b.row0:b.row1] += w @ v[b.col0:b.col1]
            return out

        return max(bulk, power_radius(matvec, n))

    # -- parameters views ------------------------------------------------------------------------
    def alphas(self) -> list[torch.Tensor]:
        """Per-population per-step update fraction (internal order)."""
        return [self.units[file_sheet_name(s)].alpha() for s in self.graph.v1_order]

    def tau_ms(self) -> dict[str, float]:
        return {s: self.units[file_sheet_name(s)].tau_ms() for s in self.graph.v1_order
                if hasattr(self.units[file_sheet_name(s)], "tau_ms")}

    def pathway_weight(self, pre: str, post: str, delay: int) -> torch.Tensor:
        """Signed weight ``[n_post, n_pre]`` of one pathway (differentiable slice; neurons in sheet order)."""
        g = self.graph
        for b in g.blocks:
            for p in b.pathways:
                if (p.pre, p.post, p.delay) == (pre, post, delay):
                    rs, cs = g.slice(post), g.slice(pre)
                    w = self.weights[b.name].dense()
                    return w[rs.start - b.row0:rs.stop - b.row0, cs.start - b.col0:cs.stop - b.col0]
        raise KeyError(f"no pathway {pre} -> {post} with delay {delay}")

    def n_synapses(self) -> int:
        """Number of weights that can be non-zero (structure and masks)."""
        return sum(w.n_synapses for w in self.weights.values())

    @torch.no_grad()
    def project_(self) -> None:
        """Projected Dale mode: clamp every weight to its presynaptic sign, zero masked entries."""
        for w in self.weights.values():
            w.project_()

    apply_constraints_ = project_

    def sign_violations(self) -> dict[str, int]:
        """Per weight block: entries with the wrong sign or non-zero outside the mask."""
        return {name: w.violations() for name, w in self.weights.items()}

    def assert_constraints(self) -> None:
        bad = {k: v for k, v in self.sign_violations().items() if v}
        if bad:
            raise CorticalRNNError(f"Dale's law / mask violated in weight blocks {bad}")

    # -- forward ---------------------------------------------------------------------------------
    def _cdtype(self) -> torch.dtype:
        """Matmul dtype: ``config.compute.precision``; with ``fp32`` an enclosing ``torch.autocast`` decides
        (the recurrence itself always runs with autocast off and casts explicitly)."""
        if self.config.compute.precision in _CDTYPES:
            return _CDTYPES[self.config.compute.precision]
        dev = self.bias.device.type
        if torch.is_autocast_enabled(dev):
            return torch.get_autocast_dtype(dev)
        return self.bias.dtype

    def _check(self, lgn: torch.Tensor, teacher: torch.Tensor | None,
               teacher_mask: torch.Tensor | None) -> None:
        if lgn.dim() != 3 or lgn.shape[-1] != self.n_in:
            raise DataMismatchError(f"model input: lgn must be [batch, time, {self.n_in}] "
                                    f"({'+'.join(f'{s}={self.sizes[s]}' for s in self.graph.inputs)}), "
                                    f"got {list(lgn.shape)}")
        if lgn.shape[1] < 1:
            raise DataMismatchError("model input: lgn has no time steps")
        if not bool(torch.isfinite(lgn).all()):
            raise DataMismatchError("model input: lgn contains NaN or infinite values")
        if teacher is not None:
            if teacher.shape != (lgn.shape[0], lgn.shape[1], self.n_v1):
                raise DataMismatchError(f"model input: teacher must be [{lgn.shape[0]}, {lgn.shape[1]}, "
                                        f"{self.n_v1}], got {list(teacher.shape)}")
            if teacher_mask is None or teacher_mask.shape != (self.n_v1,) or teacher_mask.dtype != torch.bool:
                raise DataMismatchError(f"model input: teacher_mask must be a bool tensor [{self.n_v1}]")
            if not bool(torch.isfinite(teacher[..., teacher_mask]).all()):
                raise DataMismatchError("model input: teacher data of observed neurons contains NaN/inf")

    @torch.no_grad()
    def set_input_center(self, mean_counts: torch.Tensor | np.ndarray) -> None:
        """LGN centre ``x0`` of ``centered`` models: the mean input count per bin of each input
        neuron (input order) over the training data."""
        m = torch.as_tensor(np.asarray(mean_counts), dtype=self.input_center.dtype)
        if m.shape != self.input_center.shape or not bool(torch.isfinite(m).all()):
            raise DataMismatchError(f"model: input centre must be {self.n_in} finite values, "
                                    f"got {list(m.shape)}")
        self.input_center.copy_(m)

    @torch.no_grad()
    def start_at_rates(self, rates: torch.Tensor | np.ndarray) -> None:
        """Centered models: centre V1 activity on ``rates`` (mean count per bin of each V1 unit, canonical
        order, e.g. the training data's; NaN for hidden units: their population's mean of the known) and
        set each unit's bias so that it rests at that rate when its inputs sit at their centres
        (leaky and adaptive units; other units keep their bias)."""
        if not self.config.architecture.centered:
            raise CorticalRNNError("model: start_at_rates needs centered = true")
        r = torch.as_tensor(np.asarray(rates), dtype=torch.float64).clone()
        if r.shape != (self.n_v1,):
            raise DataMismatchError(f"model: rates must be {self.n_v1} values, got {list(r.shape)}")
        g, start = self.graph, 0
        for s in V1_SHEETS:
            n = self.sizes.get(s, 0)
            part = r[start:start + n]
            known = torch.isfinite(part)
            part[~known] = part[known].mean() if known.any() else self.config.architecture.init_rate
            start += n
        r = (r * self.config.architecture.rate_scale).clamp_min(1e-4)
        if self._perm is not None:
            r = r[self._perm.cpu()]
        self.rate_center.copy_(r.to(self.rate_center.dtype))
        for s in g.v1_order:
            unit = self.units[file_sheet_name(s)]
            to_current = getattr(unit, "current_for_rate", None)
            if callable(to_current):
                sl = g.slice(s)
                self.bias[sl] = to_current(r[sl]).to(self.bias.dtype)

    @torch.no_grad()
    def start_time_drive(self, course: torch.Tensor | np.ndarray) -> None:
        """Start the stimulus-locked drive at a time course ``[T, N_v1]`` (mean count per bin of each V1
        unit, canonical order, NaN where unknown; e.g. the training windows' population baseline): for each
        driven sheet, with ``c(t)`` the mean over its units, the current that moves a unit resting at
        ``mean_t c`` to ``c(t)`` (through the unit's rate -> current map; softplus^-1 otherwise). Bins past
        ``T`` hold the last value."""
        if self.time_drive is None:
            raise CorticalRNNError("model: start_time_drive needs architecture.time_drive")
        c = torch.as_tensor(np.asarray(course), dtype=torch.float64)
        if c.dim() != 2 or c.shape[1] != self.n_v1:
            raise DataMismatchError(f"model: time course must be [T, {self.n_v1}], got {list(c.shape)}")
        bins, scale = self.time_drive.shape[1], self.config.architecture.rate_scale
        idx = torch.arange(bins).clamp(max=c.shape[0] - 1)
        for k, s in enumerate(self.config.architecture.time_drive):
            a = sum(self.sizes[t] for t in V1_SHEETS[:V1_SHEETS.index(s)])  # canonical column offset
            part = c[:, a:a + self.sizes[s]]
            mean_t = part.nanmean(1)[idx] if bool(torch.isfinite(part).any()) else None
            if mean_t is None or not bool(torch.isfinite(mean_t).all()):
                continue  # nothing known of this sheet: its drive stays at zero
            rate = (mean_t * scale).clamp_min(1e-4)
            to_current = getattr(self.units[file_sheet_name(s)], "current_for_rate", None)
            if not callable(to_current):
                to_current = softplus_inv
            self.time_drive[k] = (to_current(rate) - to_current(rate.mean())).to(self.time_drive.dtype)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object) -> None:
        # centered checkpoints written before the V1 centre was saved: it was init_rate x rate_scale
        if self.config.architecture.centered:
            state_dict.setdefault(prefix + "rate_center", self.rate_center.clone())
        super()._load_from_state_dict(state_dict, prefix, *args)

    def effective_bias(self) -> torch.Tensor:
        """The constant current every unit sees: ``b`` or, centered, ``b - W r0 - U x0`` (internal order)."""
        bias = self.unit_bias()
        if not self.config.architecture.centered:
            return bias
        shift = torch.zeros_like(bias)
        for b in self.graph.blocks:
            w = self.weights[b.name]
            center = (self.rate_center if b.source == "v1" else self.input_center)[b.col0:b.col1]
            center = center.to(shift.dtype)
            if w.stored_sparse:
                rows, cols = w.pattern().entries()
                shift[b.row0:b.row1] += torch.zeros(b.row1 - b.row0, dtype=shift.dtype,
                                                    device=shift.device).index_add(
                    0, rows, w.weight().to(shift.dtype) * center[cols])
            else:
                shift[b.row0:b.row1] += w.weight().to(shift.dtype) @ center
        return bias - shift

    def stimulus_drive(self, T: int, t0: int = 0) -> torch.Tensor | None:
        """The stimulus-locked drive of every unit at window bins ``t0 .. t0+T-1``, ``[N_v1, T]`` (internal
        order; bins past ``time_drive_bins`` hold the last value); None without ``time_drive``."""
        if self.time_drive is None:
            return None
        td = self.time_drive
        idx = torch.arange(t0, t0 + T, device=td.device).clamp(max=td.shape[1] - 1)
        return torch.cat([td, td.new_zeros(1, td.shape[1])])[:, idx][self._drive_pop]

    def _drive(self, x: torch.Tensor, cd: torch.dtype, t0: int = 0) -> torch.Tensor:
        """Bias (+ stimulus-locked drive) + input projection for all steps, ``[N_v1, T, B]``: one GEMM per
        input block. ``x`` is ``[N_in, T, B]``; ``t0`` its first bin within the window."""
        _, T, B = x.shape
        drive = self.effective_bias()[:, None, None].expand(self.n_v1, T, B).clone()
        locked = self.stimulus_drive(T, t0)
        if locked is not None:
            drive += locked.to(drive.dtype)[:, :, None]
        for b in self._in_blocks:
            w = self.weights[b.name]
            xs = x[b.col0:b.col1].reshape(b.col1 - b.col0, T * B).to(cd)
            proj = w.product(xs, cd) if hasattr(w, "product") else w.weight().to(cd) @ xs
            proj = proj.to(drive.dtype).view(-1, T, B)
            if b.delay == 1:
                proj = torch.cat([torch.zeros_like(proj[:, :1]), proj[:, :-1]], 1)
            drive[b.row0:b.row1] += proj
        return drive

    def forward(self, lgn: torch.Tensor, teacher: torch.Tensor | None = None,
                teacher_mask: torch.Tensor | None = None, teacher_fraction: float = 1.0,
                generator: torch.Generator | None = None, detach_every: int = 0) -> torch.Tensor:
        """Rates ``[B, T, N_v1]``. With ``teacher`` (data ``[B,T,N_v1]``) and ``teacher_mask`` (bool
        ``[N_v1]``, the observed neurons), a random ``teacher_fraction`` of the observed neurons (drawn
        per window) feed the data instead of their own rate to the network; the prediction of every
        neuron is always the model's. Without ``teacher`` the network runs free (evaluation).
        ``detach_every`` N > 0: the state is detached every N steps (truncated BPTT)."""
        self._check(lgn, teacher, teacher_mask)
        return self.run(lgn, teacher, teacher_mask, teacher_fraction, generator, detach_every=detach_every)[0]

    def run(self, lgn: torch.Tensor, teacher: torch.Tensor | None = None,
            teacher_mask: torch.Tensor | None = None, teacher_fraction: float = 1.0,
            generator: torch.Generator | None = None, state: object | None = None, detach_every: int = 0,
            t0: int = 0) -> tuple[torch.Tensor, object]:
        """Like :meth:`forward` but also takes/returns the network state, so a trainer can run a long
        window in chunks with one backward per chunk (truncated BPTT that also bounds memory); ``t0``:
        the chunk's first bin within its window (for the stimulus-locked drive)."""
        cdtype = self._cdtype()
        with torch.autocast(lgn.device.type, enabled=False):
            return self._run(lgn, teacher, teacher_mask, teacher_fraction, generator, state, cdtype,
                             detach_every, t0)

    def _run(self, lgn: torch.Tensor, teacher: torch.Tensor | None, teacher_mask: torch.Tensor | None,
             teacher_fraction: float, generator: torch.Generator | None, state: object | None,
             cdtype: torch.dtype, detach_every: int, t0: int) -> tuple[torch.Tensor, object]:
        B, T, _ = lgn.shape
        dtype = self.bias.dtype
        x = lgn.to(dtype).permute(2, 1, 0).contiguous()
        drive = self._drive(x, cdtype, t0)
        y = force = None
        if teacher is not None and teacher_mask is not None and teacher_fraction > 0:
            f = self.draw_force(B, teacher_mask.to(lgn.device), teacher_fraction, generator)
            # unobserved data may be NaN; units see rates times rate_scale (ModelConfig)
            y = torch.where(f[:, None, :], teacher.to(dtype) * self.config.architecture.rate_scale, 0.0)
            if self._perm is not None:
                y, f = y[..., self._perm], f[:, self._perm]
            y = y.permute(2, 1, 0).contiguous()
            force = f.t().to(dtype).contiguous()
        weights = tuple(self.weights[n].weight() for n in self._v1_blocks)
        patterns = tuple(self.weights[n].pattern() for n in self._v1_blocks)
        alphas = self.alphas()
        pops = [(self.graph.offset[s], self.graph.offset[s] + self.sizes[s]) for s in self.graph.v1_order]
        units = [self.units[file_sheet_name(s)] for s in self.graph.v1_order]
        leaky = all(u.fused for u in units)  # the fused loop implements exactly these units
        if state is None:
            v0 = self.unit_bias()[:, None].expand(self.n_v1, B)
            if leaky:
                state = (v0, F.softplus(v0))
            else:
                init = [u.initial(v0[a:e]) for u, (a, e) in zip(units, pops)]
                state = ([s for _, s in init], torch.cat([r for r, _ in init]))
        alpha_vec = torch.cat([a.expand(e - s) for a, (s, e) in zip(alphas, pops)]).to(dtype)
        # CUDA graphs only pay off on a GPU; elsewhere the plain loop runs unless a test asks for the
        # chunked path (StepGraphs.emulate)
        graphs = self._graphs if self._graphs is not None and (lgn.is_cuda or self._graphs.emulate) else None
        chunk = detach_every or T
        outs = []
        for t0 in range(0, T, chunk):
            sl = slice(t0, min(t0 + chunk, T))
            yc = None if y is None else y[:, sl]
            if leaky:
                r, v_last, rt_last = LeakyRecurrence.apply(self.layout, cdtype, graphs, patterns,
                                                           drive[:, sl], state[0], state[1], alpha_vec, yc,
                                                           force, *weights)
                state = (v_last, rt_last)
            else:
                r, state = generic_recurrence(self.layout, cdtype, drive[:, sl], units, pops, alphas,
                                              state, yc, force, weights, patterns)
            if chunk < T:
                state = _detach(state)
            outs.append(r)
        rates = outs[0] if len(outs) == 1 else torch.cat(outs, 1)
        rates = rates.permute(2, 1, 0)
        if self.config.architecture.rate_scale != 1.0:
            rates = rates / self.config.architecture.rate_scale
        if self._inv_perm is not None:
            rates = rates[..., self._inv_perm]
        return rates, state

    def draw_force(self, batch: int, teacher_mask: torch.Tensor, fraction: float,
                   generator: torch.Generator | None = None) -> torch.Tensor:
        """Bool ``[batch, N_v1]``: observed neurons teacher-forced in each window (a random
        ``fraction`` of them, drawn independently per window and neuron)."""
        draw = torch.rand(batch, self.n_v1, generator=generator, device=teacher_mask.device) < fraction
        return draw & teacher_mask



EXACT_RADIUS_MAX = 2500  # V1 neurons up to which the initial spectral radius is computed exactly


def power_radius(matvec: Callable[[torch.Tensor], torch.Tensor], n: int, iters: int = 60, seed: int = 0
                 ) -> float:
    """Spectral-radius estimate ``(|W^k x| / |x|)^(1/k)`` (Gelfand's formula) from a few random start
    vectors, averaging the log growth of the last half of ``iters`` normalised products: exact for an
    isolated outlier (also a complex pair), a lower estimate when the bulk dominates."""
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x /= x.norm(dim=0)
    logs = []
    for _ in range(iters):
        y = matvec(x)
        norm = y.norm(dim=0).clamp_min(1e-300)
        logs.append(norm.log())
        x = y / norm
    return float(torch.stack(logs[iters // 2:]).mean(0).max().exp())


def _detach(state: object) -> object:
    if isinstance(state, torch.Tensor):
        return state.detach()
    if isinstance(state, (tuple, list)):
        return type(state)(_detach(s) for s in state)
    return state


__all__ = ["CorticalRNN", "V1_SHEETS"]
