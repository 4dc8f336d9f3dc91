"""Trainer: exact resume, signal checkpoints, NaN stop, schedules, logs (tiny torch module, CPU)."""

from __future__ import annotations

import json
import math
import os
import signal
import warnings
from collections.abc import Sequence

import pytest
import torch
from torch import nn

from corticalrnn.errors import CorticalRNNError
from corticalrnn.train.checkpoint import load_checkpoint
from corticalrnn.train.config import ScheduleConfig, TrainConfig, load_config
from corticalrnn.train.runlog import read_log
from corticalrnn.train.trainer import Trainer, TrainingDiverged, lr_factor

N_IN, N_V1, T = 5, 6, 8


class ToyRNN(nn.Module):
    """Smallest model with the CorticalRNN call signature; dropout makes it consume the RNG."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.U = nn.Parameter(torch.randn(N_V1, N_IN, generator=g) * 0.3)
        self.W = nn.Parameter(torch.randn(N_V1, N_V1, generator=g) * 0.1)
        self.b = nn.Parameter(torch.zeros(N_V1))
        self.drop = nn.Dropout(0.2)

    def forward(self, lgn: torch.Tensor, teacher: torch.Tensor | None = None,
                teacher_mask: torch.Tensor | None = None, teacher_fraction: float = 1.0) -> torch.Tensor:
        r = torch.zeros(lgn.shape[0], N_V1)
        out = []
        if teacher is not None:
            teacher_mask = teacher_mask & (torch.rand(N_V1) < teacher_fraction)
        for t, x in enumerate(lgn.unbind(1)):
            if teacher is not None and t > 0:
                r = torch.where(teacher_mask, teacher[:, t - 1], r)
            r = nn.functional.softplus(self.drop(x) @ self.U.T + r @ self.W.T + self.b)
            out.append(r)
        return torch.stack(out, 1)


def poisson_loss(rates: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    r = rates[..., mask].clamp_min(1e-6)
    return (r - target[..., mask] * torch.log(r)).mean()


class ToyData:
    def __init__(self, n: int, seed: int, on_batch=None) -> None:
        g = torch.Generator().manual_seed(seed)
        self.lgn = torch.rand(n, T, N_IN, generator=g)
        self.v1 = torch.poisson(torch.rand(n, T, N_V1, generator=g) * 2, generator=g)
        self.on_batch = on_batch
        self.calls = 0

    def __len__(self) -> int:
        return self.lgn.shape[0]

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        self.calls += 1
        if self.on_batch is not None:
            self.on_batch(self.calls)
        idx = torch.as_tensor(list(indices))
        return {"lgn": self.lgn[idx], "v1": self.v1[idx], "window": idx}


def make_cfg(**train) -> TrainConfig:
    cfg = TrainConfig()
    cfg.train.max_steps = 11
    cfg.train.batch_size = 3
    cfg.train.log_every = 1
    cfg.train.eval_every = 4
    cfg.train.checkpoint_every = 5
    cfg.train.ema_decay = 0.9
    cfg.train.progress = False
    cfg.schedule.warmup_steps = 3
    for k, v in train.items():
        setattr(cfg.train, k, v)
    cfg.validate()
    return cfg


OBSERVED = torch.tensor([True, False, True, True, False, True])
SPEC = {"model_config": {"kind": "toy"}, "sizes": {"V1": N_V1}}


def make_trainer(cfg: TrainConfig, run_dir, on_batch=None, spec=SPEC) -> Trainer:
    torch.manual_seed(0)
    return Trainer(cfg, ToyRNN(), ToyData(10, 0, on_batch), ToyData(4, 1), OBSERVED, run_dir, spec,
                   poisson_loss, subset={"toy": True}, project=None,
                   teacher_fraction=lambda step: max(0.0, 1 - step / 8), tensorboard=False)


def losses(run_dir, split="train") -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_log(run_dir) if r["split"] == split]


@pytest.mark.parametrize("stop_at", [6, 8])  # mid-epoch (4 batches/epoch) and on an epoch boundary
def test_interrupted_and_resumed_run_matches_straight_run(tmp_path, stop_at):
    cfg = make_cfg()
    straight = make_trainer(cfg, tmp_path / "a").fit()
    assert straight.status == "finished" and straight.step == 11

    def send_signal(call: int) -> None:
        if call == stop_at:  # the batch of step `stop_at` is being loaded
            os.kill(os.getpid(), signal.SIGUSR1)

    first = make_trainer(cfg, tmp_path / "b", on_batch=send_signal).fit()
    assert first.status == "interrupted" and first.step == stop_at
    assert load_checkpoint(tmp_path / "b" / "last.pt")["progress"]["step"] == stop_at
    resumed = make_trainer(cfg, tmp_path / "b").fit(resume=tmp_path / "b" / "last.pt")
    assert resumed.status == "finished" and resumed.step == 11

    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert [s for s, _ in a] == list(range(1, 12))
    assert a == b  # bitwise-identical losses, and the log has no duplicated steps
    assert losses(tmp_path / "a", "val") == losses(tmp_path / "b", "val")
    wa = load_checkpoint(tmp_path / "a" / "last.pt")
    wb = load_checkpoint(tmp_path / "b" / "last.pt")
    for k in wa["model"]:
        assert torch.equal(wa["model"][k], wb["model"][k])
    for k in wa["ema"]:
        assert torch.equal(wa["ema"][k], wb["ema"][k])
    csv_rows = (tmp_path / "b" / "metrics.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + 11 + 3  # header + train rows + val rows at 4, 8, 11


def test_sigterm_stops_at_step_boundary_and_checkpoint_is_atomic(tmp_path):
    def send(call: int) -> None:
        if call == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    cfg = make_cfg()
    res = make_trainer(cfg, tmp_path, on_batch=send).fit()
    assert res.status == "interrupted" and res.step == 2
    assert not list(tmp_path.glob("*.tmp"))
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck["progress"]["batch_in_epoch"] == 2 and ck["config"]["train"]["max_steps"] == 11
    # handlers restored after fit
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.default_int_handler) or callable(
        signal.getsignal(signal.SIGTERM))


def test_nan_loss_stops_clearly_and_keeps_last_good_checkpoint(tmp_path):
    cfg = make_cfg(max_steps=20)
    trainer = make_trainer(cfg, tmp_path)

    def poison(call: int) -> None:
        if call == 7:
            with torch.no_grad():
                trainer.raw_model.b.fill_(float("nan"))

    trainer.train_data.on_batch = poison
    with pytest.raises(TrainingDiverged, match=r"non-finite loss at step 7.*last.pt \(step 5\)"):
        trainer.fit()
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck["progress"]["step"] == 5
    assert all(torch.isfinite(v).all() for v in ck["model"].values())


def test_best_checkpoint_is_chosen_on_validation_loss(tmp_path):
    cfg = make_cfg()
    make_trainer(cfg, tmp_path).fit()
    vals = losses(tmp_path, "val")
    best_step, best_loss = min(vals, key=lambda x: x[1])
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["progress"]["best_step"] == best_step
    assert best["progress"]["best_val"] == pytest.approx(best_loss)
    rows = [r for r in read_log(tmp_path) if r["split"] == "val"]
    assert all("loss_hidden" in r for r in rows)


def test_resume_rejects_other_architecture(tmp_path):
    cfg = make_cfg(max_steps=5)
    make_trainer(cfg, tmp_path / "a").fit()
    other = {"model_config": {"kind": "toy", "hidden": 3}, "sizes": {"V1": N_V1}}
    t = make_trainer(cfg, tmp_path / "b", spec=other)
    with pytest.raises(CorticalRNNError, match=r"another architecture.*model_config.hidden"):
        t.fit(resume=tmp_path / "a" / "last.pt")


def test_projection_called_after_every_step(tmp_path):
    cfg = make_cfg(max_steps=4)
    calls = []
    t = make_trainer(cfg, tmp_path)

    def project() -> None:
        calls.append(1)
        t.raw_model.W.clamp_(min=0)

    t.project = project
    t.fit()
    assert len(calls) == 4
    assert (t.raw_model.W >= 0).all()


def test_lr_schedules():
    s = ScheduleConfig(kind="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, s, 100) == pytest.approx(0.1)
    assert lr_factor(9, s, 100) == pytest.approx(1.0)
    assert lr_factor(55, s, 100) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(100, s, 100) == pytest.approx(0.1)
    oc = ScheduleConfig(kind="onecycle", pct_start=0.3)
    f = [lr_factor(i, oc, 100) for i in range(101)]
    assert f[0] == pytest.approx(1 / 25) and max(f) == pytest.approx(1.0, abs=1e-3)
    assert f.index(max(f)) in (29, 30) and f[100] == pytest.approx(1e-4)


def test_config_unknown_keys_are_named(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[optim]\nlr = 0.01\nlearning_rate = 3\n[trian]\nmax_steps = 3\n')
    with pytest.raises(CorticalRNNError) as e:
        load_config(p)
    assert "trian" in str(e.value) and str(p) in str(e.value)
    p.write_text('[optim]\nlr = 0.01\nlearning_rate = 3\n')
    with pytest.raises(CorticalRNNError, match="optim.learning_rate"):
        load_config(p)
    with pytest.raises(CorticalRNNError, match="train.max_stepz"):
        load_config(None, ["train.max_stepz=3"])


def test_config_overrides_and_types(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[optim]\nlr = 0.01\n[model]\nneuron = "leaky"\n')
    cfg = load_config(p, ["optim.lr=2e-3", "train.max_steps=7", "schedule.kind=onecycle",
                          "model.tau_init=3", 'data.store="x y.zarr"'])
    assert cfg.optim.lr == 2e-3 and cfg.train.max_steps == 7 and cfg.schedule.kind == "onecycle"
    assert cfg.model == {"neuron": "leaky", "tau_init": 3} and cfg.data.store == "x y.zarr"
    with pytest.raises(CorticalRNNError, match="expected int"):
        load_config(None, ["train.max_steps=abc"])
    with pytest.raises(CorticalRNNError, match="schedule.kind"):
        load_config(None, ["schedule.kind=linear"])


def test_config_roundtrips_through_run_dir(tmp_path):
    cfg = make_cfg(max_steps=2)
    make_trainer(cfg, tmp_path).fit()
    again = load_config(tmp_path / "config.toml")
    assert again.to_dict() == cfg.to_dict()
    assert json.loads((tmp_path / "subset.json").read_text()) == {"toy": True}


def test_checkpoint_rejects_foreign_files(tmp_path):
    from corticalrnn.errors import SchemaError

    bad = tmp_path / "x.pt"
    torch.save({"format": "something.else"}, bad)
    with pytest.raises(SchemaError, match="not a corticalrnn checkpoint"):
        load_checkpoint(bad)
    bad.write_bytes(b"garbage")
    with pytest.raises(SchemaError, match=str(bad)):
        load_checkpoint(bad)
    with pytest.raises(SchemaError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_example_configs_parse():
    from pathlib import Path

    from corticalrnn.train.setup import model_config

    root = Path(__file__).resolve().parents[1]
    paths = sorted([*(root / "configs").glob("*.toml"), root / "corticalrnn" / "configs" / "example.toml"])
    assert len(paths) >= 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the shipped configs use today's layout (no deprecated keys)
        for path in paths:
            model_config(load_config(path), 20, "fp32")


class SparseToyData(ToyData):
    """ToyData that also offers ``sparse_batch`` (the corticalrnn.data.WindowBatches event format)."""

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        raise AssertionError("the trainer must read sparse batches when the data offers them")

    def sparse_batch(self, indices: Sequence[int]) -> dict[str, object]:
        idx = torch.as_tensor(list(indices))
        out: dict[str, object] = {"window": idx.numpy()}
        for g, x in (("lgn", self.lgn[idx]), ("v1", self.v1[idx])):
            flat = x.reshape(-1)
            nz = torch.nonzero(flat).ravel()
            out[f"{g}_index"], out[f"{g}_count"] = nz.numpy(), flat[nz].numpy()
        out["shape"] = torch.tensor([len(idx), T, N_IN, N_V1]).numpy()
        return out


def test_sparse_batches_train_exactly_like_dense_ones(tmp_path):
    cfg = make_cfg()
    dense = make_trainer(cfg, tmp_path / "a").fit()
    torch.manual_seed(0)
    sparse = Trainer(cfg, ToyRNN(), SparseToyData(10, 0), SparseToyData(4, 1), OBSERVED, tmp_path / "b", SPEC,
                     poisson_loss, teacher_fraction=lambda step: max(0.0, 1 - step / 8),
                     tensorboard=False).fit()
    assert dense.step == sparse.step == 11
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert losses(tmp_path / "a", "val") == losses(tmp_path / "b", "val")
