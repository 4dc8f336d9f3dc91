"""The fast time loop.

Tensors are neuron-major, ``[N, T, B]`` (``N`` the internal V1 vector): ``drive`` is the input
projection plus bias for every step (one GEMM outside the loop). Per-step slices ``x[:, t]`` are
``[N, B]`` with contiguous rows, so every per-step product is ``W @ r`` with the big weight as the
left operand (about 2x faster than ``r @ W.T`` for batch-sized GEMMs with MKL on this CPU), all
elementwise work is on row-contiguous blocks, and the all-steps matrices ``[N, T*B]`` needed by
the weight-gradient GEMM are views (no copies). The loop runs stage by stage within a step (see
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

from corticalrnn.model import gemm
from corticalrnn.model.sparse import Pattern
from corticalrnn.model.step_graphs import StepGraphs


@dataclass(frozen=True)
class RecBlock:
    """A V1->V1 weight block in the loop: rows ``[row0, row1)`` (one stage), columns ``[col0, col1)``."""

    stage: int
    delay: int
    row0: int
    row1: int
    col0: int
    col1: int
    sparse: bool = False  # per-step products with a CSR copy (only worth it for sparse masks)
    sparse_grad: bool = False  # weight gradient as SDDMM on the mask's pattern (very sparse masks)
    stored_sparse: bool = False  # the weight is its values [nnz] on the pattern (weight_storage=sparse)


@dataclass(frozen=True)
class RecLayout:
    stages: tuple[tuple[int, int], ...]
    blocks: tuple[RecBlock, ...]
    blas: str = "torch"  # BLAS for the CPU weight-gradient GEMMs, resolved ("torch" | "openblas")

    def stage_blocks(self, s: int) -> list[tuple[int, RecBlock]]:
        return [(i, b) for i, b in enumerate(self.blocks) if b.stage == s]


def _step_kernels(layout: RecLayout, weights: tuple[torch.Tensor, ...], cdtype: torch.dtype,
                  transpose: bool, patterns: tuple[Pattern | None, ...]) -> tuple[torch.Tensor, ...]:
    """The matrices the per-step products use: each block's weight (or its transpose) in ``cdtype``,
    as CSR on the block's fixed pattern for blocks marked sparse (values gathered once per call;
    float32/float64 only, the CPU CSR kernels' dtypes)."""
    out = []
    for w, b, p in zip(weights, layout.blocks, patterns):
        if b.stored_sparse:  # CSR only; values stay fp32 when cdtype has no CPU CSR kernel
            assert p is not None
            dt = cdtype if cdtype in (torch.float32, torch.float64) or w.is_cuda else w.dtype
            out.append(p.csr_t(w, dt, stored=True) if transpose else p.csr(w, dt, stored=True))
        elif b.sparse and p is not None and cdtype in (torch.float32, torch.float64):
            out.append(p.csr_t(w, cdtype) if transpose else p.csr(w, cdtype))
        else:
            wc = w.to(cdtype)
            out.append(wc.t() if transpose else wc)
    return tuple(out)


