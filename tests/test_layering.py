"""Layering, checked statically (ast, nothing imported): the torch-free core and what may use it.

- ``extract/`` (the data-server side) imports from ``corticalrnn`` only the core modules below;
- the core imports only the standard library, numpy and other core modules: never torch, never
  another ``corticalrnn`` module, never ``extract``.

Every import counts, also the ones inside functions (a lazy import still runs back up a floor).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: the torch-free core: what ``extract`` may import from ``corticalrnn`` (docs/ARCHITECTURE.md)
CORE = frozenset({
    "corticalrnn",  # the package itself: __version__, no imports
    "corticalrnn.errors",
    "corticalrnn.sheets",
    "corticalrnn.atomic",
    "corticalrnn.locking",
    "corticalrnn.jsonio",
    "corticalrnn.schema",
    "corticalrnn.tables",
})
#: third-party packages the core may import
CORE_THIRD_PARTY = frozenset({"numpy"})


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(source: str, module: str, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """``(line, imported module)`` for every import in ``source``; ``from a import b`` yields ``a.b``
    (``b`` may be a submodule) and relative imports are resolved against ``module``."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, base] if base else package)
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}" if alias.name != "*" else base


def owner(name: str, known: frozenset[str]) -> str | None:
    """The longest entry of ``known`` that ``name`` is or lies in (``corticalrnn.sheets.X`` ->
    ``corticalrnn.sheets``), else None."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in known:
            return ".".join(parts[:i])
    return None


def corticalrnn_modules() -> frozenset[str]:
    return frozenset(module_name(p) for p in (REPO / "corticalrnn").rglob("*.py"))


def violations(path: Path, allowed: frozenset[str], third_party: frozenset[str] | None,
               source: str | None = None) -> list[str]:
    """Imports of ``path`` that leave ``allowed`` (within corticalrnn and extract) or load torch; with
    ``third_party`` given, also every import outside the standard library and ``third_party``."""
    mod = module_name(path)
    ours = corticalrnn_modules()
    out = []
    text = path.read_text() if source is None else source
    for line, name in imports(text, mod, path.name == "__init__.py"):
        top = name.split(".")[0]
        where = f"{path.relative_to(REPO)}:{line} imports {name}"
        if top == "corticalrnn":
            target = owner(name, ours)
            # ``from corticalrnn import __version__``: a name of the package itself
            if target == "corticalrnn" and name != "corticalrnn" and name.split(".")[1] != "__version__":
                target = name
            if target not in allowed:
                out.append(where)
        elif top == "extract":
            if "extract" not in allowed and not mod.startswith("extract"):
                out.append(where)
        elif top == "torch":
            out.append(where)
        elif third_party is not None and top not in sys.stdlib_module_names and top not in third_party:
            out.append(where)
    return out


def core_files() -> list[Path]:
    files = []
    for name in sorted(CORE):
        rel = Path(*name.split("."))
        package = REPO / rel / "__init__.py"
        files.append(package if package.exists() else (REPO / rel).with_suffix(".py"))
    return files


def test_core_modules_exist():
    for path in core_files():
        assert path.is_file(), f"core module {path} is missing: update CORE here and docs/ARCHITECTURE.md"


def test_extract_imports_only_the_core():
    files = sorted((REPO / "extract").rglob("*.py"))
    found = [v for p in files for v in violations(p, CORE | {"extract"}, None)]
    assert not found, f"extract/ may import from corticalrnn only the core ({', '.join(sorted(CORE))}):\n" + (
        "\n".join(found)
    )


def test_core_imports_only_stdlib_numpy_and_core():
    found = [v for p in core_files() for v in violations(p, CORE, CORE_THIRD_PARTY)]
    assert not found, "the core imports only the standard library, numpy and the core:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "source, module, bad",
    [
        ("import torch\n", "corticalrnn.sheets", True),
        ("def f():\n    from corticalrnn.metrics import x\n", "corticalrnn.sheets", True),
        ("from corticalrnn.bench.common import time_call\n", "extract.cli", True),
        ("from corticalrnn import store\n", "extract.cli", True),
        ("from extract.spikefile import x\n", "corticalrnn.schema", True),
        ("from . import cli\n", "corticalrnn.tables", True),
        ("from corticalrnn import __version__\nimport numpy, json\n", "corticalrnn.schema", False),
        ("import torch.nn\n", "extract.datastore", True),
        ("from corticalrnn.errors import SchemaError\nfrom corticalrnn import sheets\n", "extract.x", False),
        ("from .spikefile import x\nimport h5py\n", "extract.cli", False),
    ],
)
def test_checker_sees_violations(source, module, bad):
    """The checker itself: lazy, relative and ``from package import module`` imports all count."""
    path = REPO.joinpath(*module.split(".")).with_suffix(".py")
    core = module.startswith("corticalrnn")
    found = violations(path, CORE if core else CORE | {"extract"}, CORE_THIRD_PARTY if core else None, source)
    assert bool(found) == bad, found


def test_core_imports_without_torch():
    """Importing the whole core (and extract's modules) loads no torch."""
    names = sorted(CORE) + [module_name(p) for p in sorted((REPO / "extract").glob("*.py"))]
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({n!r})\n" for n in names) + (
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)
