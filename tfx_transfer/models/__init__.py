"""Models: the backbone registry, the kit's layers, TransferModel, weights, freezing, saving, ensembles and joint models.

Kept light: importing this package imports none of its modules (TensorFlow stays lazy).
"""
