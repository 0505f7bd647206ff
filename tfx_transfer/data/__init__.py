"""Images to tf.data: finding image files, decoding, splits, folders, augmentation.

Kept light: importing this package imports none of its modules (TensorFlow stays lazy).
"""
