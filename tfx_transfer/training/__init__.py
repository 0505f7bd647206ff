"""Training: fine_tune and its callbacks, optimizers, the learning-rate finder, distribution, pretraining and the end-to-end job.

Kept light: importing this package imports none of its modules (TensorFlow stays lazy).
"""
