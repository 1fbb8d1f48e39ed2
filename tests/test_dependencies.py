"""Every third-party package the shipped code imports is declared in pyproject's
``[project] dependencies``.

A package that only arrives as a dependency of a dependency (cv2 through ultralytics,
huggingface_hub through transformers) or through the ``test`` extra works on a developer's
machine and breaks a plain ``pip install ml-backend`` the day the other package drops it.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest itself depends on tomli before 3.11
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "ml_backend"


def imported_top_levels(source: str) -> Iterator[str]:
    """Top-level names of the absolute imports in ``source``, at any depth: a function-local
    ``import cv2`` needs the package at run time just as a module-level one does."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.partition(".")[0]


def third_party_imports() -> dict[str, list[str]]:
    """Top-level package -> the modules under ml_backend that import it (stdlib and the
    project's own package left out)."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for name in set(imported_top_levels(path.read_text())):
            if name in sys.stdlib_module_names or name == PACKAGE.name:
                continue
            found.setdefault(name, []).append(str(path.relative_to(REPO)))
    return found


# Extras that a model family imports lazily and reports as unavailable, with the install line,
# when missing (sam2 cannot be a plain dependency: its source build needs torch first).
MODEL_EXTRAS = ("sam2",)


def declared_distributions() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in MODEL_EXTRAS:
        specs += project["optional-dependencies"][extra]
    return {canonicalize_name(Requirement(spec).name) for spec in specs}


def test_the_scan_sees_module_level_and_function_local_imports() -> None:
    # Guards the test below against passing because the scan found nothing.
    found = third_party_imports()
    assert "numpy" in found  # module level, many modules
    assert "ml_backend/labelstudio/masks.py" in found["cv2"]  # imported inside mask_to_polygons
    assert "ml_backend" not in found and "json" not in found


def test_every_imported_package_is_a_declared_dependency() -> None:
    declared = declared_distributions()
    providers = packages_distributions()
    problems = []
    for name, modules in sorted(third_party_imports().items()):
        # One import name can come from several distributions (cv2: opencv-python and
        # opencv-python-headless); declaring any one of them is enough.
        dists = {canonicalize_name(dist) for dist in providers.get(name, [])}
        if not dists:
            problems.append(f"{name} (imported by {', '.join(modules)}): no installed "
                            "distribution provides it")
        elif not dists & declared:
            problems.append(f"{name} (imported by {', '.join(modules)}): declare one of "
                            f"{sorted(dists)} in [project] dependencies")
    assert not problems, "\n".join(problems)
