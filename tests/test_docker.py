"""The Dockerfile: hadolint clean, and static checks of what the image must contain.

Building the image needs a container engine and registry access, which CI does not have;
docs/cluster.md says how the CPU variant's build was checked with buildah.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """``[(INSTRUCTION, arguments)]`` with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        word, _, rest = pending.partition(" ")
        out.append((word.upper(), " ".join(rest.split())))
        pending = ""
    return out


def first(name: str) -> str:
    return next(args for instr, args in instructions() if instr == name)


def test_hadolint_clean() -> None:
    exe = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("hadolint not installed (it comes with the dev extra: pip install -e '.[dev]')")
    proc = subprocess.run([exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_base_is_a_pinned_cuda_pytorch_runtime_with_cpu_variant() -> None:
    steps = instructions()
    assert steps[0][0] == "ARG" and steps[1] == ("FROM", "${BASE}")
    base = steps[0][1]
    m = re.fullmatch(r"BASE=pytorch/pytorch:(\d+\.\d+\.\d+)-cuda(\d+\.\d+)-cudnn(\d+)-runtime", base)
    assert m, f"default base {base!r} is not a version-pinned pytorch/pytorch CUDA runtime image"
    args = dict(a.split("=", 1) for i, a in steps if i == "ARG" and "=" in a)
    assert args["TORCH_VERSION"] == m.group(1), "CPU variant torch should match the GPU base's torch"
    assert "download.pytorch.org/whl/cpu" in args["TORCH_PIP_ARGS"]


def test_compilers_for_torch_compile() -> None:
    runs = " ".join(a for i, a in instructions() if i == "RUN")
    installed = re.search(r"apt-get install[^&]*", runs)
    assert installed and {"gcc", "g++"} <= set(installed.group(0).split())


def test_package_installed_from_copied_sources_never_replacing_torch() -> None:
    steps = instructions()
    copied = {src.rstrip("/") for i, a in steps if i == "COPY" for src in a.split()[:-1]}
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "pyproject.toml" in copied
    readme = pyproject["project"].get("readme")
    if isinstance(readme, str):
        assert readme in copied, f"pip install needs {readme} (pyproject readme) in the image"
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.name for p in REPO.iterdir() if (p / "__init__.py").is_file()
                and any(fnmatch.fnmatch(p.name, pat) for pat in include)}
    assert packages and packages <= copied, f"packages not copied into the image: {packages - copied}"
    pip_runs = [a for i, a in steps if i == "RUN" and "pip install" in a]
    installs_package = [a for a in pip_runs if re.search(r"pip install --no-deps .*\.(\s|$)", a)]
    assert installs_package, "the package is not pip-installed from the copied sources"
    for run in pip_runs:
        assert " -e " not in run and "--editable" not in run
        if "torch==" not in run:  # everything but the CPU variant's torch keeps the installed torch
            assert "--constraint /etc/torch-constraint.txt" in run, run
    assert not any(i == "VOLUME" for i, _ in steps)


def test_dockerignore_lets_exactly_the_copied_sources_in() -> None:
    rules = [r.strip() for r in (REPO / ".dockerignore").read_text().splitlines()
             if r.strip() and not r.startswith("#")]
    assert rules[0] == "*", ".dockerignore should exclude everything by default"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    copied = {src.rstrip("/") for i, a in instructions() if i == "COPY" for src in a.split()[:-1]}
    assert copied == allowed
    assert {".venv", ".git"}.isdisjoint(allowed)


def test_non_root_user_and_entrypoint() -> None:
    steps = instructions()
    users = [(n, a) for n, (i, a) in enumerate(steps) if i == "USER"]
    assert users, "no USER"
    last_user_at, user = users[-1]
    assert user.split(":")[0] not in ("root", "0")
    assert all(i != "RUN" for i, _ in steps[last_user_at:]), "RUN after switching to the user"
    assert first("ENTRYPOINT") == '["corticalrnn"]'
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "corticalrnn" in scripts
