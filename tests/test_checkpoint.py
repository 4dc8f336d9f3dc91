"""Checkpoint format: atomic write, header checks, architecture comparison."""

from __future__ import annotations

import os
import re

import pytest
import torch

from corticalrnn.errors import DataMismatchError, SchemaError
from corticalrnn.train import checkpoint as ck


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
    ck.check_same_architecture(a, b, "c.pt")
    b["observed"] = {"V1_Exc_L4": torch.tensor([5])}
    ck.check_same_architecture(a, b, "c.pt")  # observed set may differ (fine-tuning)
    with pytest.raises(DataMismatchError, match="observed.V1_Exc_L4"):
        ck.check_same_architecture(a, b, "c.pt", ignore=())
    b["neuron_ids"] = {"V1_Exc_L4": torch.tensor([4, 5, 10])}
    b["sizes"] = {"V1_Exc_L4": 3, "V1_Inh_L4": 1}
    with pytest.raises(DataMismatchError, match=r"c\.pt.*neuron_ids.V1_Exc_L4, sizes.V1_Inh_L4"):
        ck.check_same_architecture(a, b, "c.pt")


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
