"""Export: a `.keras` file that loads back in safe mode and detects the same, a loader
that wraps it for detect(), and a TensorFlow SavedModel (tiny untrained model)."""
import json
import os
import zipfile

import keras
import numpy as np
import pytest

from colabrcnn import export
from colabrcnn.data import shapes
from colabrcnn.errors import ConfigError
from colabrcnn.model.rpn import ProposalLayer
from tiny_model import TinyConfig, tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("logs"), seed=3)


@pytest.fixture(scope="module")
def images():
    ds = shapes(3, 64, seed=5)
    return [ds.load_image(i) for i in ds.image_ids] + [
        np.random.default_rng(0).integers(0, 255, (40, 90, 3), dtype=np.uint8)]


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("export") / "tiny.keras")
    return export.export_keras(model, path)


def assert_same_detections(expected, got):
    assert len(expected) == len(got)
    for a, b in zip(expected, got):
        assert len(a["class_ids"]) > 0
        np.testing.assert_array_equal(a["class_ids"], b["class_ids"])
        np.testing.assert_array_equal(a["rois"], b["rois"])
        np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-5, atol=1e-6)
        assert a["masks"].shape == b["masks"].shape
        assert (a["masks"] != b["masks"]).mean() < 1e-3


def test_keras_file_loads_in_safe_mode_with_the_same_outputs(model, exported, images):
    assert os.path.exists(exported)
    assert os.path.exists(export.config_path_for(exported))
    loaded = keras.saving.load_model(exported)   # safe_mode=True is the default
    molded, metas, _ = model.mold_inputs(images[:2])
    inputs = {"input_image": molded, "input_image_meta": metas}
    want = model.keras_model.predict_on_batch(inputs)
    got = loaded.predict_on_batch(inputs)
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), rtol=1e-5,
                                   atol=1e-6, err_msg=k)


def test_saved_config_is_small_and_anchors_are_regenerated(model, exported):
    with zipfile.ZipFile(exported) as z:
        text = z.read("config.json").decode()
    assert len(text) < 200_000          # no anchor array in it
    assert "anchor_params" in text and "Lambda" not in text
    layer = model.keras_model.get_layer("ROI")
    config = layer.get_config()
    assert config["anchors"] is None
    again = ProposalLayer.from_config(json.loads(json.dumps(config)))
    np.testing.assert_array_equal(again.anchors, layer.anchors)
    assert again.anchors.shape == model._anchors((64, 64)).shape


def test_load_exported_detects_like_the_original(model, exported, images):
    expected = model.detect(images)
    loaded = export.load_exported(exported)         # Config from tiny.config.json
    assert loaded.config.IMAGE_SHAPE.tolist() == model.config.IMAGE_SHAPE.tolist()
    assert_same_detections(expected, loaded.detect(images))
    # An explicit Config (object or JSON) works too; a mismatching one is refused.
    assert_same_detections(expected[:1],
                           export.load_exported(exported, TinyConfig()).detect(images[:1]))
    with pytest.raises(ConfigError, match="shape"):
        export.load_exported(exported, TinyConfig(IMAGE_MIN_DIM=128, IMAGE_MAX_DIM=128))
    with pytest.raises(ConfigError, match="NUM_CLASSES"):
        export.load_exported(exported, {**json.loads(TinyConfig().to_json()),
                                        "NUM_CLASSES": 3})
    with pytest.raises(ConfigError, match="inference"):
        loaded.train(None, None, 0.01, 1, "heads")


def test_load_inference_model_from_h5_and_config(model, images, tmp_path):
    weights = model.save_weights(str(tmp_path / "w.h5"))
    (tmp_path / "config.json").write_text(model.config.to_json())
    again = export.load_inference_model(weights, str(tmp_path / "config.json"),
                                        model_dir=str(tmp_path))
    assert_same_detections(model.detect(images[:2]), again.detect(images[:2]))
    # The config is optional: the config.json beside the weights is read (as the
    # notebook's load_for_inference does; it is the same loader).
    side = export.load_inference_model(weights, model_dir=str(tmp_path))
    assert side.config.to_dict() == model.config.to_dict()
    assert_same_detections(model.detect(images[:2]), side.detect(images[:2]))
    # Weights alone, with no config beside them or inside: the message asks for one.
    (tmp_path / "bare").mkdir()
    bare = model.save_weights(str(tmp_path / "bare" / "w.h5"))
    with pytest.raises(ConfigError, match="Config"):
        export.load_inference_model(bare)


def test_config_from_json_round_trip_and_overrides(tmp_path):
    c = TinyConfig()
    assert export.config_from_json(c.to_json()).to_dict() == c.to_dict()
    small = export.config_from_json({"NUM_CLASSES": 3, "IMAGE_MAX_DIM": 256,
                                     "IMAGE_MIN_DIM": 256})
    assert small.NUM_CLASSES == 3 and list(small.IMAGE_SHAPE) == [256, 256, 3]
    with pytest.raises(ConfigError):
        export.config_from_json({"NUM_CLASSES": 3, "NOT_A_SETTING": 1})
    with pytest.raises(ConfigError, match="not found"):
        export.config_from_json(str(tmp_path / "missing.json"))


def test_saved_model_reloads_with_tf_and_runs(model, images, tmp_path):
    import tensorflow as tf
    path = export.export_saved_model(model, str(tmp_path / "sm"))
    loaded = tf.saved_model.load(path)
    molded, metas, _ = model.mold_inputs(images[:2])
    out = loaded.serve([tf.constant(molded, tf.float32), tf.constant(metas, tf.float32)])
    want = model.keras_model.predict_on_batch({"input_image": molded,
                                               "input_image_meta": metas})
    np.testing.assert_allclose(out["detections"].numpy(), want["detections"], rtol=1e-4,
                               atol=1e-5)
    assert out["mrcnn_mask"].shape == want["mrcnn_mask"].shape
    assert os.path.exists(os.path.join(path, "colabrcnn_config.json"))
