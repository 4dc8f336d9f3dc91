"""The E/I-constrained LGN -> L4 -> L2/3 recurrent network (fast path, reference, losses)."""

from corticalrnn.model.config import ModelConfig, PathwayConfig, TeacherForcingConfig, default_pathways
from corticalrnn.model.loss import mse, poisson_nll
from corticalrnn.model.network import CorticalRNN

__all__ = ["CorticalRNN", "ModelConfig", "PathwayConfig", "TeacherForcingConfig", "default_pathways",
           "mse", "poisson_nll"]
