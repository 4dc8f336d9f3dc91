"""Per-population neuron models: synaptic current ``I [B, n]`` -> non-negative rate ``[B, n]``.

All neurons of a population share the model's parameters ("one small network per layer"):

* ``LeakyUnit`` (default): ``v <- v + a (I - v)``, ``r = softplus(v)``, ``a = 1 - exp(-bin/tau)`` with a
  learnable time constant ``tau`` per population. The fast path implements the same equations in its
  custom autograd function; this module holds tau and is what the generic loop / reference call.
* ``MLPUnit``: the leaky membrane followed by a shared scalar MLP nonlinearity
  ``r = softplus(v + w2 . tanh(w1 v + b1))`` (starts close to the leaky unit).
* ``AdaptiveUnit``: the leaky membrane with spike-frequency adaptation, ``v <- v + a (I - g w - v)``,
  ``r = softplus(v)``, ``w <- w + b (r - w)`` with a learnable adaptation time constant (``b = 1 -
  exp(-bin/tau_w)``) and strength ``g >= 0`` per population: a sustained input step gives an onset
  transient that decays to a lower sustained rate (cortical responses to a static image).
* ``GRUUnit``: a GRU cell with ``hidden`` units per neuron, input = the current, shared weights;
  ``r = softplus(w_out . h + b_out)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

State = torch.Tensor


class LeakyUnit(nn.Module):
    """Leaky rate unit with a learnable time constant (ms) per population."""

    #: the fast path's fused loop (``recurrence.LeakyRecurrence``) implements exactly these equations;
    #: units that are not ``fused`` run the generic loop through their own :meth:`step`
    fused: ClassVar[bool] = True

    def __init__(self, tau_ms: float, bin_ms: float, learn_tau: bool = True) -> None:
        super().__init__()
        self.bin_ms = bin_ms
        log_tau = torch.tensor(math.log(tau_ms))
        if learn_tau:
            self.log_tau = nn.Parameter(log_tau)
        else:
            self.register_buffer("log_tau", log_tau)

    def alpha(self) -> torch.Tensor:
        """Per-step update fraction in (0, 1)."""
        return -torch.expm1(-self.bin_ms / self.log_tau.exp())

    def tau_ms(self) -> float:
        return float(self.log_tau.exp())

    def initial(self, v0: torch.Tensor) -> tuple[torch.Tensor, State]:
        return F.softplus(v0), v0

    def step(self, current: torch.Tensor, v: State, alpha: torch.Tensor) -> tuple[torch.Tensor, State]:
        v = v + alpha * (current - v)
        return F.softplus(v), v

    def current_for_rate(self, rate: torch.Tensor) -> torch.Tensor:
        """The constant current at which the unit rests at ``rate`` (> 0)."""
        return rate + torch.log(-torch.expm1(-rate))  # softplus^-1


class MLPUnit(LeakyUnit):
    """Leaky membrane + shared learned scalar nonlinearity (residual MLP, ``hidden`` tanh units)."""

    fused: ClassVar[bool] = False
    current_for_rate = None  # no closed form through the MLP: centered starts keep the bias

    def __init__(self, tau_ms: float, bin_ms: float, hidden: int, learn_tau: bool = True,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(tau_ms, bin_ms, learn_tau)
        self.w1 = nn.Parameter(torch.randn(hidden, generator=generator))
        self.b1 = nn.Parameter(torch.randn(hidden, generator=generator) * 0.5)
        self.w2 = nn.Parameter(torch.randn(hidden, generator=generator) * 0.05)

    def _out(self, v: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(v.unsqueeze(-1) * self.w1 + self.b1)
        return F.softplus(v + (h * self.w2).sum(-1))

    def initial(self, v0: torch.Tensor) -> tuple[torch.Tensor, State]:
        return self._out(v0), v0

    def step(self, current: torch.Tensor, v: State, alpha: torch.Tensor) -> tuple[torch.Tensor, State]:
        v = v + alpha * (current - v)
        return self._out(v), v


class AdaptiveUnit(LeakyUnit):
    """Leaky rate unit with spike-frequency adaptation (a slow negative feedback of its own rate)."""

    fused: ClassVar[bool] = False

    def __init__(self, tau_ms: float, bin_ms: float, learn_tau: bool = True, tau_w_ms: float = 100.0,
                 strength: float = 1.0) -> None:
        super().__init__(tau_ms, bin_ms, learn_tau)
        self.log_tau_w = nn.Parameter(torch.tensor(math.log(tau_w_ms)))
        self.raw_g = nn.Parameter(torch.tensor(math.log(math.expm1(strength))))  # softplus^-1

    def strength(self) -> torch.Tensor:
        return F.softplus(self.raw_g)

    def beta(self) -> torch.Tensor:
        return -torch.expm1(-self.bin_ms / self.log_tau_w.exp())

    def initial(self, v0: torch.Tensor) -> tuple[torch.Tensor, State]:
        """At rest: the adaptation variable equals the resting rate ``softplus(v0)``."""
        r = F.softplus(v0)
        return r, torch.stack([v0, r], -1)

    def current_for_rate(self, rate: torch.Tensor) -> torch.Tensor:
        """At rest ``w = r``: the current is ``softplus^-1(r) + g r``."""
        return super().current_for_rate(rate) + self.strength().to(rate.dtype) * rate

    def step(self, current: torch.Tensor, state: State, alpha: torch.Tensor) -> tuple[torch.Tensor, State]:
        v, w = state[..., 0], state[..., 1]
        v = v + alpha * (current - self.strength() * w - v)
        r = F.softplus(v)
        w = w + self.beta() * (r - w)
        return r, torch.stack([v, w], -1)


class GRUUnit(nn.Module):
    """GRU cell per neuron (scalar input = current), weights shared across the population."""

    fused: ClassVar[bool] = False

    def __init__(self, hidden: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        k = 1.0 / math.sqrt(hidden)
        self.hidden = hidden
        self.w_in = nn.Parameter(torch.randn(3 * hidden, generator=generator) * k + torch.cat(
            [torch.zeros(2 * hidden), torch.ones(hidden)]))
        self.w_hh = nn.Parameter(torch.randn(hidden, 3 * hidden, generator=generator) * k)
        self.b = nn.Parameter(torch.zeros(3 * hidden))
        self.w_out = nn.Parameter(torch.full((hidden,), 1.0 / hidden) + torch.randn(
            hidden, generator=generator) * 0.01 * k)
        self.b_out = nn.Parameter(torch.zeros(()))

    def alpha(self) -> torch.Tensor:
        return torch.ones(())

    def _rate(self, h: torch.Tensor) -> torch.Tensor:
        return F.softplus(h @ self.w_out + self.b_out)

    def initial(self, v0: torch.Tensor) -> tuple[torch.Tensor, State]:
        h = torch.zeros(*v0.shape, self.hidden, dtype=v0.dtype, device=v0.device)
        return self._rate(h), h

    def step(self, current: torch.Tensor, h: State, alpha: torch.Tensor) -> tuple[torch.Tensor, State]:
        H = self.hidden
        gi = current.unsqueeze(-1) * self.w_in + self.b
        gh = h @ self.w_hh
        z = torch.sigmoid(gi[..., :H] + gh[..., :H])
        rg = torch.sigmoid(gi[..., H:2 * H] + gh[..., H:2 * H])
        n = torch.tanh(gi[..., 2 * H:] + rg * gh[..., 2 * H:])
        h = (1 - z) * n + z * h
        return self._rate(h), h


UnitFactory = Callable[[float, float, int, bool, "torch.Generator | None"], nn.Module]
#: neuron models by name (``ModelConfig.neuron_model``): factory(tau_ms, bin_ms, hidden, learn_tau, generator)
UNITS: dict[str, UnitFactory] = {}


def register_unit(name: str) -> Callable[[UnitFactory], UnitFactory]:
    """Decorator: make a neuron model available under ``name`` (add it to ``config.NEURON_MODELS``)."""
    def add(factory: UnitFactory) -> UnitFactory:
        UNITS[name] = factory
        return factory
    return add


@register_unit("leaky")
def _leaky(tau_ms: float, bin_ms: float, hidden: int, learn_tau: bool,
           generator: torch.Generator | None) -> nn.Module:
    return LeakyUnit(tau_ms, bin_ms, learn_tau)


@register_unit("mlp")
def _mlp(tau_ms: float, bin_ms: float, hidden: int, learn_tau: bool,
         generator: torch.Generator | None) -> nn.Module:
    return MLPUnit(tau_ms, bin_ms, hidden, learn_tau, generator)


@register_unit("adaptive")
def _adaptive(tau_ms: float, bin_ms: float, hidden: int, learn_tau: bool,
              generator: torch.Generator | None) -> nn.Module:
    return AdaptiveUnit(tau_ms, bin_ms, learn_tau)


@register_unit("gru")
def _gru(tau_ms: float, bin_ms: float, hidden: int, learn_tau: bool,
         generator: torch.Generator | None) -> nn.Module:
    return GRUUnit(hidden, generator)


def make_unit(kind: str, tau_ms: float, bin_ms: float, hidden: int, learn_tau: bool,
              generator: torch.Generator | None) -> nn.Module:
    """A unit of the registered neuron model ``kind``."""
    return UNITS[kind](tau_ms, bin_ms, hidden, learn_tau, generator)
