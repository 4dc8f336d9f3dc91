"""DDP: 2 CPU processes on gloo train like one process with the doubled batch; only rank 0 writes."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.multiprocessing as mp
from torch import nn

from corticalrnn.data import epoch_batches
from corticalrnn.train.checkpoint import load_checkpoint
from corticalrnn.train.config import TrainConfig
from corticalrnn.train.runlog import read_log
from corticalrnn.train.trainer import Trainer

N_IN, N_V1, T = 4, 5, 6


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.U = nn.Parameter(torch.randn(N_V1, N_IN, generator=g) * 0.3)
        self.W = nn.Parameter(torch.randn(N_V1, N_V1, generator=g) * 0.1)

    def forward(self, lgn, teacher=None, teacher_mask=None):
        r = torch.zeros(lgn.shape[0], N_V1, dtype=lgn.dtype)
        out = []
        for x in lgn.unbind(1):
            r = nn.functional.softplus(x @ self.U.T + r @ self.W.T)
            out.append(r)
        return torch.stack(out, 1)


def loss_fn(rates, target, mask):
    r = rates[..., mask].clamp_min(1e-6)
    return (r - target[..., mask] * torch.log(r)).mean()


class Data:
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.lgn = torch.rand(n, T, N_IN, generator=g)
        self.v1 = torch.poisson(torch.rand(n, T, N_V1, generator=g) * 2, generator=g)

    def __len__(self) -> int:
        return len(self.lgn)

    def batch(self, indices: Sequence[int]):
        idx = torch.as_tensor(list(indices))
        return {"lgn": self.lgn[idx], "v1": self.v1[idx]}


def config(batch_size: int) -> TrainConfig:
    cfg = TrainConfig()
    cfg.train.max_steps = 6
    cfg.train.batch_size = batch_size
    cfg.train.log_every = 1
    cfg.train.eval_every = 3
    cfg.train.checkpoint_every = 3
    cfg.train.progress = False
    cfg.optim.lr = 0.05
    return cfg


MASK = torch.tensor([True, True, False, True, False])


def run(run_dir: Path, batch_size: int) -> None:
    torch.set_num_threads(1)
    Trainer(config(batch_size), Toy(), Data(16, 0), Data(5, 1), MASK, run_dir, {"m": 1}, loss_fn,
            tensorboard=False).fit()


def _worker(rank: int, world: int, port: int, run_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    try:
        run(Path(run_dir), batch_size=2)
        if rank == 1:  # rank 1 must not have written anything (the dir may not even exist for it)
            assert torch.distributed.get_world_size() == 2
    finally:
        from corticalrnn.train.distributed import shutdown

        shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_gloo_processes_match_single_process(tmp_path):
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    mp.spawn(_worker, args=(2, _free_port(), str(ddp_dir)), nprocs=2, join=True)
    run(single_dir, batch_size=4)  # same global batches: rank r takes every other index

    a, b = read_log(ddp_dir), read_log(single_dir)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    val_a = [r["loss"] for r in a if r["split"] == "val"]
    val_b = [r["loss"] for r in b if r["split"] == "val"]
    assert torch.allclose(torch.tensor(val_a), torch.tensor(val_b), rtol=1e-5)
    wa, wb = load_checkpoint(ddp_dir / "last.pt")["model"], load_checkpoint(single_dir / "last.pt")["model"]
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=1e-5, atol=1e-6), k
    assert sorted(p.name for p in ddp_dir.iterdir()) == sorted(p.name for p in single_dir.iterdir())
    assert not list(ddp_dir.glob("*.tmp"))


def test_epoch_batches_shard_deterministically():
    full = epoch_batches(10, 4, epoch=2, seed=5)
    r0 = epoch_batches(10, 2, epoch=2, seed=5, rank=0, world_size=2)
    r1 = epoch_batches(10, 2, epoch=2, seed=5, rank=1, world_size=2)
    assert len(r0) == len(r1) == 3
    for i, batch in enumerate(full):
        assert sorted(batch) == sorted(r0[i] + r1[i])
    assert epoch_batches(10, 4, epoch=2, seed=5) == full
    assert epoch_batches(10, 4, epoch=3, seed=5) != full
    # padding: 7 windows over 2 ranks -> 4 each, every window at least once
    shards = [epoch_batches(7, 10, 0, 0, r, 2)[0] for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 4 and set(shards[0] + shards[1]) == set(range(7))