def _mm_into(out: torch.Tensor, w: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``out + w @ a``; matmul in ``w``'s dtype, result in ``out``'s dtype.

    ``a`` is thin (batch columns). Measured with MKL at N=9374, B=8, one thread: ``W.t() @ a`` with
    a transposed (column-major) weight took 1.25 s, the same product as ``(a.t() @ W).t()`` 0.07 s;
    and a strided ``a`` (a time slice of [N, T, B]) doubles the cost of ``W @ a``.
    """
    if w.layout == torch.sparse_csr:
        a = a.to(w.dtype) if a.dtype != w.dtype else a
        if out.dtype != w.dtype:
            return out + torch.sparse.mm(w, a.contiguous()).to(out.dtype)
        return torch.addmm(out, w, a if a.is_contiguous() else a.contiguous())
    if a.dtype == out.dtype == w.dtype:
        if w.dim() == 2 and w.stride(0) == 1 and w.stride(1) != 1:  # transposed view (backward)
            return torch.addmm(out.t(), a.t(), w.t()).t()
        return torch.addmm(out, w, a if a.is_contiguous() else a.contiguous())
    return out + (w @ a.to(w.dtype)).to(out.dtype)


def _weight_grads(layout: RecLayout, dI: torch.Tensor, RT: torch.Tensor, rt0: torch.Tensor,
                  weights: tuple[torch.Tensor, ...], cdtype: torch.dtype,
                  needs: tuple[bool, ...], patterns: tuple[Pattern | None, ...]
                  ) -> list[torch.Tensor | None]:
    """dW for every block as one GEMM over (time, batch): ``dI[rows, T*B] @ r~[cols, T*B]^T``
    (on CPU through the BLAS ``layout.blas`` names, see ``gemm.py``); for blocks marked
    ``sparse_grad`` only the entries of the block's pattern, as one SDDMM."""
    N, T, B = dI.shape
    dIc = dI if dI.dtype == cdtype else dI.to(cdtype)
    RTc = RT if RT.dtype == cdtype else RT.to(cdtype)
    rt0c = rt0.to(cdtype)
    out: list[torch.Tensor | None] = []
    with gemm.blas_threads(layout.blas):
        for i, b in enumerate(layout.blocks):
            if not needs[i]:
                out.append(None)
                continue
            rows = dIc[b.row0:b.row1]
            n_post, n_pre = b.row1 - b.row0, b.col1 - b.col0
            p = patterns[i]
            sddmm_dtype = cdtype in (torch.float32, torch.float64)  # the SDDMM kernels' dtypes
            if p is not None and (b.stored_sparse or (b.sparse_grad and sddmm_dtype)):
                if sddmm_dtype:
                    rws, src, r0 = rows, RTc[b.col0:b.col1], rt0c[b.col0:b.col1]
                else:  # stored-sparse block under bf16/fp16 matmuls: its gradient in the state dtype
                    rws, src, r0 = dI[b.row0:b.row1], RT[b.col0:b.col1].to(dI.dtype), rt0[b.col0:b.col1]
                if b.delay == 1:  # r~ of the previous step: rt0, then r~(0..T-2)
                    src = torch.cat([r0.to(src.dtype)[:, None], src[:, :-1]], 1)
                a, s = rws.reshape(n_post, T * B), src.reshape(n_pre, T * B)
                g = p.sddmm_values(a, s) if b.stored_sparse else p.sddmm(a, s)
            elif b.delay == 0:
                g = gemm.matmul_nt(rows.reshape(n_post, T * B), RTc[b.col0:b.col1].reshape(n_pre, T * B),
                                   layout.blas)
            elif T > 1:
                g = gemm.matmul_nt(rows[:, 1:].reshape(n_post, (T - 1) * B),
                                   RTc[b.col0:b.col1, :-1].reshape(n_pre, (T - 1) * B), layout.blas)
                g.addmm_(rows[:, 0], rt0c[b.col0:b.col1].t())
            else:
                g = rows[:, 0] @ rt0c[b.col0:b.col1].t()
            out.append(g.to(weights[i].dtype))
    return out


def _forward_steps(layout: RecLayout, wc: tuple[torch.Tensor, ...], drive: torch.Tensor, V: torch.Tensor,
                   R: torch.Tensor, RT: torch.Tensor, v_prev: torch.Tensor, rt_prev: torch.Tensor,
                   alpha: torch.Tensor, teacher: torch.Tensor | None, force: torch.Tensor | None) -> None:
    """Leaky units over the steps of ``drive [N, T, B]``, writing ``V``, ``R`` and ``RT`` (which may be
    ``R`` itself) in place; ``v_prev``/``rt_prev`` are the state before the first step, ``alpha``
    ``[N, 1]``."""
    T = drive.shape[1]
    one_minus = 1 - alpha
    forced = teacher is not None
    per_stage = [layout.stage_blocks(s) for s in range(len(layout.stages))]
    for t in range(T):
        d_t, v_t, r_t, rt_t = drive[:, t], V[:, t], R[:, t], RT[:, t]
        for s, (r0, r1) in enumerate(layout.stages):
            current = d_t[r0:r1]
            for i, b in per_stage[s]:
                src = rt_prev if b.delay else rt_t
                current = _mm_into(current, wc[i], src[b.col0:b.col1])
            vs = torch.addcmul(v_prev[r0:r1] * one_minus[r0:r1], alpha[r0:r1], current)
            v_t[r0:r1] = vs
            rs = F.softplus(vs)
            r_t[r0:r1] = rs
            if forced:
                rt_t[r0:r1] = torch.lerp(rs, teacher[r0:r1, t], force[r0:r1])
            elif RT is not R:
                rt_t[r0:r1] = rs
        v_prev, rt_prev = v_t, rt_t


def _backward_steps(layout: RecLayout, wct: tuple[torch.Tensor, ...], V: torch.Tensor, v_before: torch.Tensor,
                    dR: torch.Tensor, dI: torch.Tensor, dI_after: torch.Tensor | None, dv_a: torch.Tensor,
                    dalpha: torch.Tensor, alpha: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Adjoint recursion over the steps of ``V [N, T, B]`` backwards, writing ``dI`` in place and
    accumulating ``sum_t dL/dv(t) * (v(t) - v(t-1))`` into ``dalpha [N, B]``. ``v_before`` is ``v``
    before the first step, ``dI_after`` ``dL/dI`` of the step after the last (None: none), ``dv_a``
    ``dL/dv`` carried in from that step (times nothing yet). Returns ``dL/dv`` of the first step."""
    N, T, B = V.shape
    one_minus = 1 - alpha
    per_stage = [layout.stage_blocks(s) for s in range(len(layout.stages))]
    delay1 = [(i, b) for i, b in enumerate(layout.blocks) if b.delay == 1]
    dv_a = dv_a.clone()
    dv_b = torch.empty_like(dv_a)
    g = torch.empty_like(dv_a)
    for t in range(T - 1, -1, -1):
        g.zero_()
        dI_next = dI[:, t + 1] if t + 1 < T else dI_after
        if dI_next is not None:
            for i, b in delay1:
                g[b.col0:b.col1] = _mm_into(g[b.col0:b.col1], wct[i], dI_next[b.row0:b.row1])
        v_t, dR_t, dI_t = V[:, t], dR[:, t], dI[:, t]
        v_prev = V[:, t - 1] if t > 0 else v_before
        for s in range(len(layout.stages) - 1, -1, -1):
            r0, r1 = layout.stages[s]
            gs = g[r0:r1]
            if keep is not None:
                gs = gs * keep[r0:r1]
            dv = torch.sigmoid(v_t[r0:r1]).mul_(dR_t[r0:r1] + gs)
            dv.addcmul_(one_minus[r0:r1], dv_a[r0:r1])
            dv_b[r0:r1] = dv
            dalpha[r0:r1].addcmul_(dv, v_t[r0:r1] - v_prev[r0:r1])
            dIs = dv.mul_(alpha[r0:r1])
            dI_t[r0:r1] = dIs
            for i, b in per_stage[s]:
                if b.delay == 0:
                    g[b.col0:b.col1] = _mm_into(g[b.col0:b.col1], wct[i], dIs)
        dv_a, dv_b = dv_b, dv_a
    return dv_a


def _chunks(T: int, k: int) -> list[tuple[int, int]]:
    return [(t0, min(t0 + k, T)) for t0 in range(0, T, k)]


def _forward_graphed(graphs: StepGraphs, layout: RecLayout, wc: tuple[torch.Tensor, ...],
                     drive: torch.Tensor, V: torch.Tensor, R: torch.Tensor, RT: torch.Tensor,
                     v0: torch.Tensor, rt0: torch.Tensor, alpha: torch.Tensor,
                     teacher: torch.Tensor | None, force: torch.Tensor | None) -> None:
    """:func:`_forward_steps` as replays of captured chunks of ``graphs.chunk`` steps."""
    N, T, B = drive.shape
    nb, separate_rt = len(wc), RT is not R
    persistent = graphs.static(("fwd", layout), (*wc, alpha, force))

    def chunk(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        w, a, f = xs[:nb], xs[nb], xs[nb + 1]
        d, v_prev, rt_prev, y = xs[nb + 2:]
        Vc, Rc = torch.empty_like(d), torch.empty_like(d)
        RTc = torch.empty_like(d, dtype=RT.dtype) if separate_rt else Rc
        _forward_steps(layout, w, d, Vc, Rc, RTc, v_prev, rt_prev, a, y, f)
        return Vc, Rc, RTc

    v_prev, rt_prev = v0, rt0
    for t0, t1 in _chunks(T, graphs.chunk):
        key = ("fwd", layout, drive.device, drive.dtype, RT.dtype, N, t1 - t0, B, teacher is not None)
        y = None if teacher is None else teacher[:, t0:t1]
        Vc, Rc, RTc = graphs.run(key, chunk, persistent, (drive[:, t0:t1], v_prev, rt_prev, y))
        V[:, t0:t1], R[:, t0:t1] = Vc, Rc
        if separate_rt:
            RT[:, t0:t1] = RTc
        v_prev, rt_prev = V[:, t1 - 1], RT[:, t1 - 1]


def _backward_graphed(graphs: StepGraphs, layout: RecLayout, wct: tuple[torch.Tensor, ...],
                      V: torch.Tensor, v0: torch.Tensor, dR: torch.Tensor, dI: torch.Tensor,
                      dv_a: torch.Tensor, dalpha: torch.Tensor, alpha: torch.Tensor,
                      keep: torch.Tensor | None) -> torch.Tensor:
    """:func:`_backward_steps` as replays of captured chunks, last chunk first."""
    N, T, B = V.shape
    nb = len(wct)
    persistent = graphs.static(("bwd", layout), (*wct, alpha, keep))

    def chunk(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        w, a, kp = xs[:nb], xs[nb], xs[nb + 1]
        Vc, v_before, dRc, dI_after, dv_in = xs[nb + 2:]
        dIc, dal = torch.empty_like(Vc), torch.zeros_like(dv_in)
        dv = _backward_steps(layout, w, Vc, v_before, dRc, dIc, dI_after, dv_in, dal, a, kp)
        return dIc, dv, dal

    dI_after = torch.zeros_like(dv_a)  # nothing after the last step (the zeros add exact zeros)
    for t0, t1 in reversed(_chunks(T, graphs.chunk)):
        key = ("bwd", layout, V.device, V.dtype, N, t1 - t0, B, keep is not None)
        v_before = V[:, t0 - 1] if t0 > 0 else v0
        inputs = (V[:, t0:t1], v_before, dR[:, t0:t1], dI_after, dv_a)
        dIc, dv, dal = graphs.run(key, chunk, persistent, inputs)
        dI[:, t0:t1] = dIc
        dalpha += dal
        dv_a = dv.clone()
        dI_after = dI[:, t0]
    return dv_a


class LeakyRecurrence(torch.autograd.Function):
    """Leaky-rate-unit network over T steps; see the module docstring.

    ``apply(layout, cdtype, graphs, patterns, drive [N,T,B], v0 [N,B], rt0 [N,B], alpha [N], teacher
    [N,T,B] | None, force [N,B] | None, *weights) -> (rates [N,T,B], v_last, rt_last)``; the last two
    are the state for a following chunk and carry no gradient. ``graphs`` (a :class:`StepGraphs` or
    None) runs the loop as captured chunks of steps (CUDA graphs); ``patterns`` (a
    :class:`~corticalrnn.model.sparse.Pattern` or None per block) serve the sparse blocks.
    """

    @staticmethod
    def forward(ctx: Any, layout: RecLayout, cdtype: torch.dtype, graphs: StepGraphs | None,
                patterns: tuple[Pattern | None, ...], drive: torch.Tensor, v0: torch.Tensor,
                rt0: torch.Tensor, alpha: torch.Tensor,
                teacher: torch.Tensor | None, force: torch.Tensor | None,
                *weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
        N, T, B = drive.shape
        dt = drive.dtype
        wc = _step_kernels(layout, weights, cdtype, False, patterns)
        V = drive.new_empty(N, T, B)
        R = drive.new_empty(N, T, B)
        forced = teacher is not None
        RT = R if (not forced and cdtype == dt) else drive.new_empty(N, T, B, dtype=cdtype)
        a = alpha[:, None]
        rt0c = rt0.to(cdtype)
        if graphs is None:
            _forward_steps(layout, wc, drive, V, R, RT, v0, rt0c, a, teacher, force)
        else:
            _forward_graphed(graphs, layout, wc, drive, V, R, RT, v0, rt0c, a, teacher, force)
        ctx.layout, ctx.cdtype, ctx.graphs, ctx.patterns = layout, cdtype, graphs, patterns
        ctx.save_for_backward(V, RT, v0, rt0, alpha, force, *weights)
        v_last, rt_last = V[:, -1].clone(), RT[:, -1].to(dt, copy=True)
        ctx.mark_non_differentiable(v_last, rt_last)
        return R, v_last, rt_last

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dR: torch.Tensor, _dv: Any, _drt: Any) -> tuple[Any, ...]:
        V, RT, v0, rt0, alpha, force, *weights = ctx.saved_tensors
        layout, cdtype, graphs = ctx.layout, ctx.cdtype, ctx.graphs
        N, T, B = V.shape
        dt, dev = V.dtype, V.device
        wct = _step_kernels(layout, tuple(weights), cdtype, True, ctx.patterns)
        a = alpha[:, None]
        keep = None if force is None else 1 - force
        dI = torch.empty_like(V)
        dv_a = torch.zeros(N, B, dtype=dt, device=dev)
        dalpha = torch.zeros(N, B, dtype=dt, device=dev)
        if graphs is None:
            dv_a = _backward_steps(layout, wct, V, v0, dR, dI, None, dv_a, dalpha, a, keep)
        else:
            dv_a = _backward_graphed(graphs, layout, wct, V, v0, dR, dI, dv_a, dalpha, a, keep)
        drt0 = torch.zeros(N, B, dtype=dt, device=dev)
        for i, b in enumerate(layout.blocks):
            if b.delay == 1:
                drt0[b.col0:b.col1] = _mm_into(drt0[b.col0:b.col1], wct[i], dI[b.row0:b.row1, 0])
        dv0 = (1 - a) * dv_a
        dalpha = dalpha.sum(1) / alpha
        dW = _weight_grads(layout, dI, RT, rt0, tuple(weights), cdtype, ctx.needs_input_grad[10:],
                           ctx.patterns)
        return (None, None, None, None, dI, dv0, drt0, dalpha, None, None, *dW)


class DeferredWeightGrad(torch.autograd.Function):
    """Identity on ``drive`` whose backward receives ``dL/dI(t)`` of all steps at once (autograd
    accumulates the per-step slices first) and returns every block's weight gradient as one GEMM
    with the ``r~`` collected in ``store`` during the (autograd) loop. The loop must use detached
    weights for its matmuls."""

    @staticmethod
    def forward(ctx: Any, layout: RecLayout, cdtype: torch.dtype, store: list[torch.Tensor],
                patterns: tuple[Pattern | None, ...], drive: torch.Tensor,
                *weights: torch.Tensor) -> torch.Tensor:
        ctx.layout, ctx.cdtype, ctx.store, ctx.patterns = layout, cdtype, store, patterns
        ctx.save_for_backward(*weights)
        return drive.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dD: torch.Tensor) -> tuple[Any, ...]:
        weights = ctx.saved_tensors
        rt0, RT = ctx.store[0], torch.stack(ctx.store[1:], 1)
        dW = _weight_grads(ctx.layout, dD.contiguous(), RT, rt0, weights, ctx.cdtype,
                           ctx.needs_input_grad[5:], ctx.patterns)
        return (None, None, None, None, dD, *dW)


def generic_recurrence(layout: RecLayout, cdtype: torch.dtype, drive: torch.Tensor, units: list[Any],
                       pop_ranges: list[tuple[int, int]], alphas: list[torch.Tensor],
                       state: tuple[list[torch.Tensor], torch.Tensor], teacher: torch.Tensor | None,
                       force: torch.Tensor | None, weights: tuple[torch.Tensor, ...],
                       patterns: tuple[Pattern | None, ...]
                       ) -> tuple[torch.Tensor, tuple[list[torch.Tensor], torch.Tensor]]:
    """Autograd loop for any neuron model. ``units[k]`` (``.step(I, state, alpha)`` on ``[n, B]``)
    owns internal neurons ``pop_ranges[k]``; ``state = (per-unit states, r~ of the previous step)``.
    Returns ``rates [N,T,B]`` and the final state."""
    store: list[torch.Tensor] = []
    pop_states, rt_prev = state
    pop_states = list(pop_states)
    store.append(rt_prev.detach())
    drive = DeferredWeightGrad.apply(layout, cdtype, store, patterns, drive, *weights)
    wd = _step_kernels(layout, tuple(w.detach() for w in weights), cdtype, False, patterns)
    per_stage = [layout.stage_blocks(s) for s in range(len(layout.stages))]
    stage_pops = [[k for k, (a, _) in enumerate(pop_ranges) if r0 <= a < r1] for r0, r1 in layout.stages]
    rates = []
    for t, d_t in enumerate(drive.unbind(1)):
        r_parts, rt_parts = [], []
        for s, (r0, r1) in enumerate(layout.stages):
            current = d_t[r0:r1]
            rt_cur = torch.cat(rt_parts) if rt_parts else None
            for i, b in per_stage[s]:
                src = rt_prev if b.delay else rt_cur
                current = _mm_into(current, wd[i], src[b.col0:b.col1])
            for k in stage_pops[s]:
                a, e = pop_ranges[k]
                r, pop_states[k] = units[k].step(current[a - r0:e - r0], pop_states[k], alphas[k])
                r_parts.append(r)
                rt_parts.append(r if teacher is None else torch.lerp(r, teacher[a:e, t], force[a:e]))
        r_t = torch.cat(r_parts)
        rt_prev = r_t if teacher is None else torch.cat(rt_parts)
        store.append(rt_prev.detach())
        rates.append(r_t)
    return torch.stack(rates, 1), (pop_states, rt_prev)
