"""Plain reference implementation of the network equations (autograd loop, any dtype incl. float64).

Deliberately simple and independent of the fast path's layout: it walks the pathway list sheet by
sheet in canonical (external) order, builds each pathway's weight through
:meth:`CorticalRNN.pathway_weight`, and lets autograd differentiate everything. Tests compare the
fast path against it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from corticalrnn.model.network import CorticalRNN
from corticalrnn.sheets import INPUT_SHEETS, V1_SHEETS, file_sheet_name


def reference_forward(model: CorticalRNN, lgn: torch.Tensor, teacher: torch.Tensor | None = None,
                      force: torch.Tensor | None = None) -> torch.Tensor:
    """Rates ``[B, T, N_v1]`` (canonical order). ``force`` (bool ``[B, N_v1]``) marks the neurons whose
    seen rate is the ``teacher`` data instead of their own rate."""
    g = model.graph
    B, T, _ = lgn.shape
    dtype = model.bias.dtype
    lgn = lgn.to(dtype)
    ext, c = {}, 0
    for s in V1_SHEETS:
        ext[s] = slice(c, c + g.sizes[s])
        c += g.sizes[s]
    x = {s: lgn[..., g.slice(s)] for s in g.inputs}
    W = {(p.pre, p.post, p.delay): model.pathway_weight(p.pre, p.post, p.delay) for p in g.pathways}
    units = {s: model.units[file_sheet_name(s)] for s in V1_SHEETS}
    leaky = all(u.fused for u in units.values())  # leaky equations written out; others: unit.step
    alpha = {s: units[s].alpha() for s in V1_SHEETS}
    unit_bias = model.unit_bias()
    bias = {s: unit_bias[g.slice(s)] for s in V1_SHEETS}  # initial state
    current0 = dict(bias)  # the constant current; centered models: b - sum_p W_p c_pre
    if model.config.architecture.centered:
        for p in g.pathways:
            c = model.input_center if p.pre in INPUT_SHEETS else model.rate_center
            current0[p.post] = current0[p.post] - W[(p.pre, p.post, p.delay)] @ c[g.slice(p.pre)].to(dtype)
    state, seen = {}, {}
    for s in V1_SHEETS:
        v0 = bias[s].expand(B, -1)
        if leaky:
            state[s], seen[s] = v0, F.softplus(v0)
        else:
            seen[s], state[s] = units[s].initial(v0)
    out = []
    for t in range(T):
        now: dict[str, torch.Tensor] = {}
        rates: dict[str, torch.Tensor] = {}
        todo = list(V1_SHEETS)
        while todo:
            for s in list(todo):
                same_step = [p.pre for p in g.pathways if p.post == s and p.delay == 0 and p.pre in V1_SHEETS]
                if any(pre not in now for pre in same_step):
                    continue
                current = current0[s].expand(B, -1)
                driven = model.config.architecture.time_drive  # stimulus-locked: one value per sheet, bin
                if s in driven:
                    last = model.time_drive.shape[1] - 1
                    current = current + model.time_drive[driven.index(s), min(t, last)]
                for p in g.pathways:
                    if p.post != s:
                        continue
                    w = W[(p.pre, p.post, p.delay)]
                    if p.pre in INPUT_SHEETS:
                        if t - p.delay >= 0:
                            current = current + x[p.pre][:, t - p.delay] @ w.T
                    else:
                        current = current + (now[p.pre] if p.delay == 0 else seen[p.pre]) @ w.T
                if leaky:
                    state[s] = state[s] + alpha[s] * (current - state[s])
                    r = F.softplus(state[s])
                else:
                    r, state[s] = units[s].step(current, state[s], alpha[s])
                rates[s] = r
                if teacher is not None and force is not None:
                    f = force[:, ext[s]]
                    scale = model.config.architecture.rate_scale
                    now[s] = torch.where(f, teacher[:, t, ext[s]].to(dtype) * scale, r)
                else:
                    now[s] = r
                todo.remove(s)
        seen = now
        out.append(torch.cat([rates[s] for s in V1_SHEETS], 1))
    return torch.stack(out, 1) / model.config.architecture.rate_scale
