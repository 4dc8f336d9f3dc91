"""Gabor receptive fields of V1 cells over LGN positions: one definition for the synthetic cortex
(numpy) and the model's identity-conditioned input (torch, differentiable).

Conventions (those of ``corticalrnn.sheets.MOZAIK_ANNOTATIONS`` properties): ``ori`` in radians
(period pi) is the direction along which the carrier varies; ``phase`` in radians (period 2 pi);
``frequency`` in cycles per unit of the LGN coordinates; ``size`` the Gaussian envelope's standard
deviation along the carrier, in the same units; ``aspect_ratio`` scales the envelope across it
(``sigma_across = size / aspect_ratio``).

An ON cell at offset ``d`` from the RF centre contributes in proportion to ``relu(G(d))``, an OFF
cell to ``relu(-G(d))``: the cell's net drive from an image is then the Gabor filter response
(a simple cell), while uniform luminance drives ON and OFF inputs equally.
"""

from __future__ import annotations

from typing import Any


def gabor(dx: Any, dy: Any, ori: Any, phase: Any, frequency: Any, size: Any, aspect_ratio: Any,
          xp: Any) -> Any:
    """Gabor value at offsets ``(dx, dy)`` from the centre; every argument broadcasts.

    ``xp`` is the array namespace (``numpy`` or ``torch``): the same code serves both, so the model's
    input weights and the generator's connection probabilities follow one formula.
    """
    u, v = _rotate(dx, dy, ori, xp)
    env = xp.exp(-(u * u + (aspect_ratio * v) ** 2) / (2 * size * size))
    return env * xp.cos(2 * 3.141592653589793 * frequency * u + phase)


def envelope(dx: Any, dy: Any, ori: Any, size: Any, aspect_ratio: Any, xp: Any) -> Any:
    """The Gabor's Gaussian envelope alone (non-selective part of the afferent weights)."""
    u, v = _rotate(dx, dy, ori, xp)
    return xp.exp(-(u * u + (aspect_ratio * v) ** 2) / (2 * size * size))


def orientation_similarity(ori_post: Any, ori_pre: Any, xp: Any) -> Any:
    """``cos(2 (theta_post - theta_pre))``: 1 for equal orientations, -1 for orthogonal ones."""
    return xp.cos(2 * (ori_post - ori_pre))


def _rotate(dx: Any, dy: Any, ori: Any, xp: Any) -> tuple[Any, Any]:
    """Offsets in the RF's frame: along the carrier (``u``) and across it (``v``)."""
    c, s = xp.cos(ori), xp.sin(ori)
    return dx * c + dy * s, -dx * s + dy * c
