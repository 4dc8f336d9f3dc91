"""Dale's law: sign-constrained weight blocks (projected or reparametrised) and balanced init.

* ``projected``: the parameter *is* the signed weight (fp32 master copy); :meth:`SignedWeight.project_`
  clamps it to the column signs and zeroes masked entries after each optimiser step. The forward uses
  the parameter as is (plain GEMMs, exact zeros), masked gradients are zeroed by a hook.
* ``reparam``: the parameter ``V`` is free; the weight is ``sign * softplus(V)`` (or ``|V|``) times the
  mask, built once per forward.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from corticalrnn.model.sparse import Pattern, pattern_buffers, pattern_from_pairs


def softplus_inv(y: torch.Tensor) -> torch.Tensor:
    """Inverse of softplus for y > 0 (stable for large y)."""
    return y + torch.log(-torch.expm1(-y))


class SignedWeight(nn.Module):
    """One weight block with fixed column (presynaptic) signs and an optional 0/1 mask."""

    def __init__(self, magnitude: torch.Tensor, col_sign: np.ndarray, mask: np.ndarray | None,
                 mode: str, reparam: str) -> None:
        super().__init__()
        self.mode, self.reparam = mode, reparam
        sign = torch.as_tensor(col_sign, dtype=torch.float32)
        self.register_buffer("sign", sign, persistent=False)
        self.n_exc = int((col_sign > 0).sum())
        # columns are grouped by population, so E and I columns form runs; store them for fast clamps
        self._runs = _sign_runs(col_sign)
        # the mask is rebuilt from the configuration, never saved (N^2 bytes); a checkpoint keeps its
        # fingerprint so that loading into a model that built another mask fails instead of scrambling
        self.register_buffer("mask", None if mask is None else torch.as_tensor(mask, dtype=torch.bool),
                             persistent=False)
        if self.mask is not None:
            self.register_buffer("fingerprint", _fingerprint(self.mask.reshape(-1).nonzero().squeeze(1)))
        self._pattern_keys: list[str] = []
        self.param = _initial_param(magnitude.abs() if mask is None else magnitude.abs() * self.mask,
                                    sign, mode, reparam)
        if mode == "projected" and mask is not None:
            self.param.register_hook(self._mask_grad)

    def enable_pattern(self) -> None:
        """Keep the mask's sparsity pattern (CSR indices, built once) for the sparse kernels."""
        if self.mask is not None and not self._pattern_keys:
            self._pattern_keys = _register_pattern(self, pattern_buffers(self.mask))

    def pattern(self) -> Pattern | None:
        """The mask's :class:`Pattern` (None unless :meth:`enable_pattern` was called)."""
        return _pattern(self, tuple(self.mask.shape)) if self._pattern_keys else None

    stored_sparse = False

    def dense(self) -> torch.Tensor:
        """The dense signed weight (:meth:`weight` itself for dense storage)."""
        return self.weight()

    @property
    def n_synapses(self) -> int:
        return int(self.mask.sum()) if self.mask is not None else int(self.param.numel())

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Checks the mask's fingerprint; accepts the parameter packed as its values on the mask
        (``corticalrnn.train.checkpoint.pack_masked``) and checkpoints that still hold the mask."""
        if self.mask is not None:
            name = prefix.rstrip(".")
            saved_mask = state_dict.pop(prefix + "mask", None)  # checkpoints before the fingerprint
            if saved_mask is not None and not torch.equal(saved_mask.cpu(), self.mask.cpu()):
                args[-1].append(f"{name}: the checkpoint's mask differs from the one this model built")
                return
            saved = state_dict.setdefault(prefix + "fingerprint", self.fingerprint)
            if not torch.equal(saved.cpu(), self.fingerprint.cpu()):
                args[-1].append(f"{name}: the checkpoint's synapse mask differs from the one this model "
                                "built (other positions, seed, sizes or connectivity settings)")
                return
            key = prefix + "param"
            if key in state_dict:
                state_dict[key] = unpack_masked_tensor(state_dict[key], self.mask)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def _mask_grad(self, g: torch.Tensor) -> torch.Tensor:
        return g * self.mask

    def weight(self) -> torch.Tensor:
        """The signed, masked weight (the parameter itself in projected mode)."""
        w = _signed(self.param, self.sign, self.mode, self.reparam)
        return w if self.mode == "projected" or self.mask is None else w * self.mask

    @torch.no_grad()
    def project_(self) -> None:
        """Clamp to the column signs and re-apply the mask (projected mode; no-op otherwise)."""
        if self.mode != "projected":
            return
        p = self.param
        for c0, c1, s in self._runs:
            if s > 0:
                p[:, c0:c1].clamp_(min=0)
            else:
                p[:, c0:c1].clamp_(max=0)
        if self.mask is not None:
            p.mul_(self.mask)

    @torch.no_grad()
    def violations(self) -> int:
        """Entries with the wrong sign or non-zero where masked out."""
        w = self.weight()
        bad = (w * self.sign.to(w.dtype)) < 0
        if self.mask is not None:
            bad |= (w != 0) & ~self.mask
        return int(bad.sum())


class SparseSignedWeight(nn.Module):
    """A masked weight block stored as its values on the mask's fixed pattern: parameters, gradients
    and optimiser state are ``[nnz]``, not ``[rows, cols]`` (``connectivity.storage =
    "sparse"``). Same modes as :class:`SignedWeight`; :meth:`weight` returns the signed values."""

    stored_sparse = True

    def __init__(self, magnitude: torch.Tensor, col_sign: np.ndarray, rows: torch.Tensor, cols: torch.Tensor,
                 shape: tuple[int, int], mode: str, reparam: str) -> None:
        """``magnitude [nnz]`` of the entries ``(rows[k], cols[k])`` (sorted row-major)."""
        super().__init__()
        self.mode, self.reparam = mode, reparam
        self.shape = tuple(shape)
        bufs = pattern_from_pairs(rows, cols, self.shape)
        self._pattern_keys = _register_pattern(self, bufs)
        sign = torch.as_tensor(col_sign, dtype=torch.float32)[cols]
        self.register_buffer("sign", sign, persistent=False)  # per stored value
        # the pattern is rebuilt from the configuration, not saved: a checkpoint keeps this fingerprint
        # so that loading it into a model with another pattern fails instead of scrambling weights
        self.register_buffer("fingerprint", _fingerprint(bufs["flat"]))
        self.param = _initial_param(magnitude.abs(), sign, mode, reparam)

    def pattern(self) -> Pattern:
        return _pattern(self, self.shape)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        saved = state_dict.get(prefix + "fingerprint")
        if saved is not None and not torch.equal(saved.cpu(), self.fingerprint.cpu()):
            args[-1].append(f"{prefix.rstrip('.')}: the checkpoint's synapse pattern differs from the one "
                            "this model built (other positions, seed, sizes or connectivity settings)")
            return
        super()._load_from_state_dict(state_dict, prefix, *args)

    def weight(self) -> torch.Tensor:
        """The signed values ``[nnz]`` (the parameter itself in projected mode)."""
        return _signed(self.param, self.sign, self.mode, self.reparam)

    def dense(self) -> torch.Tensor:
        """The dense signed weight ``[rows, cols]`` (differentiable; for tests and inspection)."""
        return self.pattern().dense(self.weight())

    @property
    def n_synapses(self) -> int:
        return int(self.param.numel())

    @torch.no_grad()
    def project_(self) -> None:
        if self.mode == "projected":
            s = self.sign.to(self.param.dtype)
            self.param.mul_(s).clamp_(min=0).mul_(s)

    @torch.no_grad()
    def violations(self) -> int:
        return int(((self.weight() * self.sign.to(self.param.dtype)) < 0).sum())


def _fingerprint(flat: torch.Tensor) -> torch.Tensor:
    """int64 ``[3]`` of a pattern's sorted row-major flat positions: count, sum, sum of squares mod
    65521 (cheap, and any changed, added or dropped synapse changes it in practice)."""
    flat = flat.to(torch.int64)
    return torch.stack([torch.tensor(flat.numel()), flat.sum(), (flat % 65521).pow(2).sum()])


def unpack_masked_tensor(value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A tensor of the mask's shape from ``value``: as is when it has that shape, else ``value`` holds
    the entries at the mask's True positions (row-major; ``checkpoint.pack_masked``) and the rest is 0."""
    if value.shape == mask.shape:
        return value
    if value.dim() != 1 or value.numel() != int(mask.sum()):
        return value  # load_state_dict reports the shape mismatch
    out = torch.zeros(mask.shape, dtype=value.dtype, device=value.device)
    out[mask.to(value.device)] = value
    return out


