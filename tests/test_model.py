"""Tests of corticalrnn.model: fast path vs float64 reference, Dale's law, teacher forcing, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from modelconfigs import model_config

from corticalrnn.errors import CorticalRNNError, DataMismatchError
from corticalrnn.model import CorticalRNN, ModelConfig, PathwayConfig, poisson_nll
from corticalrnn.model.dale import spectral_radius
from corticalrnn.model.reference import reference_forward
from corticalrnn.sheets import V1_SHEETS

SIZES = {"X_ON": 4, "X_OFF": 3, "V1_Exc_L4": 6, "V1_Inh_L4": 3, "V1_Exc_L2/3": 5, "V1_Inh_L2/3": 2}
N_V1, N_IN = 16, 7
P = PathwayConfig
# every kind of pathway: delay-1 input, input to L2/3, same-step L2/3 -> L4 (3 stages, reordered)
ODD_PATHWAYS = (P("X_ON", "V1_Exc_L2/3", 0), P("X_OFF", "V1_Inh_L2/3", 1), P("X_ON", "V1_Exc_L4", 1),
                P("V1_Exc_L2/3", "V1_Exc_L4", 0), P("V1_Exc_L2/3", "V1_Inh_L4", 0),
                P("V1_Inh_L2/3", "V1_Exc_L2/3", 1), P("V1_Exc_L4", "V1_Exc_L2/3", 1),
                P("V1_Inh_L4", "V1_Exc_L4", 1), P("V1_Exc_L4", "V1_Inh_L4", 0),
                P("V1_Exc_L2/3", "V1_Inh_L2/3", 1))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: OpenMP threads only add overhead (and contention on shared CI cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def positions(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {s: rng.random((n, 2)) * 0.6 for s, n in SIZES.items()}


def make(**kw) -> CorticalRNN:
    kw.setdefault("bin_ms", 5.0)
    pos = positions() if kw.get("connectivity") == "distance" else None
    return CorticalRNN(model_config(**kw), SIZES, pos)


def data(seed: int = 0, B: int = 3, T: int = 6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, T, N_IN, generator=g, dtype=dtype)
    y = torch.rand(B, T, N_V1, generator=g, dtype=dtype)
    mask = torch.rand(N_V1, generator=g) < 0.5
    return x, y, mask


def grads(out: torch.Tensor, model: CorticalRNN, w: torch.Tensor) -> dict[str, torch.Tensor]:
    names = [n for n, p in model.named_parameters()]
    gs = torch.autograd.grad((out * w).sum(), list(model.parameters()), allow_unused=True)
    return {n: g for n, g in zip(names, gs)}


def assert_matches_reference(model: CorticalRNN, teacher: bool, seed: int = 0) -> None:
    model = model.double()
    x, y, mask = data(seed)
    if teacher:
        force = model.draw_force(x.shape[0], mask, 0.7, torch.Generator().manual_seed(5))
        out = model(x, y, mask, 0.7, torch.Generator().manual_seed(5))
        ref = reference_forward(model, x, y, force)
    else:
        out, ref = model(x), reference_forward(model, x)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    w = torch.rand(out.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=out.dtype)
    g_fast, g_ref = grads(out, model, w), grads(ref, model, w)
    for name, gr in g_ref.items():
        assert gr is not None, name
        assert g_fast[name] is not None, name
        torch.testing.assert_close(g_fast[name], gr, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("neuron_model", ["leaky", "mlp", "gru"])
@pytest.mark.parametrize("sign_mode,reparam", [("projected", "softplus"), ("reparam", "softplus"),
                                               ("reparam", "abs")])
@pytest.mark.parametrize("teacher", [False, True])
@pytest.mark.parametrize("connectivity", ["dense", "distance"])
def test_gradients_match_reference(neuron_model, sign_mode, reparam, teacher, connectivity):
    model = make(neuron_model=neuron_model, sign_mode=sign_mode, reparam=reparam, connectivity=connectivity)
    assert_matches_reference(model, teacher)


@pytest.mark.parametrize("neuron_model", ["leaky", "gru", "adaptive"])
@pytest.mark.parametrize("connectivity", ["dense", "distance"])
def test_gradients_match_reference_unusual_graph(neuron_model, connectivity):
    model = make(neuron_model=neuron_model, pathways=ODD_PATHWAYS, connectivity=connectivity)
    assert model.graph.n_stages == 3 and model.graph.internal_to_external is not None
    assert_matches_reference(model, teacher=True, seed=3)


def test_default_graph_layout():
    model = make()
    g = model.graph
    assert g.internal_to_external is None and g.n_stages == 2
    shapes = {b.name: b.shape for b in g.blocks}
    # L4 rows see L4 E/I and L2/3 E at t-1; L2/3 rows see L4 E at t and L2/3 at t-1; LGN -> L4 at t
    assert shapes == {"U0_stage0": (9, 7), "W1_stage0": (9, 14), "W0_stage1": (7, 6), "W1_stage1": (7, 7)}
    assert all(g.structure(b) is None for b in g.blocks)
    with torch.no_grad():
        assert float(model.pathway_weight("V1_Inh_L4", "V1_Exc_L4", 1).max()) <= 0
        assert float(model.pathway_weight("V1_Exc_L2/3", "V1_Inh_L4", 1).min()) >= 0
    with pytest.raises(KeyError):
        model.pathway_weight("V1_Inh_L2/3", "V1_Exc_L4", 1)  # inhibition stays within its layer


def test_balanced_init_and_spectral_radius():
    model = make(spectral_radius=0.7).double()
    n = N_V1
    w = torch.zeros(n, n, dtype=torch.float64)
    with torch.no_grad():
        for b in model.graph.blocks:
            if b.source == "v1":
                w[b.row0:b.row1, b.col0:b.col1] += model.weights[b.name].weight()
    torch.testing.assert_close(w.sum(1), torch.zeros(n, dtype=torch.float64), atol=1e-6, rtol=0)
    assert float(w.abs().sum(1).min()) > 0.1
    assert spectral_radius(w) == pytest.approx(0.7, rel=1e-5)
    assert model.sign_violations() == {k: 0 for k in model.sign_violations()}


def test_distance_mask_is_local():
    big = {"X_ON": 2, "X_OFF": 2, "V1_Exc_L4": 300, "V1_Inh_L4": 60, "V1_Exc_L2/3": 300, "V1_Inh_L2/3": 60}
    rng = np.random.default_rng(1)
    pos = {s: rng.random((n, 2)) * 2.0 for s, n in big.items()}
    model = CorticalRNN(model_config(connectivity="distance", distance_sigma_mm={"exc": 0.2, "inh": 0.1}),
                        big, pos)
    w = model.pathway_weight("V1_Exc_L4", "V1_Exc_L4", 1).detach().numpy()
    d = np.linalg.norm(pos["V1_Exc_L4"][:, None] - pos["V1_Exc_L4"][None], axis=-1)
    near, far = (w[d < 0.1] != 0).mean(), (w[d > 0.6] != 0).mean()
    assert near > 0.7 and far < 0.01
    assert model.n_synapses() < 0.3 * sum(p.numel() for p in model.parameters())


def test_chunked_tbptt_forward_and_state_continuation():
    x, y, mask = data(T=7, dtype=torch.float32)
    full = make()
    chunked = make()
    chunked.load_state_dict(full.state_dict())
    torch.testing.assert_close(chunked(x, detach_every=3), full(x))
    r1, state = full.run(x[:, :4])
    r2, _ = full.run(x[:, 4:], state=state)
    torch.testing.assert_close(torch.cat([r1, r2], 1), full(x))
    # truncation: the loss at the end does not reach the first chunk's input weights through time
    chunked(x, detach_every=3)[:, -1].sum().backward()
    assert chunked.bias.grad is not None


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("neuron_model", ["leaky", "gru"])
def test_reduced_precision_paths(precision, neuron_model):
    x, _, _ = data(dtype=torch.float32)
    ref = make(neuron_model=neuron_model)
    low = make(neuron_model=neuron_model, precision=precision)
    low.load_state_dict(ref.state_dict())
    out, out_ref = low(x), ref(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, out_ref, rtol=3e-2, atol=3e-2)
    out.sum().backward()
    out_ref.sum().backward()
    for (n, p), q in zip(low.named_parameters(), ref.parameters()):
        assert torch.isfinite(p.grad).all(), n
        assert torch.allclose(p.grad, q.grad, rtol=0.1, atol=0.05 * float(q.grad.abs().max()) + 1e-6), n


@pytest.mark.parametrize("sign_mode,steps", [("projected", 300), ("reparam", 100)])
def test_no_sign_violation_after_many_fp16_steps(sign_mode, steps):
    """fp16 matmuls (CPU), GradScaler, an aggressive Adam: the projected master weights (fp32) and the
    reparametrised weights never break Dale's law or the distance mask, even when read back in fp16."""
    torch.manual_seed(0)
    model = make(sign_mode=sign_mode, precision="fp16", connectivity="distance")
    x, y, mask = data(B=4, T=5, dtype=torch.float32)
    counts = torch.poisson(y * 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    flips = 0
    before = {n: w.weight().detach().clone() for n, w in model.weights.items()}
    for step in range(steps):
        opt.zero_grad()
        loss = poisson_nll(model(x, counts, mask, 0.5), counts, mask)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        model.project_()
        assert not any(model.sign_violations().values()), step
        if step == steps // 2:
            flips = sum(int(((w.weight() == 0) & (before[n] != 0)).sum()) for n, w in model.weights.items())
    for w in model.weights.values():
        half = w.weight().detach().half().float()
        assert int(((half * w.sign) < 0).sum()) == 0
        if w.mask is not None:
            assert int((half[~w.mask] != 0).sum()) == 0
    if sign_mode == "projected":
        assert flips > 0  # the optimizer did push weights across zero; projection caught them


def test_hidden_neurons_get_gradient_only_through_recurrence():
    model = make().double()
    x, y, mask = data()
    rates = model(x)
    rates.retain_grad()
    loss = poisson_nll(rates, torch.poisson(y), mask)
    loss.backward()
    hidden = ~mask
    assert float(rates.grad[..., hidden].abs().max()) == 0.0
    assert float(rates.grad[..., mask].abs().max()) > 0
    hidden_bias = model.bias.grad[hidden]  # internal order == canonical for the default graph
    assert float(hidden_bias.abs().min()) > 0


def test_teacher_fraction_zero_and_no_teacher_are_free_running():
    model = make()
    x, y, mask = data(dtype=torch.float32)
    free = model(x)
    torch.testing.assert_close(model(x, y, mask, 0.0), free)
    forced = model(x, y, mask, 1.0)
    assert not torch.allclose(forced, free)
    y_nan = y.clone()
    y_nan[..., ~mask] = float("nan")  # data of unobserved neurons is never read
    torch.testing.assert_close(model(x, y_nan, mask, 1.0), forced)
    # the prediction at t=0 does not depend on the teacher (it only feeds later steps and L2/3 at t)
    torch.testing.assert_close(forced[:, 0, :9], free[:, 0, :9])


def test_tiny_network_overfits_one_window():
    torch.manual_seed(0)
    target_model = make(seed=7, init_rate=0.3, input_gain=3.0)
    x, _, mask = data(B=2, T=12, dtype=torch.float32)
    with torch.no_grad():
        target = target_model(x) * 1.5
    model = make(seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    everyone = torch.ones(N_V1, dtype=torch.bool)
    first = None
    for _ in range(150):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), target)
        first = float(loss.detach()) if first is None else first
        loss.backward()
        opt.step()
        model.project_()
    with torch.no_grad():
        final = float(torch.nn.functional.mse_loss(model(x), target))
        assert final < 0.02 * first
        assert not any(model.sign_violations().values())
        assert float(poisson_nll(model(x), target, everyone)) < float(poisson_nll(target_model(x), target,
                                                                                 everyone))


