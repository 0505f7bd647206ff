"""Serving: the TF-Serving-compatible REST server and its page.

Kept light: importing this package imports none of its modules (TensorFlow stays lazy).
"""
