"""Recurrent connectivity rules, registered by name (``connectivity.rule`` of the model config or a pathway's
``mask``): each rule gives, for one pathway ``pre -> post``, a dense bool mask (dense weight storage)
and the same kind of draw as ``(post, pre)`` index pairs (sparse storage).

Adding a rule is one class here with :func:`register`; the network never tests rule names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from corticalrnn.errors import DataMismatchError
from corticalrnn.model.graph import LogAffinity, distance_mask, distance_pairs
from corticalrnn.sheets import SHEET_INFO, normalize_sheet_name


@dataclass(frozen=True)
class RuleContext:
    """What rules may use: the model config, the modelled neurons' positions and per-neuron
    properties (sheet -> name -> [N]), the simulator's connectome restricted to modelled neurons
    (``(pre, post)`` sheet pair -> ``(post_idx, pre_idx, weight)``), and the construction RNG."""

    config: Any
    positions: Mapping[str, np.ndarray] | None
    properties: Mapping[str, Mapping[str, np.ndarray]] | None
    connectome: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]] | None
    rng: np.random.Generator


class Rule:
    """Base class: a rule draws ``pairs`` (post, pre) for one pathway; its mask is derived from them
    unless it overrides :meth:`mask` (to keep an established random stream)."""

    name: ClassVar[str]

    def pairs(self, ctx: RuleContext, pre: str, post: str, n_pre: int, n_post: int
              ) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def probability(self, ctx: RuleContext, pre: str, post: str, n_pre: int, n_post: int
                    ) -> np.ndarray | None:
        """Connection probability ``[n_post, n_pre]`` (float32) for ``weight_init = "expected"``; None for
        rules without one (their mask and random initial weights are used)."""
        return None

    def expected_pairs(self, ctx: RuleContext, pre: str, post: str, n_pre: int, n_post: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """:meth:`probability` for sparse storage: ``(post, pre, p)`` of the pairs with ``p >=
        expected_p_min x distance_p_max``; None for rules without one."""
        return None

    def mask(self, ctx: RuleContext, pre: str, post: str, n_pre: int, n_post: int) -> np.ndarray | None:
        """Bool ``[n_post, n_pre]``; ``None`` means all pairs."""
        r, c = self.pairs(ctx, pre, post, n_pre, n_post)
        m = np.zeros((n_post, n_pre), dtype=bool)
        m[r, c] = True
        return m


RULES: dict[str, Rule] = {}


def register(cls: type[Rule]) -> type[Rule]:
    """Class decorator: make a rule available under ``cls.name``."""
    RULES[cls.name] = cls()
    return cls


def rule(name: str) -> Rule:
    if name not in RULES:
        raise DataMismatchError(f"model: unknown connectivity rule {name!r}; known: {', '.join(RULES)}")
    return RULES[name]


@register
class Dense(Rule):
    """Every pair connected (the weights decide)."""

    name = "dense"

    def pairs(self, ctx: RuleContext, pre: str, post: str, n_pre: int, n_post: int
              ) -> tuple[np.ndarray, np.ndarray]:
        return np.divmod(np.arange(n_post * n_pre), n_pre)

    def mask(self, ctx: RuleContext, pre: str, post: str, n_pre: int, n_post: int) -> None:
        return None


@register
class Distance(Rule):
    """P(connect) = p_max exp(-d^2 / 2 sigma^2), sigma by presynaptic sign (``distance_sigma_mm``)."""

    name = "distance"

    def affinity(self, ctx: RuleContext, pre: str, post: str) -> LogAffinity | None:
        return None

    def _args(self, ctx: RuleContext, pre: str, post: str, n_pre: int, n_post: int) -> tuple[Any, ...]:
        cfg = ctx.config
        sigma = cfg.connectivity.distance_sigma_mm["exc" if SHEET_INFO[pre].excitatory else "inh"]
        return (unit_positions(ctx.positions, pre, n_pre), unit_positions(ctx.positions, post, n_post), sigma,
                cfg.connectivity.distance_p_max, ctx.rng)

    def pairs(self, ctx: RuleContext, pre: str, post: str, n_pre: int, n_post: int
              ) -> tuple[np.ndarray, np.ndarray]:
        return distance_pairs(*self._args(ctx, pre, post, n_pre, n_post),
                              log_affinity=self.affinity(ctx, pre, post))

    def mask(self, ctx: RuleContext, pre: str, post: str, n_pre: int, n_post: int) -> np.ndarray:
        return distance_mask(*self._args(ctx, pre, post, n_pre, n_post),
                             log_affinity=self.affinity(ctx, pre, post))

    def probability(self, ctx: RuleContext, pre: str, post: str, n_pre: int, n_post: int) -> np.ndarray:
        pre_xy, post_xy, sigma, p_max, _ = self._args(ctx, pre, post, n_pre, n_post)
        return distance_mask(pre_xy, post_xy, sigma, p_max, None, log_affinity=self.affinity(ctx, pre, post))

    def expected_pairs(self, ctx: RuleContext, pre: str, post: str, n_pre: int, n_post: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pre_xy, post_xy, sigma, p_max, _ = self._args(ctx, pre, post, n_pre, n_post)
        return distance_pairs(pre_xy, post_xy, sigma, p_max, None, log_affinity=self.affinity(ctx, pre, post),
                              p_min=ctx.config.connectivity.expected_p_min * p_max)


@register
class Feature(Distance):
    """Distance times feature similarity, as in the LSV1M model: ``exp(k_ori (cos 2 dtheta - 1))`` when
    both sheets have an orientation, and within L4 ``exp(k_phase (s cos dphi - 1))`` with ``s`` the
    presynaptic sign (like-phase excitation, anti-phase inhibition: push-pull). ``feature_affinity``
    sets ``{"ori": k_ori, "phase": k_phase}``."""

    name = "feature"

    def affinity(self, ctx: RuleContext, pre: str, post: str) -> LogAffinity | None:
        k = ctx.config.connectivity.feature_affinity
        a_pre, a_post = _props(ctx, pre), _props(ctx, post)
        ko = float(k.get("ori", 0.0)) if "ori" in a_pre and "ori" in a_post else 0.0
        in_l4 = SHEET_INFO[pre].layer == SHEET_INFO[post].layer == "L4"
        kp = float(k.get("phase", 0.0)) if in_l4 and "phase" in a_pre and "phase" in a_post else 0.0
        if not ko and not kp:
            raise DataMismatchError(
                f"model: connectivity.rule='feature' for {pre} -> {post} needs per-neuron 'ori' (and in L4 "
                "'phase') of both sheets; the store has none (extract them from the datastore's "
                "neuron annotations, or import pos_ori_phase_dictionary.npz)")
        sign = SHEET_INFO[pre].sign

        def f(post_idx: np.ndarray, pre_idx: np.ndarray) -> np.ndarray:
            out = np.zeros((len(post_idx), len(pre_idx)))
            if ko:
                out += ko * (np.cos(2 * (a_post["ori"][post_idx, None] - a_pre["ori"][None, pre_idx])) - 1)
            if kp:
                dphi = a_post["phase"][post_idx, None] - a_pre["phase"][None, pre_idx]
                out += kp * (sign * np.cos(dphi) - 1)
            return out
        return f


@register
class Simulator(Rule):
    """The simulator's own connectome (the store's ``Connections`` projections) among modelled neurons."""

    name = "simulator"

    def pairs(self, ctx: RuleContext, pre: str, post: str, n_pre: int, n_post: int
              ) -> tuple[np.ndarray, np.ndarray]:
        if ctx.connectome is None:
            raise DataMismatchError(
                "model: connectivity.rule='simulator' needs the simulator's connections (extract a datastore "
                "whose datastore.analysis.pickle holds Connections, then trim it)")
        if (pre, post) not in ctx.connectome:
            has = ", ".join(f"{a}->{b}" for a, b in ctx.connectome)
            raise DataMismatchError(f"model: connectivity.rule='simulator': the store has no projection "
                                    f"{pre} -> {post} (has: {has})")
        r, c, _ = ctx.connectome[(pre, post)]
        r, c = np.asarray(r, np.int64), np.asarray(c, np.int64)
        keep = (r < n_post) & (c < n_pre) & (r >= 0) & (c >= 0)
        if not keep.all():
            raise DataMismatchError(f"model: connectome {pre} -> {post} indexes neurons outside the model")
        key = np.unique(r * n_pre + c)
        return np.divmod(key, n_pre)


def sheet_properties(ctx: RuleContext, sheet: str) -> dict[str, np.ndarray]:
    """Per-neuron properties of one sheet (``ori``, ``phase``, ...) as given (may hold NaN)."""
    props = {normalize_sheet_name(k): v for k, v in (ctx.properties or {}).items()}
    return dict(props.get(sheet, {}))


def _props(ctx: RuleContext, sheet: str) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, np.float64) for k, v in sheet_properties(ctx, sheet).items()
            if v is not None and np.all(np.isfinite(v))}


def unit_positions(positions: Mapping[str, np.ndarray] | None, sheet: str, n: int) -> np.ndarray:
    """Positions ``[n, D >= 2]`` of one sheet's modelled neurons; clear errors when missing."""
    if positions is None:
        raise DataMismatchError(
            "model: distance-dependent (or retinotopic) connectivity needs neuron positions; none were given")
    pos = {k.replace("L23", "L2/3"): v for k, v in positions.items()}
    if sheet not in pos:
        raise DataMismatchError(f"model: no positions for sheet {sheet}")
    p = np.asarray(pos[sheet])
    if p.ndim != 2 or p.shape[0] != n or p.shape[1] < 2:
        raise DataMismatchError(f"model: positions of {sheet} must be [{n}, D >= 2], got {list(p.shape)}")
    return p