def test_errors_for_bad_inputs():
    model = make()
    with pytest.raises(DataMismatchError, match="lgn must be"):
        model(torch.rand(2, 5, N_IN + 1))
    with pytest.raises(DataMismatchError, match="lgn must be"):
        model(torch.rand(5, N_IN))
    bad = torch.rand(2, 5, N_IN)
    bad[1, 2, 3] = float("nan")
    with pytest.raises(DataMismatchError, match="NaN"):
        model(bad)
    with pytest.raises(DataMismatchError, match="teacher must be"):
        model(torch.rand(2, 5, N_IN), torch.rand(2, 5, N_V1 - 1), torch.ones(N_V1, dtype=torch.bool))
    with pytest.raises(DataMismatchError, match="V1_Inh_L4"):
        CorticalRNN(ModelConfig(), {k: v for k, v in SIZES.items() if k != "V1_Inh_L4"})
    with pytest.raises(DataMismatchError, match="positions"):
        CorticalRNN(model_config(connectivity="distance"), SIZES)
    with pytest.raises(CorticalRNNError, match="cycle"):
        model_config(pathways=(P("V1_Exc_L4", "V1_Inh_L4", 0), P("V1_Inh_L4", "V1_Exc_L4", 0)))
        CorticalRNN(model_config(pathways=(P("V1_Exc_L4", "V1_Inh_L4", 0), P("V1_Inh_L4", "V1_Exc_L4", 0))),
                    SIZES)
    with pytest.raises(CorticalRNNError, match="sign_mode"):
        model_config(sign_mode="clip")
    with pytest.raises(CorticalRNNError, match="unknown key"):
        ModelConfig.from_dict({"n_layers": 3})
    with pytest.raises(DataMismatchError, match="observed_mask"):
        poisson_nll(torch.rand(2, 5, N_V1), torch.rand(2, 5, N_V1), torch.ones(3, dtype=torch.bool))


