"""corticalrnn: biologically constrained recurrent networks fitted to simulated cat V1.

Importing the package is cheap and does not import torch; submodules do so when they need it.
"""

__version__ = "0.1.0"
