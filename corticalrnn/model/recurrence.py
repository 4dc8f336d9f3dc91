"""The fast time loop.

Tensors are time-major: ``drive [T, B, N]`` is the input projection plus bias for every step (one
GEMM outside the loop), ``N`` the internal V1 vector. The loop runs stage by stage within a step (see
``graph.py``): ``I_s(t) = drive_s(t) + W1_s r~(t-1)[span] + W0_s r~(t)[span]`` where ``r~`` is the rate
the network *sees* -- the data for teacher-forced observed neurons, the model's rate otherwise.

* :class:`LeakyRecurrence` -- leaky rate units, one custom ``autograd.Function``: the forward keeps
  ``v`` and ``r~`` of all steps, the backward runs the adjoint recursion keeping the per-step errors
  ``dL/dI(t)`` and forms every weight gradient as ONE GEMM over all steps and the batch
  (``dW = dI_all^T @ r~_all``), as cuDNN does. No autograd graph inside the loop.
* :func:`generic_recurrence` -- any neuron model (MLP, GRU): autograd through the neuron cells, but
  the recurrent matmuls use detached weights and :class:`DeferredWeightGrad` supplies the weight
  gradients as one GEMM over all steps once autograd has produced ``dL/dI`` for every step.

Matmuls run in ``cdtype`` (fp32/bf16/fp16); state, drive and rates stay in the drive's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


@dataclass(frozen=True)
class RecBlock:
    """A V1->V1 weight block in the loop: rows ``[row0, row1)`` (one stage), columns ``[col0, col1)``."""

    stage: int
    delay: int
    row0: int
    row1: int
    col0: int
    col1: int


@dataclass(frozen=True)
class RecLayout:
    stages: tuple[tuple[int, int], ...]
    blocks: tuple[RecBlock, ...]

    def stage_blocks(self, s: int) -> list[tuple[int, RecBlock]]:
        return [(i, b) for i, b in enumerate(self.blocks) if b.stage == s]


def _mm_into(out: torch.Tensor, a: torch.Tensor, w: torch.Tensor, transpose: bool) -> torch.Tensor:
    """``out + a @ w.T`` (transpose) or ``out + a @ w``; matmul in ``w``'s dtype."""
    wt = w.t() if transpose else w
    if a.dtype == out.dtype == w.dtype:
        return torch.addmm(out, a, wt)
    return out + (a.to(w.dtype) @ wt).to(out.dtype)


def _weight_grads(layout: RecLayout, dI: torch.Tensor, RT: torch.Tensor, rt0: torch.Tensor,
                  weights: tuple[torch.Tensor, ...], cdtype: torch.dtype,
                  needs: tuple[bool, ...]) -> list[torch.Tensor | None]:
    """dW for every block as one GEMM over (time, batch): ``dI_all[rows]^T @ r~_all[cols]``."""
    T, B, _ = dI.shape
    dIc = dI if dI.dtype == cdtype else dI.to(cdtype)
    RTc = RT if RT.dtype == cdtype else RT.to(cdtype)
    rt0c = rt0.to(cdtype)
    out: list[torch.Tensor | None] = []
    for i, b in enumerate(layout.blocks):
        if not needs[i]:
            out.append(None)
            continue
        if b.delay == 0:
            a = dIc[:, :, b.row0:b.row1].reshape(T * B, -1)
            g = a.t() @ RTc[:, :, b.col0:b.col1].reshape(T * B, -1)
        else:
            g = dIc[0][:, b.row0:b.row1].t() @ rt0c[:, b.col0:b.col1]
            if T > 1:
                a = dIc[1:, :, b.row0:b.row1].reshape((T - 1) * B, -1)
                g = torch.addmm(g, a.t(), RTc[:-1, :, b.col0:b.col1].reshape((T - 1) * B, -1))
        out.append(g.to(weights[i].dtype))
    return out


