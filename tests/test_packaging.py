"""The install is honest: Python and torch ranges, license, extras, the torch-free extraction install,
and the Makefile's choice of torch build (tools/install-torch.sh)."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def torch_range() -> SpecifierSet:
    reqs = [Requirement(r) for r in PROJECT["optional-dependencies"]["train"]]
    (torch,) = [r for r in reqs if r.name == "torch"]
    return torch.specifier


def test_one_torch_range_for_makefile_pyproject_and_image() -> None:
    spec = torch_range()
    assert spec, "the train extra should bound torch"
    assert any(s.operator == "<" for s in spec), "an upper bound: newer torch is untested"
    make = re.search(r"^TORCH_VERSION \?= (\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert make and Version(make.group(1)) in spec, f"Makefile torch {make and make.group(1)} not in {spec}"
    docker = (REPO / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE=pytorch/pytorch:(\d+\.\d+\.\d+)-", docker, re.M)
    cpu = re.search(r"^ARG TORCH_VERSION=(\S+)$", docker, re.M)
    assert base and Version(base.group(1)) in spec, f"image torch {base and base.group(1)} not in {spec}"
    assert cpu and Version(cpu.group(1)) in spec
    # the torch CI runs is inside the range too
    import torch

    assert Version(torch.__version__.split("+")[0]) in spec


def test_requires_python_is_what_the_dependencies_need() -> None:
    floor = Version(re.fullmatch(r">=(\d+\.\d+)", PROJECT["requires-python"]).group(1))
    assert floor >= Version("3.11"), "zarr>=3 needs Python 3.11"
    for line in PROJECT["dependencies"] + PROJECT["optional-dependencies"]["train"]:
        req = Requirement(line)
        try:
            needs = importlib.metadata.metadata(req.name).get("Requires-Python")
        except importlib.metadata.PackageNotFoundError:
            continue
        if needs:  # the installed release must accept the lowest Python this package claims
            assert SpecifierSet(needs).contains(f"{floor}.0"), f"{req.name} needs Python {needs}"
    assert sys.version_info >= (floor.major, floor.minor)


def test_spdx_license_and_license_file() -> None:
    assert PROJECT["license"] == "MIT"  # an SPDX expression, not the deprecated table
    assert PROJECT["license-files"] == ["LICENSE"]
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
    assert any(r.startswith("setuptools>=77") for r in PYPROJECT["build-system"]["requires"])


def test_base_install_is_torch_free_and_neo_optional() -> None:
    base = {Requirement(r).name for r in PROJECT["dependencies"]}
    assert not base & {"torch", "neo", "quantities", "matplotlib", "pynwb"}, base
    extras = PROJECT["optional-dependencies"]
    assert {Requirement(r).name for r in extras["neo"]} == {"neo", "quantities"}
    dev = " ".join(extras["dev"])
    for extra in ("train", "neo", "nwb"):
        assert extra in dev, f"the dev extra (CI) should include {extra}"


def test_example_config_is_package_data() -> None:
    assert PYPROJECT["tool"]["setuptools"]["package-data"]["corticalrnn"] == ["configs/*.toml"]
    assert (REPO / "corticalrnn" / "configs" / "example.toml").is_file()
    for name in ("example.toml", "v1_sample.toml"):  # one file each: configs/ links to the packaged ones
        packaged = REPO / "corticalrnn" / "configs" / name
        assert (REPO / "configs" / name).resolve() == packaged.resolve()


# A process in which `import torch` (and the training-side libraries) fails, like a data server.
BLOCK = textwrap.dedent("""
    import sys
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "matplotlib", "threadpoolctl"}:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, _Block())
    from corticalrnn.cli import main
    rc = main(sys.argv[1:])
    assert "torch" not in sys.modules
    sys.exit(rc)
""")


def run_without_torch(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", BLOCK, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_extract_and_trim_run_without_torch(tmp_path: Path) -> None:
    from synthdata import make_datastore

    folder = make_datastore(tmp_path, images=(50000,), image_ms=100.0)
    proc = run_without_torch("extract", folder, "-o", tmp_path / "h5", "--no-progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (h5,) = (tmp_path / "h5").glob("*.h5")
    proc = run_without_torch("trim", h5, "-o", tmp_path / "s.zarr", "--bin-ms", "10", "--no-progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("args", [("train", "--run-dir", "r", "--set", "data.store='s'"),
                                  ("evaluate", "r/best.pt", "s.zarr")])
def test_training_without_torch_names_the_extra(tmp_path: Path, args: tuple[str, ...]) -> None:
    proc = run_without_torch(*args, cwd=tmp_path)
    assert proc.returncode == 1
    assert "needs torch" in proc.stderr and "corticalrnn[train]" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------ tools/install-torch.sh
FAKE_PY = """#!/bin/sh
if [ "$1" = "-" ]; then cat >/dev/null; exit "${PROBE_RC:-0}"; fi
echo "$@" >> "$PIP_LOG"
"""


@pytest.mark.parametrize(("index", "probe_rc", "gpu", "want"), [
    ("auto", 0, False, "--index-url https://download.pytorch.org/whl/cpu"),
    ("auto", 1, False, "default"),
    ("auto", 0, True, "default"),
    ("cpu", 1, True, "default"),
    ("cpu", 0, True, "--index-url https://download.pytorch.org/whl/cpu"),
    ("https://download.pytorch.org/whl/cu126", 0, False, "--index-url https://download.pytorch.org/whl/cu126"),
])
def test_install_torch_picks_the_build(tmp_path: Path, index: str, probe_rc: int, gpu: bool,
                                       want: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    py = bin_dir / "python"
    py.write_text(FAKE_PY)
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\nexit {0 if gpu else 1}\n")
    for f in (py, smi):
        f.chmod(0o755)
    log = tmp_path / "pip.log"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "PIP_LOG": str(log), "PROBE_RC": str(probe_rc)}
    proc = subprocess.run(["bash", str(REPO / "tools" / "install-torch.sh"), str(py), "2.13.0", index],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    assert calls[-1].startswith("-m pip install -q torch==2.13.0")
    if want == "default":
        assert "--index-url" not in calls[-1], calls
    else:
        assert calls[-1].endswith(want), calls
    if probe_rc and index in ("auto", "cpu") and not (gpu and index == "auto"):
        assert "unreachable" in proc.stderr and "default index" in proc.stderr
