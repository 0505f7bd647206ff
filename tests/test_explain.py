"""Grad-CAM on nested transfer models (tfx_transfer.evaluation.gradcam): exact and localising.

Every backbone family: tests/test_backbones.py's sweep. Backend-neutral except the
GradientTape cross-check (TensorFlow only); ``make test-jax`` runs the rest under
KERAS_BACKEND=jax.
"""

import keras
import numpy as np
import pytest

import tfx_transfer as tt
from tests.helpers import tiny_pixels
from tfx_transfer.evaluation.gradcam import gradcam

PATCH = 10
SIZE = 48
COLOURS = np.array([[255, 40, 40], [40, 255, 40], [40, 40, 255]], np.float32)


def _patch_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dark noise with one coloured square anywhere; its colour is the class."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 70, (n, SIZE, SIZE, 3)).astype(np.float32)
    labels = np.arange(n) % len(COLOURS)
    corners = rng.integers(0, SIZE - PATCH + 1, (n, 2))
    for i, (r, c) in enumerate(corners):
        images[i, r:r + PATCH, c:c + PATCH] = COLOURS[labels[i]]
    return images.astype(np.uint8), labels, corners


def _model(backbone, head="avg", **kwargs):
    keras.utils.set_random_seed(0)
    return tt.build_transfer_model(backbone, 3, input_shape=(SIZE, SIZE, 3), weights=None,
                                   head=head, dropout=0.0, **kwargs)


def test_avg_head_gradcam_is_the_class_activation_map(tinycam):
    """With global average pooling, Grad-CAM = ReLU(features @ W[:, c]) (CAM), exactly."""
    model = _model(tinycam)
    images, _, _ = _patch_images(4, seed=1)
    maps, probs, classes = gradcam(model, images)
    np.testing.assert_allclose(probs, model.predict(images, verbose=0), atol=1e-5)
    assert classes.tolist() == probs.argmax(1).tolist()
    features = keras.ops.convert_to_numpy(
        tt.get_backbone_model(model)(model.get_layer("preprocess")(images)))
    kernel = keras.ops.convert_to_numpy(tt.get_head(model).get_layer("predictions").kernel)
    cam = np.maximum(np.einsum("nhwk,kn->nhw", features, kernel[:, classes]), 0)
    cam /= cam.max(axis=(1, 2), keepdims=True)
    assert maps.shape == (4, 12, 12)
    np.testing.assert_allclose(maps, cam, atol=1e-4)

    heatmaps = tt.explain(model, images, batch_size=3)  # two batches, resized to the input
    assert heatmaps.shape == (4, SIZE, SIZE) and heatmaps.dtype == np.float32
    assert heatmaps.min() >= 0 and np.allclose(heatmaps.max(axis=(1, 2)), 1, atol=1e-3)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow backend only: a tf.GradientTape cross-check")
def test_matches_an_independent_gradient_tape_on_a_flatten_head(tinycam):
    """The nonlinear flatten head (Dense-ReLU-Dense): the keras.io recipe written out with a tape."""
    import tensorflow as tf

    model = _model(tinycam, head="flatten", units=8)
    images, _, _ = _patch_images(3, seed=2)
    head = tt.get_head(model)
    fc, out = head.get_layer("fc"), head.get_layer("predictions")
    pixels = tf.constant(images, tf.float32) / 127.5 - 1.0  # MobileNet-style "tf" preprocessing
    features = tt.get_backbone_model(model)(pixels)
    with tf.GradientTape() as tape:
        tape.watch(features)
        hidden = tf.nn.relu(tf.matmul(tf.reshape(features, (3, -1)), fc.kernel) + fc.bias)
        logits = tf.matmul(hidden, out.kernel) + out.bias
        score = tf.reduce_sum(logits[:, 1])
    grads = tape.gradient(score, features).numpy()
    expected = np.maximum((grads.mean(axis=(1, 2), keepdims=True) * features.numpy()).sum(-1), 0)
    peak = expected.max(axis=(1, 2), keepdims=True)
    expected = np.divide(expected, peak, out=np.zeros_like(expected), where=peak > 0)
    maps, _, classes = gradcam(model, images, class_index=1)
    assert classes.tolist() == [1, 1, 1]
    np.testing.assert_allclose(maps, expected, atol=1e-5)


def test_heatmap_peaks_on_the_patch_that_decides_the_class(tinycam):
    """Train briefly on 'the colour of a small square is the class'; the heatmap finds the square."""
    model = _model(tinycam)
    tt.get_backbone_model(model).trainable = True
    x, y, _ = _patch_images(120, seed=3)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=6, batch_size=20, verbose=0)  # 100% right from epoch 4 on
    test_x, test_y, corners = _patch_images(30, seed=4)
    assert np.mean(model.predict(test_x, verbose=0).argmax(1) == test_y) >= 0.9
    heatmaps = tt.explain(model, test_x, class_index=test_y)
    margin = 3  # the map is 12x12: one cell is 4 px
    hits = []
    for heatmap, (r, c) in zip(heatmaps, corners):
        pr, pc = np.unravel_index(heatmap.argmax(), heatmap.shape)
        hits.append(r - margin <= pr < r + PATCH + margin and c - margin <= pc < c + PATCH + margin)
    assert np.mean(hits) >= 0.8, f"peak on the patch for only {np.mean(hits):.0%} of the images"
    inside = [h[r:r + PATCH, c:c + PATCH].mean() for h, (r, c) in zip(heatmaps, corners)]
    assert np.mean(inside) > 3 * np.mean(heatmaps)  # the heat is concentrated on the square


def test_class_index_forms_errors_and_a_reloaded_model(tinycam, tmp_path):
    model = _model(tinycam, augmentation="light")  # the augmentation layer is skipped
    images = tiny_pixels(2, SIZE)
    assert gradcam(model, images, class_index=[2, 0])[2].tolist() == [2, 0]
    assert gradcam(model, images[0])[0].shape == (1, 12, 12)  # one (H, W, 3) image
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    np.testing.assert_allclose(tt.explain(loaded, images, 1), tt.explain(model, images, 1), atol=1e-5)
    with pytest.raises(ValueError, match="class_index 3 is outside 0..2"):
        tt.explain(model, images, class_index=3)
    with pytest.raises(ValueError, match="one per image"):
        tt.explain(model, images, class_index=[0, 1, 2])
    with pytest.raises(ValueError, match=r"images of shape \(2, 32, 32, 3\)"):
        tt.explain(model, tiny_pixels(2, 32))
    with pytest.raises(ValueError, match="does not look like a build_transfer_model"):
        tt.explain(keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Flatten(),
                                     keras.layers.Dense(2)]), images)
