"""Training configuration: dataclasses, TOML loading and ``--set key=value`` overrides.

A config file mirrors the dataclasses section by section::

    [data]
    store = "runs/store_20ms.zarr"
    subset = "runs/subset.json"

    [optim]
    lr = 3e-3

    [train]
    max_steps = 2000

Unknown keys (in the file or in overrides) raise :class:`~corticalrnn.errors.CorticalRNNError`
naming every offending key. The ``[model]`` section is kept as a plain (nested) table and handed
to the model's own config dataclass (:mod:`corticalrnn.model.config`), which validates it the same
way. Files written before the model's sections existed still load: their flat ``[model]`` keys move to
their sections, and ``model.loss`` / ``model.tbptt_steps`` / ``[model.teacher]`` to ``[objective]``,
with a warning naming each key's new place.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from corticalrnn.errors import CorticalRNNError

try:
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

T = TypeVar("T")


@dataclass
class DataConfig:
    """Where the training windows come from and how they are split."""

    store: str = ""  # Zarr store with the training windows (training images only)
    subset: str = ""  # neuron-subset JSON file (corticalrnn.subsets)
    split: str = ""  # image-split JSON (corticalrnn.subsets.ImageSplit); empty: made from the store
    val_fraction: float = 0.2  # fraction of training *images* held out for model selection
    split_seed: int = 0  # seed of the image split
    test_images: str = "auto"  # auto: exclude images with repeated trials (and store-marked test) | none
    # move this many of the test images (seeded choice, all their trials) into training; the rest stay
    # the test set that `evaluate` scores (the thesis sample has only 10 single-trial training images)
    train_test_images: int = 0
    num_workers: int = 0  # DataLoader worker processes
    cache_mb: float = 1024.0  # hold the windows in memory (dense float32) when they take less than this


@dataclass
class OptimConfig:
    """AdamW and gradient clipping."""

    lr: float = 3e-3
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    hidden_rate_prior: float = 0.0  # weight of the hidden-unit mean-rate prior (train.rate_prior); 0 off


@dataclass
class ScheduleConfig:
    """Learning-rate schedule: ``cosine`` (linear warmup + cosine decay), ``onecycle`` or ``constant``."""

    kind: str = "cosine"
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # final lr / peak lr for cosine
    pct_start: float = 0.3  # onecycle: fraction of steps spent increasing the lr


@dataclass
class LoopConfig:
    """The training loop: length, batching, precision, checkpointing, logging."""

    max_steps: int = 1000
    batch_size: int = 16
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # CPU threads for torch (0: torch's default); 1 is fastest for tiny models
    precision: str = "auto"  # auto (bf16 on GPU when supported, else fp32) | fp32 | bf16 | fp16
    ema_decay: float = 0.0  # EMA of weights (0 disables); evaluation and best.pt use the EMA weights
    eval_every: int = 100  # validation every N steps (and at the end)
    checkpoint_every: int = 200  # periodic checkpoint every N steps (and at the end)
    log_every: int = 10  # training-loss log rows every N steps
    progress: bool = True  # tqdm progress bar on stderr (rank 0 only)


@dataclass(frozen=True)
class TeacherForcingConfig:
    """Teacher forcing of observed neurons: the fraction of observed neurons (drawn per window)
    whose previous-step rate is replaced by the data, as a function of the optimizer step."""

    start: float = 1.0
    end: float = 0.0
    schedule: str = "linear"  # constant | linear | exponential
    steps: int = 10_000  # steps to go from start to end (linear) or the e-folding steps (exponential)

    def fraction_at(self, step: int) -> float:
        """Teacher-forcing fraction at optimizer step ``step`` (clipped to [0, 1])."""
        if self.schedule == "constant" or self.steps <= 0:
            f = self.start
        elif self.schedule == "linear":
            f = self.start + (self.end - self.start) * min(step / self.steps, 1.0)
        else:
            f = self.end + (self.start - self.end) * math.exp(-step / self.steps)
        return min(max(f, 0.0), 1.0)

    @property
    def active(self) -> bool:
        return self.start > 0 or self.end > 0


@dataclass
class ObjectiveConfig:
    """What training minimises and how the gradient is taken."""

    loss: str = "poisson"  # poisson | mse (corticalrnn.model.loss)
    tbptt_steps: int = 0  # 0 = full BPTT; else the state is detached every this many steps
    teacher: TeacherForcingConfig = field(default_factory=TeacherForcingConfig)


@dataclass
class TrainConfig:
    """Everything ``corticalrnn train`` needs."""

    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    model: dict[str, Any] = field(default_factory=dict)  # validated by corticalrnn.model's config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Check values that the types alone do not constrain."""
        problems = []
        if self.schedule.kind not in ("cosine", "onecycle", "constant"):
            problems.append(f"schedule.kind must be cosine, onecycle or constant, not {self.schedule.kind!r}")
        if self.data.test_images not in ("auto", "none"):
            problems.append(f"data.test_images must be auto or none, not {self.data.test_images!r}")
        if self.train.precision not in ("auto", "fp32", "bf16", "fp16"):
            problems.append(f"train.precision must be auto, fp32, bf16 or fp16, not {self.train.precision!r}")
        if not 0.0 <= self.data.val_fraction < 1.0:
            problems.append(f"data.val_fraction must be in [0, 1), not {self.data.val_fraction}")
        if not 0.0 <= self.train.ema_decay < 1.0:
            problems.append(f"train.ema_decay must be in [0, 1), not {self.train.ema_decay}")
        if self.objective.loss not in ("poisson", "mse"):
            problems.append(f"objective.loss must be poisson or mse, not {self.objective.loss!r}")
        if self.objective.tbptt_steps < 0:
            problems.append(f"objective.tbptt_steps must be >= 0, not {self.objective.tbptt_steps}")
        if self.objective.teacher.schedule not in ("constant", "linear", "exponential"):
            problems.append("objective.teacher.schedule must be constant, linear or exponential, not "
                            f"{self.objective.teacher.schedule!r}")
        for name in ("max_steps", "batch_size", "eval_every", "checkpoint_every", "log_every"):
            if getattr(self.train, name) < 1:
                problems.append(f"train.{name} must be >= 1")
        problems += _numeric_problems(self)
        if problems:
            raise CorticalRNNError("invalid training config: " + "; ".join(problems))


