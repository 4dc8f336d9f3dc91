"""Model configuration: frozen dataclasses in four sections, serialisable to/from a dict
(checkpoints, TOML)::

    [model]                 bin_ms (from the store), seed
    [model.architecture]    pathways, sign mode, initial scales, rate_scale, centered
    [model.connectivity]    recurrent rule (+ its parameters, storage), LGN -> V1 rule (+ storage)
    [model.neurons]         unit dynamics, time constants, how hidden units get their parameters
    [model.compute]         precision, sparse thresholds, BLAS, CUDA graphs (results are the same)

Training settings (loss, truncated BPTT, teacher forcing) live in the training config's
``[objective]`` (:mod:`corticalrnn.train.config`). Older flat ``[model]`` keys are still read, with a
warning naming each key's new place (:func:`migrate_flat`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any

from corticalrnn.errors import CorticalRNNError
from corticalrnn.sheets import ALL_SHEETS, INPUT_SHEETS, SHEET_INFO, V1_SHEETS, normalize_sheet_name

NEURON_MODELS = ("leaky", "mlp", "gru", "adaptive")
SIGN_MODES = ("projected", "reparam")
REPARAM_FUNCS = ("softplus", "abs")
MASK_KINDS = ("dense", "distance", "feature", "simulator")  # rules in model/connectivity.py
INPUT_MASK_KINDS = ("dense", "retinotopic", "gabor", "embedding")
HIDDEN_WEIGHTS = ("free", "tied", "borrowed")
LGN_POSITIONS = ("store", "inferred", "learned")
PRECISIONS = ("fp32", "bf16", "fp16")
CPU_BLAS = ("auto", "torch", "openblas")  # see model/gemm.py


@dataclass(frozen=True)
class PathwayConfig:
    """One projection ``pre -> post``; ``delay`` 0 = same time step, 1 = previous step.

    The sign comes from the presynaptic sheet (``corticalrnn.sheets``). ``mask`` ``None`` means the
    model-wide ``connectivity.rule``; input (LGN) pathways are always dense.
    """

    pre: str
    post: str
    delay: int
    mask: str | None = None

    def normalized(self) -> PathwayConfig:
        return PathwayConfig(normalize_sheet_name(self.pre), normalize_sheet_name(self.post), self.delay,
                             self.mask)


def default_pathways() -> tuple[PathwayConfig, ...]:
    """The DESIGN.md table: LGN->L4 (t); L4 recurrent (t-1); L4E->L2/3 (t); L2/3 recurrent and
    excitatory L2/3->L4 feedback (t-1); inhibition only within a layer."""
    e4, i4, e23, i23 = "V1_Exc_L4", "V1_Inh_L4", "V1_Exc_L2/3", "V1_Inh_L2/3"
    p = []
    for pre in INPUT_SHEETS:
        p += [PathwayConfig(pre, e4, 0), PathwayConfig(pre, i4, 0)]
    for pre in (e4, i4, e23):
        p += [PathwayConfig(pre, e4, 1), PathwayConfig(pre, i4, 1)]
    p += [PathwayConfig(e4, e23, 0), PathwayConfig(e4, i23, 0)]
    for pre in (e23, i23):
        p += [PathwayConfig(pre, e23, 1), PathwayConfig(pre, i23, 1)]
    return tuple(p)


@dataclass(frozen=True)
class ArchitectureConfig:
    """The pathways and how weights and currents are parametrised (``[model.architecture]``)."""

    pathways: tuple[PathwayConfig, ...] = field(default_factory=default_pathways)
    sign_mode: str = "projected"  # projected | reparam
    reparam: str = "softplus"  # softplus | abs (reparam mode only)
    spectral_radius: float = 0.9
    input_gain: float = 1.0  # mean total LGN drive per unit input rate (init scale of U)
    init_rate: float = 0.1  # initial bias gives this expected count per bin
    # units run on rates times rate_scale (output and teacher data rescaled): softplus is then steep
    # (relu-like) at the data's rates instead of exponential-like. At 0.1 counts per bin softplus's
    # slope is 0.1 for rate_scale 1 and 0.86 for 20, so inputs can modulate low-rate units.
    rate_scale: float = 1.0
    # synaptic currents from deviations of presynaptic activity from a centre (V1: init_rate; LGN: the
    # training data's mean count, set by the trainer): I = W (r - r0) + U (x - x0) + b, i.e. the
    # bias the units see is b - W r0 - U x0. Same function class; much better conditioned, since
    # growing a weight no longer shifts the mean current the bias must undo.
    centered: bool = False
    # stimulus-locked drive: for the V1 sheets listed (true: all), a learned current per sheet and window
    # bin, added to every unit of the sheet, observed and hidden alike: the time course all its neurons
    # share (onset transient, the blank after the image), which the network then modulates unit by unit.
    # Windows are aligned to the image onset (trim), so bin t of every window is the same time after
    # onset. time_drive_bins: the bins it covers; 0 = the training store's window length (the trainer
    # fills it in); later bins hold the last value
    time_drive: tuple[str, ...] = ()
    time_drive_bins: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "time_drive", v1_sheet_tuple(self.time_drive, "architecture.time_drive"))


def v1_sheet_tuple(value: Any, key: str) -> tuple[str, ...]:
    """A config value naming V1 sheets (true: all, false: none, a name, or a list; Mozaik or thesis
    spelling) as a tuple in canonical order; a clear error naming ``key`` otherwise."""
    td = value
    if isinstance(td, bool):
        td = V1_SHEETS if td else ()
    elif isinstance(td, str):
        td = (td,)
    try:
        names = {normalize_sheet_name(str(s)) for s in td}
    except TypeError as exc:
        raise CorticalRNNError(f"{key}: expected true/false or a list of V1 sheets, got {value!r}") from exc
    except ValueError as exc:
        raise CorticalRNNError(f"{key}: {exc}") from exc
    if names - set(V1_SHEETS):
        raise CorticalRNNError(f"{key}: {', '.join(sorted(names - set(V1_SHEETS)))} "
                               f"is not a V1 sheet (V1 sheets: {', '.join(V1_SHEETS)})")
    return tuple(s for s in V1_SHEETS if s in names)


@dataclass(frozen=True)
class ConnectivityConfig:
    """Which synapses exist (``[model.connectivity]``): the recurrent rule and the LGN -> V1 rule."""

    # dense | distance (needs positions) | feature (distance x orientation / phase similarity: needs
    # per-neuron ori, phase) | simulator (the stored connectome of the simulator); see model/connectivity.py
    rule: str = "dense"
    feature_affinity: dict[str, float] = field(default_factory=lambda: {"ori": 1.5, "phase": 1.0})
    distance_sigma_mm: dict[str, float] = field(
        default_factory=lambda: {"exc": 0.25, "inh": 0.12})  # Gaussian profile width by presynaptic sign
    distance_p_max: float = 1.0  # connection probability at distance 0
    # initial recurrent weights: "random" (each rule draws its pairs once; uniform random magnitudes) or
    # "expected" (distance / feature rules: every pair whose connection probability is at least
    # expected_p_min x distance_p_max, magnitude proportional to that probability): a unit starts with the
    # input its similar neighbours give on average. Hidden units keep roughly their initial input
    # weights (no loss of their own), so this is what ties their input to their identity
    weight_init: str = "random"
    expected_p_min: float = 0.02
    # recurrent V1 blocks with masks stored as their values on the mask's pattern (parameters,
    # gradients and Adam state O(synapses), per-step CSR, SDDMM gradients): dense | sparse
    storage: str = "dense"
    # LGN -> V1: dense, or retinotopic (Gaussian in cortical mm around each V1 neuron; LGN grid
    # indices (i, j) map to ((i + 0.5) / side - 0.5) * extent, as the synthetic cortex places them)
    # ... or gabor: each unit's weights are a Gabor RF from its identity (model/identity.py; needs V1 and
    # LGN positions, per-neuron ori and phase; frequency / size where recorded, else these, in LGN units)
    # ... or embedding: a learned vector per LGN input, combined with a learned function of each unit's
    # labels (position, ori, phase, population; model/lgn_embedding.py): identity without LGN positions
    input_rule: str = "dense"  # dense | retinotopic (needs positions) | gabor | embedding
    input_sigma_mm: float = 0.1
    lgn_extent_mm: float = 0.0  # 0: the side of the V1 positions' bounding box
    rf_size: float = 0.0  # 0: 1.5 LGN grid steps
    rf_frequency: float = 0.0  # 0: 1 / (4 rf_size)
    # gabor input stored as values on each unit's RF footprint (LGN inputs within input_footprint
    # envelope s.d. of its initial centre): memory O(units x footprint) instead of O(units x LGN)
    input_storage: str = "dense"  # dense | sparse (gabor only)
    input_footprint: float = 3.0
    # gabor input on data without LGN positions (the thesis layout): "inferred" lays them out from the
    # training windows' LGN correlations, framed by the observed units' (corticalrnn/lgn_layout.py);
    # "learned" makes them parameters drawn uniformly over the units' bounding box (cortical mm) and moved
    # by training ("store": the store's)
    lgn_positions: str = "store"  # store | inferred | learned
    # input_rule = "embedding": size of each LGN input's vector, random Fourier features of position
    # (length scale embedding_scale_mm) and hidden width of the label function
    embedding_dim: int = 16
    embedding_frequencies: int = 32
    embedding_scale_mm: float = 0.2
    embedding_hidden: int = 32


@dataclass(frozen=True)
class NeuronConfig:
    """The units (``[model.neurons]``): their dynamics, and how hidden units get their parameters."""

    model: str = "leaky"  # leaky | adaptive | mlp | gru (model/neurons.py)
    hidden: int = 4  # hidden units of the MLP / GRU neuron models
    tau_ms: dict[str, float] = field(
        default_factory=lambda: {"V1_Exc_L4": 20.0, "V1_Inh_L4": 10.0, "V1_Exc_L2/3": 20.0,
                                 "V1_Inh_L2/3": 10.0})
    learn_tau: bool = True
    # hidden units' recurrent weights: free parameters, or their initial weights scaled by how much the
    # observed units of their population changed each pathway (model/tied.py; needs the observed set)
    # borrowed: every hidden unit's bias and dense weight rows are the average of the borrow_neighbours
    # observed units of its population most similar in identity (softmax of -d^2/2 sigma^2 +
    # kappa cos 2 d_ori + kappa/2 cos d_phase): a hidden unit is what its observed neighbours learned
    hidden_weights: str = "free"  # free | tied | borrowed
    # tied only: the V1 sheets whose hidden units are tied (true: all); the others' stay free
    tied_sheets: tuple[str, ...] = V1_SHEETS
    borrow_neighbours: int = 32
    borrow_sigma_mm: float = 0.3
    borrow_kappa: float = 1.0
    # also the recurrent rows (restricted to the unit's own mask; ~3x slower step on the thesis sample,
    # since the averaged rows are materialised every step; input rows average the products instead)
    borrow_recurrent: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "tied_sheets", v1_sheet_tuple(self.tied_sheets, "neurons.tied_sheets"))


@dataclass(frozen=True)
class ComputeConfig:
    """How the loop computes and stores (``[model.compute]``); results are the same for every choice
    up to rounding (precision: the matmul dtype)."""

    precision: str = "fp32"  # fp32 | bf16 | fp16 (matmul dtype; state and weights stay fp32)
    # per-step products use a CSR copy of a recurrent block whose mask keeps less than this fraction
    # (measured on CPU, [4687 x 8437] @ [8437 x 50]: CSR 18x faster at 1 %, 3.7x at 5 %, 0.83x at 20 %)
    sparse_below: float = 0.1
    # ... and their weight gradients are computed only on the mask's entries (SDDMM) below this one
    # (measured on CPU, [4687 x 1800] @ [1800 x 8437]: 7.8x faster at 1 %, 1.3x at 5 %)
    sparse_grad_below: float = 0.05
    # BLAS for the CPU weight-gradient GEMMs: auto | torch | openblas (see model/gemm.py; measured
    # 1.8-2x faster with numpy's OpenBLAS than torch's MKL on AMD; auto picks it on non-Intel CPUs)
    cpu_blas: str = "auto"
    # leaky units on a GPU: replay each chunk of graph_chunk steps as one captured CUDA graph
    # (model/step_graphs.py); elsewhere the plain loop runs (StepGraphs.emulate: chunked, for tests)
    cuda_graphs: bool = False
    graph_chunk: int = 16


#: the sections of :class:`ModelConfig`, by name
SECTIONS: dict[str, type] = {"architecture": ArchitectureConfig, "connectivity": ConnectivityConfig,
                             "neurons": NeuronConfig, "compute": ComputeConfig}

#: old flat ``[model]`` keys (before the sections) -> (section, key)
FLAT_KEYS: dict[str, tuple[str, str]] = {
    **{k: ("architecture", k) for k in ("pathways", "sign_mode", "reparam", "spectral_radius", "input_gain",
                                         "init_rate", "rate_scale", "centered")},
    "connectivity": ("connectivity", "rule"), "weight_storage": ("connectivity", "storage"),
    "input_connectivity": ("connectivity", "input_rule"),
    **{k: ("connectivity", k) for k in ("feature_affinity", "distance_sigma_mm", "distance_p_max",
                                         "input_sigma_mm", "lgn_extent_mm", "rf_size", "rf_frequency",
                                         "input_storage", "input_footprint")},
    "neuron_model": ("neurons", "model"), "neuron_hidden": ("neurons", "hidden"),
    **{k: ("neurons", k) for k in ("tau_ms", "learn_tau", "hidden_weights", "borrow_neighbours",
                                    "borrow_sigma_mm", "borrow_kappa", "borrow_recurrent")},
    **{k: ("compute", k) for k in ("precision", "sparse_below", "sparse_grad_below", "cpu_blas",
                                    "cuda_graphs", "graph_chunk")},
}
#: (section, key) of fields added after the sections: no flat name; older configs and checkpoints lack them
#: and get their defaults
ADDED_KEYS: frozenset[tuple[str, str]] = frozenset({
    ("architecture", "time_drive"), ("architecture", "time_drive_bins"), ("neurons", "tied_sheets"),
    ("connectivity", "weight_init"), ("connectivity", "expected_p_min"), ("connectivity", "lgn_positions"),
    *(("connectivity", k) for k in ("embedding_dim", "embedding_frequencies", "embedding_scale_mm",
                                    "embedding_hidden"))})
#: old ``[model]`` keys that are training settings now (``[objective]`` of the training config)
TRAINING_KEYS = ("loss", "tbptt_steps", "teacher")


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines the network (not the data, not the optimiser, not the objective).

    ``bin_ms`` is needed to turn the time constants into per-step leak factors.
    """

    bin_ms: float = 20.0
    seed: int = 0
    architecture: ArchitectureConfig = field(default_factory=ArchitectureConfig)
    connectivity: ConnectivityConfig = field(default_factory=ConnectivityConfig)
    neurons: NeuronConfig = field(default_factory=NeuronConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)

    def __post_init__(self) -> None:
        self.validate()

    def with_values(self, values: dict[str, Any]) -> ModelConfig:
        """A copy with ``{"section.key": value}`` (or top-level ``"bin_ms"``/``"seed"``) replaced."""
        top: dict[str, Any] = {}
        parts: dict[str, dict[str, Any]] = {}
        for key, v in values.items():
            section, _, name = key.rpartition(".")
            if not section:
                top[key] = v
            elif section in SECTIONS:
                parts.setdefault(section, {})[name] = v
            else:
                raise CorticalRNNError(f"model config: unknown section {section!r} in {key!r} "
                                       f"(sections: {', '.join(SECTIONS)})")
        try:
            for section, kw in parts.items():
                top[section] = replace(getattr(self, section), **kw)
            return replace(self, **top)
        except TypeError as exc:
            raise CorticalRNNError(f"model config: {exc}") from exc

    def validate(self) -> None:
        def bad(msg: str) -> CorticalRNNError:
            return CorticalRNNError(f"model config: {msg}")

        for key, x in _leaves(self):  # every number finite (NaN/inf would pass the range checks below)
            if isinstance(x, int | float) and not isinstance(x, bool) and not math.isfinite(x):
                raise bad(f"{key} must be a finite number, got {x}")
        a, c, n, p = self.architecture, self.connectivity, self.neurons, self.compute
        for name, value, allowed in (("connectivity.rule", c.rule, MASK_KINDS),
                                     ("connectivity.storage", c.storage, ("dense", "sparse")),
                                     ("connectivity.input_rule", c.input_rule, INPUT_MASK_KINDS),
                                     ("connectivity.input_storage", c.input_storage, ("dense", "sparse")),
                                     ("connectivity.weight_init", c.weight_init, ("random", "expected")),
                                     ("connectivity.lgn_positions", c.lgn_positions, LGN_POSITIONS),
                                     ("architecture.sign_mode", a.sign_mode, SIGN_MODES),
                                     ("architecture.reparam", a.reparam, REPARAM_FUNCS),
                                     ("neurons.model", n.model, NEURON_MODELS),
                                     ("neurons.hidden_weights", n.hidden_weights, HIDDEN_WEIGHTS),
                                     ("compute.precision", p.precision, PRECISIONS),
                                     ("compute.cpu_blas", p.cpu_blas, CPU_BLAS)):
            if value not in allowed:
                raise bad(f"{name}={value!r}; expected one of {', '.join(allowed)}")
        if self.bin_ms <= 0:
            raise bad(f"bin_ms must be > 0, got {self.bin_ms}")
        if a.input_gain < 0:
            raise bad(f"architecture.input_gain must be >= 0, got {a.input_gain}")
        if a.spectral_radius < 0 or a.init_rate <= 0:
            raise bad("architecture.spectral_radius must be >= 0 and architecture.init_rate > 0")
        if a.time_drive_bins < 0:
            raise bad(f"architecture.time_drive_bins must be >= 0 (0: the store's window length), got "
                      f"{a.time_drive_bins}")
        if not a.rate_scale > 0:
            raise bad(f"architecture.rate_scale must be a positive number, got {a.rate_scale}")
        if c.storage == "sparse" and c.rule == "dense":
            raise bad("connectivity.storage='sparse' needs a masked connectivity.rule (distance, feature or "
                      "simulator)")
        if c.input_storage == "sparse" and c.input_rule != "gabor":
            raise bad("connectivity.input_storage='sparse' needs connectivity.input_rule='gabor' "
                      "(a footprint to store)")
        if c.lgn_positions == "inferred" and c.input_rule != "gabor":
            raise bad("connectivity.lgn_positions='inferred' needs connectivity.input_rule='gabor' (the only "
                      "rule that uses LGN positions)")
        if c.lgn_positions == "learned" and (c.input_rule != "gabor" or c.input_storage != "dense"):
            raise bad("connectivity.lgn_positions='learned' needs connectivity.input_rule='gabor' with "
                      "input_storage='dense'")
        if not c.input_footprint > 0:
            raise bad(f"connectivity.input_footprint must be > 0, got {c.input_footprint}")
        for key in ("embedding_dim", "embedding_frequencies", "embedding_hidden"):
            if getattr(c, key) < 1:
                raise bad(f"connectivity.{key} must be >= 1, got {getattr(c, key)}")
        if not c.embedding_scale_mm > 0:
            raise bad(f"connectivity.embedding_scale_mm must be a positive length in mm, got "
                      f"{c.embedding_scale_mm}")
        if c.rf_size < 0 or c.rf_frequency < 0:
            raise bad("connectivity.rf_size and connectivity.rf_frequency must be >= 0 (0 = automatic)")
        for key, v in c.feature_affinity.items():
            if key not in ("ori", "phase") or not v >= 0:
                raise bad(f"connectivity.feature_affinity[{key!r}]={v!r}: keys ori, phase with values >= 0")
        if c.input_sigma_mm <= 0 or c.lgn_extent_mm < 0:
            raise bad("connectivity.input_sigma_mm must be > 0 and connectivity.lgn_extent_mm >= 0")
        if not 0 < c.expected_p_min < 1:
            raise bad(f"connectivity.expected_p_min must be in (0, 1), got {c.expected_p_min}")
        if not 0 < c.distance_p_max <= 1:
            raise bad(f"connectivity.distance_p_max must be in (0, 1], got {c.distance_p_max}")
        for key in ("exc", "inh"):
            if c.distance_sigma_mm.get(key, 0) <= 0:
                raise bad(f"connectivity.distance_sigma_mm[{key!r}] must be > 0")
        if n.hidden < 1:
            raise bad(f"neurons.hidden must be >= 1, got {n.hidden}")
        if n.borrow_neighbours < 1:
            raise bad(f"neurons.borrow_neighbours={n.borrow_neighbours}; expected >= 1")
        if not n.borrow_sigma_mm > 0:
            raise bad(f"neurons.borrow_sigma_mm={n.borrow_sigma_mm}; expected a positive number of mm")
        if not n.borrow_kappa >= 0:
            raise bad(f"neurons.borrow_kappa={n.borrow_kappa}; expected >= 0")
        for sheet, tau in n.tau_ms.items():
            if sheet not in SHEET_INFO or tau <= 0:
                raise bad(f"neurons.tau_ms[{sheet!r}]={tau}: unknown sheet or non-positive time constant")
        if p.graph_chunk < 1:
            raise bad(f"compute.graph_chunk must be >= 1 step, got {p.graph_chunk}")
        if p.cuda_graphs and n.model != "leaky":
            raise bad(f"compute.cuda_graphs supports neurons.model='leaky' only, got {n.model!r}")
        for name in ("sparse_below", "sparse_grad_below"):
            if not 0 <= getattr(p, name) <= 1:
                raise bad(f"compute.{name} must be in [0, 1], got {getattr(p, name)}")
        _check_pathways(a.pathways, bad)

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Nested dict of builtins (lists, dicts, numbers, strings): JSON/TOML friendly."""
        d = asdict(self)
        d["architecture"]["pathways"] = [{k: v for k, v in p.items() if v is not None}
                                         for p in d["architecture"]["pathways"]]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "model config") -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`CorticalRNNError`. Older flat keys
        are moved to their section with a ``FutureWarning`` (:func:`migrate_flat`)."""
        d, moved = migrate_flat(d)
        if moved:
            warnings.warn(f"{source}: flat [model] keys are deprecated; " + "; ".join(moved), FutureWarning,
                          stacklevel=2)
        training = sorted(set(d) & set(TRAINING_KEYS))
        if training:
            raise CorticalRNNError(f"{source}: {', '.join(training)} are training settings: set them in the "
                                   f"training config's [objective] section (objective.{training[0]})")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise CorticalRNNError(f"{source}: unknown key(s) {', '.join(unknown)} (known: "
                                   f"{', '.join(sorted(known))})")
        kw = {k: _section(k, v, source) if k in SECTIONS else v for k, v in d.items()}
        return cls(**kw)


