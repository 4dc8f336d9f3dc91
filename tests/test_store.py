"""The Zarr window store: round trip, commit points, schema checks, corruption."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from corticalrnn import store as store_mod
from corticalrnn.binning import BinnedCSR
from corticalrnn.errors import CorticalRNNError, DataMismatchError, SchemaError
from corticalrnn.store import (
    SheetMeta,
    StoreMeta,
    StoreWriter,
    WindowBlock,
    check_compatible,
    open_store,
    pack_events,
    unpack_events,
)

T = 12


def dense_to_csr(dense: np.ndarray) -> BinnedCSR:
    """[W, N, T] counts -> BinnedCSR with rows w*N + n."""
    return BinnedCSR.from_dense(dense.reshape(-1, dense.shape[-1]))


def make_meta(rng: np.random.Generator, bin_ms: int = 5) -> StoreMeta:
    return StoreMeta(
        bin_ms,
        T,
        {"origin": "test", "t0_ms": 0.0},
        [
            SheetMeta("X_ON", np.arange(9) + 10),
            SheetMeta(
                "V1_Exc_L4",
                np.arange(20) * 3,
                positions=rng.random((20, 2)),
                properties={"ori": rng.random(20)},
            ),
            SheetMeta("V1_Inh_L2/3", np.arange(4) + 500),
        ],
    )


def write(path: Path, rng: np.random.Generator, n_blocks: int = 3, per_block: int = 5, lam: float = 0.4):
    meta = make_meta(rng)
    w = StoreWriter.create(path, meta)
    dense = {s.name: [] for s in meta.sheets}
    for k in range(n_blocks):
        events = {}
        for s in meta.sheets:
            d = rng.poisson(lam, (per_block, s.n_neurons, T))
            dense[s.name].append(d)
            events[s.name] = dense_to_csr(d)
        src = w.add_source(path=f"in{k}", sha256=f"h{k}", kind="test")
        ids = np.arange(per_block) + 100 * k
        w.append(WindowBlock(ids, ids % 3, events, split="train" if k else "test"), src)
        w.commit()
    return meta, {s: np.concatenate(v).transpose(0, 2, 1) for s, v in dense.items()}  # [W, T, N]


def test_round_trip(tmp_path: Path, monkeypatch) -> None:
    # tiny chunks and shards so that writes cross shard boundaries and flush partially
    monkeypatch.setattr(store_mod, "EVENT_CHUNK", 16)
    monkeypatch.setattr(store_mod, "EVENT_SHARD", 64)
    rng = np.random.default_rng(0)
    meta, dense = write(tmp_path / "s.zarr", rng)
    st = open_store(tmp_path / "s.zarr")
    assert st.sheets == ["X_ON", "V1_Exc_L4", "V1_Inh_L2/3"] and len(st) == 15
    assert st.n_events > 200
    for sheet, d in dense.items():
        assert np.array_equal(st.read(sheet, np.arange(15)), d)
        w, n = np.array([7, 0, 14, 3, 3 + 1]), np.array([2, 0, 3])
        assert np.array_equal(st.read(sheet, w, n), d[w][:, :, n])
    assert np.array_equal(st.neuron_ids("V1_Exc_L4"), meta.sheets[1].neuron_ids)
    assert np.array_equal(st.positions("V1_Exc_L4"), meta.sheets[1].positions)
    assert st.positions("X_ON") is None
    assert np.array_equal(st.neuron_property("V1_Exc_L4", "ori"), meta.sheets[1].properties["ori"])
    assert np.array_equal(st.neuron_ids("V1_Inh_L23"), np.arange(4) + 500)  # thesis spelling accepted
    t = st.windows
    assert t.split.tolist() == ["test"] * 5 + ["train"] * 10
    assert t.source_path.tolist() == ["in0"] * 5 + ["in1"] * 5 + ["in2"] * 5
    assert st.images().tolist() == sorted(t.image_id.tolist())


def test_pack_unpack_and_limits() -> None:
    csr = BinnedCSR(
        np.array([0, 2, 2, 3]), np.array([1, 7, 65534], np.int32), np.array([1, 65535, 3], np.int32), 65535
    )
    ev = pack_events(csr, 3, 1, "x")
    n, b, c = unpack_events(ev.data)
    assert n.tolist() == [0, 0, 2] and b.tolist() == [1, 7, 65534] and c.tolist() == [1, 65535, 3]
    too_many = BinnedCSR(np.array([0, 1]), np.array([0], np.int32), np.array([70000], np.int32), 4)
    with pytest.raises(DataMismatchError, match="limit 65535"):
        pack_events(too_many, 1, 1, "x")
    with pytest.raises(CorticalRNNError, match="1..65535 bins"):
        StoreMeta(1, 70000, {}, [])


def test_uncommitted_append_is_invisible(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    _, dense = write(tmp_path / "s.zarr", rng, n_blocks=1)
    w = StoreWriter.open(tmp_path / "s.zarr")
    src = w.add_source(path="late", sha256="x", kind="test")
    events = {s: dense_to_csr(rng.poisson(0.5, (4, dense[s].shape[2], T))) for s in dense}
    w.append(WindowBlock(np.arange(4), np.zeros(4), events), src)
    w._flush(final=True)  # events written, commit point not moved: like a kill before commit
    st = open_store(tmp_path / "s.zarr")
    assert len(st) == 5 and len(st.sources) == 1
    assert np.array_equal(st.read("X_ON", np.arange(5)), dense["X_ON"])
    w2 = StoreWriter.open(tmp_path / "s.zarr")  # a rerun overwrites the uncommitted tail
    w2.append(
        WindowBlock(np.arange(4), np.zeros(4), events), w2.add_source(path="late", sha256="x", kind="t")
    )
    w2.commit()
    st = open_store(tmp_path / "s.zarr")
    assert len(st) == 9 and st.n_events == int(st._ptr[-1])


def test_bad_blocks_leave_writer_unchanged(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    w = StoreWriter.create(tmp_path / "s.zarr", make_meta(rng))
    src = w.add_source(path="x", sha256="x", kind="t")
    wrong = {s: dense_to_csr(np.zeros((2, 3, T), int)) for s in ("X_ON", "V1_Exc_L4", "V1_Inh_L2/3")}
    with pytest.raises(DataMismatchError, match="rows of counts"):
        w.append(WindowBlock(np.arange(2), np.zeros(2), wrong), src)
    with pytest.raises(DataMismatchError, match="lacks sheets"):
        w.append(WindowBlock(np.arange(2), np.zeros(2), {"X_ON": wrong["X_ON"]}), src)
    w.commit()
    assert len(open_store(tmp_path / "s.zarr")) == 0
    with pytest.raises(CorticalRNNError, match="already exists"):
        StoreWriter.create(tmp_path / "s.zarr", make_meta(rng))
    with pytest.raises(CorticalRNNError, match="canonical order"):
        StoreWriter.create(
            tmp_path / "t.zarr", StoreMeta(5, T, {}, [SheetMeta("V1_Exc_L4", [1]), SheetMeta("X_ON", [1])])
        )


def _set_root_attr(path: Path, key: str, value) -> None:
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"][key] = value
    (path / "zarr.json").write_text(json.dumps(meta))


def test_schema_checks(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    path = tmp_path / "s.zarr"
    write(path, rng, n_blocks=1)
    _set_root_attr(path, "schema_version", 2)
    with pytest.raises(SchemaError, match=r"s\.zarr: schema version 2 is not supported"):
        open_store(path)
    _set_root_attr(path, "schema_version", 1)
    _set_root_attr(path, "schema", "something.else")
    with pytest.raises(SchemaError, match="schema is 'something.else'"):
        open_store(path)
    with pytest.raises(CorticalRNNError, match="no such store"):
        open_store(tmp_path / "missing.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(SchemaError):
        open_store(tmp_path / "plain")


def test_missing_sheet(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    path = tmp_path / "s.zarr"
    write(path, rng, n_blocks=1)
    st = open_store(path)
    with pytest.raises(SchemaError, match="no sheet 'V1_Inh_L4'"):
        st.read("V1_Inh_L4", [0])
    import shutil

    shutil.rmtree(path / "sheets" / "V1_Exc_L4")
    with pytest.raises(SchemaError, match=r"s\.zarr: missing array sheets/V1_Exc_L4/neuron_ids"):
        open_store(path)


def test_corrupt_chunk(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    path = tmp_path / "s.zarr"
    write(path, rng, n_blocks=1)
    shard = next((path / "events" / "data").rglob("c/*"))
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 3] ^= 0xFF
    shard.write_bytes(bytes(raw))
    st = open_store(path)
    with pytest.raises(SchemaError, match=r"s\.zarr: cannot read array events/data.*corrupt"):
        st.read("X_ON", [0, 1])


def test_check_compatible(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    write(tmp_path / "a.zarr", rng, n_blocks=1)
    a = open_store(tmp_path / "a.zarr")
    check_compatible(a, a, "same")
    with pytest.raises(DataMismatchError, match="bin sizes differ.*cannot be mixed"):
        check_compatible(a, make_meta(rng, bin_ms=10), "mixing")
    meta = make_meta(rng)
    other = StoreMeta(
        5, T, meta.window, [meta.sheets[0], SheetMeta("V1_Exc_L4", np.arange(20)), meta.sheets[2]]
    )
    with pytest.raises(DataMismatchError, match="neuron ids of sheet V1_Exc_L4 differ"):
        check_compatible(a, other, "ids")


# ---------------------------------------------------------------------------------------------
# verified reads (issue 15): damage is an error naming the store and array, never zeros


@pytest.mark.parametrize(
    ("victim", "match"),
    [
        ("events/data/c/0", "array events/data is missing its chunk 0"),
        ("windows/image_id/c/0", "array windows/image_id is missing its chunk 0"),
        ("windows/trial/c/0", "array windows/trial is missing"),  # an all-zero chunk is written too
        ("events/ptr/c/0", "array events/ptr is missing"),
        ("sheets/V1_Exc_L4/positions/c/0/0", "positions is missing"),
    ],
)
def test_missing_chunk_or_shard_is_an_error(tmp_path: Path, victim: str, match: str) -> None:
    path = tmp_path / "s.zarr"
    write(path, np.random.default_rng(1))
    (path / victim).unlink()
    with pytest.raises(SchemaError, match=f"{path}.*{match}"):
        open_store(path)


def test_zero_counts_and_bad_indices_are_errors(tmp_path: Path) -> None:
    import zarr

    path = tmp_path / "s.zarr"
    write(path, np.random.default_rng(2))
    root = zarr.open_group(str(path), mode="r+")
    data = root["events/data"]
    first = int(data[0])
    data[0] = np.uint64(first & ~0xFFFF)  # count 0
    st = open_store(path)
    with pytest.raises(SchemaError, match=f"{path}.*events/data holds invalid events"):
        st.read("X_ON", [0])
    data[0] = np.uint64(first)
    root["windows/source"][0] = 99
    with pytest.raises(SchemaError, match="windows/source holds indices outside"):
        _ = open_store(path).windows
    root["windows/source"][0] = 0
    root["windows/split"][1] = -3
    with pytest.raises(SchemaError, match="windows/split holds indices outside"):
        _ = open_store(path).windows
