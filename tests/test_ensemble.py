"""ensemble(): one Keras model fusing members' probabilities; saves and exports as one model."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfx_transfer as tt
from tests.helpers import tiny_pixels
from tfx_transfer.models.ensembles import FuseProbabilities, ensemble
from tfx_transfer.models.transfer_model import build_transfer_model


def _members(n=2, classes=3):
    keras.utils.set_random_seed(0)
    return [build_transfer_model("tinycam", classes, input_shape=(32, 32, 3), weights=None,
                                 head="avg", dropout=0.0) for _ in range(n)]


def test_mean_and_weighted_mean_of_member_probabilities(tinycam):
    a, b = _members()
    x = tiny_pixels(6, 32)
    pa, pb = a.predict(x, verbose=0), b.predict(x, verbose=0)
    assert not np.allclose(pa, pb)
    fused = ensemble([a, b])
    assert a.name != b.name  # same default name: renamed so the ensemble's layers are unique
    np.testing.assert_allclose(fused.predict(x, verbose=0), (pa + pb) / 2, rtol=1e-5, atol=1e-6)
    weighted = ensemble([a, b], member_weights=[3, 1], name="weighted")
    np.testing.assert_allclose(weighted.predict(x, verbose=0), (3 * pa + pb) / 4,
                               rtol=1e-5, atol=1e-6)


def test_vote_shares_and_tie_breaking():
    a = np.array([[0.7, 0.2, 0.1], [0.1, 0.5, 0.4], [0.2, 0.3, 0.5]], "float32")
    b = np.array([[0.1, 0.8, 0.1], [0.2, 0.6, 0.2], [0.3, 0.3, 0.4]], "float32")
    c = np.array([[0.5, 0.4, 0.1], [0.0, 0.1, 0.9], [0.3, 0.3, 0.4]], "float32")
    out = FuseProbabilities("vote")([a, b, c]).numpy()
    np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-6)
    assert out.argmax(-1).tolist() == [0, 1, 2]  # majorities 2 of 3
    np.testing.assert_allclose(out[2], [0, 0, 1], atol=1e-6)  # unanimous
    # two models disagreeing: a tie, won by the higher mean probability
    tie = FuseProbabilities("vote")([a[:1], b[:1]]).numpy()
    assert tie.argmax(-1).tolist() == [1]  # mean: class 0 -> 0.4, class 1 -> 0.5
    assert tie[0, 0] == pytest.approx(0.5 / 1.001) and tie[0, 1] == pytest.approx(0.501 / 1.001)
    # weights decide the vote
    assert FuseProbabilities("vote", [3, 1])([a[:1], b[:1]]).numpy().argmax(-1).tolist() == [0]


def test_errors_name_the_problem(tinycam):
    a, b = _members()
    with pytest.raises(ValueError, match="at least 2"):
        ensemble([a])
    with pytest.raises(ValueError, match="method"):
        ensemble([a, b], method="median")
    with pytest.raises(ValueError, match="3 entries for 2"):
        ensemble([a, b], member_weights=[1, 1, 1])
    other = build_transfer_model(tinycam, 2, input_shape=(32, 32, 3), weights=None, head="avg")
    with pytest.raises(ValueError, match="share the input shape and number of classes"):
        ensemble([a, other])


def test_keras_file_round_trip(tmp_path, tinycam):
    fused = ensemble(_members(), method="vote", member_weights=[2, 1])
    x = tiny_pixels(3, 32)
    fused.save(tmp_path / "fused.keras")
    loaded = keras.saving.load_model(tmp_path / "fused.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), fused.predict(x, verbose=0),
                               rtol=1e-6, atol=1e-6)
    assert loaded.get_layer("fuse").get_config()["member_weights"] == [2.0, 1.0]


def test_exports_as_one_saved_model(tmp_path, tinycam):
    export = pytest.importorskip("tfx_transfer.export.saved_model")
    a, b = _members()
    fused = ensemble([a, b])
    x = tiny_pixels(4, 32)
    path = export.export_saved_model(fused, tmp_path / "export", ["x", "y", "z"])
    served = tt.load_exported(path)
    np.testing.assert_allclose(served.probabilities(x),
                               (a.predict(x, verbose=0) + b.predict(x, verbose=0)) / 2,
                               rtol=1e-5, atol=1e-6)
    assert served.metadata["backbone"] == tinycam and served.class_names == ["x", "y", "z"]