def _section(name: str, values: Any, source: str) -> Any:
    """Section ``name`` of :class:`ModelConfig` from its table; unknown keys name their section."""
    section_cls = SECTIONS[name]
    if not isinstance(values, dict):
        raise CorticalRNNError(f"{source}: {name} must be a table of keys, got {values!r}")
    known = {f.name for f in fields(section_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise CorticalRNNError(f"{source}: unknown key(s) {', '.join(f'{name}.{k}' for k in unknown)} "
                               f"(known: {', '.join(sorted(known))})")
    values = {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}
    try:
        if "pathways" in values:
            values["pathways"] = tuple(PathwayConfig(**q) for q in values["pathways"])
        return section_cls(**values)
    except TypeError as exc:
        raise CorticalRNNError(f"{source}: {name}: {exc}") from exc


def to_dotted(values: dict[str, Any]) -> dict[str, Any]:
    """Old flat names to today's dotted keys (``{"connectivity": "distance"}`` ->
    ``{"connectivity.rule": "distance"}``), for :meth:`ModelConfig.with_values`; other keys unchanged."""
    return {(".".join(FLAT_KEYS[k]) if k in FLAT_KEYS else k): v for k, v in values.items()}


def migrate_flat(d: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A ``[model]`` table with the old flat keys moved into their sections, and one line per moved
    key (``"connectivity -> connectivity.rule"``). Training keys (``loss``, ...) are left in place."""
    out = {k: dict(v) if k in SECTIONS and isinstance(v, dict) else v for k, v in d.items()}
    moved = []
    for old, (section, new) in FLAT_KEYS.items():
        if old not in d or (old in SECTIONS and isinstance(d[old], dict)):
            continue
        value = out.pop(old)
        target = out.setdefault(section, {})
        if not isinstance(target, dict):
            raise CorticalRNNError(f"model config: {section} must be a table of keys, got {target!r}")
        if new in target:
            raise CorticalRNNError(f"model config: {old} (flat, deprecated) and {section}.{new} both set")
        target[new] = value
        moved.append(f"{old} -> {section}.{new}")
    return out, moved


def _leaves(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``(dotted key, value)`` of every scalar in a config (dict items as ``key[name]``)."""
    if is_dataclass(obj):
        return [kv for f in fields(obj) for kv in _leaves(getattr(obj, f.name), f"{prefix}{f.name}.")]
    if isinstance(obj, dict):
        return [(f"{prefix[:-1]}[{k!r}]", v) for k, v in obj.items()]
    return [(prefix[:-1], obj)]


def _check_pathways(pathways: tuple[PathwayConfig, ...], bad: Any) -> None:
    seen = set()
    for p in pathways:
        for s in (p.pre, p.post):
            if s.replace("L23", "L2/3") not in ALL_SHEETS:
                raise bad(f"pathway {p.pre} -> {p.post}: unknown sheet {s!r}")
        q = p.normalized()
        if q.post in INPUT_SHEETS:
            raise bad(f"pathway {q.pre} -> {q.post}: inputs cannot be postsynaptic")
        if q.delay not in (0, 1):
            raise bad(f"pathway {q.pre} -> {q.post}: delay must be 0 or 1, got {q.delay}")
        if q.mask is not None and q.mask not in MASK_KINDS:
            raise bad(f"pathway {q.pre} -> {q.post}: mask {q.mask!r} not in {MASK_KINDS}")
        key = (q.pre, q.post, q.delay)
        if key in seen:
            raise bad(f"pathway {q.pre} -> {q.post} (delay {q.delay}) listed twice")
        seen.add(key)