def test_config_roundtrip_through_json():
    cfg = model_config(neuron_model="gru", sign_mode="reparam", pathways=ODD_PATHWAYS,
                       tau_ms={"V1_Exc_L4": 12.0, "V1_Inh_L4": 5.0, "V1_Exc_L2/3": 15.0, "V1_Inh_L2/3": 6.0})
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert ModelConfig.from_dict({}) == ModelConfig()


def test_poisson_nll_against_formula():
    g = torch.Generator().manual_seed(0)
    rates = torch.rand(2, 3, 4, generator=g, dtype=torch.float64) + 0.1
    counts = torch.poisson(rates * 2, generator=g)
    mask = torch.tensor([True, False, True, False])
    expected = (rates - counts * torch.log(rates))[..., mask].mean()
    torch.testing.assert_close(poisson_nll(rates, counts, mask), expected, rtol=1e-6, atol=1e-7)
    full = poisson_nll(rates, counts, mask, full=True)
    torch.testing.assert_close(full, expected + torch.lgamma(counts + 1)[..., mask].mean(), rtol=1e-6,
                               atol=1e-7)


def test_enclosing_autocast_sets_matmul_dtype():
    x, _, _ = data(dtype=torch.float32)
    model = make()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, model(x), rtol=3e-2, atol=3e-2)
    assert not torch.equal(out, model(x))  # the matmuls did run in bf16


