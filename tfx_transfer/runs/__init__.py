"""Run folders: their layout and config.json, one process per folder, the report of a run.

Kept light: importing this package imports none of its modules (TensorFlow stays lazy).
"""
