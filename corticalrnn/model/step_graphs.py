"""Capture and replay of a chunk of time steps as a CUDA graph (``ModelConfig.cuda_graphs``).

At 1 ms bins a window is ~700 steps of ~15 small kernels each in the forward and ~25 in the backward;
on a GPU the launch and Python overhead of every op (several microseconds) can then cost more than
the batch-sized GEMMs themselves. :class:`StepGraphs` captures the kernels of a chunk of consecutive
steps once per shape into a ``torch.cuda.CUDAGraph`` and replays it: one launch per chunk.

The usual ``torch.cuda.graphs`` contract applies. A captured function must be a pure function of its
tensors that returns new tensors (no CPU synchronisation inside). Per-call inputs are copied into
the graph's static inputs before each replay; outputs are the graph's static outputs, valid until
its next replay, so callers copy them out at once. *Persistent* tensors (weights, per-neuron
constants) are read in place: they come from :meth:`StepGraphs.static`, which keeps one buffer per
name and copies the current values in, once per forward or backward pass.

Without CUDA the model runs its plain loop; with ``emulate = True`` it runs the same chunked path
eagerly on the static copies instead (``captured`` stays 0), results copied into the same output
tensors at every call as a replay would leave them, so that the bookkeeping can be tested on CPU (it
is slower than the plain loop there).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class _Entry:
    graph: Any  # torch.cuda.CUDAGraph | None (eager emulation)
    persistent: tuple[torch.Tensor, ...]
    inputs: list[torch.Tensor | None]
    outputs: tuple[torch.Tensor, ...]


class StepGraphs:
    """Captured chunk graphs by key, plus the static buffers they read.

    ``chunk``: steps per captured graph (a window of ``T`` steps replays ``T // chunk`` times plus one
    shorter graph for the rest). ``warmup``: eager runs on the capture's side stream before capture
    (cuBLAS handles and workspaces are set up outside the graph).
    """

    def __init__(self, chunk: int, warmup: int = 2, emulate: bool = False) -> None:
        if chunk < 1:
            raise ValueError(f"graph chunk must be >= 1 step, got {chunk}")
        self.chunk, self.warmup, self.emulate = chunk, warmup, emulate
        self._entries: dict[Hashable, _Entry] = {}
        self._static: dict[Hashable, tuple[torch.Tensor, ...]] = {}
        self.captured = 0  # CUDA graphs captured so far
        self.replays = 0  # chunk runs (replays, or eager runs without CUDA)

    def __deepcopy__(self, memo: dict[int, Any]) -> StepGraphs:  # graphs belong to one model instance
        return StepGraphs(self.chunk, self.warmup, self.emulate)

    def __getstate__(self) -> dict[str, Any]:
        return {"chunk": self.chunk, "warmup": self.warmup, "emulate": self.emulate}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["chunk"], state["warmup"], state["emulate"])  # type: ignore[misc]

    def clear(self) -> None:
        """Drop every graph and static buffer (frees their GPU memory)."""
        self._entries.clear()
        self._static.clear()

    def static(self, name: Hashable, tensors: Sequence[torch.Tensor | None]) -> tuple[Any, ...]:
        """Persistent copies of ``tensors`` (None passes through): the same buffers at every call for
        the same name, shapes, strides and dtypes, holding the values passed now."""
        key = (name, tuple(None if t is None else (t.shape, t.stride(), t.dtype, t.device) for t in tensors))
        bufs = self._static.get(key)
        if bufs is None:
            bufs = tuple(None if t is None else torch.empty_strided(t.shape, t.stride(), dtype=t.dtype,
                                                                      device=t.device) for t in tensors)
            self._static[key] = bufs  # type: ignore[assignment]
        for b, t in zip(bufs, tensors):
            if b is not None and t is not None:
                b.copy_(t)
        return bufs

    def run(self, key: Hashable, fn: Callable[..., tuple[torch.Tensor, ...]],
            persistent: Sequence[torch.Tensor | None],
            inputs: Sequence[torch.Tensor | None]) -> tuple[torch.Tensor, ...]:
        """``fn(*persistent, *inputs)`` through the graph captured for ``key`` (captured on first use;
        the key must determine every shape, dtype and device involved)."""
        entry = self._entries.get(key)
        if entry is None:
            entry = self._capture(fn, tuple(persistent), [None if x is None else x.clone() for x in inputs])
            self._entries[key] = entry
        elif any(a is not b for a, b in zip(entry.persistent, persistent)):
            raise RuntimeError("StepGraphs.run: persistent tensors must come from StepGraphs.static")
        for s, x in zip(entry.inputs, inputs):
            if s is not None and x is not None:
                s.copy_(x)
        self.replays += 1
        if entry.graph is None:  # emulation: like a replay, results land in the same output tensors
            for out, new in zip(entry.outputs, fn(*entry.persistent, *entry.inputs)):
                out.copy_(new)
        else:
            entry.graph.replay()
        return entry.outputs

    def _capture(self, fn: Callable[..., tuple[torch.Tensor, ...]], persistent: tuple[Any, ...],
                 inputs: list[torch.Tensor | None]) -> _Entry:
        device = next((x.device for x in (*persistent, *inputs) if x is not None), torch.device("cpu"))
        if device.type != "cuda":
            return _Entry(None, persistent, inputs, tuple(fn(*persistent, *inputs)))
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                fn(*persistent, *inputs)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # capture on the warm-up stream: BLAS handles and workspaces, created lazily per stream, then
        # already exist (pytorch PR 187745 made make_graphed_callables do the same)
        with torch.cuda.graph(graph, stream=side):
            outputs = fn(*persistent, *inputs)
        self.captured += 1
        return _Entry(graph, persistent, inputs, tuple(outputs))
