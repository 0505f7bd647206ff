"""``tfx-transfer``: the command-line tool, thin over the Python API.

Each sub-command (:mod:`tfx_transfer.commands`) calls one documented library
function; its flags are that function's keyword arguments, with the defaults read
from its signature (``--help`` shows them), so the API, the CLI and ``config.json``
say the same. A command's flags are declared only when that command is asked for
(its library module is imported then), so ``tfx-transfer --help`` and ``--version`` import neither Keras nor
TensorFlow and answer at once. The ``tfx-transfer`` script enters through
:mod:`tfx_transfer_cli`, which has the package leave the registration of its Keras
objects to the command that runs (:func:`main` registers them before any command that
uses Keras; ``weights where`` only prints a path, and imports neither).

TensorFlow's native start-up log (the oneDNN, CUDA and absl lines) stays off the
terminal: ``TF_CPP_MIN_LOG_LEVEL`` is set to 3 unless already set, and while a
command runs, native log lines below that level written to the process's stderr
are dropped -- TensorFlow writes some before it reads the variable. Set
``TF_CPP_MIN_LOG_LEVEL=0`` to see them all.

Example:
    $ tfx-transfer weights fetch vgg16 resnet50
    $ tfx-transfer train data_samples --backbone vgg16 --out runs/demo
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import signal
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

# light modules: the commands import the library (Keras, TensorFlow) only when they run
from tfx_transfer.commands.export import EXPORT
from tfx_transfer.commands.flags import Command
from tfx_transfer.commands.jobs import ADAPT, ADD_CLASSES, FIND_LR, PRETRAIN, TRAIN
from tfx_transfer.commands.use import EVALUATE, EXPLAIN, PREDICT, SERVE, WEIGHTS

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before anything imports TensorFlow

# In the order `tfx-transfer --help` lists them.
COMMANDS: tuple[Command, ...] = (TRAIN, EVALUATE, WEIGHTS, PRETRAIN, EXPORT, PREDICT, SERVE,
                                 EXPLAIN, FIND_LR, ADAPT, ADD_CLASSES)


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``tfx-transfer``.

    Args:
        commands: the sub-commands whose flags to declare (importing their modules);
            ``None``: all of them. The others are listed by ``--help`` without flags.

    Example:
        >>> build_parser().parse_args(["weights", "where"]).weights_command
        'where'
    """
    from tfx_transfer import __version__

    wanted = {c.name for c in COMMANDS} if commands is None else set(commands)
    parser = argparse.ArgumentParser(
        prog="tfx-transfer",
        description="Image-classification transfer learning on Keras 3: train, evaluate, "
        "export and predict from a folder of class sub-folders.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.description,
                           epilog=command.epilog)
        if command.name in wanted:
            command.add_flags(p)
        p.set_defaults(func=command.run)
    return parser


def _command_in(argv: Sequence[str]) -> list[str]:
    """The sub-command named in ``argv`` (its first word that is not an option), if any."""
    first = next((arg for arg in argv if not arg.startswith("-")), None)
    return [first] if first in {c.name for c in COMMANDS} else []


# ---------------------------------------------------------------------------
# TensorFlow's native log
# ---------------------------------------------------------------------------

# absl ("I0000 00:00:1796215712.361443   14528 port.cc:153] ...") and TensorFlow's own
# ("2025-01-01 12:00:00.000000: I tensorflow/...") native log lines, and their severity
_NATIVE_LINE = re.compile(r"^(?:([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\]|"
                          r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ([IWEF]) \S+:\d+\])")
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
# lines of TensorFlow's start-up log without that prefix, and their severity
_NATIVE_TEXT = {"WARNING: All log messages before absl::InitializeLog() is called": 1,
                "To enable the following instructions:": 0}


def _is_native_noise(line: str, level: int) -> bool:
    """Whether ``line`` is a native log line below ``TF_CPP_MIN_LOG_LEVEL``'s ``level``."""
    match = _NATIVE_LINE.match(line)
    if match:
        return _SEVERITY[match.group(1) or match.group(2)] < level
    return any(line.startswith(text) and severity < level for text, severity in _NATIVE_TEXT.items())


def _forward(read_fd: int, write_fd: int, level: int) -> None:
    with os.fdopen(read_fd, "rb") as pipe:
        for raw in pipe:
            if not _is_native_noise(raw.decode(errors="replace"), level):
                os.write(write_fd, raw)


@contextlib.contextmanager
def quiet_native_log() -> Iterator[None]:
    """Drop TensorFlow's native log lines below ``TF_CPP_MIN_LOG_LEVEL`` from the process's stderr.

    TensorFlow's libraries log some lines (oneDNN, CUDA, absl) when they load, before
    they read ``TF_CPP_MIN_LOG_LEVEL`` (abseil-cpp#1718); this applies the level to
    them. Everything else written to stderr (Python warnings, tracebacks, other
    programs' lines) passes. A no-op when ``sys.stderr`` is not the process's own
    (a test harness, a notebook) or when the level is 0.

    Example:
        >>> with quiet_native_log():
        ...     print("passes")
        passes
    """
    level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") or 0)
    try:
        real = sys.stderr is sys.__stderr__ and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        real = False
    if not real or level <= 0:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    forwarder = threading.Thread(target=_forward, args=(read_fd, saved, level), daemon=True)
    forwarder.start()

    def drain() -> None:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe loses its last writer: the forwarder reads to its end
        forwarder.join(timeout=5)

    def drain_then_die(signum: int, frame: Any) -> None:
        # A SIGTERM (e.g. the one uvicorn re-raises after a graceful shutdown) would kill the
        # process with the last lines still in the pipe: forward them, then die as by default.
        drain()
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, drain_then_die) if in_main else None
    try:
        yield
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
        drain()
        if not forwarder.is_alive():
            os.close(saved)


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit raises nothing more (the
    recipe of Python's ``signal`` documentation for SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (a test harness)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tfx-transfer``; returns the exit status.

    Errors a user can fix (bad flags, missing folders, unavailable weights) print one
    clear line on stderr and exit with status 2, without a traceback.

    Example:
        >>> main(["weights", "where"])  # prints the Keras cache folder
        /.../models
        0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    with quiet_native_log():
        args = build_parser(_command_in(argv)).parse_args(argv)
        if getattr(args, "uses_keras", True):  # (`weights where` does not: it prints a path)
            # every custom object of the kit, so that keras.saving.load_model reads every .keras file
            importlib.import_module("tfx_transfer")._register_objects()
        try:
            return int(args.func(args) or 0)
        except BrokenPipeError:  # `tfx-transfer predict ... | head`: the reader went away
            _silence_stdout()
            return 1
        except (ValueError, FileNotFoundError, NotADirectoryError) as exc:
            print(f"tfx-transfer {args.command}: error: {exc}", file=sys.stderr)
            return 2
        except RuntimeError as exc:
            if type(exc).__name__ not in ("WeightsUnavailableError", "RunFolderLockedError",
                                          "ParityError"):
                raise
            print(f"tfx-transfer {args.command}: error: {exc}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
