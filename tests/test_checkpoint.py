"""Checkpoint format: atomic write, header checks; the architecture comparison of two specs."""

from __future__ import annotations

import os
import re

import pytest
import torch
from modelconfigs import model_config

from corticalrnn.errors import DataMismatchError, SchemaError
from corticalrnn.train import checkpoint as ck
from corticalrnn.train import spec as sp


def _payload() -> dict:
    spec = {"sizes": {"V1_Exc_L4": 3}, "neuron_ids": {"V1_Exc_L4": torch.tensor([4, 5, 9])},
            "observed": {"V1_Exc_L4": torch.tensor([4])}}
    return {"config": {"optim": {"lr": 1e-3}}, "spec": spec, "model": {"w": torch.ones(2)},
            "progress": {"step": 3}}


def test_roundtrip_and_header(tmp_path):
    path = ck.save_checkpoint(tmp_path / "sub" / "a.pt", _payload())
    data = ck.load_checkpoint(path)
    assert data["format"] == ck.FORMAT and data["version"] == ck.VERSION
    assert torch.equal(data["model"]["w"], torch.ones(2)) and data["progress"] == {"step": 3}
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.pt"]


def test_failed_write_leaves_previous_file_intact(tmp_path, monkeypatch):
    path = ck.save_checkpoint(tmp_path / "a.pt", _payload())
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        ck.save_checkpoint(path, {**_payload(), "progress": {"step": 99}})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]
    assert ck.load_checkpoint(path)["progress"]["step"] == 3


def test_version_and_missing_keys(tmp_path):
    p = tmp_path / "x.pt"
    torch.save({"format": ck.FORMAT, "version": 99}, p)
    with pytest.raises(SchemaError, match="version 99"):
        ck.load_checkpoint(p)
    torch.save({"format": ck.FORMAT, "version": ck.VERSION, "config": {}}, p)
    with pytest.raises(SchemaError, match="lacks 'spec'"):
        ck.load_checkpoint(p)


def test_architecture_check_names_differences():
    a = _payload()["spec"]
    b = _payload()["spec"]
    sp.check_same_architecture(a, b, "c.pt")
    b["observed"] = {"V1_Exc_L4": torch.tensor([5])}
    sp.check_same_architecture(a, b, "c.pt")  # observed set may differ (fine-tuning)
    with pytest.raises(DataMismatchError, match="observed.V1_Exc_L4"):
        sp.check_same_architecture(a, b, "c.pt", ignore=())
    b["neuron_ids"] = {"V1_Exc_L4": torch.tensor([4, 5, 10])}
    b["sizes"] = {"V1_Exc_L4": 3, "V1_Inh_L4": 1}
    with pytest.raises(DataMismatchError, match=r"c\.pt.*neuron_ids.V1_Exc_L4, sizes.V1_Inh_L4"):
        sp.check_same_architecture(a, b, "c.pt")


def test_load_state_strict_names_file():
    m = torch.nn.Linear(2, 3)
    with pytest.raises(DataMismatchError, match="c.pt: checkpoint weights do not fit"):
        ck.load_state_strict(m, {"weight": torch.zeros(4, 2), "bias": torch.zeros(4)}, "c.pt")


def test_foreign_pickle_error_never_suggests_weights_only_false(tmp_path):
    """Issue 15: torch's advice to retry with weights_only=False (which runs code) is not passed on."""
    import os
    import pickle

    from corticalrnn.errors import SchemaError
    from corticalrnn.train.checkpoint import load_checkpoint

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"format": "corticalrnn.checkpoint", "x": Evil()}))
    with pytest.raises(SchemaError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert str(path) in msg and "weights_only" not in msg and "never loaded" in msg


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optim.lr=nan", "optim.lr must be a finite number"),
        ("optim.lr=inf", "optim.lr must be a finite number"),
        ("optim.weight_decay=-1", "optim.weight_decay must be in [0, inf)"),
        ("optim.beta1=1.5", "optim.beta1 must be in [0, 1)"),
        ("optim.grad_clip=-1", "optim.grad_clip must be in"),
        ("data.num_workers=-2", "data.num_workers must be in"),
        ("schedule.warmup_steps=-5", "schedule.warmup_steps must be in"),
        ("schedule.pct_start=0", "schedule.pct_start must be in (0, 1)"),
        ("train.ema_decay=1.0", "train.ema_decay must be in [0, 1)"),
        ("data.cache_mb=inf", "data.cache_mb must be a finite number"),
    ],
)
def test_every_numeric_config_field_is_checked(override, key):
    from corticalrnn.errors import CorticalRNNError
    from corticalrnn.train.config import load_config

    with pytest.raises(CorticalRNNError, match=re.escape(key)):
        load_config(None, [override])


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ({"spectral_radius": float("nan")}, "spectral_radius must be a finite number"),
        ({"input_gain": -1.0}, "input_gain must be >= 0"),
        ({"tau_ms": {"V1_Exc_L4": float("inf")}}, "tau_ms['V1_Exc_L4'] must be a finite number"),
    ],
)
def test_model_config_numbers_are_checked(model, key):
    from corticalrnn.errors import CorticalRNNError
    from corticalrnn.model import ModelConfig

    with pytest.raises(CorticalRNNError, match=re.escape(key)):
        ModelConfig.from_dict(model)


