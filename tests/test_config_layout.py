"""The model config's sections, and configs / checkpoints written in the older flat layout."""

from __future__ import annotations

import json

import pytest
import torch

from corticalrnn.errors import CorticalRNNError
from corticalrnn.model import ModelConfig
from corticalrnn.model.config import ADDED_KEYS, FLAT_KEYS, SECTIONS, TRAINING_KEYS, migrate_flat, to_dotted
from corticalrnn.train.config import load_config

FLAT_TOML = """
[model]
neuron_model = "adaptive"
connectivity = "distance"
distance_sigma_mm = { exc = 0.2, inh = 0.1 }
weight_storage = "sparse"
spectral_radius = 0.5
cuda_graphs = false
loss = "mse"
tbptt_steps = 4

[model.teacher]
start = 0.5
end = 0.0
"""

NESTED_TOML = """
[model.architecture]
spectral_radius = 0.5

[model.connectivity]
rule = "distance"
distance_sigma_mm = { exc = 0.2, inh = 0.1 }
storage = "sparse"

[model.neurons]
model = "adaptive"

[model.compute]
cuda_graphs = false

[objective]
loss = "mse"
tbptt_steps = 4

[objective.teacher]
start = 0.5
end = 0.0
"""


def test_every_flat_key_has_one_place_and_every_field_an_old_name():
    """The migration map covers every field of every section exactly once (old configs lose nothing)."""
    from dataclasses import fields

    targets = sorted(FLAT_KEYS.values())
    assert len(targets) == len(set(targets))
    every = sorted((s, f.name) for s, cls in SECTIONS.items() for f in fields(cls))
    assert targets == sorted(set(every) - ADDED_KEYS)  # keys added after the sections have no flat name
    assert ADDED_KEYS <= set(every)
    assert not set(TRAINING_KEYS) & {f.name for f in fields(ModelConfig)}


def test_flat_config_file_loads_as_the_nested_one_with_a_warning(tmp_path):
    (tmp_path / "flat.toml").write_text(FLAT_TOML)
    (tmp_path / "nested.toml").write_text(NESTED_TOML)
    with pytest.warns(FutureWarning, match=r"model.neuron_model -> model.neurons.model.*"
                                           r"model.teacher -> objective.teacher") as record:
        old = load_config(tmp_path / "flat.toml")
    assert str(tmp_path / "flat.toml") in str(record[0].message)
    new = load_config(tmp_path / "nested.toml")
    assert old.to_dict() == new.to_dict()
    assert (new.objective.loss, new.objective.tbptt_steps, new.objective.teacher.start) == ("mse", 4, 0.5)
    cfg = ModelConfig.from_dict({**new.model, "bin_ms": 5.0})
    assert cfg.neurons.model == "adaptive" and cfg.connectivity.storage == "sparse"


def test_old_override_keys_go_to_their_place(tmp_path):
    (tmp_path / "nested.toml").write_text(NESTED_TOML)
    with pytest.warns(FutureWarning, match="model.neuron_model is now model.neurons.model"):
        cfg = load_config(tmp_path / "nested.toml", ["model.neuron_model=leaky", "model.teacher.steps=7",
                                                      "model.distance_sigma_mm.exc=0.3"])
    assert cfg.model["neurons"]["model"] == "leaky"  # the override wins over the file
    assert cfg.objective.teacher.steps == 7
    assert cfg.model["connectivity"]["distance_sigma_mm"] == {"exc": 0.3, "inh": 0.1}


def test_model_config_errors_name_the_section():
    with pytest.raises(CorticalRNNError, match=r"unknown key\(s\) connectivity.rulez"):
        ModelConfig.from_dict({"connectivity": {"rulez": "distance"}})
    with pytest.raises(CorticalRNNError, match="objective.loss"):
        ModelConfig.from_dict({"loss": "mse"})
    with pytest.raises(CorticalRNNError, match="both set"):
        migrate_flat({"neuron_model": "gru", "neurons": {"model": "leaky"}})
    with pytest.raises(CorticalRNNError, match="unknown section"):
        ModelConfig().with_values({"neuron.model": "gru"})
    with pytest.raises(CorticalRNNError, match="neurons.model='lif'"):
        ModelConfig().with_values({"neurons.model": "lif"})


def test_nested_dict_roundtrip_and_dotted_values():
    cfg = ModelConfig().with_values(to_dotted({"neuron_model": "gru", "connectivity": "feature", "seed": 3}))
    assert cfg.neurons.model == "gru" and cfg.connectivity.rule == "feature" and cfg.seed == 3
    d = json.loads(json.dumps(cfg.to_dict()))
    assert set(d) == {"bin_ms", "seed", *SECTIONS}
    assert ModelConfig.from_dict(d) == cfg


def test_checkpoint_spec_in_the_flat_layout_builds_the_same_model():
    """A spec from before the sections (flat keys, training keys, precision) builds the same model and
    counts as the same architecture as today's spec."""
    from corticalrnn.train.spec import build_model, spec_differences, spec_model_config

    cfg = ModelConfig(bin_ms=5.0).with_values(to_dotted({"neuron_model": "adaptive", "spectral_radius": 0.5}))
    sizes = {"X_ON": 3, "X_OFF": 3, "V1_Exc_L4": 6, "V1_Inh_L4": 2, "V1_Exc_L2/3": 5, "V1_Inh_L2/3": 2}
    nested = cfg.to_dict()
    nested["compute"].pop("precision")
    flat = {"bin_ms": 5.0, "seed": 0, "loss": "poisson", "tbptt_steps": 0, "precision": "fp32",
            "teacher": {"start": 1.0, "end": 0.0, "schedule": "linear", "steps": 10}}
    for section in ("architecture", "connectivity", "neurons", "compute"):
        old_names = {new: old for old, (s, new) in FLAT_KEYS.items() if s == section}
        flat.update({old_names[k]: v for k, v in nested[section].items() if (section, k) not in ADDED_KEYS})
    old_spec, new_spec = {"model_config": flat, "sizes": sizes}, {"model_config": nested, "sizes": sizes}
    # the old checkpoint lacks the keys added since; they take their defaults, so it is the same model
    assert spec_model_config(old_spec) == {k: {n: x for n, x in v.items() if (k, n) not in ADDED_KEYS}
                                           if isinstance(v, dict) else v for k, v in nested.items()}
    assert spec_differences(old_spec, new_spec) == []
    torch.manual_seed(0)
    a = build_model(old_spec)
    torch.manual_seed(0)
    b = build_model(new_spec)
    assert a.config == b.config
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), k