class LeakyRecurrence(torch.autograd.Function):
    """Leaky-rate-unit network over T steps; see the module docstring.

    ``apply(layout, cdtype, drive [T,B,N], v0 [B,N], rt0 [B,N], alpha [N], teacher [T,B,N] | None,
    force [B,N] | None, *weights) -> (rates [T,B,N], v_last, rt_last)``; the last two are the state
    for a following chunk and carry no gradient.
    """

    @staticmethod
    def forward(ctx: Any, layout: RecLayout, cdtype: torch.dtype, drive: torch.Tensor, v0: torch.Tensor,
                rt0: torch.Tensor, alpha: torch.Tensor, teacher: torch.Tensor | None,
                force: torch.Tensor | None, *weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
        T, B, N = drive.shape
        dt = drive.dtype
        wc = tuple(w.to(cdtype) for w in weights)
        V = drive.new_empty(T, B, N)
        R = drive.new_empty(T, B, N)
        forced = teacher is not None
        RT = R if (not forced and cdtype == dt) else drive.new_empty(T, B, N, dtype=cdtype)
        one_minus = 1 - alpha
        per_stage = [layout.stage_blocks(s) for s in range(len(layout.stages))]
        v_prev, rt_prev = v0, rt0.to(cdtype)
        for t, d_t in enumerate(drive.unbind(0)):
            v_t, r_t, rt_t = V[t], R[t], RT[t]
            for s, (r0, r1) in enumerate(layout.stages):
                current = d_t[:, r0:r1]
                for i, b in per_stage[s]:
                    src = rt_prev if b.delay else rt_t
                    current = _mm_into(current, src[:, b.col0:b.col1], wc[i], transpose=True)
                vs = torch.addcmul(v_prev[:, r0:r1] * one_minus[r0:r1], alpha[r0:r1], current)
                v_t[:, r0:r1] = vs
                rs = F.softplus(vs)
                r_t[:, r0:r1] = rs
                if forced:
                    rt_t[:, r0:r1] = torch.lerp(rs, teacher[t][:, r0:r1], force[:, r0:r1])
                elif RT is not R:
                    rt_t[:, r0:r1] = rs
            v_prev, rt_prev = v_t, rt_t
        ctx.layout, ctx.cdtype, ctx.forced = layout, cdtype, forced
        ctx.save_for_backward(V, RT, v0, rt0, alpha, force, *weights)
        v_last, rt_last = V[-1].clone(), RT[-1].to(dt, copy=True)
        ctx.mark_non_differentiable(v_last, rt_last)
        return R, v_last, rt_last

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dR: torch.Tensor, _dv: Any, _drt: Any) -> tuple[Any, ...]:
        V, RT, v0, rt0, alpha, force, *weights = ctx.saved_tensors
        layout, cdtype = ctx.layout, ctx.cdtype
        T, B, N = V.shape
        dt = V.dtype
        wc = tuple(w.to(cdtype) for w in weights)
        one_minus = 1 - alpha
        keep = None if force is None else 1 - force
        per_stage = [layout.stage_blocks(s) for s in range(len(layout.stages))]
        delay1 = [(i, b) for i, b in enumerate(layout.blocks) if b.delay == 1]
        dI = torch.empty_like(V)
        dv_a = torch.zeros(B, N, dtype=dt, device=V.device)
        dv_b = torch.empty_like(dv_a)
        dalpha = torch.zeros(N, dtype=dt, device=V.device)
        g = torch.empty(B, N, dtype=dt, device=V.device)
        for t in range(T - 1, -1, -1):
            g.zero_()
            if t + 1 < T:
                for i, b in delay1:
                    g[:, b.col0:b.col1] = _mm_into(g[:, b.col0:b.col1], dI[t + 1][:, b.row0:b.row1], wc[i],
                                                   transpose=False)
            v_t = V[t]
            v_prev = V[t - 1] if t > 0 else v0
            for s in range(len(layout.stages) - 1, -1, -1):
                r0, r1 = layout.stages[s]
                gs = g[:, r0:r1]
                if keep is not None:
                    gs = gs * keep[:, r0:r1]
                dv = torch.sigmoid(v_t[:, r0:r1]) * (dR[t][:, r0:r1] + gs)
                dv.add_(one_minus[r0:r1] * dv_a[:, r0:r1])
                dv_b[:, r0:r1] = dv
                dalpha[r0:r1] += (dv * (v_t[:, r0:r1] - v_prev[:, r0:r1])).sum(0)
                dIs = alpha[r0:r1] * dv
                dI[t][:, r0:r1] = dIs
                for i, b in per_stage[s]:
                    if b.delay == 0:
                        g[:, b.col0:b.col1] = _mm_into(g[:, b.col0:b.col1], dIs, wc[i], transpose=False)
            dv_a, dv_b = dv_b, dv_a
        drt0 = torch.zeros(B, N, dtype=dt, device=V.device)
        for i, b in delay1:
            drt0[:, b.col0:b.col1] = _mm_into(drt0[:, b.col0:b.col1], dI[0][:, b.row0:b.row1], wc[i],
                                              transpose=False)
        dv0 = one_minus * dv_a
        dalpha = dalpha / alpha
        n_fixed = 8
        dW = _weight_grads(layout, dI, RT, rt0, tuple(weights), cdtype, ctx.needs_input_grad[n_fixed:])
        return (None, None, dI, dv0, drt0, dalpha, None, None, *dW)


