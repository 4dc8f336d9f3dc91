"""A weak prior on the mean rates of hidden (unobserved) units, from observed data only.

Hidden units get no direct loss, so nothing pins their overall rate: they drift to whatever
scale helps the observed units, which ruins their Poisson likelihood even when their time
course is right. :class:`HiddenRatePrior` pulls each hidden unit's mean rate over a batch
towards the mean observed count of its population (sheet) in the same batch, on a log scale:

    penalty = mean_h (log(mean_bt rate_h + eps) - log(mean_{bt, o in pop(h)} count_o + eps))^2

It uses only the observed neurons' data, so a model trained with it has no oracle knowledge of
the hidden neurons.
"""

from __future__ import annotations

import numpy as np
import torch

from corticalrnn.errors import CorticalRNNError

EPS = 1e-3  # counts per bin; keeps the log finite for silent populations


class HiddenRatePrior:
    """``prior(rates, target)`` -> scalar penalty; ``labels`` is the population of every model unit."""

    def __init__(self, labels: np.ndarray, observed: torch.Tensor) -> None:
        labels = np.asarray(labels)
        observed = observed.to(torch.bool).cpu()
        if labels.shape != tuple(observed.shape):
            raise CorticalRNNError(
                f"rate prior: {labels.size} population labels for {observed.numel()} units")
        names = sorted(set(labels.tolist()))
        pop = torch.as_tensor(np.searchsorted(names, labels), dtype=torch.long)
        hidden = ~observed
        # only populations with observed neurons give a target; hidden units of others are left free
        has_obs = torch.zeros(len(names), dtype=torch.bool).index_fill_(0, pop[observed], True)
        keep = hidden & has_obs[pop]
        self.n_pop = len(names)
        self.pop, self.observed, self.hidden = pop, observed, keep

    def __call__(self, rates: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        dev = rates.device
        pop, obs, hid = self.pop.to(dev), self.observed.to(dev), self.hidden.to(dev)
        if not bool(hid.any()):
            return rates.new_zeros(())
        obs_mean = target.detach().float().mean(dim=(0, 1))[obs]
        sums = torch.zeros(self.n_pop, device=dev).index_add_(0, pop[obs], obs_mean)
        counts = torch.zeros(self.n_pop, device=dev).index_add_(0, pop[obs], torch.ones_like(obs_mean))
        want = sums / counts.clamp_min(1)
        have = rates.float().mean(dim=(0, 1))[hid]
        return ((torch.log(have + EPS) - torch.log(want[pop[hid]] + EPS)) ** 2).mean()