def _initial_param(mag: torch.Tensor, sign: torch.Tensor, mode: str, reparam: str) -> nn.Parameter:
    """The parameter for non-negative magnitudes ``mag``: the signed weight (projected), or the free
    parameter whose softplus / abs gives ``mag`` (reparametrised; floored at 1e-6)."""
    if mode == "projected":
        return nn.Parameter(mag * sign)
    mag = torch.maximum(mag, torch.full_like(mag, 1e-6))
    return nn.Parameter(softplus_inv(mag) if reparam == "softplus" else mag.clone())


def _signed(param: torch.Tensor, sign: torch.Tensor, mode: str, reparam: str) -> torch.Tensor:
    """The signed weight of a parameter (see :func:`_initial_param`); no mask applied."""
    if mode == "projected":
        return param
    mag = F.softplus(param) if reparam == "softplus" else param.abs()
    return mag * sign.to(mag.dtype)


def _register_pattern(module: nn.Module, bufs: dict[str, torch.Tensor]) -> list[str]:
    """Register a pattern's index tensors as non-persistent ``pattern_*`` buffers; returns their keys."""
    for k, v in bufs.items():
        module.register_buffer(f"pattern_{k}", v, persistent=False)
    return list(bufs)


def _pattern(module: nn.Module, shape: tuple[int, int]) -> Pattern:
    return Pattern(shape, **{k: getattr(module, f"pattern_{k}") for k in module._pattern_keys})


