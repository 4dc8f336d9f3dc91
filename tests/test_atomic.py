from pathlib import Path

import pytest

from corticalrnn.atomic import atomic_path, temporary_name, write_text_atomic


def test_write_text_atomic_replaces_and_leaves_no_tmp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.json"
    write_text_atomic(target, "one")
    write_text_atomic(target, "two")
    assert target.read_text() == "two"
    assert not temporary_name(target).exists()


def test_failure_keeps_old_content_and_removes_tmp(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert not temporary_name(target).exists()


def test_folder_target(tmp_path: Path) -> None:
    target = tmp_path / "store.zarr"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "x").write_text("1")
    assert (target / "x").read_text() == "1"
