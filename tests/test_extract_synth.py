"""extract on datastores of the synthetic-cortex generator: every spike the writer put in, exactly."""

from __future__ import annotations

import numpy as np
import pytest
from synthdata import make_datastore, read_datastore_plain

from corticalrnn.synth import read_truth
from corticalrnn.synth.truth import truth_path
from extract.datastore import ExtractOptions, extract_folder
from extract.spikefile import PARTS, open_spikefile


def _expected(folder):
    """Independent pairing of the plain (neo) reading: by rec_datetime, blanks by stimulus string."""
    plain = read_datastore_plain(folder)
    segs = plain.by_time()
    stimuli: list[str] = []
    for s in segs:
        if s.stimulus not in stimuli:
            stimuli.append(s.stimulus)
    out = []
    for i, stim in enumerate(stimuli):
        params = next(s.params for s in segs if s.stimulus == stim)
        if params["name"] != "NaturalImage":
            continue
        parts = {}
        for s in segs:
            if s.stimulus == stim:
                parts[("blank_before" if s.null else "stimulus", s.sheet)] = s
            elif i + 1 < len(stimuli) and s.stimulus == stimuli[i + 1] and s.null:
                parts[("blank_after", s.sheet)] = s
        image = int(params["image_path"].split("/")[-1].split("_")[0])
        out.append((image, params["trial"], parts))
    return plain, out


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    folder = make_datastore(tmp_path_factory.mktemp("synth"), images=(50002, 50000), trials=2, seed=3)
    return folder, _expected(folder)[1], read_truth(truth_path(folder))


@pytest.mark.parametrize("use_neo", [False, True])
def test_synthetic_datastore_exact(synthetic, tmp_path, use_neo):
    folder, expected, truth = synthetic
    res = extract_folder(folder, tmp_path / "out.h5", ExtractOptions(use_neo=use_neo))
    total = 0
    with open_spikefile(res.output) as f:
        assert f.n_presentations == len(expected) == 4
        np.testing.assert_array_equal(f.presentations["image_id"], truth.image_id)
        np.testing.assert_array_equal(f.presentations["trial"], truth.trial)
        for sheet in f.sheets:
            np.testing.assert_array_equal(f.neuron_ids(sheet), truth.neuron_ids[sheet])
        for p, (image, trial, parts) in enumerate(expected):
            row = f.presentation(p)
            assert (row.image_id, row.trial) == (image, trial)
            for sheet in f.sheets:
                ids = f.neuron_ids(sheet)
                for part in PARTS:
                    seg = parts[(part, sheet)]
                    assert row.duration_ms(part) == seg.t_stop - seg.t_start
                    csr = f.read_part(sheet, part, p, p + 1)
                    for n, nid in enumerate(ids):
                        want = (seg.spikes[int(nid)] - seg.t_start).astype(np.float32)
                        np.testing.assert_array_equal(csr.row(0, n), want)
                        total += want.size
    assert total == res.n_spikes > 0
