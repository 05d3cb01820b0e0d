"""Dependencies point one way (DESIGN.md, Layout): read from the source, so a new back-edge fails here.

models/ and losses/ are plain torch (usable without Lightning or Hydra, exportable); the data subpackages for
drawn faces and for file formats never reach into the training pipeline; nothing below the entry points
imports an entry point.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "oaml"
ENTRY_POINTS = ("oaml.train", "oaml.evaluate", "oaml.export", "oaml.sweep_summary", "oaml.sweep_plot")

# package prefix -> module prefixes it must not import
FORBIDDEN = {
    "oaml.models": ("lightning", "hydra", "omegaconf", "oaml.training", "oaml.data", "oaml.losses"),
    "oaml.losses": ("lightning", "hydra", "omegaconf", "oaml.training", "oaml.data"),
    "oaml.evaluation": ("lightning", "hydra", "oaml.training", "oaml.data"),
    "oaml.data.synthetic": ("oaml.data.pipeline", "oaml.data.formats", "oaml.training", "lightning"),
    "oaml.data.formats": ("oaml.data.pipeline", "oaml.training", "lightning"),
    "oaml.data.item_rng": ("oaml.data.pipeline", "oaml.data.formats", "oaml.data.synthetic"),
    "oaml.data": ("oaml.training",),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved against its package)."""
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_name(path)
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
    return names


def _violations(module: str, imports: set[str]) -> list[str]:
    found = []
    for owner, banned in FORBIDDEN.items():
        if module == owner or module.startswith(owner + "."):
            found += [
                f"{module} imports {name}"
                for name in imports
                for ban in banned
                if name == ban or name.startswith(ban + ".")
            ]
    if module not in ENTRY_POINTS:
        found += [f"{module} imports the entry point {name}" for name in imports if name in ENTRY_POINTS]
    return found


def test_the_checker_sees_a_back_edge() -> None:
    # The rule itself, on made-up imports: the shapes a regression would take.
    assert _violations("oaml.data.formats.niqab", {"oaml.data.pipeline.augment"})
    assert _violations("oaml.models.qaconv", {"lightning.pytorch"})
    assert _violations("oaml.training.module", {"oaml.train"})
    assert not _violations("oaml.data.formats.niqab", {"oaml.data.item_rng", "numpy"})


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(REPO)))
def test_module_respects_the_layering(path: Path) -> None:
    assert _violations(_module_name(path), imported_modules(path)) == []
