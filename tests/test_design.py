"""docs/DESIGN.md's module table matches the tree: every module named, nothing that is gone."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules_in_tree() -> set[str]:
    package = ROOT / "tfx_transfer"
    found = {str(p.relative_to(package)) for p in package.rglob("*.py")
             if p.name != "__init__.py" and "__pycache__" not in p.parts}
    return found | {"../tfx_transfer_cli.py"}


def _modules_in_design() -> set[str]:
    text = (ROOT / "docs" / "DESIGN.md").read_text()
    table = text[text.index("| module | kind | what |"):text.index("## One vocabulary")]
    named = set()
    for row in table.splitlines():
        first = row.split("|")[1] if row.startswith("|") else ""
        for name in re.findall(r"`([\w/]+\.py)`", first):
            named.add("../tfx_transfer_cli.py" if name == "tfx_transfer_cli.py" else name)
    return named


def test_design_table_names_every_module_and_only_those():
    tree, design = _modules_in_tree(), _modules_in_design()
    assert not tree - design, f"modules missing from docs/DESIGN.md's table: {sorted(tree - design)}"
    assert not design - tree, f"DESIGN.md names modules that do not exist: {sorted(design - tree)}"


def test_no_module_over_the_size_guide():
    """One concept per module: none over ~400 lines (DESIGN.md), so a big one gets split."""
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines())
             for p in (ROOT / "tfx_transfer").rglob("*.py")}
    assert not {k: v for k, v in sizes.items() if v > 420}, sorted(sizes.items(), key=lambda kv: -kv[1])[:5]


def test_no_module_touches_pyplot_or_the_matplotlib_backend():
    """Plots are ``matplotlib.figure.Figure`` objects saved to files: importing pyplot or
    calling ``matplotlib.use`` from the library would switch a notebook user's backend."""
    offenders = [str(path.relative_to(ROOT)) for path in sorted((ROOT / "tfx_transfer").rglob("*.py"))
                 if re.search(r"^\s*(import matplotlib\.pyplot|from matplotlib import pyplot|"
                              r"matplotlib\.use\()", path.read_text(), re.MULTILINE)]
    assert not offenders, offenders


# docs/DESIGN.md's layers, bottom to top: each may import the layers listed (and itself).
# export sits below evaluation (evaluation scores exports), adaptation above runs (adapt_run
# writes run folders); the package's __init__, cli.py and commands/ sit on top of everything.
_BASE = {"base"}
_LAYERS_BELOW = {
    "base": set(),                                    # defaults.py, _compat.py, layout.py
    "data": _BASE,
    "models": _BASE | {"data"},
    "export": _BASE | {"data", "models"},
    "evaluation": _BASE | {"data", "models", "export"},
    "training": _BASE | {"data", "models", "export", "evaluation"},
    "serving": _BASE | {"data", "models", "export"},
    "runs": _BASE | {"data", "models", "export", "evaluation", "training"},
    "adaptation": _BASE | {"data", "models", "export", "evaluation", "training", "runs"},
}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "tfx_transfer":
        return None
    if len(parts) == 1:
        return "top"
    if parts[1] in ("defaults", "_compat", "layout"):
        return "base"
    return "top" if parts[1] in ("cli", "commands") else parts[1]


def _imports(path: Path) -> list[tuple[int, str]]:
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = {alias.name for alias in node.names}
            if node.module == "tfx_transfer" and names == {"__version__"}:
                continue  # the version string, not the package's registrations
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return found


def test_each_layer_imports_only_the_layers_below_it():
    """DESIGN.md's diagram, checked on every import (lazy ones inside functions too)."""
    package = ROOT / "tfx_transfer"
    layers_in_tree = {p.parent.name for p in package.glob("*/__init__.py")} - {"commands"}
    assert layers_in_tree == set(_LAYERS_BELOW) - {"base"}, "a new layer: place it in _LAYERS_BELOW"
    wrong = []
    for path in sorted(package.rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        mine = _layer(module)
        if mine == "top":
            continue
        for line, imported in _imports(path):
            other = _layer(imported)
            if other not in (None, mine) and other not in _LAYERS_BELOW[mine]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({mine}) imports {imported} ({other})")
    assert not wrong, "imports against DESIGN.md's layers:\n" + "\n".join(wrong)
