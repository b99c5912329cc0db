"""The shape of ``backends/``: a runtime that names no family, one package per family, no import cycles.

These read the source (``ast``), so they hold for lazy imports inside functions too, which a
plain import would never see.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from backends.families import FAMILIES

BACKENDS = Path(__file__).resolve().parents[2] / "backends"
#: The packages that are no family: the runtime, and the optional Ray Serve deployment (DESIGN.md's
#: ``backends/cluster/``), which stands above the runtime and the families and nothing imports but app.py.
NOT_FAMILIES = ("runtime", "cluster", "__pycache__")
FAMILY_PACKAGES = sorted(p.name for p in BACKENDS.iterdir()
                         if p.is_dir() and p.name.isidentifier() and p.name not in NOT_FAMILIES)
#: What every family package holds (its own extra modules come on top).
FAMILY_SHAPE = ("__init__.py", "spec.py", "requests.py", "backend.py", "tiny.py")


def module_name(path: Path) -> str:
    parts = path.relative_to(BACKENDS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every ``backends`` module this file imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "backends":
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "backends")
    return found


MODULES = {module_name(path): path for path in BACKENDS.rglob("*.py")}


def test_backends_holds_only_the_families_list_and_packages() -> None:
    loose = sorted(p.name for p in BACKENDS.glob("*.py"))
    assert loose == ["__init__.py", "families.py"]
    assert FAMILY_PACKAGES == sorted(spec.name for spec in FAMILIES)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("backends.runtime")))
def test_the_runtime_names_no_family(module: str) -> None:
    outside = sorted(m for m in imports(MODULES[module]) if not m.startswith("backends.runtime"))
    assert outside == [], f"{module} imports {outside}"


@pytest.mark.parametrize("family", FAMILY_PACKAGES)
def test_every_family_has_the_same_shape(family: str) -> None:
    files = {p.name for p in (BACKENDS / family).glob("*.py")}
    assert set(FAMILY_SHAPE) <= files, f"{family} lacks {sorted(set(FAMILY_SHAPE) - files)}"
    spec = importlib.import_module(f"backends.{family}.spec").SPEC
    assert spec.name == family and spec in FAMILIES
    assert spec.factory.startswith(f"backends.{family}.backend:")
    assert spec.tiny is not None and spec.tiny.builder == f"backends.{family}.tiny:build"
    # Every declared component and single file is a Source of the family's settings.
    settings = spec.settings()
    for key in (*spec.components, *spec.files):
        assert hasattr(settings, key), f"{family}.{key}"


def test_families_reach_no_other_family_but_through_named_public_modules() -> None:
    """A family may use another's public pieces only where the importer says so (SV3D runs SVD's UNet)."""
    allowed = {("sv3d", "backends.svd.memory"), ("sv3d", "backends.svd.ops")}
    for module, path in MODULES.items():
        parts = module.split(".")
        if len(parts) < 2 or parts[1] not in FAMILY_PACKAGES:
            continue
        for target in imports(path):
            other = target.split(".")[1] if target.count(".") else None
            if other in FAMILY_PACKAGES and other != parts[1] and target in MODULES:
                assert (parts[1], target) in allowed, f"{module} imports {target}"


def test_only_the_cluster_package_itself_imports_it() -> None:
    """The embedded path never reaches Ray: no runtime or family module imports ``backends.cluster``."""
    for module, path in MODULES.items():
        if not module.startswith("backends.cluster"):
            assert not any(m.startswith("backends.cluster") for m in imports(path)), module


def test_no_import_cycles() -> None:
    graph = {module: {m for m in imports(path) if m in MODULES and m != module} for module, path in MODULES.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append([*trail[trail.index(target):], target] if target in trail else [module, target])
            elif target not in state:
                visit(target, [*trail, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_listing_the_families_imports_no_torch() -> None:
    """Specs are data: the app can list families, presets and tasks before torch is imported."""
    import subprocess
    import sys

    code = ("import sys; import backends.families as f; f.load_preset('lite'); "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=BACKENDS.parent).stdout
    assert out.strip() == "[]"
