"""Model configuration: plain dataclasses, serialisable to/from a dict (checkpoints, TOML)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from corticalrnn.errors import CorticalRNNError
from corticalrnn.sheets import ALL_SHEETS, INPUT_SHEETS, SHEET_INFO, normalize_sheet_name

NEURON_MODELS = ("leaky", "mlp", "gru", "adaptive")
SIGN_MODES = ("projected", "reparam")
REPARAM_FUNCS = ("softplus", "abs")
MASK_KINDS = ("dense", "distance", "feature", "simulator")  # rules in model/connectivity.py
INPUT_MASK_KINDS = ("dense", "retinotopic", "gabor")
PRECISIONS = ("fp32", "bf16", "fp16")
CPU_BLAS = ("auto", "torch", "openblas")  # see model/gemm.py
LOSSES = ("poisson", "mse")
SCHEDULES = ("constant", "linear", "exponential")


@dataclass(frozen=True)
class PathwayConfig:
    """One projection ``pre -> post``; ``delay`` 0 = same time step, 1 = previous step.

    The sign comes from the presynaptic sheet (``corticalrnn.sheets``). ``mask`` ``None`` means the
    model-wide ``ModelConfig.connectivity``; input (LGN) pathways are always dense.
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


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines the network (not the data, not the optimiser).

    ``bin_ms`` is needed to turn the time constants into per-step leak factors.
    """

    bin_ms: float = 20.0
    pathways: tuple[PathwayConfig, ...] = field(default_factory=default_pathways)
    # dense | distance (needs positions) | feature (distance x orientation / phase similarity: needs
    # per-neuron ori, phase) | simulator (the stored connectome of the simulator); see model/connectivity.py
    connectivity: str = "dense"
    feature_affinity: dict[str, float] = field(default_factory=lambda: {"ori": 1.5, "phase": 1.0})
    distance_sigma_mm: dict[str, float] = field(
        default_factory=lambda: {"exc": 0.25, "inh": 0.12})  # Gaussian profile width by presynaptic sign
    distance_p_max: float = 1.0  # connection probability at distance 0
    # LGN -> V1: dense, or retinotopic (Gaussian in cortical mm around each V1 neuron; LGN grid
    # indices (i, j) map to ((i + 0.5) / side - 0.5) * extent, as the synthetic cortex places them)
    # ... or gabor: each unit's weights are a Gabor RF from its identity (model/identity.py; needs V1 and
    # LGN positions, per-neuron ori and phase; frequency / size where recorded, else these, in LGN units)
    input_connectivity: str = "dense"  # dense | retinotopic (needs positions) | gabor
    rf_size: float = 0.0  # 0: 1.5 LGN grid steps
    rf_frequency: float = 0.0  # 0: 1 / (4 rf_size)
    # gabor input stored as values on each unit's RF footprint (LGN inputs within input_footprint
    # envelope s.d. of its initial centre): memory O(units x footprint) instead of O(units x LGN)
    input_storage: str = "dense"  # dense | sparse (gabor only)
    input_footprint: float = 3.0
    # per-step products use a CSR copy of a recurrent block whose mask keeps less than this fraction
    # (measured on CPU, [4687 x 8437] @ [8437 x 50]: CSR 18x faster at 1 %, 3.7x at 5 %, 0.83x at 20 %)
    sparse_below: float = 0.1
    # ... and their weight gradients are computed only on the mask's entries (SDDMM) below this one
    # (measured on CPU, [4687 x 1800] @ [1800 x 8437]: 7.8x faster at 1 %, 1.3x at 5 %)
    sparse_grad_below: float = 0.05
    # BLAS for the CPU weight-gradient GEMMs: auto | torch | openblas (see model/gemm.py; measured
    # 1.8-2x faster with numpy's OpenBLAS than torch's MKL on AMD; auto picks it on non-Intel CPUs)
    cpu_blas: str = "auto"
    # recurrent V1 blocks with masks stored as their values on the mask's pattern (parameters,
    # gradients and Adam state O(synapses), per-step CSR, SDDMM gradients): dense | sparse
    weight_storage: str = "dense"
    input_sigma_mm: float = 0.1
    lgn_extent_mm: float = 0.0  # 0: the side of the V1 positions' bounding box
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
    # hidden units' recurrent weights: free parameters, or their initial weights scaled by how much the
    # observed units of their population changed each pathway (model/tied.py; needs the observed set)
    # borrowed: every hidden unit's bias and dense weight rows are the average of the borrow_neighbours
    # observed units of its population most similar in identity (softmax of -d^2/2 sigma^2 +
    # kappa cos 2 d_ori + kappa/2 cos d_phase): a hidden unit is what its observed neighbours learned
    hidden_weights: str = "free"  # free | tied | borrowed
    borrow_neighbours: int = 32
    borrow_sigma_mm: float = 0.3
    borrow_kappa: float = 1.0
    # also the recurrent rows (restricted to the unit's own mask; ~3x slower step on the thesis sample,
    # since the averaged rows are materialised every step; input rows average the products instead)
    borrow_recurrent: bool = False
    neuron_model: str = "leaky"  # leaky | mlp | gru
    neuron_hidden: int = 4  # hidden units of the MLP / GRU neuron models
    tau_ms: dict[str, float] = field(
        default_factory=lambda: {"V1_Exc_L4": 20.0, "V1_Inh_L4": 10.0, "V1_Exc_L2/3": 20.0,
                                 "V1_Inh_L2/3": 10.0})
    learn_tau: bool = True
    teacher: TeacherForcingConfig = field(default_factory=TeacherForcingConfig)
    tbptt_steps: int = 0  # 0 = full BPTT; else the state is detached every this many steps
    precision: str = "fp32"  # fp32 | bf16 | fp16 (matmul dtype; state and weights stay fp32)
    # leaky units on a GPU: replay each chunk of graph_chunk steps as one captured CUDA graph
    # (model/step_graphs.py); elsewhere the plain loop runs (StepGraphs.emulate: chunked, for tests)
    cuda_graphs: bool = False
    graph_chunk: int = 16
    loss: str = "poisson"  # poisson | mse
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def bad(msg: str) -> CorticalRNNError:
            return CorticalRNNError(f"model config: {msg}")

        import dataclasses as _dc

        for f in _dc.fields(self):  # every number finite (NaN/inf would pass the range checks below)
            v = getattr(self, f.name)
            items = list(v.items()) if isinstance(v, dict) else [(None, v)]
            if _dc.is_dataclass(v):
                items = [(g.name, getattr(v, g.name)) for g in _dc.fields(v)]
            for k, x in items:
                if isinstance(x, int | float) and not isinstance(x, bool) and not math.isfinite(x):
                    raise bad(f"{f.name}{'' if k is None else f'[{k!r}]'} must be a finite number, got {x}")
        if self.input_gain < 0:
            raise bad(f"input_gain must be >= 0, got {self.input_gain}")

        for name, value, allowed in (("connectivity", self.connectivity, MASK_KINDS),
                                     ("sign_mode", self.sign_mode, SIGN_MODES),
                                     ("reparam", self.reparam, REPARAM_FUNCS),
                                     ("neuron_model", self.neuron_model, NEURON_MODELS),
                                     ("precision", self.precision, PRECISIONS),
                                     ("cpu_blas", self.cpu_blas, CPU_BLAS),
                                     ("weight_storage", self.weight_storage, ("dense", "sparse")),
                                     ("loss", self.loss, LOSSES),
                                     ("teacher.schedule", self.teacher.schedule, SCHEDULES)):
            if value not in allowed:
                raise bad(f"{name}={value!r}; expected one of {', '.join(allowed)}")
        if self.bin_ms <= 0:
            raise bad(f"bin_ms must be > 0, got {self.bin_ms}")
        if self.tbptt_steps < 0:
            raise bad(f"tbptt_steps must be >= 0, got {self.tbptt_steps}")
        if self.neuron_hidden < 1:
            raise bad(f"neuron_hidden must be >= 1, got {self.neuron_hidden}")
        if self.input_connectivity not in INPUT_MASK_KINDS:
            raise bad(f"input_connectivity={self.input_connectivity!r}; expected one of "
                      f"{', '.join(INPUT_MASK_KINDS)}")
        if self.weight_storage == "sparse" and self.connectivity == "dense":
            raise bad("weight_storage='sparse' needs a masked connectivity (distance, feature or simulator)")
        if self.hidden_weights not in ("free", "tied", "borrowed"):
            raise bad(f"hidden_weights={self.hidden_weights!r}; expected free, tied or borrowed")
        if self.borrow_neighbours < 1:
            raise bad(f"borrow_neighbours={self.borrow_neighbours}; expected >= 1")
        if not (self.borrow_sigma_mm > 0 and math.isfinite(self.borrow_sigma_mm)):
            raise bad(f"borrow_sigma_mm={self.borrow_sigma_mm}; expected a positive number of mm")
        if not (self.borrow_kappa >= 0 and math.isfinite(self.borrow_kappa)):
            raise bad(f"borrow_kappa={self.borrow_kappa}; expected >= 0")
        if self.input_storage not in ("dense", "sparse"):
            raise bad(f"input_storage={self.input_storage!r}; expected dense or sparse")
        if self.input_storage == "sparse" and self.input_connectivity != "gabor":
            raise bad("input_storage='sparse' needs input_connectivity='gabor' (a footprint to store)")
        if not self.input_footprint > 0:
            raise bad(f"input_footprint must be > 0, got {self.input_footprint}")
        if self.rf_size < 0 or self.rf_frequency < 0:
            raise bad("rf_size and rf_frequency must be >= 0 (0 = automatic)")
        for key, v in self.feature_affinity.items():
            if key not in ("ori", "phase") or not (math.isfinite(v) and v >= 0):
                raise bad(f"feature_affinity[{key!r}]={v!r}: keys ori, phase with values >= 0")
        if self.graph_chunk < 1:
            raise bad(f"graph_chunk must be >= 1 step, got {self.graph_chunk}")
        if self.cuda_graphs and self.neuron_model != "leaky":
            raise bad(f"cuda_graphs supports neuron_model='leaky' only, got {self.neuron_model!r}")
        for name in ("sparse_below", "sparse_grad_below"):
            if not 0 <= getattr(self, name) <= 1:
                raise bad(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.input_sigma_mm <= 0 or self.lgn_extent_mm < 0:
            raise bad("input_sigma_mm must be > 0 and lgn_extent_mm >= 0")
        if not 0 < self.distance_p_max <= 1:
            raise bad(f"distance_p_max must be in (0, 1], got {self.distance_p_max}")
        if self.spectral_radius < 0 or self.init_rate <= 0:
            raise bad("spectral_radius must be >= 0 and init_rate > 0")
        if not (math.isfinite(self.rate_scale) and self.rate_scale > 0):
            raise bad(f"rate_scale must be a positive number, got {self.rate_scale}")
        for key in ("exc", "inh"):
            if self.distance_sigma_mm.get(key, 0) <= 0:
                raise bad(f"distance_sigma_mm[{key!r}] must be > 0")
        for sheet, tau in self.tau_ms.items():
            if sheet not in SHEET_INFO or tau <= 0:
                raise bad(f"tau_ms[{sheet!r}]={tau}: unknown sheet or non-positive time constant")
        seen = set()
        for p in self.pathways:
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

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain dict of builtins (lists, dicts, numbers, strings): JSON/TOML friendly."""
        d = asdict(self)
        d["pathways"] = [{k: v for k, v in p.items() if v is not None} for p in d["pathways"]]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`CorticalRNNError`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise CorticalRNNError(f"model config: unknown key(s) {', '.join(unknown)}")
        kw = dict(d)
        try:
            if "pathways" in kw:
                kw["pathways"] = tuple(PathwayConfig(**p) for p in kw["pathways"])
            if "teacher" in kw and isinstance(kw["teacher"], dict):
                kw["teacher"] = TeacherForcingConfig(**kw["teacher"])
        except TypeError as exc:
            raise CorticalRNNError(f"model config: {exc}") from exc
        for key in ("distance_sigma_mm", "tau_ms", "feature_affinity"):
            if key in kw:
                kw[key] = dict(kw[key])
        return cls(**kw)
