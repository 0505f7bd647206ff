"""Evaluation: metrics, evaluate_model, test-time augmentation, Grad-CAM, top losses and plots.

Kept light: importing this package imports none of its modules (TensorFlow stays lazy).
"""
