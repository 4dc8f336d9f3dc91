"""LGN positions inferred from activity (``corticalrnn.lgn_layout``): on a small retina-like simulation
written here (smooth random images, ON/OFF cells on a grid, V1 units pooling a disc of LGN cells) the
layout must come back in the V1 units' cortical frame, handedness included."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from corticalrnn.errors import DataMismatchError
from corticalrnn.lgn_layout import LayoutConfig, infer_lgn_positions

SIDE = 14  # LGN grid side
MM_PER_STEP = 0.05


def _to_cortex(grid_xy: np.ndarray) -> np.ndarray:
    """The simulation's retinotopic map, with a mirror (y flipped) and an offset a layout must find."""
    c = (grid_xy - (SIDE - 1) / 2) * MM_PER_STEP
    return np.c_[c[:, 0] + 0.3, -c[:, 1] - 0.1]


def _grid() -> np.ndarray:
    gy, gx = np.mgrid[0:SIDE, 0:SIDE]
    return np.c_[gx.ravel(), gy.ravel()].astype(float)


def _simulate(seed: int = 0, windows: int = 40, bins: int = 20, anchors: int = 30, rectified: bool = True):
    """``rectified``: ON / OFF rates relu(+-image), so an ON and an OFF cell at one place barely correlate
    (as on the thesis sample: each sign is laid out on its own); otherwise 2 +- image, strongly
    anti-correlated (as on the generator: laid out together)."""
    rng = np.random.default_rng(seed)
    grid = _grid()
    img = gaussian_filter(rng.standard_normal((windows * bins, SIDE, SIDE)), (0, 1.5, 1.5))
    img = img.reshape(windows * bins, -1) / img.std()
    if rectified:
        on, off = rng.poisson(np.maximum(img, 0) * 2), rng.poisson(np.maximum(-img, 0) * 2)
    else:
        on, off = rng.poisson(np.maximum(2 + img, 0)), rng.poisson(np.maximum(2 - img, 0))
    lgn = np.concatenate([on, off], 1).reshape(windows, bins, -1).astype(np.float32)
    centres = rng.uniform(2, SIDE - 3, (anchors, 2))
    near = np.linalg.norm(grid[None] - centres[:, None], axis=-1) < 1.6  # [anchors, grid]
    drive = img @ (near.T * 1.0) / near.sum(1)
    v1 = rng.poisson(np.maximum(drive, 0) * 3).reshape(windows, bins, -1).astype(np.float32)
    polarity = np.r_[np.ones(SIDE * SIDE), -np.ones(SIDE * SIDE)]
    truth = _to_cortex(np.r_[grid, grid])
    return lgn, polarity, v1, _to_cortex(centres), truth


@pytest.mark.parametrize("rectified,parts", [(True, 2), (False, 1)])
def test_layout_comes_back_in_the_units_frame(rectified, parts):
    lgn, pol, v1, v1_xy, truth = _simulate(rectified=rectified)
    lay = infer_lgn_positions(lgn, pol, v1, v1_xy)
    assert lay.xy.shape == truth.shape and lay.n_placed == len(truth) and lay.n_anchors == v1.shape[2]
    assert len(lay.anchor_r2) == parts  # ON and OFF laid out apart / together
    assert np.all(lay.anchor_r2 > 0.8), lay.anchor_r2
    # no refit: the inferred positions themselves are near the truth (a mirrored or rotated layout
    # would put most cells several grid steps off): measured 0.3 steps at the median where the anchors
    # are, 0.5 over all (the edges are placed less well)
    err = np.linalg.norm(lay.xy - truth, axis=1) / MM_PER_STEP
    g = np.r_[_grid(), _grid()]
    inner = np.all((g >= 2) & (g <= SIDE - 3), axis=1)
    assert np.median(err[inner]) < 0.6, np.median(err[inner])
    assert np.median(err) < 0.9, np.median(err)
    for k in range(2):
        assert np.corrcoef(lay.xy[:, k], truth[:, k])[0, 1] > 0.97
    # the anchors' fitted positions are what the R^2 describes
    for a, f, r2 in zip(lay.anchor_xy, lay.anchor_fit, lay.anchor_r2, strict=True):
        np.testing.assert_allclose(1 - ((f - a) ** 2).sum(0) / ((a - a.mean(0)) ** 2).sum(0), r2)
    again = infer_lgn_positions(lgn, pol, v1, v1_xy)
    np.testing.assert_array_equal(lay.xy, again.xy)  # deterministic


