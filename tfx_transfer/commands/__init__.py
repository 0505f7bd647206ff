"""The sub-commands of ``tfx-transfer`` (:mod:`tfx_transfer.cli`): each one's flags and call.

Kept light: importing this package imports none of its modules (TensorFlow stays lazy).
"""