def _sign_runs(col_sign: np.ndarray) -> list[tuple[int, int, int]]:
    runs, start = [], 0
    for i in range(1, len(col_sign) + 1):
        if i == len(col_sign) or col_sign[i] != col_sign[start]:
            runs.append((start, i, int(col_sign[start])))
            start = i
    return runs


def balanced_magnitudes(shapes: list[tuple[int, int]], col_signs: list[np.ndarray],
                        masks: list[np.ndarray | None], generator: torch.Generator,
                        base: list[np.ndarray | None] | None = None) -> list[torch.Tensor]:
    """Random non-negative magnitudes for blocks that share rows, rescaled so that for every row
    the summed inhibitory weight equals the summed excitatory weight (E/I balance; zero row sums
    remove the outlier eigenvalue, Rajan & Abbott 2006). Scale is 1/sqrt(fan-in) before
    :func:`scale_to_radius`. ``base``: per block, magnitudes to start from instead of random ones
    (``weight_init = "expected"``: the connection probabilities), balanced and scaled alike."""
    mags = []
    for k, ((r, c), m) in enumerate(zip(shapes, masks)):
        w = torch.rand(r, c, generator=generator, dtype=torch.float32)
        if base is not None and base[k] is not None:
            w = torch.as_tensor(base[k], dtype=torch.float32).clone()
        if m is not None:
            w *= torch.as_tensor(m)
        mags.append(w)
    rows = shapes[0][0] if shapes else 0
    e_sum = torch.zeros(rows)
    i_sum = torch.zeros(rows)
    fan = torch.zeros(rows)
    for w, s in zip(mags, col_signs):
        st = torch.as_tensor(s)
        e_sum += w[:, st > 0].sum(1)
        i_sum += w[:, st < 0].sum(1)
        fan += (w > 0).sum(1)
    scale_i, norm = _balance(e_sum, i_sum, fan)
    for w, s in zip(mags, col_signs):
        st = torch.as_tensor(s)
        w[:, st < 0] *= scale_i[:, None]
        w *= norm[:, None]
    return mags


def balanced_values(shapes: list[tuple[int, int]], col_signs: list[np.ndarray],
                    pairs: list[tuple[torch.Tensor, torch.Tensor]],
                    generator: torch.Generator, base: list[torch.Tensor | None] | None = None
                    ) -> list[torch.Tensor]:
    """:func:`balanced_magnitudes` for blocks given by their entries ``(rows, cols)``: values
    ``[nnz]`` per block, never a dense matrix (same balance and 1/sqrt(fan-in) scale); ``base``: per
    block, values to start from instead of random ones."""
    n = shapes[0][0] if shapes else 0
    vals = [torch.rand(r.numel(), generator=generator, dtype=torch.float32) for r, _ in pairs]
    vals = [v if base is None or base[k] is None else base[k].to(torch.float32).clone()
            for k, v in enumerate(vals)]
    e_sum, i_sum, fan = torch.zeros(n), torch.zeros(n), torch.zeros(n)
    inh = [torch.as_tensor(s)[c] < 0 for s, (_, c) in zip(col_signs, pairs)]
    for v, (r, _), neg in zip(vals, pairs, inh):
        e_sum.index_add_(0, r, torch.where(neg, 0.0, v))
        i_sum.index_add_(0, r, torch.where(neg, v, 0.0))
        fan.index_add_(0, r, torch.ones_like(v))
    scale_i, norm = _balance(e_sum, i_sum, fan)
    return [torch.where(neg, v * scale_i[r], v) * norm[r] for v, (r, _), neg in zip(vals, pairs, inh)]


def _balance(e_sum: torch.Tensor, i_sum: torch.Tensor,
             fan: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the factor that makes the summed inhibitory weight equal the excitatory one (1 where
    either is absent), and the 1/sqrt(fan-in) scale."""
    scale_i = torch.where(i_sum > 0, e_sum / i_sum.clamp_min(1e-12), torch.ones_like(i_sum))
    scale_i = torch.where(e_sum > 0, scale_i, torch.ones_like(i_sum))
    return scale_i, 1.0 / fan.clamp_min(1).sqrt()


def spectral_radius(w: torch.Tensor, exact_max: int = 2500) -> float:
    """Spectral radius of a square matrix: exact eigenvalues up to ``exact_max`` rows, else the
    circular-law estimate sqrt(sum_ij var_row(W_ij) / N) * sqrt(N) for balanced random matrices."""
    n = w.shape[0]
    if n <= exact_max:
        return float(torch.linalg.eigvals(w.double()).abs().max())
    w = w.double()
    centered = w - w.mean(1, keepdim=True)
    return float(math.sqrt(float((centered**2).sum()) / n))