def test_lgn_grid_mapping_matches_the_generator_and_input_mask_is_retinotopic() -> None:
    """Grid indices as Mozaik stores them map back to the generator's own LGN positions (mm), and a
    retinotopic model connects each V1 neuron only to LGN cells near it."""
    from corticalrnn.model.input_rules import lgn_grid_to_mm
    from corticalrnn.synth import CortexConfig
    from corticalrnn.synth.cortex import build_network
    from corticalrnn.synth.mozaik_writer import mozaik_positions

    net = build_network(CortexConfig(scale=0.1), seed=3)
    side = CortexConfig(scale=0.1).side_mm
    for sheet in ("X_ON", "X_OFF"):
        true_mm = net.positions_mm[sheet]
        grid = mozaik_positions(true_mm, sheet).T
        np.testing.assert_allclose(lgn_grid_to_mm(grid, side), true_mm[:, :2], atol=1e-9)

    sizes = {s: len(net.positions_mm[s]) for s in net.positions_mm}
    positions = {s: (mozaik_positions(p, s).T if s in ("X_ON", "X_OFF") else p)
                 for s, p in net.positions_mm.items()}
    cfg = model_config(input_connectivity="retinotopic", input_sigma_mm=0.05, lgn_extent_mm=side)
    model = CorticalRNN(cfg, sizes, positions)
    u = model.pathway_weight("X_ON", "V1_Exc_L4", 0).detach().numpy()  # [post, pre]
    v1, lgn = net.positions_mm["V1_Exc_L4"][:, None, :2], net.positions_mm["X_ON"][None, :, :2]
    d = np.linalg.norm(v1 - lgn, axis=-1)
    assert (u[d > 6 * 0.05] == 0).all()
    assert (u[d < 0.02] > 0).mean() > 0.9
    dense = CorticalRNN(ModelConfig(), sizes, positions).pathway_weight("X_ON", "V1_Exc_L4", 0)
    assert (dense.detach().numpy() > 0).mean() > 0.99


@pytest.mark.parametrize("teacher", [False, True])
@pytest.mark.parametrize("sign_mode,neuron_model", [("projected", "leaky"), ("reparam", "leaky"),
                                                    ("projected", "gru")])
@pytest.mark.parametrize("sparse_grad", [False, True])
def test_sparse_kernel_matches_reference(teacher, sign_mode, neuron_model, sparse_grad):
    """Blocks below ``sparse_below`` run their per-step products on CSR copies, and below
    ``sparse_grad_below`` their weight gradients as SDDMM on the mask: same outputs and gradients as
    the plain autograd reference in float64."""
    model = make(connectivity="distance", sign_mode=sign_mode, sparse_below=1.0,
                 sparse_grad_below=1.0 if sparse_grad else 0.0, neuron_model=neuron_model,
                 distance_sigma_mm={"exc": 0.1, "inh": 0.08})
    assert any(b.sparse for b in model.layout.blocks)
    assert any(b.sparse_grad for b in model.layout.blocks) == sparse_grad
    assert any(b.sparse_grad and b.delay == 1 for b in model.layout.blocks) == sparse_grad
    assert not any(b.sparse for b in make(connectivity="distance", sparse_below=0.0).layout.blocks)
    assert_matches_reference(model, teacher)


@pytest.mark.parametrize("cpu_blas", ["torch", "openblas"])
@pytest.mark.parametrize("neuron_model", ["leaky", "gru"])
def test_weight_gradient_blas_backends_match_reference(cpu_blas, neuron_model):
    """The weight-gradient GEMMs through torch's BLAS or numpy's OpenBLAS: same gradients as the
    float64 autograd reference (delay-0 and delay-1 blocks, teacher forcing on)."""
    from corticalrnn.model import gemm
    model = make(cpu_blas=cpu_blas, neuron_model=neuron_model)
    expected = "openblas" if cpu_blas == "openblas" and gemm.numpy_blas() == "openblas" else "torch"
    assert model.layout.blas == expected
    assert_matches_reference(model, teacher=True, seed=2)


