"""Model configs for tests, written with the short flat names (``connectivity="distance"``) that
:func:`corticalrnn.model.config.to_dotted` maps to today's sections (no deprecation path involved)."""

from __future__ import annotations

from typing import Any

from corticalrnn.model.config import ModelConfig, to_dotted


def model_config(**flat: Any) -> ModelConfig:
    """``ModelConfig`` with the given flat-named values (``model_config(neuron_model="gru")``)."""
    return ModelConfig().with_values(to_dotted(flat))
