"""LGN -> V1 input-connectivity rules, registered by name (``connectivity.input_rule`` of the model
config): each rule makes the weights of one input block (rows: the V1 sheets a block feeds, columns:
the LGN sheets), either as a mask for the generic signed weight (:meth:`InputRule.mask`) or as a
module of its own (:meth:`InputRule.weight`, e.g. identity-conditioned Gabor receptive fields).

Adding a rule is one class here with :func:`register_input`, plus its name in
``model.config.INPUT_MASK_KINDS`` (torch-free validation; a test checks the two agree).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import nn

from corticalrnn.errors import DataMismatchError
from corticalrnn.model.connectivity import RuleContext, sheet_properties, unit_positions
from corticalrnn.model.graph import Block, Graph, distance_mask
from corticalrnn.model.identity import GaborInputWeight, default_rf_size
from corticalrnn.model.lgn_embedding import EmbeddingInputWeight
from corticalrnn.sheets import input_polarity, surface_xy


class InputRule:
    """Base class: all pairs of the block's pathways (``Graph.structure``), generic signed weights."""

    name: ClassVar[str]

    def mask(self, g: Graph, b: Block, ctx: RuleContext) -> np.ndarray | None:
        """Bool ``[rows, cols]`` of the block (``None``: every entry)."""
        return g.structure(b)

    def weight(self, g: Graph, b: Block, ctx: RuleContext) -> nn.Module | None:
        """The block's weight module, or ``None`` for a signed weight on :meth:`mask`."""
        return None


INPUT_RULES: dict[str, InputRule] = {}


def register_input(cls: type[InputRule]) -> type[InputRule]:
    """Class decorator: make an input rule available under ``cls.name``."""
    INPUT_RULES[cls.name] = cls()
    return cls


def input_rule(name: str) -> InputRule:
    try:
        return INPUT_RULES[name]
    except KeyError:
        raise DataMismatchError(f"model: unknown input connectivity {name!r} (known: "
                                f"{', '.join(INPUT_RULES)})") from None


def _sheets_xy(g: Graph, ctx: RuleContext, sheets: list[str]) -> np.ndarray:
    return np.concatenate([surface_xy(unit_positions(ctx.positions, s, g.sizes[s])) for s in sheets])


@register_input
class DenseInput(InputRule):
    name = "dense"


@register_input
class RetinotopicInput(InputRule):
    """Gaussian in cortical mm (``input_sigma_mm``) around each V1 neuron, the LGN grid mapped onto
    the V1 sheet (:func:`lgn_grid_to_mm`, side ``lgn_extent_mm`` or the V1 positions' extent)."""

    name = "retinotopic"

    def mask(self, g: Graph, b: Block, ctx: RuleContext) -> np.ndarray | None:
        cc = ctx.config.connectivity
        m = g.structure(b)
        if m is None:
            m = np.ones(b.shape, dtype=bool)
        for p in b.pathways:
            post_xy = unit_positions(ctx.positions, p.post, g.sizes[p.post])
            extent = cc.lgn_extent_mm or _v1_extent_mm(g, ctx)
            pre_xy = lgn_grid_to_mm(unit_positions(ctx.positions, p.pre, g.sizes[p.pre]), extent)
            rs, cs = g.slice(p.post), g.slice(p.pre)
            m[rs.start - b.row0:rs.stop - b.row0, cs.start - b.col0:cs.stop - b.col0] = distance_mask(
                pre_xy, post_xy, cc.input_sigma_mm, cc.distance_p_max, ctx.rng)
        return m


