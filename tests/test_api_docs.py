"""Every public function and class documents itself: ``Args:`` past two parameters, an example.

"Public" is every name of ``tfx_transfer.__all__`` plus every public module-level function of
the package's modules (what a user reaches with ``from tfx_transfer.x.y import f``). The
examples themselves run as doctests (``pytest --doctest-modules tfx_transfer``).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import tfx_transfer as tt

# Wiring, not API: the CLI's argparse glue and the steps that ``train`` runs in order.
_SKIP_PREFIXES = ("tfx_transfer.cli", "tfx_transfer.commands", "tfx_transfer.runs.steps")


def _modules():
    for info in pkgutil.walk_packages(tt.__path__, "tfx_transfer."):
        if info.name.startswith(_SKIP_PREFIXES) or info.name.rsplit(".", 1)[-1].startswith("_"):
            continue
        yield importlib.import_module(info.name)


def _public_callables():
    seen = {}
    for name in tt.__all__:
        obj = getattr(tt, name)
        if callable(obj):
            seen[f"tt.{name}"] = obj
    for module in _modules():
        for name, obj in vars(module).items():
            if name.startswith("_") or not inspect.isfunction(obj):
                continue
            if obj.__module__ != module.__name__:
                continue  # imported from elsewhere: checked at its home
            seen.setdefault(f"{module.__name__}.{name}", obj)
    return seen


def _params(obj) -> list[str]:
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return []
    return [p for p in sig.parameters if p not in ("self", "cls")
            and sig.parameters[p].kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                inspect.Parameter.VAR_KEYWORD)]


CALLABLES = _public_callables()


@pytest.mark.parametrize("name", sorted(CALLABLES))
def test_public_callable_has_args_and_an_example(name):
    obj = CALLABLES[name]
    doc = inspect.getdoc(obj) or ""
    assert doc, f"{name} has no docstring"
    if inspect.isclass(obj):
        doc += "\n" + (inspect.getdoc(obj.__init__) or "")
    if len(_params(obj)) > 2:
        assert "Args:" in doc, f"{name}({', '.join(_params(obj))}) has no Args: section"
    assert ">>>" in doc, f"{name} has no example (a >>> line that runs as a doctest)"