def test_matmul_nt_against_naive_sum():
    from corticalrnn.model import gemm
    g = torch.Generator().manual_seed(0)
    big = torch.rand(7, 5, 3, generator=g, dtype=torch.float64)
    a = big[:4, 1:].reshape(4, 12)  # non-contiguous source, as for delay-1 blocks
    b = torch.rand(6, 12, generator=g, dtype=torch.float64)
    naive = torch.tensor([[sum(float(a[i, k]) * float(b[j, k]) for k in range(12)) for j in range(6)]
                          for i in range(4)], dtype=torch.float64)
    for backend in ("torch", "openblas"):
        with gemm.blas_threads(backend):
            got = gemm.matmul_nt(a, b, backend)
        torch.testing.assert_close(got, naive, rtol=1e-13, atol=1e-13)
        got32 = gemm.matmul_nt(a.float(), b.float(), backend)
        assert got32.dtype == torch.float32
        torch.testing.assert_close(got32.double(), naive, rtol=1e-5, atol=1e-5)
    with pytest.raises(CorticalRNNError, match="cpu_blas"):
        model_config(cpu_blas="blis")
    with pytest.raises(ValueError, match="cpu_blas"):
        gemm.resolve("blis")


@pytest.mark.parametrize("chunk", [1, 4, 16])
@pytest.mark.parametrize("teacher", [False, True])
@pytest.mark.parametrize("sign_mode", ["projected", "reparam"])
def test_graph_chunked_path_matches_reference(chunk, teacher, sign_mode):
    """``cuda_graphs``: the loop runs as chunks of steps on static buffers (captured and replayed on
    a GPU, run eagerly here). Outputs and gradients equal the float64 reference, with chunk sizes that
    divide the 6 steps, leave a remainder, and exceed them."""
    model = make(cuda_graphs=True, graph_chunk=chunk, sign_mode=sign_mode)
    model._graphs.emulate = True
    assert_matches_reference(model, teacher, seed=4)
    assert model._graphs.replays == 2 * -(-6 // chunk)  # forward and backward chunks
    again = make(cuda_graphs=True, graph_chunk=chunk, sign_mode=sign_mode).double()
    again._graphs.emulate = True
    x, _, _ = data(5)
    plain = make(sign_mode=sign_mode).double()
    torch.testing.assert_close(again(x, detach_every=4), plain(x, detach_every=4),
                               rtol=1e-12, atol=1e-12)


def test_graph_options_errors_and_copies():
    import copy
    with pytest.raises(CorticalRNNError, match="leaky"):
        model_config(cuda_graphs=True, neuron_model="gru")
    with pytest.raises(CorticalRNNError, match="graph_chunk"):
        model_config(graph_chunk=0)
    with pytest.raises(CorticalRNNError, match="sparse_grad_below"):
        model_config(sparse_grad_below=1.5)
    with pytest.raises(CorticalRNNError, match="sparse_below"):
        make(cuda_graphs=True, connectivity="distance", sparse_below=1.0)
    model = make(cuda_graphs=True, graph_chunk=2)
    model(data(dtype=torch.float32)[0])
    assert model._graphs.replays == 0  # on CPU the plain loop runs unless emulation is asked for
    model._graphs.emulate = True
    model(data(dtype=torch.float32)[0])
    assert model._graphs.replays == 3  # forward only: 6 steps in chunks of 2
    twin = copy.deepcopy(model)
    assert twin._graphs is not model._graphs and twin._graphs.replays == 0 and twin._graphs.emulate
    torch.testing.assert_close(twin(data(dtype=torch.float32)[0]), model(data(dtype=torch.float32)[0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_capture_matches_eager_on_gpu():
    """Real capture and replay (only where a GPU is present): same rates and gradients as the plain
    loop, and graphs were captured once per chunk length, not per call."""
    x, y, mask = (t.cuda() for t in data(dtype=torch.float32, T=20))
    outs = {}
    for graphs in (False, True):
        model = make(cuda_graphs=graphs, graph_chunk=8).cuda()
        for _ in range(2):
            model.zero_grad()
            out = model(x, y, mask, 0.5, torch.Generator("cuda").manual_seed(1))
            out.sum().backward()
        outs[graphs] = (out.detach(), [p.grad.clone() for p in model.parameters()])
        if graphs:
            assert model._graphs.captured == 4  # fwd and bwd, chunk lengths 8 and 4
    torch.testing.assert_close(outs[True][0], outs[False][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(outs[True][1], outs[False][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_sparse_pattern_kernels_against_dense():
    """CSR of a weight and of its transpose on the fixed mask pattern, and SDDMM on it, equal the
    dense masked products (float64); rows and columns without entries are handled."""
    from corticalrnn.model.sparse import Pattern, pattern_buffers
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(9, 7, generator=g) < 0.3
    mask[2] = False
    mask[:, 4] = False
    p = Pattern(tuple(mask.shape), **pattern_buffers(mask))
    w = torch.randn(9, 7, generator=g, dtype=torch.float64)
    torch.testing.assert_close(p.csr(w, torch.float64).to_dense(), w * mask)
    torch.testing.assert_close(p.csr_t(w, torch.float64).to_dense(), (w * mask).t())
    a = torch.randn(9, 11, generator=g, dtype=torch.float64)
    b = torch.randn(7, 11, generator=g, dtype=torch.float64)
    naive = torch.tensor([[sum(float(a[i, k] * b[j, k]) for k in range(11)) if mask[i, j] else 0.0
                           for j in range(7)] for i in range(9)], dtype=torch.float64)
    torch.testing.assert_close(p.sddmm(a, b), naive, rtol=1e-12, atol=1e-12)
    model = make(connectivity="distance", sparse_below=1.0)
    assert not any(k.startswith("pattern_") or ".pattern_" in k for k in model.state_dict())
    assert any(model.weights[n].pattern() is not None for n in model._v1_blocks)


@pytest.mark.parametrize("teacher", [False, True])
@pytest.mark.parametrize("neuron_model,sign_mode,reparam", [
    ("leaky", "projected", "softplus"), ("leaky", "reparam", "softplus"), ("leaky", "reparam", "abs"),
    ("gru", "projected", "softplus"), ("mlp", "reparam", "softplus")])
def test_sparse_storage_matches_reference(teacher, neuron_model, sign_mode, reparam):
    """``weight_storage="sparse"``: masked recurrent blocks are parameters of their ``nnz`` values;
    outputs and gradients equal the float64 reference (which sees them as dense matrices)."""
    from corticalrnn.model.dale import SparseSignedWeight
    kw = dict(connectivity="distance", neuron_model=neuron_model, sign_mode=sign_mode, reparam=reparam,
              distance_sigma_mm={"exc": 0.15, "inh": 0.1})
    model = make(weight_storage="sparse", **kw)
    dense = make(**kw)
    sparse_blocks = [n for n in model._v1_blocks if isinstance(model.weights[n], SparseSignedWeight)]
    assert sparse_blocks and all(b.stored_sparse for b in model.layout.blocks)
    for n in sparse_blocks:  # values only, built without dense masks: another draw of the same law
        assert model.weights[n].param.dim() == 1
        assert model.weights[n].param.numel() == model.weights[n].n_synapses
    assert abs(model.n_synapses() / dense.n_synapses() - 1) < 0.25
    # E/I balance per row as in dense storage: a neuron's summed E and I input weights cancel
    exc, inh = torch.zeros(model.n_v1, dtype=torch.float64), torch.zeros(model.n_v1, dtype=torch.float64)
    for n, b in zip(model._v1_blocks, model.layout.blocks):
        w = model.weights[n].dense().detach().double()
        exc[b.row0:b.row1] += w.clamp(min=0).sum(1)
        inh[b.row0:b.row1] += w.clamp(max=0).sum(1)
    both = (exc > 0) & (inh < 0)
    assert both.sum() > model.n_v1 // 2
    torch.testing.assert_close(exc[both], -inh[both])
    assert_matches_reference(model, teacher, seed=6)


def test_sparse_storage_training_keeps_dale_and_roundtrips():
    local = {"connectivity": "distance", "distance_sigma_mm": {"exc": 0.15, "inh": 0.1}}
    model = make(weight_storage="sparse", **local)
    x, y, mask = data(dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=0.5)
    for _ in range(5):
        opt.zero_grad()
        poisson_nll(model(x, y, mask, 0.5), y, mask).backward()
        opt.step()
        model.project_()
    assert not any(model.sign_violations().values())
    vals = torch.cat([model.weights[n].param.detach() for n in model._v1_blocks])
    assert (vals == 0).sum() > 0  # the optimiser pushed some weights across zero; projection clamped them
    twin = make(weight_storage="sparse", **local)
    twin.load_state_dict(model.state_dict())
    torch.testing.assert_close(twin(x), model(x))
    other = make(weight_storage="sparse", seed=1, **local)  # another draw of synapses
    with pytest.raises(RuntimeError, match="synapse pattern differs"):
        other.load_state_dict(model.state_dict())
    bf = make(weight_storage="sparse", precision="bf16", **local)
    bf.load_state_dict(model.state_dict())
    out = bf(x, y, mask, 0.5, torch.Generator().manual_seed(1))  # bf16 matmuls, fp32 CSR values
    out.sum().backward()
    torch.testing.assert_close(out, model(x, y, mask, 0.5, torch.Generator().manual_seed(1)),
                               rtol=0.05, atol=0.05)
    with pytest.raises(CorticalRNNError, match="connectivity.storage"):
        model_config(weight_storage="sparse")


def test_distance_pairs_follow_the_distance_law():
    """Cell-list sampling without a dense matrix: per distance band, the connection frequency matches
    the dense sampler and p_max * exp(-d^2 / 2 sigma^2); pairs are unique and sorted."""
    from corticalrnn.model.graph import distance_mask, distance_pairs
    rng = np.random.default_rng(0)
    pre, post = rng.random((1500, 2)) * 1.5, rng.random((1000, 2)) * 1.5
    d = np.sqrt(((post[:, None] - pre[None]) ** 2).sum(-1))
    r, c = distance_pairs(pre, post, 0.1, 0.8, np.random.default_rng(1))
    m = distance_mask(pre, post, 0.1, 0.8, np.random.default_rng(1))
    assert np.all(np.diff(r * 1500 + c) > 0)
    hit = np.zeros_like(m)
    hit[r, c] = True
    for lo, hi in ((0.0, 0.05), (0.05, 0.1), (0.1, 0.2), (0.2, 0.3)):
        band = (d >= lo) & (d < hi)
        expected = (0.8 * np.exp(-d[band] ** 2 / 0.02)).mean()
        assert abs(hit[band].mean() - expected) < 0.02 + 0.1 * expected
        assert abs(hit[band].mean() - m[band].mean()) < 0.02 + 0.1 * expected
    assert not hit[d > 0.5].any()  # beyond 5 sigma: never sampled


def test_adaptive_unit_against_hand_written_equations():
    """AdaptiveUnit = the leaky membrane with adaptation, written out in float64 with math only; a
    sustained input step gives an onset transient that decays (the shape the real sample shows)."""
    import math

    from corticalrnn.model.neurons import AdaptiveUnit

    unit = AdaptiveUnit(20.0, 10.0, tau_w_ms=80.0, strength=1.5).double()
    # the parameters were rounded to float32 when created: take them from the unit, check the values
    tau, tau_w, g = unit.tau_ms(), float(unit.log_tau_w.exp()), float(unit.strength())
    assert (tau, tau_w, g) == pytest.approx((20.0, 80.0, 1.5), rel=1e-6)
    a, b = 1 - math.exp(-10 / tau), 1 - math.exp(-10 / tau_w)

    def sp(x):
        return math.log1p(math.exp(x))

    drive = [0.0] * 5 + [2.0] * 40
    v, w = -1.0, sp(-1.0)
    r_ref = []
    for i in drive:
        v = v + a * (i - g * w - v)
        r = sp(v)
        w = w + b * (r - w)
        r_ref.append(r)
    _, state = unit.initial(torch.tensor([-1.0], dtype=torch.float64))
    alpha = unit.alpha()
    got = []
    for i in drive:
        r, state = unit.step(torch.tensor([i], dtype=torch.float64), state, alpha)
        got.append(float(r))
    np.testing.assert_allclose(got, r_ref, rtol=1e-12)
    peak = int(np.argmax(got))
    assert 5 <= peak < 12 and got[-1] < 0.8 * got[peak]  # transient, then adapted


def _drive_kw(bins: int, sheets: object = True) -> dict:
    return {"architecture.time_drive": sheets, "architecture.time_drive_bins": bins}


def _with_time_drive(model: CorticalRNN, seed: int) -> CorticalRNN:
    """``model`` with a non-zero stimulus-locked drive (it starts at zero)."""
    with torch.no_grad():
        model.time_drive.copy_(torch.randn(model.time_drive.shape,
                                           generator=torch.Generator().manual_seed(seed)))
    return model


@pytest.mark.parametrize("neuron_model", ["leaky", "adaptive"])
@pytest.mark.parametrize("pathways", ["default", "odd"])
@pytest.mark.parametrize("teacher", [False, True])
@pytest.mark.parametrize("sheets", [True, ["V1_Inh_L23", "V1_Exc_L4"]])
def test_time_drive_matches_reference(neuron_model, pathways, teacher, sheets):
    # 4 bins of drive, 6-step windows: the last two steps hold the last value (the reference indexes
    # by sheet in the config's order; the odd graph reorders units internally)
    kw = {"pathways": ODD_PATHWAYS} if pathways == "odd" else {}
    model = _with_time_drive(make(neuron_model=neuron_model, **_drive_kw(4, sheets), **kw), 2)
    assert model.time_drive.shape == (4 if sheets is True else 2, 4)
    assert_matches_reference(model, teacher, seed=4)


def test_time_drive_is_shared_by_a_population_and_chunks_continue_it():
    model = _with_time_drive(make(**_drive_kw(5)), 3).double()
    d = model.stimulus_drive(7)
    g, td = model.graph, model.time_drive
    for s in g.v1_order:  # every unit of a population, observed or hidden, gets its population's value
        rows = d[g.offset[s]:g.offset[s] + g.sizes[s]]
        want = td[V1_SHEETS.index(s), [0, 1, 2, 3, 4, 4, 4]]
        torch.testing.assert_close(rows, want.expand_as(rows), rtol=0, atol=0)
    x, _, _ = data(5, T=6)
    whole = model(x)
    first, state = model.run(x[:, :4])
    rest, _ = model.run(x[:, 4:], state=state, t0=4)
    torch.testing.assert_close(torch.cat([first, rest], 1), whole, rtol=1e-12, atol=1e-12)
    with pytest.raises(CorticalRNNError, match="time_drive_bins"):
        make(**_drive_kw(0))  # no length and no store to take it from
    with pytest.raises(CorticalRNNError, match="time_drive_bins"):
        model_config(**{"architecture.time_drive_bins": -1})
    with pytest.raises(CorticalRNNError, match="X_ON is not a V1 sheet"):
        model_config(**_drive_kw(3, ["X_ON"]))
    part = make(**_drive_kw(3, ["V1_Exc_L2/3"]))
    assert part.config.architecture.time_drive == ("V1_Exc_L2/3",)
    with torch.no_grad():
        part.time_drive.fill_(1.0)
    d = part.stimulus_drive(4).detach()
    e23 = slice(g.offset["V1_Exc_L2/3"], g.offset["V1_Exc_L2/3"] + g.sizes["V1_Exc_L2/3"])
    assert bool((d[e23] == 1).all()) and float(d.abs().sum()) == d[e23].numel()  # other sheets: none
    cfg = ModelConfig.from_dict(json.loads(json.dumps(part.config.to_dict())))
    assert cfg == part.config  # the sheet list survives a checkpoint's JSON


def test_trainer_sets_time_drive_bins_from_the_store_window():
    from corticalrnn.train.config import TrainConfig
    from corticalrnn.train.setup import model_config as train_model_config

    cfg = TrainConfig(model={"architecture": {"time_drive": True}})
    assert train_model_config(cfg, 20.0, "fp32", n_bins=35).architecture.time_drive_bins == 35
    cfg = TrainConfig(model={"architecture": {"time_drive": True, "time_drive_bins": 12}})
    assert train_model_config(cfg, 20.0, "fp32", n_bins=35).architecture.time_drive_bins == 12
    assert train_model_config(TrainConfig(), 20.0, "fp32", n_bins=35).architecture.time_drive_bins == 0


def test_expected_weight_init_is_the_connection_probability():
    # distance rule: mask = pairs with p >= expected_p_min, magnitude proportional to p before the row's
    # E/I balance (one factor for a row's excitatory entries); p computed here from the positions
    kw = {"connectivity.weight_init": "expected", "connectivity.expected_p_min": 0.1}
    model = make(connectivity="distance", **kw).double()
    pos = positions()
    sigma = model.config.connectivity.distance_sigma_mm["exc"]
    d2 = ((pos["V1_Exc_L4"][:, None, :] - pos["V1_Exc_L4"][None, :, :]) ** 2).sum(-1)
    p = np.exp(-d2 / (2 * sigma**2))
    with torch.no_grad():
        w = model.pathway_weight("V1_Exc_L4", "V1_Exc_L4", 1).numpy()
    assert np.array_equal(w > 0, p >= 0.1)
    for i in range(len(p)):
        ratio = w[i][p[i] >= 0.1] / p[i][p[i] >= 0.1]
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-6)
    random = make(connectivity="distance").double()  # the default: one Bernoulli draw, random magnitudes
    with torch.no_grad():
        wr = random.pathway_weight("V1_Exc_L4", "V1_Exc_L4", 1).numpy()
    assert not np.array_equal(wr > 0, p >= 0.1)
    assert_matches_reference(model, teacher=True)
    with pytest.raises(CorticalRNNError, match="expected_p_min"):
        model_config(**{"connectivity.expected_p_min": 0.0})
    # sparse storage (pairs from the cell list, never a dense matrix): the same synapses and weights
    sparse = make(connectivity="distance", **kw, **{"connectivity.storage": "sparse"}).double()
    with torch.no_grad():
        for pre, post, delay in (("V1_Exc_L4", "V1_Exc_L4", 1), ("V1_Inh_L2/3", "V1_Exc_L2/3", 1),
                                 ("V1_Exc_L4", "V1_Inh_L2/3", 0)):
            torch.testing.assert_close(sparse.pathway_weight(pre, post, delay),
                                       model.pathway_weight(pre, post, delay), rtol=1e-6, atol=1e-9)


def test_start_time_drive_from_a_time_course():
    # per driven sheet: softplus^-1 of the sheet's mean course minus that of its time average (leaky units);
    # 3 bins of course for 5 bins of drive: the last value holds; sheets without data keep zero
    model = make(**_drive_kw(5, ["V1_Exc_L4", "V1_Exc_L2/3"])).double()
    rng = np.random.default_rng(0)
    course = rng.uniform(0.05, 0.5, (3, N_V1))
    e23 = slice(9, 14)  # canonical: E4 (6), I4 (3), E2/3 (5), I2/3 (2)
    course[:, e23] = np.nan
    model.start_time_drive(course)
    inv = lambda r: np.log(np.expm1(r))  # noqa: E731
    c = course[:, :6].mean(1)[[0, 1, 2, 2, 2]]
    np.testing.assert_allclose(model.time_drive[0].detach().numpy(), inv(c) - inv(c.mean()), rtol=1e-10)
    assert float(model.time_drive[1].detach().abs().sum()) == 0.0
    with pytest.raises(DataMismatchError, match="time course"):
        model.start_time_drive(course[:, :5])
    with pytest.raises(CorticalRNNError, match="time_drive"):
        make().start_time_drive(course)