@register_input
class GaborInput(InputRule):
    """Identity-conditioned weights (:class:`~corticalrnn.model.identity.GaborInputWeight`): each
    unit's LGN weights are a Gabor RF from its recorded orientation, phase, frequency and size."""

    name = "gabor"

    def weight(self, g: Graph, b: Block, ctx: RuleContext) -> nn.Module | None:
        cfg = ctx.config
        posts = _block_rows(g, b)
        pres = [s for s in g.inputs if g.offset[s] >= b.col0 and g.offset[s] + g.sizes[s] <= b.col1]
        unit_xy = _sheets_xy(g, ctx, posts)
        props = {k: np.concatenate([np.asarray(sheet_properties(ctx, s).get(k, np.full(g.sizes[s], np.nan)),
                                               np.float64) for s in posts])
                 for k in ("ori", "phase", "frequency", "size", "aspect_ratio")}
        row_pop = np.concatenate([np.full(g.sizes[s], i) for i, s in enumerate(posts)])
        cc = cfg.connectivity
        if cc.lgn_positions == "learned":
            # no LGN positions in the data: parameters, drawn uniformly over the units' bounding box
            lo, hi = unit_xy.min(0), unit_xy.max(0)
            lgn_xy = ctx.rng.uniform(lo, hi, (b.col1 - b.col0, 2))
            polarity = input_polarity(pres, [g.sizes[s] for s in pres])
            size = cc.rf_size or default_rf_size(lgn_xy, polarity)
            return GaborInputWeight(unit_xy, props, row_pop, len(posts), lgn_xy, polarity,
                                    cfg.architecture.input_gain, size, cc.rf_frequency or 1.0 / (4.0 * size),
                                    learn_positions=True)
        missing = [s for s in pres if ctx.positions is None or
                   s not in {k.replace("L23", "L2/3") for k in ctx.positions}]
        if missing:
            raise DataMismatchError(
                f"model: connectivity.input_rule='gabor' needs the positions of the LGN inputs "
                f"({', '.join(missing)} have none in the store; the thesis .npz layout records none): use "
                "connectivity.lgn_positions = 'inferred' (laid out from the training data) or 'learned', "
                "or input_rule 'dense', 'retinotopic' or 'embedding', or extract the Mozaik datastores, "
                "which record them")
        lgn_xy = _sheets_xy(g, ctx, pres)
        polarity = input_polarity(pres, [g.sizes[s] for s in pres])
        size = cc.rf_size or default_rf_size(lgn_xy, polarity)
        return GaborInputWeight(unit_xy, props, row_pop, len(posts), lgn_xy, polarity,
                                cfg.architecture.input_gain, size, cc.rf_frequency or 1.0 / (4.0 * size),
                                footprint=cc.input_footprint if cc.input_storage == "sparse" else None,
                                unit_frame=cc.lgn_positions == "inferred")


@register_input
class EmbeddingInput(InputRule):
    """Weights from the units' labels and a learned embedding of each LGN input
    (:class:`~corticalrnn.model.lgn_embedding.EmbeddingInputWeight`): identity-conditioned input without
    LGN positions (the thesis .npz layout records none)."""

    name = "embedding"

    def weight(self, g: Graph, b: Block, ctx: RuleContext) -> nn.Module | None:
        cc = ctx.config.connectivity
        posts = _block_rows(g, b)
        if ctx.positions is None or any(s not in {k.replace("L23", "L2/3") for k in ctx.positions}
                                        for s in posts):
            raise DataMismatchError("model: connectivity.input_rule='embedding' needs the cortical positions "
                                    f"of the units receiving LGN input ({', '.join(posts)})")

        def prop(key: str) -> np.ndarray:
            return np.concatenate([np.asarray(sheet_properties(ctx, s).get(key, np.full(g.sizes[s], np.nan)),
                                              np.float64) for s in posts])

        row_pop = np.concatenate([np.full(g.sizes[s], i) for i, s in enumerate(posts)])
        gen = torch.Generator().manual_seed(int(ctx.rng.integers(2**62)))
        return EmbeddingInputWeight(_sheets_xy(g, ctx, posts), prop("ori"), prop("phase"), row_pop,
                                    len(posts), b.col1 - b.col0, ctx.config.architecture.input_gain,
                                    cc.embedding_dim, cc.embedding_frequencies, cc.embedding_scale_mm,
                                    cc.embedding_hidden, gen)


def _block_rows(g: Graph, b: Block) -> list[str]:
    """The V1 sheets whose units are the rows of block ``b``."""
    return [s for s in g.v1_order if g.offset[s] >= b.row0 and g.offset[s] + g.sizes[s] <= b.row1]


def _v1_extent_mm(g: Graph, ctx: RuleContext) -> float:
    """Side of the bounding box of all modelled V1 neurons (x, y in mm)."""
    xy = _sheets_xy(g, ctx, list(g.v1_order))
    return float((xy.max(0) - xy.min(0)).max())


def lgn_grid_to_mm(ij: np.ndarray, extent_mm: float) -> np.ndarray:
    """LGN grid indices [N, >=2] -> cortical x, y in mm: ``((ij + 0.5) / side - 0.5) * extent``.

    ``side`` is the grid side (largest index + 1), the grid spanning the V1 sheet's extent centred at 0,
    as the synthetic cortex places its LGN.
    """
    ij = surface_xy(ij)
    side = float(ij.max()) + 1.0
    return ((ij + 0.5) / side - 0.5) * extent_mm
