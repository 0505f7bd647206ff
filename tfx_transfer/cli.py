"""``tfx-transfer``: the command-line tool (thin over the Python API).

Each sub-command is a pair of functions here: ``_add_<name>(subparsers)`` declares
its flags, ``_run_<name>(args)`` calls the documented Python function that does
the work. Heavy imports happen inside ``_run_*`` so ``--help`` is instant.

Example:
    $ tfx-transfer weights fetch vgg16 resnet50
    $ tfx-transfer train data_samples --backbone vgg16 --out runs/demo
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence


def _add_weights(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "weights",
        help="manage ImageNet backbone weights (the Keras cache)",
        description="Pre-fetch ImageNet (no-top) weights into the Keras cache "
        "($KERAS_HOME/models, default ~/.keras/models) on a machine with network, then copy "
        "that folder to an offline machine.",
    )
    wsub = p.add_subparsers(dest="weights_command", required=True)
    fetch = wsub.add_parser("fetch", help="download the weights of the named backbones")
    fetch.add_argument("backbones", nargs="+", help="registry names, e.g. vgg16 resnet50")
    fetch.add_argument("--input-size", type=int, default=None,
                       help="input size (only MobileNet variants have size-specific files)")
    wsub.add_parser("where", help="print the Keras cache folder")
    p.set_defaults(func=_run_weights)


def _run_weights(args: argparse.Namespace) -> int:
    from tfx_transfer.weights import fetch_weights, keras_cache_dir

    if args.weights_command == "where":
        print(keras_cache_dir())
        return 0
    for path in fetch_weights(args.backbones, input_size=args.input_size):
        print(path)
    return 0


# Sub-commands, in the order `--help` lists them. Modules add theirs here.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_weights]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``tfx-transfer`` (all sub-commands).

    Example:
        >>> build_parser().parse_args(["weights", "where"]).weights_command
        'where'
    """
    from tfx_transfer import __version__

    parser = argparse.ArgumentParser(
        prog="tfx-transfer",
        description="Image-classification transfer learning on Keras 3: train, evaluate, "
        "export and predict from a folder of class sub-folders.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tfx-transfer``; returns the exit status.

    Errors a user can fix (bad flags, missing folders, unavailable weights) print one
    clear line on stderr and exit with status 2, without a traceback.

    Example:
        >>> main(["weights", "where"])  # doctest: +SKIP
        /home/me/.keras/models
        0
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, NotADirectoryError) as exc:
        print(f"tfx-transfer {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        if type(exc).__name__ != "WeightsUnavailableError":
            raise
        print(f"tfx-transfer {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