class DeferredWeightGrad(torch.autograd.Function):
    """Identity on ``drive`` whose backward receives ``dL/dI(t)`` of all steps at once (autograd
    accumulates the per-step slices first) and returns every block's weight gradient as one GEMM
    with the ``r~`` collected in ``store`` during the (autograd) loop. The loop must use detached
    weights for its matmuls."""

    @staticmethod
    def forward(ctx: Any, layout: RecLayout, cdtype: torch.dtype, store: list[torch.Tensor],
                drive: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:
        ctx.layout, ctx.cdtype, ctx.store = layout, cdtype, store
        ctx.save_for_backward(*weights)
        return drive.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dD: torch.Tensor) -> tuple[Any, ...]:
        weights = ctx.saved_tensors
        rt0, RT = ctx.store[0], torch.stack(ctx.store[1:])
        dW = _weight_grads(ctx.layout, dD, RT, rt0, weights, ctx.cdtype, ctx.needs_input_grad[4:])
        return (None, None, None, dD, *dW)


def generic_recurrence(layout: RecLayout, cdtype: torch.dtype, drive: torch.Tensor, units: list[Any],
                       pop_ranges: list[tuple[int, int]], alphas: list[torch.Tensor],
                       state: tuple[list[torch.Tensor], torch.Tensor], teacher: torch.Tensor | None,
                       force: torch.Tensor | None, weights: tuple[torch.Tensor, ...]
                       ) -> tuple[torch.Tensor, tuple[list[torch.Tensor], torch.Tensor]]:
    """Autograd loop for any neuron model. ``units[k]`` (``.step(I, state, alpha)``) owns internal
    neurons ``pop_ranges[k]``; ``state = (per-unit states, r~ of the previous step)``.
    Returns ``rates [T,B,N]`` and the final state."""
    store: list[torch.Tensor] = []
    pop_states, rt_prev = state
    pop_states = list(pop_states)
    store.append(rt_prev.detach())
    drive = DeferredWeightGrad.apply(layout, cdtype, store, drive, *weights)
    wd = tuple(w.detach().to(cdtype) for w in weights)
    per_stage = [layout.stage_blocks(s) for s in range(len(layout.stages))]
    stage_pops = [[k for k, (a, _) in enumerate(pop_ranges) if r0 <= a < r1] for r0, r1 in layout.stages]
    rates = []
    for t, d_t in enumerate(drive.unbind(0)):
        r_parts, rt_parts = [], []
        for s, (r0, r1) in enumerate(layout.stages):
            current = d_t[:, r0:r1]
            rt_cur = torch.cat(rt_parts, 1) if rt_parts else None
            for i, b in per_stage[s]:
                src = rt_prev if b.delay else rt_cur
                current = _mm_into(current, src[:, b.col0:b.col1], wd[i], transpose=True)
            for k in stage_pops[s]:
                a, e = pop_ranges[k]
                r, pop_states[k] = units[k].step(current[:, a - r0:e - r0], pop_states[k], alphas[k])
                r_parts.append(r)
                rt_parts.append(r if teacher is None else torch.lerp(r, teacher[t][:, a:e], force[:, a:e]))
        r_t = torch.cat(r_parts, 1)
        rt_prev = r_t if teacher is None else torch.cat(rt_parts, 1)
        store.append(rt_prev.detach())
        rates.append(r_t)
    return torch.stack(rates), (pop_states, rt_prev)
