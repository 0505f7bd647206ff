"""Export: the SavedModel that takes image bytes, loading it back, TFLite.

Kept light: importing this package imports none of its modules (TensorFlow stays lazy).
"""
