"""Flags from signatures: each command's flags are the keyword arguments of the function it calls.

A flag's default is the function's (read from its signature, shown by ``--help``),
so the API, the CLI and ``config.json`` say the same; :class:`Command` is one
sub-command: its help, its flags (declared only when it is asked for, so that
``tfx-transfer --help`` imports nothing heavy) and its run.

Example:
    >>> signature_defaults(lambda a, b=2, *, c="x": None)
    {'b': 2, 'c': 'x'}
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from collections.abc import Callable, Iterable
from typing import Any


def signature_defaults(function: Callable) -> dict[str, Any]:
    """The default of every parameter of ``function`` that has one.

    Example:
        >>> signature_defaults(lambda a, b=2, *, c="x": None)
        {'b': 2, 'c': 'x'}
    """
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty}


def shown(value: Any) -> str:
    """A default as ``--help`` shows it (``None``: ``none``, the word the flags take).

    Example:
        >>> shown(None), shown(0.2)
        ('none', '0.2')
    """
    return "none" if value is None else str(value)


def add_options(p: argparse.ArgumentParser, defaults: dict[str, Any],
                specs: dict[str, dict[str, Any]], suppress: bool = False) -> None:
    """Declare a ``--name`` flag per spec, with the default of the function it calls.

    Args:
        p: the command's parser.
        defaults: the function's defaults (:func:`signature_defaults`).
        specs: ``{name: add_argument keywords}`` (``help`` required; the default is
            appended to it).
        suppress: leave a flag that is not given out of the parsed arguments (the
            function, or a saved configuration, supplies it) instead of setting it.

    Example:
        >>> p = argparse.ArgumentParser()
        >>> add_options(p, {"batch_size": 32}, {"batch_size": dict(type=int, help="images")})
        >>> p.parse_args([]).batch_size, p.parse_args(["--batch-size", "8"]).batch_size
        (32, 8)
    """
    for name, spec in specs.items():
        if name not in defaults:
            raise TypeError(f"tfx-transfer: the flag --{name.replace('_', '-')} has no keyword "
                            f"argument {name!r} with a default in the function it calls.")
        default = defaults[name]
        p.add_argument(f"--{name.replace('_', '-')}", dest=name,
                       default=argparse.SUPPRESS if suppress else default,
                       **{**spec, "help": f"{spec['help']} (default: {shown(default)})"})


def given(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The parsed values of ``names`` (those set: suppressed flags not given are left out).

    Example:
        >>> given(argparse.Namespace(seed=1, out="r"), ["seed", "top_k"])
        {'seed': 1}
    """
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def optional(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """A flag type that also takes ``none`` (for settings whose default is None).

    Example:
        >>> optional(int)("none"), optional(int)("3")
        (None, 3)
    """
    def parse(value: str) -> Any:
        return None if value.lower() == "none" else kind(value)
    parse.__name__ = kind.__name__
    return parse


def optional_choice(*names: str) -> Callable[[str], str | None]:
    """A flag type: one of ``names`` or ``none``, refused in argparse's words listing them all.

    Example:
        >>> optional_choice("int8", "float16")("none") is None
        True
        >>> optional_choice("int8", "float16")("int4")
        Traceback (most recent call last):
        argparse.ArgumentTypeError: invalid choice: 'int4' (choose from 'int8', 'float16', 'none')
    """
    def parse(value: str) -> str | None:
        if value.lower() == "none":
            return None
        if value not in names:
            listed = ", ".join(repr(name) for name in (*names, "none"))
            raise argparse.ArgumentTypeError(f"invalid choice: {value!r} (choose from {listed})")
        return value
    parse.__name__ = "choice"
    return parse


def lr_arg(value: str) -> float | str:
    """``--head-lr``: a float or ``auto``.

    Example:
        >>> lr_arg("3e-3"), lr_arg("AUTO")
        (0.003, 'auto')
    """
    if value.lower() == "auto":
        return "auto"
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a learning rate; pass e.g. 1e-3 or auto") from None


def blocks_arg(value: str) -> Any:
    """``--blocks``: a block name, ``a,b`` (a list), ``all``, ``default`` or an int N.

    Example:
        >>> blocks_arg("3"), blocks_arg("block4,block5"), blocks_arg("conv5")
        (3, ['block4', 'block5'], 'conv5')
    """
    if value.isdigit():
        return int(value)
    return [v.strip() for v in value.split(",") if v.strip()] if "," in value else value


def columns_arg(value: str) -> str | list[str]:
    """``--y-col``: one column, or ``a,b,c`` (a list of 0/1 columns, multi-label).

    Example:
        >>> columns_arg("class"), columns_arg("sky,sea")
        ('class', ['sky', 'sea'])
    """
    return [v.strip() for v in value.split(",") if v.strip()] if "," in value else value


@dataclasses.dataclass(frozen=True)
class Command:
    """A sub-command: what ``--help`` says of it, its flags (declared on demand) and its run."""

    name: str
    help: str
    description: str
    add_flags: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]
    epilog: str | None = None
