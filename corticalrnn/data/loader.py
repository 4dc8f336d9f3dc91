"""The one batch path: which windows go into which batch of an epoch (:func:`epoch_batches`, also
sharded over DDP ranks) and dense batches on the device in that order (:func:`dense_batches`), which
the trainer (training and validation) and :class:`BatchLoader` / :func:`make_loader` use.

Data with sparse events (:class:`~corticalrnn.data.batches.WindowBatches`) is read as events (in this
process by prefetching threads, or by ``spawn``/``forkserver`` DataLoader workers, which ship only the
events) and scattered on the target device, into a :class:`~corticalrnn.data.ring.DenseRing` when one
is given; only ~0.5 % of a 1 ms batch crosses process and PCIe boundaries. Dense-only data
(:class:`~corticalrnn.data.batches.TensorWindows`) is batched as is.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from corticalrnn.data.batches import TrainingData, WindowBatches, has_events
from corticalrnn.data.ring import DenseRing, iter_dense
from corticalrnn.errors import CorticalRNNError


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, rank: int = 0, world_size: int = 1,
                  shuffle: bool = True, drop_last: bool = False) -> list[list[int]]:
    """This rank's batches of window positions ``0..n-1`` for ``epoch`` (like ``DistributedSampler`` +
    batching).

    The permutation (``shuffle``; else ascending order) depends only on ``(seed, epoch)``, so every
    rank draws the same one and a resumed run sees exactly the order it would have seen. The index
    list is padded by wrapping around to a multiple of ``world_size`` so that every rank gets the
    same number of batches (DDP needs them to step together); the last batch of a rank may be
    smaller, or is dropped with ``drop_last``.
    """
    if n < 1:
        return []
    if shuffle:
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
        perm = torch.randperm(n, generator=gen).tolist()
    else:
        perm = list(range(n))
    per_rank = -(-n // world_size)
    total = per_rank * world_size
    perm = (perm * (total // n + 1))[:total]
    mine = perm[rank:total:world_size]
    stop = len(mine) - len(mine) % batch_size if drop_last else len(mine)
    return [mine[i:i + batch_size] for i in range(0, stop, batch_size)]


class _BatchSet(torch.utils.data.Dataset):
    """Map-style dataset whose items are whole batches (the sampler yields position lists): sparse
    events where the data has them (small to ship from worker processes), else dense batches."""

    def __init__(self, data: TrainingData) -> None:
        self.data = data
        self.sparse = has_events(data)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, indices: Sequence[int]) -> dict[str, Any]:
        if self.sparse:
            return self.data.sparse_batch(indices)  # type: ignore[attr-defined]
        return self.data.batch(indices)


def dense_batches(data: TrainingData, plan: Sequence[Sequence[int]], device: str | torch.device = "cpu",
                  ring: DenseRing | None = None, num_workers: int | None = 0, context: str = "spawn",
                  prefetch: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """Batches ``{"lgn", "v1", "window"}`` of ``data`` in the order of ``plan`` (lists of positions).

    Data with events (:func:`~corticalrnn.data.batches.has_events`) gives batches on ``device``: with
    ``num_workers > 0`` a DataLoader of that many ``context`` workers reads the events, otherwise this
    process does (``prefetch``: in threads, reading and scattering ahead of the consumer); they are
    scattered into ``ring`` (batches lent under its ownership rule, :mod:`corticalrnn.data.ring`) or
    into fresh tensors (``ring=None``). Dense-only data gives its ``batch`` (on its own device): through
    a DataLoader of ``num_workers`` workers (pinned on CUDA), or with ``num_workers=None`` directly.
    """
    device = torch.device(device)
    sparse = has_events(data)
    if num_workers is None or (sparse and num_workers == 0):
        items: Iterable[dict[str, Any]] = (_BatchSet(data)[b] for b in plan)
        if not sparse:
            yield from items
            return
        yield from iter_dense(items, ring, device, prefetch=prefetch)
        return
    loader = torch.utils.data.DataLoader(
        _BatchSet(data), batch_size=None, sampler=list(plan), num_workers=num_workers,
        pin_memory=device.type == "cuda", generator=torch.Generator(),  # never touch the global RNG
        multiprocessing_context=context if num_workers > 0 else None, persistent_workers=False)
    if not sparse:
        yield from loader
        return
    yield from iter_dense(loader, ring, device, prefetch=False)


@dataclass
class BatchLoader:
    """Iterates dense batches on ``device``; workers (if any) read and ship sparse events.

    ``prefetch`` (without workers): a thread reads the next batches while the consumer works.
    ``buffers``: 0 gives every batch fresh tensors (safe to keep, e.g. ``list(loader)``); ``k >= 1``
    reuses a :class:`DenseRing` of ``k`` preallocated batches (2: one in the consumer's hands, one
    being filled), and each batch is valid only until the next one is requested (the ownership rule
    of :mod:`corticalrnn.data.ring`). Same values either way.
    """

    batches: WindowBatches
    batch_size: int = 32
    shuffle: bool = False
    seed: int = 0
    num_workers: int = 0
    device: str | torch.device = "cpu"
    drop_last: bool = False
    context: str = "spawn"
    epoch: int = 0
    prefetch: bool = False
    buffers: int = 0

    def __post_init__(self) -> None:
        self._ring: DenseRing | None = None

    def plan(self) -> list[list[int]]:
        """Batches of positions for the current epoch (:func:`epoch_batches`: deterministic in ``seed``
        and ``epoch``)."""
        return epoch_batches(len(self.batches), self.batch_size, self.epoch, self.seed, shuffle=self.shuffle,
                             drop_last=self.drop_last)

    def __len__(self) -> int:
        return len(self.plan())

    def ring(self) -> DenseRing | None:
        """The reused buffers (built on first use; None with ``buffers=0``)."""
        if self.buffers > 0 and self._ring is None:
            self._ring = DenseRing(self.batch_size, self.device, self.buffers, self.batches.n_bins,
                                   self.batches.sizes)
        return self._ring

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        plan = self.plan()
        self.epoch += 1
        yield from dense_batches(self.batches, plan, self.device, self.ring(), self.num_workers,
                                 self.context, self.prefetch)


def make_loader(
    batches: WindowBatches,
    batch_size: int = 32,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    drop_last: bool = False,
    context: str = "spawn",
    prefetch: bool = False,
    buffers: int = 0,
) -> BatchLoader:
    """A re-iterable loader of dense batches on ``device`` (see :class:`BatchLoader`)."""
    if batch_size < 1:
        raise CorticalRNNError(f"batch size must be >= 1, got {batch_size}")
    if context not in ("spawn", "forkserver", "fork"):
        raise CorticalRNNError(f"unknown multiprocessing context {context!r}")
    if buffers < 0:
        raise CorticalRNNError(f"buffers must be >= 0, got {buffers}")
    return BatchLoader(batches, batch_size, shuffle, seed, num_workers, device, drop_last, context,
                       prefetch=prefetch, buffers=buffers)

