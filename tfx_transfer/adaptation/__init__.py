"""Unsupervised domain adaptation: AdaBN, CORAL and the adapt job.

Kept light: importing this package imports none of its modules (TensorFlow stays lazy).
"""
