"""Resilience (issue 15): random kill -9 of trim / trim --append / import-npz / extract, rerun,
compare by content with a clean run; two concurrent appenders. A few trials here; the full count
is `corticalrnn bench resilience --kills 25`."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from corticalrnn.bench import resilience


@pytest.mark.slow
def test_random_kills_then_rerun_equal_a_clean_run(tmp_path: Path, capsys) -> None:
    args = argparse.Namespace(
        kills=1, seed=3, commands=["extract", "trim", "trim-append", "import-npz"], concurrent=1,
        workdir=tmp_path,
    )
    rows = resilience.run_bench(args)["rows"]
    assert [r["command"] for r in rows][-1] == "2x trim --append" and len(rows) == 5
    for r in rows:
        assert r["differ"] == 0 and r["rerun_failed"] == 0, (r, capsys.readouterr().err)
        assert r["trials"] >= 1
