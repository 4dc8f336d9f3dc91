"""examples/experiment_api.ipynb runs top to bottom (tiny demo data; nbclient, one kernel)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "examples" / "experiment_api.ipynb"


def test_experiment_notebook_runs(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CORTICALRNN_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("CORTICALRNN_DEMO", str(tmp_path / "demo"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    t0 = time.perf_counter()
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
                            ).execute()
    elapsed = time.perf_counter() - t0
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "best validation loss" in text and "hidden" in text
    assert any("image/png" in o.get("data", {}) for o in outputs), "the figure cell shows a figure"
    assert (tmp_path / "demo" / "notebook-experiment" / "runs").is_dir()
    print(f"notebook ran in {elapsed:.0f} s")