def test_silent_cells_sit_at_the_mean_and_errors_name_the_problem():
    lgn, pol, v1, v1_xy, _ = _simulate(windows=20)
    lgn[..., :3] = 0  # three cells that never fire
    lay = infer_lgn_positions(lgn, pol, v1, v1_xy, LayoutConfig(neighbours=8), where="run.zarr")
    assert lay.n_placed == len(pol) - 3
    np.testing.assert_allclose(lay.xy[:3], np.broadcast_to(lay.xy[3:].mean(0), (3, 2)))
    with pytest.raises(DataMismatchError, match=r"run.zarr.*same windows"):
        infer_lgn_positions(lgn[:5], pol, v1, v1_xy, where="run.zarr")
    with pytest.raises(DataMismatchError, match="polarities"):
        infer_lgn_positions(lgn, pol[:-1], v1, v1_xy)
    with pytest.raises(DataMismatchError, match="at least 6"):
        infer_lgn_positions(lgn, pol, v1[..., :4], v1_xy[:4])
    with pytest.raises(DataMismatchError, match="vary"):
        infer_lgn_positions(np.zeros_like(lgn), pol, v1, v1_xy)


def test_few_observed_units_still_fix_the_frame():
    """With 8 anchors the linear map uses fewer eigenvectors (two anchors per coefficient) and the
    layout still comes back in the units' frame."""
    lgn, pol, v1, v1_xy, truth = _simulate(anchors=8, seed=1)
    lay = infer_lgn_positions(lgn, pol, v1, v1_xy)
    assert lay.n_anchors == 8
    for k in range(2):
        assert np.corrcoef(lay.xy[:, k], truth[:, k])[0, 1] > 0.8


def test_layout_from_windows_reads_the_trainer_batches_and_names_a_missing_anchor_set():
    """The same layout from the trainer's batches as from the arrays; with no observed unit in the sheets
    LGN feeds, a clear error naming the data."""
    import torch

    from corticalrnn.lgn_layout import layout_from_windows
    from corticalrnn.subsets import SubsetConfig, make_subset

    lgn, pol, v1, v1_xy, _ = _simulate(anchors=20)
    n = SIDE * SIDE
    ids = {"X_ON": np.arange(n), "X_OFF": np.arange(n) + n, "V1_Exc_L4": np.arange(20) + 2 * n}

    class Batches:  # the trainer's batch interface (corticalrnn.data.batches)
        def __len__(self) -> int:
            return lgn.shape[0]

        def batch(self, idx):
            idx = np.asarray(idx)
            return {"lgn": torch.as_tensor(lgn[idx]), "v1": torch.as_tensor(v1[idx])}

    explicit = SubsetConfig(method="explicit", input_method="explicit", observed_method="explicit")
    subset = make_subset(ids, explicit, modelled_ids=ids, observed_ids={"V1_Exc_L4": ids["V1_Exc_L4"]})
    positions = {"V1_Exc_L4": v1_xy}
    lay, xy = layout_from_windows(Batches(), subset, positions, ["V1_Exc_L4"], chunk=7)
    np.testing.assert_allclose(lay.xy, infer_lgn_positions(lgn, pol, v1, v1_xy).xy, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(np.r_[xy["X_ON"], xy["X_OFF"]], lay.xy)
    blind = make_subset(ids, explicit, modelled_ids=ids, observed_ids={"V1_Exc_L4": []})
    with pytest.raises(DataMismatchError, match=r"run.zarr.*needs observed units .*V1_Exc_L4"):
        layout_from_windows(Batches(), blind, positions, ["V1_Exc_L4"], where="run.zarr")
