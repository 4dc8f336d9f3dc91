"""Neuron identity: Mozaik annotations and Connections through synth -> extract -> trim -> store -> subset."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from synthdata import make_datastore

from corticalrnn.sheets import MOZAIK_ANNOTATIONS, SHEET_INFO, V1_SHEETS
from corticalrnn.store import SHEET_PROPERTIES, open_store
from corticalrnn.subsets import SubsetConfig, make_subset, subset_identity
from corticalrnn.synth import CortexConfig, build_network, network_projections
from corticalrnn.synth.mozaik_writer import ProjectionSpec, connections_structure
from corticalrnn.trim import TrimConfig, trim
from extract.connections import ANALYSIS, LazyArray, load_streaming, read_connections
from extract.datastore import ExtractOptions, extract_folder
from extract.mozaik_types import Connections, dump_with_mozaik_names
from extract.spikefile import open_spikefile

SEED = 5
CONFIG = {"structure": "lsv1m"}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("identity")
    folder = make_datastore(tmp, images=(50000, 50001), trials=1, seed=SEED, **CONFIG)
    h5 = extract_folder(folder, tmp / "spikes.h5", ExtractOptions()).output
    store = trim([h5], tmp / "store.zarr", TrimConfig(bin_ms=10, progress=False))
    net = build_network(CortexConfig(scale=0.1, **CONFIG), SEED)
    return folder, Path(h5), store, net


def _signed_matrix(projections, net, sources, offsets_pre, offsets_post, shape):
    rows, cols, vals = [], [], []
    for p in projections:
        if p.source not in sources:
            continue
        sign = SHEET_INFO[p.source].sign if p.source in V1_SHEETS else 1
        rows.append(np.asarray(p.post) + offsets_post[p.target])
        cols.append(np.asarray(p.pre) + offsets_pre[p.source])
        vals.append(sign * np.asarray(p.weight, np.float64))
    m = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=shape)
    return m.tocsr()


def _offsets(slices):
    return {s: sl.start for s, sl in slices.items()}


def test_datastore_holds_mozaik_keys_and_connections(pipeline):
    folder, _, _, net = pipeline
    projections = read_connections(folder)
    assert {p.name for p in projections} >= {"V1L4ExcL4ExcConnection", "V1AffConnectionOn"}
    ads = projections[0].ads
    assert isinstance(ads, Connections)
    assert ads.identifier == "Connections" and ads.param("analysis_algorithm") == "connection storage"
    assert "_proj_name_param_value" in ads.__dict__  # param 1.x keeps values under _<name>_param_value
    # the recordings pickle carries one annotation dict per neuron under Mozaik's keys
    from extract.datastore import Datastore

    ds = Datastore(folder)
    for sheet, keys in net.annotations.items():
        per_neuron = ds.block_annotations[sheet]
        assert len(per_neuron) == net.sizes[sheet]
        assert set(per_neuron[0]) == set(keys)
        assert set(keys) <= set(MOZAIK_ANNOTATIONS)


def test_spikefile_v2_properties_and_connections_exact(pipeline):
    _, h5, _, net = pipeline
    with open_spikefile(h5) as sf:
        assert sf.schema_version == 2
        for sheet in sf.sheets:
            np.testing.assert_array_equal(sf.neuron_ids(sheet), net.neuron_ids[sheet])
            props, keys = sf.properties(sheet), sf.property_keys(sheet)
            expected = net.annotations.get(sheet, {})
            assert set(keys.values()) == set(expected)
            for key, values in expected.items():
                np.testing.assert_array_equal(props[MOZAIK_ANNOTATIONS[key]], values)
        conns = sf.connections
        assert all(c.n_dropped == 0 for c in conns)
        projections = []
        for c in conns:
            d = sf.read_connections(c.name)
            np.testing.assert_array_equal(d["delay"], np.float32(1.0))
            projections.append(type("P", (), {**d, "source": c.source, "target": c.target}))
    W = _signed_matrix(
        projections, net, V1_SHEETS, _offsets(net.v1_slices), _offsets(net.v1_slices), net.W.shape
    )
    np.testing.assert_array_equal(W.toarray(), net.W.toarray().astype(np.float32))
    U = _signed_matrix(
        projections, net, ("X_ON", "X_OFF"), _offsets(net.lgn_slices), _offsets(net.v1_slices), net.U.shape
    )
    np.testing.assert_array_equal(U.toarray(), net.U.toarray().astype(np.float32))


def test_store_properties_and_projections_exact(pipeline):
    _, h5, store_path, net = pipeline
    store = open_store(store_path)
    for sheet in store.sheets:
        expected = net.annotations.get(sheet, {})
        for key, values in expected.items():
            name = MOZAIK_ANNOTATIONS[key]
            if name in SHEET_PROPERTIES:
                np.testing.assert_array_equal(store.neuron_property(sheet, name), values)
    projections = store.projections()
    with open_spikefile(h5) as sf:
        assert [p.name for p in projections] == [c.name for c in sf.connections]
        for p in projections:
            d = sf.read_connections(p.name)
            for col in ("pre", "post", "weight", "delay"):
                np.testing.assert_array_equal(getattr(p, col), d[col])
            assert p.pre.dtype == np.int64 and p.weight.dtype == np.float32
    W = _signed_matrix(
        projections, net, V1_SHEETS, _offsets(net.v1_slices), _offsets(net.v1_slices), net.W.shape
    )
    np.testing.assert_array_equal(W.toarray(), net.W.toarray().astype(np.float32))
    assert sum(p.n_synapses for p in projections) == net.W.nnz + net.U.nnz


def test_subset_identity_restricts_and_reindexes(pipeline):
    _, _, store_path, net = pipeline
    store = open_store(store_path)
    subset = make_subset(store, SubsetConfig(fraction=0.5, observed=0.5, input_fraction=0.5, seed=1))
    ident = subset_identity(subset, store)
    rows = subset.indices(store)
    for sheet, idx in rows.items():
        for key, values in net.annotations.get(sheet, {}).items():
            name = MOZAIK_ANNOTATIONS[key]
            if name in SHEET_PROPERTIES:
                np.testing.assert_array_equal(ident.properties[sheet][name], values[idx])
    full = {p.name: p for p in store.projections()}
    assert {p.name for p in ident.projections} == set(full)
    for p in ident.projections:
        src, tgt = rows[p.source], rows[p.target]
        f = full[p.name]
        keep = np.isin(f.pre, src) & np.isin(f.post, tgt)
        assert p.n_synapses == int(keep.sum())
        np.testing.assert_array_equal(src[p.pre], f.pre[keep])
        np.testing.assert_array_equal(tgt[p.post], f.post[keep])
        np.testing.assert_array_equal(p.weight, f.weight[keep])


def test_version_1_spikefile_still_reads(pipeline, tmp_path):
    _, h5, _, _ = pipeline
    v1 = tmp_path / "v1.h5"
    v1.write_bytes(h5.read_bytes())
    with h5py.File(v1, "r+") as f:
        f.attrs["schema_version"] = 1
        del f["connections"]
        for g in f["sheets"].values():
            if "properties" in g:
                del g["properties"]
    with open_spikefile(v1) as sf:
        assert sf.schema_version == 1
        assert sf.connections == []
        assert all(sf.properties(s) == {} for s in sf.sheets)
        assert sf.n_presentations == 2
    store = open_store(trim([v1], tmp_path / "v1.zarr", TrimConfig(bin_ms=10, progress=False)))
    assert store.projections() == [] and not store.has_connections


def test_no_connections_option(tmp_path):
    folder = make_datastore(tmp_path, images=(50000,), seed=1)
    assert read_connections(folder) != []
    res = extract_folder(folder, tmp_path / "x.h5", ExtractOptions(connections=False))
    with open_spikefile(res.output) as sf:
        assert sf.connections == []


def _big_analysis_pickle(folder: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    spec = ProjectionSpec(
        "V1L4ExcL4ExcConnection",
        "V1_Exc_L4",
        "V1_Exc_L4",
        rng.integers(0, 40, n),
        rng.integers(0, 40, n),
        rng.random(n),
        np.full(n, 1.5),
    )
    ads = connections_structure(spec, {"V1_Exc_L4": (40, 1)}, str(folder))
    with open(folder / ANALYSIS, "wb") as f:
        dump_with_mozaik_names([ads], f, protocol=4)


def test_streaming_reader_bounded_memory(tmp_path):
    n = 2_000_000  # 48 MB of weights + 48 MB of delays in the pickle
    folder = tmp_path / "ds"
    folder.mkdir()
    _big_analysis_pickle(folder, n)
    tracemalloc.start()
    try:
        (proj,) = read_connections(folder)
        assert isinstance(proj.ads.weights, LazyArray) and proj.ads.weights.array is None
        total, checksum = 0, 0.0
        for c in proj.chunks(chunk=1 << 16):
            total += len(c)
            checksum += float(c.weight.sum(dtype=np.float64))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == n
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    # same values as when every payload is read at once
    full = load_streaming(folder / ANALYSIS, lazy_bytes=1 << 62)[0]
    np.testing.assert_allclose(
        checksum, full.weights.materialize()[:, 2].astype(np.float32).sum(dtype=np.float64)
    )


def test_network_projections_cover_the_network():
    net = build_network(CortexConfig(scale=0.1, **CONFIG), SEED)
    projs = network_projections(net)
    assert sum(p.pre.size for p in projs) == net.W.nnz + net.U.nnz
    assert all(np.all(p.weight > 0) for p in projs)


def test_import_npz_connections_by_id(pipeline):
    from corticalrnn.import_npz import connections_by_id

    _, h5, _, _ = pipeline
    with open_spikefile(h5) as sf:
        ids = {s: sf.neuron_ids(s) for s in sf.sheets}
        ref = {c.name: (c, sf.read_connections(c.name)) for c in sf.connections}
    # another neuron order (reversed) without the first neuron of V1_Exc_L4 and without X_OFF
    target = {s: v[::-1] for s, v in ids.items() if s != "X_OFF"}
    target["V1_Exc_L4"] = target["V1_Exc_L4"][:-1]
    got = {}
    for name, source, tgt, chunks, n_dropped in connections_by_id(h5, target, chunk=97):
        parts = list(chunks)
        got[name] = (source, tgt, {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, n_dropped())
    assert set(got) == {n for n, (c, _) in ref.items() if "X_OFF" not in (c.source, c.target)}
    for name, (source, tgt, d, dropped) in got.items():
        c, r = ref[name]
        pos_s = {int(n): i for i, n in enumerate(target[source])}
        pos_t = {int(n): i for i, n in enumerate(target[tgt])}
        pre = np.array([pos_s.get(int(ids[source][i]), -1) for i in r["pre"]])
        post = np.array([pos_t.get(int(ids[tgt][i]), -1) for i in r["post"]])
        keep = (pre >= 0) & (post >= 0)
        np.testing.assert_array_equal(d["pre"], pre[keep])
        np.testing.assert_array_equal(d["post"], post[keep])
        np.testing.assert_array_equal(d["weight"], r["weight"][keep])
        assert dropped == int((~keep).sum())
