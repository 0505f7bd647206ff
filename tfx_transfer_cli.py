"""The ``tfx-transfer`` console script: :func:`tfx_transfer.cli.main`, with instant ``--help``.

Importing :mod:`tfx_transfer` registers the kit's Keras objects (so that
``keras.saving.load_model`` reads every ``.keras`` file it writes), which imports
Keras and TensorFlow: seconds, before the first line of output. The script enters
through this module, imported before the package: while it is loaded, the package
leaves that registration to the command that runs (:func:`tfx_transfer.cli.main`
registers before running any command that uses Keras), so ``tfx-transfer --help``,
``--version`` and ``weights where`` import neither Keras nor TensorFlow. Importing :mod:`tfx_transfer`
in any other program registers as documented.

Example:
    $ tfx-transfer --version
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tfx-transfer`` (``argv``: its arguments; default ``sys.argv[1:]``)."""
    from tfx_transfer.cli import main as run

    return run(argv)