def _local_model(seed: int = 0, storage: str = "dense", **kw):
    import numpy as np

    from corticalrnn.model import CorticalRNN

    sizes = {"X_ON": 4, "X_OFF": 3, "V1_Exc_L4": 12, "V1_Inh_L4": 5, "V1_Exc_L2/3": 10, "V1_Inh_L2/3": 4}
    rng = np.random.default_rng(seed)
    pos = {s: rng.random((n, 2)) * 0.6 for s, n in sizes.items()}
    cfg = model_config(bin_ms=5.0, connectivity="distance", distance_sigma_mm={"exc": 0.1, "inh": 0.08},
                       weight_storage=storage, **kw)
    return CorticalRNN(cfg, sizes, pos)


class _Windows:
    def __init__(self, n: int, n_in: int, n_v1: int) -> None:
        g = torch.Generator().manual_seed(3)
        self.lgn = torch.poisson(torch.full((n, 6, n_in), 0.5), generator=g)
        self.v1 = torch.poisson(torch.full((n, 6, n_v1), 0.3), generator=g)

    def __len__(self) -> int:
        return self.lgn.shape[0]

    def batch(self, idx):
        idx = torch.as_tensor(list(idx))
        return {"lgn": self.lgn[idx], "v1": self.v1[idx], "window": idx}


@pytest.mark.parametrize("storage", ["dense", "sparse"])
def test_masked_model_checkpoint_is_o_parameters_and_resumes_bit_exactly(tmp_path, storage):
    """No masks or patterns in the file, masked blocks as their values on the mask (model, EMA and
    Adam moments), a model with another mask is refused, and a resumed run equals a straight one."""
    from corticalrnn.model.loss import poisson_nll
    from corticalrnn.train.config import TrainConfig
    from corticalrnn.train.runlog import read_log
    from corticalrnn.train.trainer import Trainer

    def trainer(run, steps):
        torch.manual_seed(0)
        model = _local_model(storage=storage)
        cfg = TrainConfig()
        cfg.train.max_steps, cfg.train.batch_size, cfg.train.log_every = steps, 2, 1
        cfg.train.eval_every = cfg.train.checkpoint_every = 100
        cfg.train.ema_decay, cfg.train.progress, cfg.train.device = 0.9, False, "cpu"
        spec = {"model_config": model.config.to_dict()}
        return Trainer(cfg, model, _Windows(6, 7, model.n_v1), None, torch.ones(model.n_v1, dtype=torch.bool),
                       run, spec, poisson_nll, project=model.project_, tensorboard=False)

    straight = trainer(tmp_path / "a", 5)
    straight.fit()
    trainer(tmp_path / "b", 3).fit()
    resumed = trainer(tmp_path / "b", 5)
    resumed.fit(resume=tmp_path / "b" / "last.pt")
    la = [(r["step"], r["loss"]) for r in read_log(tmp_path / "a")]
    assert la == [(r["step"], r["loss"]) for r in read_log(tmp_path / "b")] and len(la) == 5
    for x, y in zip(straight.raw_model.parameters(), resumed.raw_model.parameters()):
        assert torch.equal(x, y)

    ckpt = ck.load_checkpoint(tmp_path / "a" / "last.pt")
    model = straight.raw_model
    n_params = sum(p.numel() for p in model.parameters())
    n_real = model.n_synapses() + sum(p.numel() for n, p in model.named_parameters() if "weights." not in n)
    assert not any(k.endswith("mask") or "pattern_" in k for k in ckpt["model"])
    stored = sum(v.numel() for v in ckpt["model"].values() if v.is_floating_point())
    assert stored <= n_real < n_params or storage == "sparse"
    moments = sum(v.numel() for st in ckpt["optimizer"]["state"].values()
                  for k, v in st.items() if k != "step")
    assert moments == 2 * stored
    assert sum(v.numel() for k, v in ckpt["ema"].items() if v.is_floating_point()) == stored

    other = _local_model(seed=1, storage=storage)
    with pytest.raises(RuntimeError, match="differs from the one this model built"):
        other.load_state_dict(ckpt["model"])
    fresh = _local_model(storage=storage)
    fresh.load_state_dict(ckpt["model"])
    for x, y in zip(fresh.parameters(), model.parameters()):
        assert torch.equal(x, y)


def test_checkpoints_that_hold_the_mask_still_load():
    model = _local_model()
    state = model.state_dict()
    old = {k: v for k, v in state.items() if not k.endswith("fingerprint")}
    for name, mod in model.named_modules():
        if getattr(mod, "mask", None) is not None:
            old[f"{name}.mask"] = mod.mask.clone()
    fresh = _local_model()
    fresh.load_state_dict(old)
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), model.parameters()))
    bad = dict(old)
    key = next(k for k in bad if k.endswith(".mask"))
    bad[key] = ~bad[key]
    with pytest.raises(RuntimeError, match="mask differs"):
        _local_model().load_state_dict(bad)
