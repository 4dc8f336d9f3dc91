"""Losses on observed neurons: Poisson negative log-likelihood (default) and mean squared error."""

from __future__ import annotations

import torch

from corticalrnn.errors import DataMismatchError

EPS = 1e-8


def _weights(rates: torch.Tensor, counts: torch.Tensor, observed_mask: torch.Tensor) -> torch.Tensor:
    if rates.shape != counts.shape:
        raise DataMismatchError(f"loss: rates {list(rates.shape)} and counts {list(counts.shape)} differ")
    m = observed_mask.to(device=rates.device, dtype=rates.dtype)
    try:
        torch.broadcast_shapes(m.shape, rates.shape)
    except RuntimeError as exc:
        raise DataMismatchError(f"loss: observed_mask {list(m.shape)} does not broadcast to "
                                f"{list(rates.shape)}") from exc
    return m


def _mean(per_element: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    n = m.expand_as(per_element).sum().clamp_min(1)
    return (per_element * m).sum() / n


def poisson_nll(rates: torch.Tensor, counts: torch.Tensor, observed_mask: torch.Tensor,
                full: bool = False) -> torch.Tensor:
    """Mean over observed (window, bin, neuron) of ``rate - count * log(rate)``; ``full`` adds
    ``log(count!)``. ``observed_mask`` broadcasts to the rates (bool ``[N]``, ``[B,N]`` or ``[B,T,N]``)."""
    m = _weights(rates, counts, observed_mask)
    r = rates.float()
    c = counts.to(r.dtype) if rates.dtype != torch.float64 else counts.double()
    r = r if rates.dtype != torch.float64 else rates
    nll = r - c * torch.log(r + EPS)
    if full:
        nll = nll + torch.lgamma(c + 1)
    return _mean(nll, m.to(nll.dtype))


def mse(rates: torch.Tensor, counts: torch.Tensor, observed_mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over observed (window, bin, neuron)."""
    m = _weights(rates, counts, observed_mask)
    d = rates - counts.to(rates.dtype)
    return _mean(d * d, m)


#: losses by name (the training config's ``objective.loss``)
LOSSES = {"poisson": poisson_nll, "mse": mse}
