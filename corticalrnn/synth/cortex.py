"""Ground-truth synthetic cortex: an E/I leaky rate network driven by Poisson LGN spikes.

The network (neurons, positions, weights, ids) is determined by ``CortexConfig`` and ``seed``
alone; each presentation's noise by ``(seed, image_id, trial)``; each image's LGN drive by the
image id alone. So a training folder (one trial of images 50000..) and a test folder (other
images, several trials) made with the same seed share every neuron and weight.

Dynamics (dt = 1 ms; V1 neuron vector in canonical sheet order E4, I4, E2/3, I2/3; rates in Hz):

    I(t)  = W · r_pre(t) + U · x(t) + b + eta(t)
    r(t)  = r(t-1) + dt/tau_pop * (relu(I(t)) - r(t-1))

``x(t)`` is the LGN spike count in bin ``t`` (ON then OFF). Following the DESIGN pathway table,
L4 sees LGN at ``t`` and all recurrent input at ``t-1``; L2/3 sees L4 E at ``t`` (already
updated) and L2/3 at ``t-1``. ``eta`` is an Ornstein-Uhlenbeck noise current. Spikes are Poisson
with mean ``r(t) dt`` per bin, placed on a 0.1 ms grid inside ``(t, t+1]`` ms (as NEST would).

Timeline of one simulated stimulus ("element"): 150 ms blank, the stimulus, 150 ms blank. Mozaik
records for each stimulus the blank *before* it; here that is the trailing blank of the previous
element (the first element's own leading blank for the first stimulus), so rates run continuously
through image offsets. Elements are simulated in batches, each with its own random stream.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import scipy.sparse as sp

from corticalrnn.errors import CorticalRNNError
from corticalrnn.sheets import INPUT_SHEETS, SHEET_INFO, V1_SHEETS

# Base sizes at scale 1: per V1 layer 400 E + 100 I (E:I = 4:1), LGN grids of 12 x 12 per ON/OFF.
_BASE_EXC = 400
_BASE_LGN_SIDE = 12
_MAX_NEURONS = 2_000_000

#: Default pathways (pre, post): relative strength and Gaussian connection radius (mm).
#: Inhibition stays within its layer; L2/3 E feeds back to L4; nothing from L4 I / L2/3 I across layers.
DEFAULT_PATHWAYS: dict[tuple[str, str], tuple[float, float]] = {
    ("LGN", "V1_Exc_L4"): (1.0, 0.08),
    ("LGN", "V1_Inh_L4"): (1.0, 0.10),
    ("V1_Exc_L4", "V1_Exc_L4"): (0.35, 0.15),
    ("V1_Exc_L4", "V1_Inh_L4"): (0.50, 0.15),
    ("V1_Inh_L4", "V1_Exc_L4"): (0.70, 0.10),
    ("V1_Inh_L4", "V1_Inh_L4"): (0.40, 0.10),
    ("V1_Exc_L4", "V1_Exc_L2/3"): (2.0, 0.10),
    ("V1_Exc_L4", "V1_Inh_L2/3"): (2.0, 0.10),
    ("V1_Exc_L2/3", "V1_Exc_L4"): (0.10, 0.20),
    ("V1_Exc_L2/3", "V1_Inh_L4"): (0.10, 0.20),
    ("V1_Exc_L2/3", "V1_Exc_L2/3"): (0.35, 0.20),
    ("V1_Exc_L2/3", "V1_Inh_L2/3"): (0.50, 0.20),
    ("V1_Inh_L2/3", "V1_Exc_L2/3"): (0.70, 0.10),
    ("V1_Inh_L2/3", "V1_Inh_L2/3"): (0.40, 0.10),
}

STRUCTURES = ("random", "lsv1m")
NO_STIMULATION_MS = 50.0
_CHUNK_MS = 100  # steps per noise/spike drawing chunk; fixed, since it orders the random draws
END_BLANK_MS = 150.0


@dataclass(frozen=True)
class CortexConfig:
    """Everything that defines the ground-truth network and its simulation (besides the seed)."""

    scale: float = 0.5  # 1.0 = 400 E + 100 I per V1 layer, 12x12 LGN grid per ON/OFF sheet
    blank_ms: float = 150.0  # Mozaik null_stimulus_period
    image_ms: float = 560.0
    dt_ms: float = 1.0
    warmup_ms: float = 50.0  # unrecorded blank before each element after the first
    rate_bin_ms: int = 10  # resolution of the ground-truth rates
    fan_in: int = 60  # presynaptic partners per (pathway, post neuron), at most the sheet size
    lgn_fan_in: int = 160  # draws per ON and per OFF sheet (with replacement: repeated partners add up)
    lgn_baseline_hz: float = 40.0
    lgn_image_gain: float = 0.25  # relative rise of the mean LGN rate while an image is shown
    lgn_contrast: float = 0.8  # relative modulation of LGN rates by the image pattern
    lgn_transient: float = 0.8  # extra relative onset response, decaying with lgn_transient_ms
    lgn_transient_ms: float = 40.0
    lgn_drive_hz: float = 40.0  # mean LGN drive onto L4 at baseline LGN rate (Hz of current)
    bias_hz: tuple[float, float, float, float] = (-80.0, -78.0, -10.0, -10.0)  # E4, I4, E2/3, I2/3
    recurrent_gain_hz: float = 0.55  # scales every recurrent pathway strength (Hz per Hz)
    tau_exc_ms: float = 12.0
    tau_inh_ms: float = 6.0
    noise_hz: float = 6.0  # std of the OU noise current
    noise_tau_ms: float = 20.0
    weight_cv: float = 0.5  # coefficient of variation of individual weights (log-normal)
    sheet_mm: float | None = None  # side of the cortical square; default sqrt(scale) mm
    pathways: dict[tuple[str, str], tuple[float, float]] = field(
        default_factory=lambda: dict(DEFAULT_PATHWAYS)
    )
    batch: int = 32  # elements simulated together (memory/speed; same draws, sums differ by rounding)
    # "random": local random LGN afferents with an ON/OFF bias, distance-only recurrence (no identity).
    # "lsv1m": like Mozaik's LSV1M model: an orientation map; L4 cells with Gabor-shaped LGN afferents
    # (retinotopic centre, orientation, phase, frequency, size); recurrence by distance x orientation
    # similarity (phase push-pull in L4); annotations written under Mozaik's key names.
    structure: str = "random"
    lgn_density: float = 1.0  # LGN grid side multiplier (finer grids resolve Gabor RFs)
    ori_map_period_mm: float = 0.4  # column spacing of the orientation map
    ori_jitter: float = 0.15  # rad, per-cell deviation from the map
    rf_size_mm: float = 0.07  # Gabor envelope s.d. (in retinotopic mm)
    rf_frequency_cpmm: float = 3.5  # Gabor carrier, cycles per mm
    rf_aspect_ratio: float = 0.7
    rf_jitter: float = 0.15  # log-normal s.d. of per-cell size and frequency
    ori_affinity: float = 1.5  # kappa of exp(kappa cos 2 dtheta) in the connection probability
    phase_affinity: float = 1.0  # L4: exp(+-kappa cos dphi), + for excitatory, - for inhibitory (push-pull)

    def __post_init__(self) -> None:
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise CorticalRNNError(f"scale must be a positive number, got {self.scale!r}")
        sizes = self.sizes()
        if min(sizes.values()) < 1:
            raise CorticalRNNError(f"scale {self.scale} gives an empty sheet: {sizes}")
        if sum(sizes.values()) > _MAX_NEURONS:
            raise CorticalRNNError(
                f"scale {self.scale} gives {sum(sizes.values())} neurons, more than {_MAX_NEURONS}"
            )
        if self.dt_ms != 1.0:
            raise CorticalRNNError("only dt_ms = 1.0 is supported")
        if self.rate_bin_ms < 1 or int(NO_STIMULATION_MS) % self.rate_bin_ms:
            raise CorticalRNNError(f"rate_bin_ms must be a divisor of 50 ms, got {self.rate_bin_ms}")
        for name in ("blank_ms", "image_ms", "warmup_ms"):
            v = getattr(self, name)
            if not (v >= 1 and float(v).is_integer()):
                raise CorticalRNNError(f"{name} must be a whole number of ms >= 1, got {v!r}")
            if int(v) % self.rate_bin_ms or _CHUNK_MS % self.rate_bin_ms:
                raise CorticalRNNError(
                    f"rate_bin_ms={self.rate_bin_ms} must divide {name}={v} and {_CHUNK_MS}"
                )
        if len(self.bias_hz) != len(V1_SHEETS):
            raise CorticalRNNError(f"bias_hz needs {len(V1_SHEETS)} values ({', '.join(V1_SHEETS)})")
        for pre, post in self.pathways:
            if pre != "LGN" and pre not in V1_SHEETS:
                raise CorticalRNNError(
                    f"pathway from unknown sheet {pre!r}; known: LGN, {', '.join(V1_SHEETS)}"
                )
            if post not in V1_SHEETS:
                raise CorticalRNNError(f"pathway to unknown sheet {post!r}; known: {', '.join(V1_SHEETS)}")
        if self.fan_in < 1 or self.lgn_fan_in < 1 or self.batch < 1:
            raise CorticalRNNError("fan_in, lgn_fan_in and batch must be >= 1")
        if self.structure not in STRUCTURES:
            raise CorticalRNNError(f"structure={self.structure!r}; expected one of {', '.join(STRUCTURES)}")
        for name in ("lgn_density", "ori_map_period_mm", "rf_size_mm", "rf_frequency_cpmm",
                     "rf_aspect_ratio"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise CorticalRNNError(f"{name} must be a positive number, got {v!r}")
        for name in ("ori_jitter", "rf_jitter", "ori_affinity", "phase_affinity"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v >= 0):
                raise CorticalRNNError(f"{name} must be >= 0, got {v!r}")

    def sizes(self) -> dict[str, int]:
        """Neurons per sheet, canonical order."""
        n_exc = int(round(_BASE_EXC * self.scale))
        n_inh = n_exc // 4
        n_exc = 4 * n_inh  # exact 4:1
        side = max(2, int(round(_BASE_LGN_SIDE * np.sqrt(self.scale) * self.lgn_density)))
        return {
            "X_ON": side * side,
            "X_OFF": side * side,
            "V1_Exc_L4": n_exc,
            "V1_Inh_L4": n_inh,
            "V1_Exc_L2/3": n_exc,
            "V1_Inh_L2/3": n_inh,
        }

    @property
    def side_mm(self) -> float:
        return float(self.sheet_mm) if self.sheet_mm is not None else float(np.sqrt(self.scale))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["pathways"] = [[pre, post, s, r] for (pre, post), (s, r) in self.pathways.items()]
        return d


@dataclass(frozen=True)
class Stimulus:
    """One recorded stimulus: ``kind`` is 'NoStimulation', 'NaturalImage' or 'EndOfSimulationBlank'."""

    kind: str
    image_id: int  # -1 unless NaturalImage
    trial: int
    duration_ms: float


@dataclass
class Network:
    """The ground-truth network. ``W`` is [N_v1, N_v1] (post, pre), ``U`` is [N_v1, N_lgn]."""

    config: CortexConfig
    seed: int
    sizes: dict[str, int]
    neuron_ids: dict[str, np.ndarray]  # int64 per sheet
    positions_mm: dict[str, np.ndarray]  # float64 [N, 2] per sheet (x, y)
    W: sp.csr_matrix  # float64, signed
    U: sp.csr_matrix  # float64, >= 0
    bias: np.ndarray  # float64 [N_v1]
    tau_ms: np.ndarray  # float64 [N_v1]
    lgn_sign: np.ndarray  # +1 ON, -1 OFF per LGN neuron [N_lgn]
    # per V1 sheet, Mozaik neuron-annotation key -> float64 [N] ("lsv1m" structure; empty otherwise).
    # Angles in rad; LGNAfferentFrequency / LGNAfferentSize in LGN grid units, as the datastore's
    # LGN positions (grid indices) are.
    annotations: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def v1_slices(self) -> dict[str, slice]:
        out, start = {}, 0
        for s in V1_SHEETS:
            out[s] = slice(start, start + self.sizes[s])
            start += self.sizes[s]
        return out

    @property
    def lgn_slices(self) -> dict[str, slice]:
        n = self.sizes["X_ON"]
        return {"X_ON": slice(0, n), "X_OFF": slice(n, n + self.sizes["X_OFF"])}

    @property
    def n_v1(self) -> int:
        return sum(self.sizes[s] for s in V1_SHEETS)

    @property
    def n_lgn(self) -> int:
        return sum(self.sizes[s] for s in INPUT_SHEETS)

    def signs(self) -> np.ndarray:
        """Sign (+1/-1) of every V1 neuron's outgoing weights (Dale's law)."""
        return np.concatenate([np.full(self.sizes[s], SHEET_INFO[s].sign, np.int8) for s in V1_SHEETS])


def _neuron_ids(sizes: dict[str, int]) -> dict[str, np.ndarray]:
    """NEST-like ids: one contiguous range per sheet, canonical order, gaps between sheets."""
    out, start = {}, 3
    for s, n in sizes.items():
        out[s] = np.arange(start, start + n, dtype=np.int64)
        start += n + max(8, n // 2)
    return out


def _sample_partners(
    rng: np.random.Generator,
    post_xy: np.ndarray,
    pre_xy: np.ndarray,
    k: int,
    radius: float,
    exclude_self: bool,
    replace: bool = False,
    log_affinity: Callable[[int, int], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """k presynaptic partners per post neuron with P ∝ exp(-d²/2σ²) (times ``exp(log_affinity(a, b))``,
    the ``[b - a, n_pre]`` log-affinity of post neurons ``a..b-1``, when given); (rows, cols) with rows
    repeated.

    Without replacement (Gumbel top-k) every partner is distinct; with replacement a partner may be
    drawn several times (its weights are summed), which keeps small fan-ins local on coarse grids.
    """
    n_post, n_pre = len(post_xy), len(pre_xy)
    if not replace:
        k = min(k, n_pre - (1 if exclude_self else 0))
    if k <= 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    rows, cols = [], []
    chunk = max(1, 2_000_000 // max(n_pre, 1))
    for a in range(0, n_post, chunk):
        b = min(n_post, a + chunk)
        d2 = ((post_xy[a:b, None, :] - pre_xy[None, :, :]) ** 2).sum(-1)
        logp = -d2 / (2 * radius**2)
        if log_affinity is not None:
            logp = logp + log_affinity(a, b)
        if exclude_self:
            idx = np.arange(a, b)
            logp[idx - a, idx] = -np.inf
        if replace:
            p = np.exp(logp - logp.max(axis=1, keepdims=True))
            cum = np.cumsum(p, axis=1)
            cum /= cum[:, -1:]
            offs = np.arange(b - a)[:, None]
            u = offs + rng.random((b - a, k))
            top = (
                np.searchsorted((cum + offs).ravel(), u.ravel(), side="right").reshape(b - a, k)
                - offs * n_pre
            )
            top = np.minimum(top, n_pre - 1)
        else:
            top = np.argpartition(-(logp + rng.gumbel(size=d2.shape)), k - 1, axis=1)[:, :k]
        rows.append(np.repeat(np.arange(a, b), k))
        cols.append(np.sort(top, axis=1).ravel())
    return np.concatenate(rows), np.concatenate(cols)


def build_network(config: CortexConfig, seed: int) -> Network:
    """Neurons, positions and weights, determined by ``config`` and ``seed`` alone."""
    rng = np.random.default_rng([int(seed), 0x5EED])
    sizes = config.sizes()
    side = config.side_mm
    positions: dict[str, np.ndarray] = {}
    g = int(round(np.sqrt(sizes["X_ON"])))
    grid = (np.arange(g) + 0.5) / g * side - side / 2
    gx, gy = np.meshgrid(grid, grid, indexing="xy")
    for s in INPUT_SHEETS:
        positions[s] = np.stack([gx.ravel(), gy.ravel()], axis=1)
    for s in V1_SHEETS:
        positions[s] = rng.uniform(-side / 2, side / 2, size=(sizes[s], 2))
    lsv1m = config.structure == "lsv1m"
    ident = _identity(config, positions, rng) if lsv1m else {}

    net_tmp = Network(
        config,
        seed,
        sizes,
        {},
        positions,
        sp.csr_matrix((0, 0)),
        sp.csr_matrix((0, 0)),
        np.zeros(0),
        np.zeros(0),
        np.zeros(0),
    )
    v1s, n_v1 = net_tmp.v1_slices, net_tmp.n_v1
    lgn_xy = np.concatenate([positions[s] for s in INPUT_SHEETS])
    n_on = sizes["X_ON"]
    lgn_sign = np.concatenate([np.ones(n_on), -np.ones(sizes["X_OFF"])])
    sigma = np.sqrt(np.log1p(config.weight_cv**2))

    def lognormal(n: int) -> np.ndarray:
        return rng.lognormal(-(sigma**2) / 2, sigma, size=n)

    # Recurrent weights: each post neuron's summed input from a pathway = gain * strength (Hz/Hz).
    w_rows, w_cols, w_vals = [], [], []
    u_rows, u_cols, u_vals = [], [], []
    # ON/OFF preference per V1 neuron: ON weights x (1 + phi), OFF weights x (1 - phi).
    phi = rng.uniform(-1.0, 1.0, size=n_v1) if not lsv1m else np.zeros(n_v1)
    for (pre, post), (strength, radius) in config.pathways.items():
        post_xy = positions[post]
        off = v1s[post].start
        if pre == "LGN":
            for lgn_sheet, pref in (("X_ON", 1.0), ("X_OFF", -1.0)):
                lo = 0 if lgn_sheet == "X_ON" else n_on
                aff = _gabor_affinity(ident[post], post_xy, positions[lgn_sheet], pref) if lsv1m else None
                r, c = _sample_partners(
                    rng, post_xy, positions[lgn_sheet], config.lgn_fan_in, 1e9 if lsv1m else radius, False,
                    replace=True, log_affinity=aff,
                )
                k = config.lgn_fan_in
                # x is spikes per 1 ms bin; mean x = baseline/1000, so this gives lgn_drive_hz * strength / 2.
                w = strength * config.lgn_drive_hz / 2 / (k * config.lgn_baseline_hz / 1000.0)
                u_rows.append(r + off)
                u_cols.append(c + lo)
                u_vals.append(w * lognormal(len(r)) * (1 + pref * phi[r + off]))
            continue
        pre_off = v1s[pre].start
        aff = _similarity_affinity(config, pre, post, ident) if lsv1m else None
        r, c = _sample_partners(rng, post_xy, positions[pre], config.fan_in, radius, exclude_self=pre == post,
                                log_affinity=aff)
        k = max(1, min(config.fan_in, sizes[pre] - (pre == post)))
        w = SHEET_INFO[pre].sign * config.recurrent_gain_hz * strength / k
        w_rows.append(r + off)
        w_cols.append(c + pre_off)
        w_vals.append(w * lognormal(len(r)))

    def csr(rows: list, cols: list, vals: list, shape: tuple[int, int]) -> sp.csr_matrix:
        if not rows:
            return sp.csr_matrix(shape)
        m = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=shape)
        m = m.tocsr()
        m.sum_duplicates()
        m.sort_indices()
        return m

    W = csr(w_rows, w_cols, w_vals, (n_v1, n_v1))
    U = csr(u_rows, u_cols, u_vals, (n_v1, len(lgn_xy)))
    bias = np.concatenate([np.full(sizes[s], b) for s, b in zip(V1_SHEETS, config.bias_hz)])
    tau = np.concatenate(
        [
            np.full(sizes[s], config.tau_exc_ms if SHEET_INFO[s].excitatory else config.tau_inh_ms)
            for s in V1_SHEETS
        ]
    )
    spacing = side / g  # mm per LGN grid step: annotations in the datastore's LGN units
    annotations = {
        s: {"LGNAfferentOrientation": p["ori"]} if "frequency" not in p else {
            "LGNAfferentOrientation": p["ori"], "LGNAfferentPhase": p["phase"],
            "LGNAfferentFrequency": p["frequency"] * spacing, "LGNAfferentSize": p["size"] / spacing,
            "LGNAfferentAspectRatio": p["aspect_ratio"]}
        for s, p in ident.items()}
    return Network(config, int(seed), sizes, _neuron_ids(sizes), positions, W, U, bias, tau, lgn_sign,
                   annotations)


def orientation_map(xy_mm: np.ndarray, period_mm: float, rng: np.random.Generator, n_waves: int = 8
                    ) -> np.ndarray:
    """Pinwheel orientation map (rad in [0, pi)): half the angle of a sum of ``n_waves`` complex plane
    waves of one wavelength and random directions and phases (Swindale's model of column maps)."""
    theta = np.pi * (np.arange(n_waves) + rng.uniform(0, 1, n_waves)) / n_waves
    phase = rng.uniform(0, 2 * np.pi, n_waves)
    k = 2 * np.pi / period_mm
    proj = xy_mm[:, :1] * np.cos(theta) + xy_mm[:, 1:2] * np.sin(theta)
    z = np.exp(1j * (k * proj + phase)).sum(1)
    return np.mod(np.angle(z) / 2, np.pi)


def _identity(config: CortexConfig, positions: dict[str, np.ndarray], rng: np.random.Generator
              ) -> dict[str, dict[str, np.ndarray]]:
    """Per V1 sheet: ori (map + jitter) and phase; L4 sheets also Gabor frequency (c/mm), size (mm)
    and aspect ratio. One map for all sheets (columns span the layers)."""
    map_rng = np.random.default_rng(rng.integers(1 << 62))
    waves = map_rng.integers(1 << 62)
    out: dict[str, dict[str, np.ndarray]] = {}
    for s in V1_SHEETS:
        n = len(positions[s])
        ori = orientation_map(positions[s], config.ori_map_period_mm, np.random.default_rng(waves))
        p = {"ori": np.mod(ori + rng.normal(0, config.ori_jitter, n), np.pi),
             "phase": rng.uniform(0, 2 * np.pi, n)}
        if SHEET_INFO[s].layer == "L4":
            jit = rng.normal(0, config.rf_jitter, (2, n))
            p["frequency"] = config.rf_frequency_cpmm * np.exp(jit[0])
            p["size"] = config.rf_size_mm * np.exp(jit[1])
            p["aspect_ratio"] = np.full(n, config.rf_aspect_ratio)
        out[s] = p
    return out


def _gabor_affinity(ident: dict[str, np.ndarray], post_xy: np.ndarray, pre_xy: np.ndarray, polarity: float
                    ) -> Callable[[int, int], np.ndarray]:
    """log relu(+-G): ON afferents where the Gabor is positive, OFF where it is negative (Mozaik's
    GaborConnector samples afferents with this probability)."""
    from corticalrnn.receptive_field import gabor

    def f(a: int, b: int) -> np.ndarray:
        d = pre_xy[None, :, :] - post_xy[a:b, None, :]
        col = {k: v[a:b, None] for k, v in ident.items()}
        g = polarity * gabor(d[..., 0], d[..., 1], col["ori"], col["phase"], col["frequency"], col["size"],
                             col["aspect_ratio"], np)
        with np.errstate(divide="ignore"):
            return np.log(np.maximum(g, 1e-12 * np.abs(g).max(1, keepdims=True)))
    return f


def _similarity_affinity(config: CortexConfig, pre: str, post: str, ident: dict[str, dict[str, np.ndarray]]
                         ) -> Callable[[int, int], np.ndarray]:
    """log of exp(kappa_o cos 2 dtheta) (not from L2/3 inhibitory cells), times exp(+-kappa_p cos dphi)
    within L4 (like-phase excitation, anti-phase inhibition: push-pull)."""
    ko = 0.0 if (SHEET_INFO[pre].layer == "L2/3" and not SHEET_INFO[pre].excitatory) else config.ori_affinity
    in_l4 = SHEET_INFO[pre].layer == SHEET_INFO[post].layer == "L4"
    kp = config.phase_affinity * SHEET_INFO[pre].sign if in_l4 else 0.0
    a_pre, a_post = ident[pre], ident[post]

    def f(a: int, b: int) -> np.ndarray:
        out = ko * np.cos(2 * (a_post["ori"][a:b, None] - a_pre["ori"][None, :]))
        if kp:
            out = out + kp * np.cos(a_post["phase"][a:b, None] - a_pre["phase"][None, :])
        return out
    return f


def image_pattern(image_id: int, xy_mm: np.ndarray, side_mm: float) -> np.ndarray:
    """Reproducible smooth spatial pattern of an image (zero mean, unit std) at LGN positions.

    Depends on the image id only (not on the network seed): a sum of 24 random plane waves with
    spatial periods of 0.25-1 of the sheet side, normalised over the given positions.
    """
    rng = np.random.default_rng([int(image_id), 0x1A6E])
    n = 24
    theta = rng.uniform(0, np.pi, n)
    period = side_mm * rng.uniform(0.25, 1.0, n)
    k = 2 * np.pi / period
    phase = rng.uniform(0, 2 * np.pi, n)
    amp = rng.normal(size=n)
    proj = xy_mm[:, 0:1] * np.cos(theta) + xy_mm[:, 1:2] * np.sin(theta)
    p = (amp * np.cos(k * proj + phase)).sum(1)
    return (p - p.mean()) / (p.std() + 1e-12)


def lgn_rates(net: Network, stim: Stimulus, t_ms: np.ndarray, onset_ms: float) -> np.ndarray:
    """LGN rates (Hz) [len(t_ms), N_lgn] at the given element times; the image is on in [onset, onset+dur)."""
    cfg = net.config
    base = np.full((len(t_ms), net.n_lgn), cfg.lgn_baseline_hz)
    if stim.kind != "NaturalImage":
        return base
    xy = np.concatenate([net.positions_mm[s] for s in INPUT_SHEETS])
    pat = image_pattern(stim.image_id, xy, cfg.side_mm) * net.lgn_sign  # OFF sees the negative
    rel = t_ms - onset_ms
    on = (rel >= 0) & (rel < stim.duration_ms)
    transient = np.where(on, cfg.lgn_transient * np.exp(-np.clip(rel, 0, None) / cfg.lgn_transient_ms), 0.0)
    mod = on[:, None] * (cfg.lgn_image_gain + cfg.lgn_contrast * pat[None, :]) + transient[:, None]
    return np.clip(base * (1.0 + mod), 0.0, None)


@dataclass
class ElementResult:
    """One simulated element [pre blank | stimulus | post blank] of ``stim``.

    Rates (Hz, float32) are means over ``rate_bin_ms`` bins; spikes are (neuron index, time in ms
    from the element start), sorted by neuron then time, times on a 0.1 ms grid in (0, n_steps].
    """

    stim: Stimulus
    pre_ms: int
    n_steps: int
    rate_bin_ms: int
    v1_rates: np.ndarray  # float32 [n_steps / rate_bin_ms, N_v1]
    lgn_rates: np.ndarray  # float32 [n_steps / rate_bin_ms, N_lgn]
    v1_spikes: tuple[np.ndarray, np.ndarray]
    lgn_spikes: tuple[np.ndarray, np.ndarray]

    def part_ms(self, part: str) -> tuple[int, int]:
        """(start, stop) in ms of 'pre', 'stim' or 'post' within the element."""
        dur = int(self.stim.duration_ms)
        bounds = {
            "pre": (0, self.pre_ms),
            "stim": (self.pre_ms, self.pre_ms + dur),
            "post": (self.pre_ms + dur, self.n_steps),
        }
        return bounds[part]

    def rates(self, part: str, v1: bool = True) -> np.ndarray:
        a, b = self.part_ms(part)
        r = self.v1_rates if v1 else self.lgn_rates
        return r[a // self.rate_bin_ms : b // self.rate_bin_ms]

    def spikes(self, part: str, v1: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(neuron index, time ms relative to the part's start) in (0, part duration], sorted by neuron."""
        a, b = self.part_ms(part)
        n, t = self.v1_spikes if v1 else self.lgn_spikes
        keep = (t > a) & (t <= b)
        return n[keep], np.round(t[keep] - a, 1)


def _spike_times(rng: np.random.Generator, counts: np.ndarray, t0: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts [C, N] of bins t0..t0+C-1 -> (neuron, time ms) with times on a 0.1 ms grid in (t, t+1]."""
    t_idx, n_idx = np.nonzero(counts)
    reps = counts[t_idx, n_idx].astype(np.int64)
    t_idx = np.repeat(t_idx, reps)
    n_idx = np.repeat(n_idx, reps)
    tenth = rng.integers(1, 11, size=len(t_idx))
    times = np.round((t0 + t_idx) + tenth / 10.0, 1)
    return n_idx.astype(np.int64), times


def simulate(net: Network, stimuli: Sequence[Stimulus]) -> Iterator[ElementResult]:
    """Simulate every stimulus as an element [blank | stimulus | blank], in batches; yields in order.

    The first element starts with a full ``blank_ms`` blank (it is recorded before the first
    stimulus); later ones with a ``warmup_ms`` blank that is not recorded.
    """
    cfg = net.config
    if not stimuli:
        return
    rest = list(stimuli[1:])
    batches = [([stimuli[0]], int(cfg.blank_ms))]
    batches += [(rest[a : a + cfg.batch], int(cfg.warmup_ms)) for a in range(0, len(rest), cfg.batch)]
    for stims, pre in batches:
        # One BLAS thread: the per-step products are small (threads cost more than they bring,
        # badly so on a shared machine) and the float sums do not depend on the thread count.
        with _one_blas_thread():
            out = _simulate_batch(net, stims, pre)
        yield from out


def _one_blas_thread() -> contextlib.AbstractContextManager:
    """Limit BLAS to one thread while simulating (no-op without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a declared dependency
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _baseline_state(net: Network) -> np.ndarray:
    """Deterministic blank fixed point of the rate dynamics (mean LGN input, no noise)."""
    x_mean = np.full(net.n_lgn, net.config.lgn_baseline_hz / 1000.0)
    drive = net.U @ x_mean + net.bias
    r = np.zeros(net.n_v1)
    for _ in range(5000):
        r_new = np.maximum(net.W @ r + drive, 0.0)
        if np.max(np.abs(r_new - r)) < 1e-6:
            return r_new
        r = 0.7 * r + 0.3 * r_new
    return r


def _element_rng(net: Network, stim: Stimulus) -> np.random.Generator:
    return np.random.default_rng([net.seed, stim.image_id + 1, stim.trial, _KIND_CODE[stim.kind]])


def _simulate_batch(net: Network, stims: list[Stimulus], pre_ms: int) -> list[ElementResult]:
    cfg = net.config
    B = len(stims)
    steps = [pre_ms + int(s.duration_ms) + int(cfg.blank_ms) for s in stims]
    T = max(steps)
    n_v1, n_lgn = net.n_v1, net.n_lgn
    n4 = net.v1_slices["V1_Inh_L4"].stop
    rb = cfg.rate_bin_ms
    rngs = [_element_rng(net, s) for s in stims]

    dense = n_v1 <= _DENSE_MAX
    W4, W23 = net.W[:n4].astype(np.float32), net.W[n4:].astype(np.float32)
    if dense:
        W4, W23 = W4.toarray(), W23.toarray()
    U4 = net.U[:n4].astype(np.float32)
    bias4 = net.bias[:n4].astype(np.float32)[:, None]
    bias23 = net.bias[n4:].astype(np.float32)[:, None]
    alpha = (cfg.dt_ms / net.tau_ms).astype(np.float32)[:, None]
    a4, a23 = alpha[:n4], alpha[n4:]
    decay = np.float32(np.exp(-cfg.dt_ms / cfg.noise_tau_ms))
    kick = np.float32(cfg.noise_hz * np.sqrt(1 - decay**2))

    r = np.repeat(_baseline_state(net).astype(np.float32)[:, None], B, axis=1)  # [N, B]
    eta = np.stack([g.standard_normal(n_v1) for g in rngs], axis=1).astype(np.float32) * np.float32(
        cfg.noise_hz
    )
    t_all = np.arange(T, dtype=np.float64)
    lam = [lgn_rates(net, s, t_all, pre_ms).astype(np.float32) for s in stims]  # each [T, N_lgn]

    v1_binned = np.zeros((B, T // rb, n_v1), np.float32)
    spikes_v1: list[list] = [[] for _ in range(B)]
    spikes_lgn: list[list] = [[] for _ in range(B)]
    buf = np.empty((_CHUNK_MS, n_v1, B), np.float32)
    for t0 in range(0, T, _CHUNK_MS):
        C = min(_CHUNK_MS, T - t0)
        # LGN spikes and noise for the chunk, each element from its own stream. Every element draws
        # whole chunks, and nothing past its own end, so its draws do not depend on the batch.
        x = np.zeros((n_lgn, C, B), np.float32)
        xi = np.zeros((C, n_v1, B), np.float32)
        for e, g in enumerate(rngs):
            valid = min(max(steps[e] - t0, 0), _CHUNK_MS)
            if valid == 0:
                continue
            lam_chunk = np.zeros((_CHUNK_MS, n_lgn), np.float32)
            lam_chunk[:valid] = lam[e][t0 : t0 + valid]
            counts = g.poisson(lam_chunk * (cfg.dt_ms / 1000.0))
            x[:, :valid, e] = counts[:valid].T
            spikes_lgn[e].append(_spike_times(g, counts[:valid], t0))
            xi[:valid, :, e] = g.standard_normal((_CHUNK_MS, n_v1))[:valid]
        drive4 = (U4 @ x.reshape(n_lgn, C * B)).reshape(n4, C, B) + bias4[:, :, None]
        for c in range(C):
            eta *= decay
            eta += kick * xi[c]
            I4 = W4 @ r
            I4 += drive4[:, c]
            I4 += eta[:n4]
            r4 = r[:n4] + a4 * (np.maximum(I4, 0) - r[:n4])
            r[:n4] = r4
            I23 = W23 @ r  # L4 rows already at t, L2/3 rows still at t-1
            I23 += bias23
            I23 += eta[n4:]
            r[n4:] += a23 * (np.maximum(I23, 0) - r[n4:])
            buf[c] = r
        chunk = buf[:C]
        if not np.all(np.isfinite(chunk)) or chunk.max() > _MAX_RATE_HZ:
            raise CorticalRNNError(
                f"synthetic network is unstable (rates above {_MAX_RATE_HZ:.0f} Hz); lower recurrent_gain_hz"
            )
        v1_binned[:, t0 // rb : (t0 + C) // rb] = (
            chunk.reshape(C // rb, rb, n_v1, B).mean(1).transpose(2, 0, 1)
        )
        for e, g in enumerate(rngs):
            valid = min(max(steps[e] - t0, 0), _CHUNK_MS)
            if valid == 0:
                continue
            rate_chunk = np.zeros((_CHUNK_MS, n_v1), np.float32)
            rate_chunk[:valid] = chunk[:valid, :, e]
            counts = g.poisson(rate_chunk * (cfg.dt_ms / 1000.0))  # rate 0 draws nothing
            spikes_v1[e].append(_spike_times(g, counts[:valid], t0))
    out = []
    for e, s in enumerate(stims):
        n = steps[e]
        lgn_b = lam[e][:n].reshape(n // rb, rb, n_lgn).mean(1)
        out.append(
            ElementResult(
                s,
                pre_ms,
                n,
                rb,
                v1_binned[e, : n // rb].copy(),
                lgn_b,
                _concat_spikes(spikes_v1[e], n),
                _concat_spikes(spikes_lgn[e], n),
            )
        )
    return out


_KIND_CODE = {"NoStimulation": 1, "NaturalImage": 2, "EndOfSimulationBlank": 3}
_DENSE_MAX = 6000  # V1 neurons up to which dense float32 GEMMs beat scipy.sparse
_MAX_RATE_HZ = 1000.0


def _concat_spikes(parts: list[tuple[np.ndarray, np.ndarray]], n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    n = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, np.int64)
    t = np.concatenate([p[1] for p in parts]) if parts else np.empty(0)
    keep = t <= n_steps
    n, t = n[keep], t[keep]
    order = np.lexsort((t, n))
    return n[order], t[order]


def stimulus_sequence(image_ids: Sequence[int], trials: int, image_ms: float = 560.0) -> list[Stimulus]:
    """Mozaik's order: NoStimulation, then trial 0 of every image, trial 1 of every image, …, end blank."""
    if trials < 1:
        raise CorticalRNNError(f"trials must be >= 1, got {trials}")
    if len(image_ids) == 0:
        raise CorticalRNNError("no image ids given")
    if len(set(image_ids)) != len(image_ids):
        raise CorticalRNNError("image ids must be unique")
    if min(image_ids) < 0:
        raise CorticalRNNError("image ids must be >= 0")
    seq = [Stimulus("NoStimulation", -1, 0, NO_STIMULATION_MS)]
    seq += [Stimulus("NaturalImage", int(i), t, float(image_ms)) for t in range(trials) for i in image_ids]
    seq.append(Stimulus("EndOfSimulationBlank", -1, 0, END_BLANK_MS))
    return seq
