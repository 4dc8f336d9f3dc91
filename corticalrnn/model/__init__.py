"""The E/I-constrained LGN -> L4 -> L2/3 recurrent network (fast path, reference, losses)."""

from corticalrnn.model.config import (
    ArchitectureConfig,
    ComputeConfig,
    ConnectivityConfig,
    ModelConfig,
    NeuronConfig,
    PathwayConfig,
    default_pathways,
)
from corticalrnn.model.loss import mse, poisson_nll
from corticalrnn.model.network import CorticalRNN

__all__ = ["ArchitectureConfig", "ComputeConfig", "ConnectivityConfig", "CorticalRNN", "ModelConfig",
           "NeuronConfig", "PathwayConfig", "default_pathways", "mse", "poisson_nll"]