#: (section, key) -> (lowest, highest, lowest included, highest included); every numeric field is
#: also checked to be finite. Keys not listed only need to be finite.
_RANGES: dict[tuple[str, str], tuple[float, float, bool, bool]] = {
    ("data", "val_fraction"): (0.0, 1.0, True, False),
    ("data", "num_workers"): (0, 1024, True, True),
    ("data", "cache_mb"): (0.0, float("inf"), True, False),
    ("data", "split_seed"): (0, 2**63 - 1, True, True),
    ("data", "train_test_images"): (0, 2**31 - 1, True, True),
    ("optim", "lr"): (0.0, float("inf"), False, False),
    ("optim", "weight_decay"): (0.0, float("inf"), True, False),
    ("optim", "beta1"): (0.0, 1.0, True, False),
    ("optim", "beta2"): (0.0, 1.0, True, False),
    ("optim", "eps"): (0.0, float("inf"), False, False),
    ("optim", "grad_clip"): (0.0, float("inf"), True, False),
    ("optim", "hidden_rate_prior"): (0.0, float("inf"), True, False),
    ("schedule", "warmup_steps"): (0, 2**62, True, True),
    ("schedule", "min_lr_ratio"): (0.0, 1.0, True, True),
    ("schedule", "pct_start"): (0.0, 1.0, False, False),
    ("train", "max_steps"): (1, 2**62, True, True),
    ("train", "batch_size"): (1, 2**31, True, True),
    ("train", "seed"): (0, 2**63 - 1, True, True),
    ("train", "threads"): (0, 4096, True, True),
    ("train", "ema_decay"): (0.0, 1.0, True, False),
    ("train", "eval_every"): (1, 2**62, True, True),
    ("train", "checkpoint_every"): (1, 2**62, True, True),
    ("train", "log_every"): (1, 2**62, True, True),
    ("objective", "tbptt_steps"): (0, 2**31, True, True),
}


def _numeric_problems(cfg: TrainConfig) -> list[str]:
    """Range and finiteness of every numeric field, each problem naming its key."""
    problems = []
    sections = [(s, getattr(cfg, s)) for s in ("data", "optim", "schedule", "train", "objective")]
    sections.append(("objective.teacher", cfg.objective.teacher))
    for section, obj in sections:
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if isinstance(v, bool) or not isinstance(v, int | float):
                continue
            key = f"{section}.{f.name}"
            if not math.isfinite(v):
                problems.append(f"{key} must be a finite number, not {v}")
                continue
            rng = _RANGES.get((section, f.name))
            if rng is None:
                continue
            lo, hi, lo_in, hi_in = rng
            if (v < lo or (v == lo and not lo_in)) or (v > hi or (v == hi and not hi_in)):
                interval = f"{'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}"
                problems.append(f"{key} must be in {interval}, not {v}")
    return problems


