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