def _hint(tp: Any) -> Any:
    """Strip ``X | None`` to ``X``."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def _coerce(value: Any, tp: Any, key: str) -> Any:
    tp = _hint(tp)
    origin = typing.get_origin(tp) or tp
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin in (dict, list, tuple) and isinstance(value, origin if origin is not tuple else (list, tuple)):
        return origin(value)
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise CorticalRNNError(f"config key {key!r}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], source: str = "config", prefix: str = "") -> T:
    """Build dataclass ``cls`` from nested dicts; unknown keys raise an error naming them all."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        names = ", ".join(prefix + k for k in unknown)
        known = ", ".join(prefix + k for k in fields)
        raise CorticalRNNError(f"{source}: unknown config key(s) {names} (known: {known})")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        tp = _hint(hints[name])
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise CorticalRNNError(f"{source}: {prefix}{name} must be a table, got {value!r}")
            kwargs[name] = from_dict(tp, value, source, prefix=f"{prefix}{name}.")  # type: ignore[arg-type]
        else:
            kwargs[name] = _coerce(value, tp, prefix + name)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``optim.lr=1e-3`` -> (["optim", "lr"], 0.001). Values are TOML literals; bare words are strings."""
    if "=" not in text:
        raise CorticalRNNError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of the nested dict ``data`` with ``key=value`` overrides applied (an old flat
    ``model.`` key goes to its place today, with a warning: :func:`migrate_key`)."""
    out = _deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        new = migrate_key(path)
        if new != path:
            warnings.warn(f"override {text!r}: {'.'.join(path)} is now {'.'.join(new)}", FutureWarning,
                          stacklevel=2)
            path = new
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise CorticalRNNError(f"override {text!r}: {part!r} is not a table")
        node[path[-1]] = value
    return out


def migrate_key(path: list[str]) -> list[str]:
    """A dotted config key in today's layout: ``model.neuron_model`` -> ``model.neurons.model``,
    ``model.teacher.steps`` -> ``objective.teacher.steps``; today's keys come back unchanged."""
    from corticalrnn.model.config import FLAT_KEYS, SECTIONS, TRAINING_KEYS

    if len(path) < 2 or path[0] != "model" or (path[1] in SECTIONS and len(path) > 2):
        return path
    if path[1] in TRAINING_KEYS:
        return ["objective", *path[1:]]
    if path[1] in FLAT_KEYS:
        return ["model", *FLAT_KEYS[path[1]], *path[2:]]
    return path


def _deepcopy(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _deepcopy(v) if isinstance(v, dict) else v for k, v in d.items()}


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a TOML file (optional), apply overrides, and build a validated :class:`TrainConfig`."""
    data: dict[str, Any] = {}
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise CorticalRNNError(f"{path}: config file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise CorticalRNNError(f"{path}: not valid TOML: {exc}") from None
    data = migrate_config(data, source)
    if overrides:
        data = migrate_config(apply_overrides(data, overrides), "--set")
        source += f" (with {', '.join(overrides)})"  # the overrides given (--set, --store, --subset)
    cfg = from_dict(TrainConfig, data, source)
    cfg.validate()
    return cfg


def config_from_dict(data: dict[str, Any], source: str = "config", warn: bool = True) -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from a nested dict (e.g. a checkpoint's copy; older
    layouts are migrated, with a warning unless ``warn`` is false)."""
    cfg = from_dict(TrainConfig, migrate_config(data, source, warn), source)
    cfg.validate()
    return cfg


def migrate_config(data: dict[str, Any], source: str = "config", warn: bool = True) -> dict[str, Any]:
    """A config dict in today's layout: flat ``[model]`` keys moved into the model's sections and the
    training keys of ``[model]`` (``loss``, ``tbptt_steps``, ``teacher``) into ``[objective]``; a
    ``FutureWarning`` names each moved key (``warn``). Today's layout comes back unchanged."""
    from corticalrnn.model.config import TRAINING_KEYS, migrate_flat

    model = data.get("model")
    if not isinstance(model, dict):
        return data
    model, moved = migrate_flat(model)
    objective = dict(data.get("objective") or {})
    for key in TRAINING_KEYS:
        if key in model:
            if key in objective:
                raise CorticalRNNError(f"{source}: model.{key} (deprecated) and objective.{key} both set")
            objective[key] = model.pop(key)
            moved.append(f"model.{key} -> objective.{key}")
    if not moved:
        return data
    if warn:
        warnings.warn(f"{source}: config keys moved (the old names still load, for now): " + "; ".join(
            m if m.startswith("model.") else "model." + m.replace(" -> ", " -> model.") for m in moved),
            FutureWarning, stacklevel=3)
    out = {**data, "model": model}
    if objective:
        out["objective"] = objective
    return out


def to_toml(data: dict[str, Any]) -> str:
    """Serialise a nested dict of scalars/lists (a config) as TOML."""
    lines: list[str] = []

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        raise TypeError(f"cannot write {v!r} as TOML")

    def emit(table: dict[str, Any], name: str) -> None:
        plain = {k: v for k, v in table.items() if not isinstance(v, dict)}
        subs = {k: v for k, v in table.items() if isinstance(v, dict)}
        if name:
            lines.append(f"[{name}]")
        for k, v in plain.items():
            if v is not None:
                lines.append(f"{_toml_key(k)} = {scalar(v)}")
        if name or plain:
            lines.append("")
        for k, v in subs.items():
            emit(v, f"{name}.{_toml_key(k)}" if name else _toml_key(k))

    emit(data, "")
    return "\n".join(lines)


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else '"' + k + '"'
