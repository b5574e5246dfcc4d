"""Loading weight files by layer name: matterport's Keras 2 HDF5 layout (written here
with h5py, as matterport's ``mask_rcnn_coco.h5`` is laid out), the old ImageNet file,
keras.applications ResNets (legacy ``.h5`` and Keras 3 ``.weights.h5``), our own files.

Every test compares every loaded array with what the file holds."""
import re
import warnings

import h5py
import keras
import numpy as np
import pytest

from colabrcnn import Config, MaskRCNN, weights
from colabrcnn.errors import WeightsError
from tiny_model import TinyConfig


class Coco(Config):
    """matterport's COCO architecture (ResNet-101, 81 classes), at a small image size."""
    NAME = "coco_test"
    NUM_CLASSES = 81
    BACKBONE = "resnet101"
    IMAGE_MIN_DIM = IMAGE_MAX_DIM = 128
    IMAGES_PER_GPU = 1
    PRE_NMS_LIMIT = 256
    POST_NMS_ROIS_TRAINING = 128
    POST_NMS_ROIS_INFERENCE = 64
    TRAIN_ROIS_PER_IMAGE = 32
    RPN_TRAIN_ANCHORS_PER_IMAGE = 64
    MAX_GT_INSTANCES = 4
    DETECTION_MAX_INSTANCES = 8


def _enc(names, as_str):
    return list(names) if as_str else [n.encode("utf8") for n in names]


def write_matterport_h5(path, layers, *, as_str=False, extra_layers=(), model_weights=False,
                        keras1_names=False, flat_rpn=False, chunk_layer_names=False):
    """Write ``layers`` ({name: [arrays]}) in the Keras 2 ``save_weights`` layout.

    rpn_model is a nested model: one group whose weight names (and datasets) live under
    the inner layers' names. ``extra_layers`` are weightless layers, listed with empty
    ``weight_names`` as Keras 2 did. ``model_weights`` nests it all as ``model.save()``.
    """
    with h5py.File(path, "w") as f:
        if model_weights:
            f.attrs["model_config"] = b'{"class_name": "Model"}'
            f.attrs["keras_version"] = b"2.2.4"
            root = f.create_group("model_weights")
        else:
            root = f
        order = list(extra_layers[:1]) + [n for n in layers] + list(extra_layers[1:])
        if flat_rpn and "rpn_model" in layers:
            kernel, bias, k2, b2, k3, b3 = layers["rpn_model"]
            rpn = {"rpn_conv_shared": [kernel, bias], "rpn_class_raw": [k2, b2],
                   "rpn_bbox_pred": [k3, b3]}
            layers = {k: v for k, v in layers.items() if k != "rpn_model"}
            layers.update(rpn)
            order = [n for n in order if n != "rpn_model"] + list(rpn)
        if chunk_layer_names:  # Keras 2 splits attributes over 64 KB like this
            half = len(order) // 2
            root.attrs["layer_names0"] = _enc(order[:half], as_str)
            root.attrs["layer_names1"] = _enc(order[half:], as_str)
        else:
            root.attrs["layer_names"] = _enc(order, as_str)
        root.attrs["backend"] = "tensorflow" if as_str else b"tensorflow"
        if not keras1_names:
            root.attrs["keras_version"] = "2.1.3" if as_str else b"2.1.3"
        for name in extra_layers:
            g = root.create_group(name)
            g.attrs["weight_names"] = np.array([])  # what Keras 2 wrote for no weights
        for name, arrays in layers.items():
            g = root.create_group(name)
            if name == "rpn_model":
                inner = ["rpn_conv_shared", "rpn_class_raw", "rpn_bbox_pred"]
                wnames = [f"{inner[i // 2]}/{'kernel' if i % 2 == 0 else 'bias'}:0"
                          for i in range(len(arrays))]
            elif keras1_names:  # Keras 1: conv1_W:0, bn_conv1_running_std:0
                suffix = (["gamma", "beta", "running_mean", "running_std"]
                          if len(arrays) == 4 else ["W", "b"])
                wnames = [f"{name}_{s}:0" for s in suffix]
            else:
                suffix = (["gamma", "beta", "moving_mean", "moving_variance"]
                          if len(arrays) == 4 else ["kernel", "bias"])
                wnames = [f"{name}/{s}:0" for s in suffix]
            wnames = wnames[:len(arrays)]
            for w, a in zip(wnames, arrays):
                g.create_dataset(w, data=a)
            g.attrs["weight_names"] = _enc(wnames, as_str)


def random_layers(model, rng, only=None):
    """{layer name: [random arrays shaped like its weights]} for a colabrcnn model."""
    out = {}
    for name, layer in weights.named_layers(model.keras_model).items():
        if only is not None and not only(name):
            continue
        out[name] = [rng.random(tuple(w.shape), dtype=np.float32) - 0.5
                     for w in layer.weights]
    return out


def model_arrays(model):
    return {n: [keras.ops.convert_to_numpy(w) for w in l.weights]
            for n, l in weights.named_layers(model.keras_model).items()}


def assert_layers_equal(model, expected, names=None):
    actual = model_arrays(model)
    names = expected if names is None else names
    for name in names:
        assert len(actual[name]) == len(expected[name]), name
        for a, e in zip(actual[name], expected[name]):
            np.testing.assert_array_equal(a, e, err_msg=name)


# ------------------------------------------------------------ COCO (ResNet-101)
@pytest.fixture(scope="module")
def coco_file(tmp_path_factory):
    """A file laid out as mask_rcnn_coco.h5, random values; and the model it fits."""
    path = str(tmp_path_factory.mktemp("coco") / "mask_rcnn_coco.h5")
    model = MaskRCNN("inference", Coco(), str(tmp_path_factory.mktemp("logs")))
    layers = random_layers(model, np.random.default_rng(0))
    write_matterport_h5(path, layers, extra_layers=("input_image", "zero_padding2d_1",
                                                    "activation_1", "ROI", "mrcnn_bbox"))
    return path, layers, model


def test_coco_layout_resnet101_loads_every_array(coco_file):
    path, layers, model = coco_file
    assert "res4w_branch2c" in layers and layers["mrcnn_class_logits"][0].shape == (1024, 81)
    report = model.load_weights(path, by_name=True)
    assert report["layout"] == "keras2"
    assert report["missing"] == [] and report["mismatched"] == [] and report["unused"] == []
    assert set(report["loaded"]) == set(layers) and "rpn_model" in report["loaded"]
    assert_layers_equal(model, layers)
    # The registry's expected layers are there (what fetch() checks).
    assert weights.verify(path, _without_size(weights.REGISTRY["coco"])) is None


def _without_size(entry):
    from dataclasses import replace
    return replace(entry, size=None)


def test_coco_into_new_class_count_with_exclude(coco_file, tmp_path):
    path, layers, _ = coco_file
    model = MaskRCNN("training", Coco(NUM_CLASSES=3), str(tmp_path))
    before = model_arrays(model)
    with pytest.raises(WeightsError) as err:
        model.load_weights(path, by_name=True)
    msg = str(err.value)
    # Names every layer that does not fit, with both shapes.
    assert "mrcnn_class_logits" in msg and "(1024, 3)" in msg and "(1024, 81)" in msg
    assert "mrcnn_bbox_fc" in msg and "(1024, 12)" in msg and "(1024, 324)" in msg
    assert "mrcnn_mask" in msg and "NUM_CLASSES" in msg and "exclude" in msg
    assert_layers_equal(model, before)  # all or nothing: nothing was assigned

    # on_mismatch="skip": warns, leaves those layers alone, loads the rest.
    with pytest.warns(UserWarning) as caught:
        report = model.load_weights(path, by_name=True, on_mismatch="skip")
    messages = [str(w.message) for w in caught]
    assert len(messages) == 3
    assert any(re.search(r"mrcnn_bbox_fc.*\(1024, 12\).*\(1024, 324\).*skipped", m)
               for m in messages)
    heads = {"mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_mask"}
    assert set(report["mismatched"]) == heads
    assert_layers_equal(model, before, heads)
    body = [n for n in layers if n not in heads]
    assert_layers_equal(model, layers, body)

    # The usual path: exclude=weights.HEADS.
    for w in model.keras_model.weights:
        w.assign(np.zeros(tuple(w.shape), w.dtype))
    report = model.load_weights(path, by_name=True, exclude=weights.HEADS, verbose=1)
    assert set(report["skipped"]) == heads
    assert report["missing"] == [] and report["mismatched"] == []
    assert report["unused"] == []  # in the file and in the model, only excluded
    assert_layers_equal(model, layers, body)
    for name in heads:  # heads untouched
        assert all(not np.any(a) for a in model_arrays(model)[name])


# -------------------------------------------------------------- small variants
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return MaskRCNN("inference", TinyConfig(), str(tmp_path_factory.mktemp("tiny")))


@pytest.mark.parametrize("variant", [
    dict(as_str=True),
    dict(model_weights=True),
    dict(keras1_names=True, chunk_layer_names=True),
    dict(flat_rpn=True, as_str=True),
])
def test_layout_variants(tiny, tmp_path, variant):
    layers = random_layers(tiny, np.random.default_rng(1))
    path = str(tmp_path / "w.h5")
    write_matterport_h5(path, layers, extra_layers=("input_image", "activation_3"), **variant)
    report = tiny.load_weights(path, by_name=True)
    assert report["missing"] == [] and report["unused"] == [], report
    assert_layers_equal(tiny, layers)


def test_exclude_takes_names_and_regexes(tiny, tmp_path):
    layers = random_layers(tiny, np.random.default_rng(2))
    path = str(tmp_path / "w.h5")
    write_matterport_h5(path, layers)
    before = model_arrays(tiny)
    report = weights.load_weights(tiny.keras_model, path, exclude=[r"mrcnn_.*", "fpn_p2",
                                                                   "rpn_model"])
    skipped = set(report["skipped"])
    assert "fpn_p2" in skipped and "rpn_model" in skipped and "mrcnn_mask" in skipped
    assert "fpn_p3" not in skipped and "mrcnn_mask_conv1" in skipped
    assert_layers_equal(tiny, before, skipped)
    assert_layers_equal(tiny, layers, [n for n in layers if n not in skipped])
    report = weights.load_weights(tiny.keras_model, path, exclude="fpn_p2")  # one name
    assert report["skipped"] == ["fpn_p2"]


def test_our_own_checkpoint_round_trip_and_report(tiny, tmp_path, capsys):
    other = MaskRCNN("training", TinyConfig(), str(tmp_path))
    for w in other.keras_model.weights:
        w.assign(np.random.default_rng(3).standard_normal(tuple(w.shape)).astype(w.dtype))
    path = other.save_weights(str(tmp_path / "ours.h5"))
    report = tiny.load_weights(path, by_name=True, verbose=2)
    assert report["missing"] == [] and report["layout"] == "keras2"
    assert_layers_equal(tiny, model_arrays(other))
    out = capsys.readouterr().out
    assert "Loaded" in out and "loaded: conv1" in out


def test_unknown_layers_missing_layers_and_bad_files(tiny, tmp_path):
    layers = random_layers(tiny, np.random.default_rng(4), only=lambda n: n.startswith("fpn"))
    layers["some_other_layer"] = [np.zeros((3,), "float32")]
    path = str(tmp_path / "w.h5")
    write_matterport_h5(path, layers)
    report = tiny.load_weights(path, by_name=True)
    assert report["unused"] == ["some_other_layer"]
    assert "conv1" in report["missing"] and "rpn_model" in report["missing"]
    with pytest.raises(WeightsError, match="not found"):
        tiny.load_weights(str(tmp_path / "nope.h5"), by_name=True)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"<html>Not Found</html>")
    with pytest.raises(WeightsError, match="not an HDF5 file"):
        tiny.load_weights(str(junk), by_name=True)
    with pytest.raises(WeightsError, match="on_mismatch"):
        weights.load_weights(tiny.keras_model, path, on_mismatch="ignore")


def test_weight_count_mismatch_names_the_layer(tiny, tmp_path):
    layers = random_layers(tiny, np.random.default_rng(5))
    layers["fpn_p2"] = layers["fpn_p2"][:1]  # kernel without bias
    path = str(tmp_path / "w.h5")
    write_matterport_h5(path, layers)
    with pytest.raises(WeightsError, match=r"fpn_p2.*1 weights.*2"):
        tiny.load_weights(path, by_name=True)


# ------------------------------------------------------- ImageNet, ResNet-50
@pytest.fixture(scope="module")
def r50(tmp_path_factory):
    return MaskRCNN("inference", Coco(BACKBONE="resnet50", NUM_CLASSES=2),
                    str(tmp_path_factory.mktemp("r50")))


def _is_backbone(name):
    return name.startswith(("conv1", "bn_conv1", "res", "bn"))


def test_old_imagenet_resnet50_file(r50, tmp_path):
    """fchollet's notop file (matterport's ImageNet start): Keras 1 weight names."""
    layers = random_layers(r50, np.random.default_rng(6), only=_is_backbone)
    assert len(layers) == 106  # 53 convs + 53 batch norms
    path = str(tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")
    write_matterport_h5(path, layers, keras1_names=True, extra_layers=("input_1", "avg_pool"))
    assert weights.verify(path, _without_size(weights.REGISTRY["imagenet-resnet50"]),
                          checksum=False) is None
    report = r50.load_weights(path, by_name=True)
    assert sorted(report["loaded"]) == sorted(layers)
    assert "fpn_p2" in report["missing"] and "rpn_model" in report["missing"]
    assert_layers_equal(r50, layers)


def _application_layers(app, rng):
    """Random values into a keras.applications model; {its layer name: arrays}."""
    out = {}
    for layer in app.layers:
        if layer.weights:
            arrays = [rng.standard_normal(tuple(w.shape)).astype("float32")
                      for w in layer.weights]
            for w, a in zip(layer.weights, arrays):
                w.assign(a)
            out[layer.name] = arrays
    return out


def _write_applications_h5(path, app_layers, all_names):
    """The layout of the files keras.applications downloads (Keras 2 save_weights)."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [n.encode() for n in all_names]
        f.attrs["keras_version"] = b"2.2.4"
        for name in all_names:
            g = f.create_group(name)
            arrays = app_layers.get(name, [])
            kinds = ["gamma", "beta", "moving_mean", "moving_variance"] \
                if len(arrays) == 4 else ["kernel", "bias"]
            wnames = [f"{name}/{k}:0" for k in kinds[:len(arrays)]]
            for w, a in zip(wnames, arrays):
                g.create_dataset(w, data=a)
            g.attrs["weight_names"] = [w.encode() for w in wnames]


def _check_applications_loaded(model, app_layers, report):
    mapped = {weights.keras_applications_name(n): n for n in app_layers}
    assert None not in mapped
    assert sorted(report["loaded"]) == sorted(mapped)
    assert report["unused"] == []
    assert_layers_equal(model, {m: app_layers[n] for m, n in mapped.items()})


@pytest.fixture(scope="module")
def keras_r50(tmp_path_factory):
    app = keras.applications.ResNet50(weights=None, include_top=False,
                                      input_shape=(None, None, 3))
    layers = _application_layers(app, np.random.default_rng(7))
    return app, layers, tmp_path_factory.mktemp("apps")


def test_keras_applications_resnet50_legacy_h5(r50, keras_r50):
    app, layers, folder = keras_r50
    path = str(folder / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")
    _write_applications_h5(path, layers, [l.name for l in app.layers])
    info = weights.inspect_file(path)
    assert info["layout"] == "keras2/keras-applications"
    assert info["renamed"]["conv2_block1_0_conv"] == "res2a_branch1"
    assert info["renamed"]["conv4_block6_3_bn"] == "bn4f_branch2c"
    report = r50.load_weights(path, by_name=True)
    _check_applications_loaded(r50, layers, report)


def test_keras_applications_resnet50_saved_by_keras3(r50, keras_r50):
    """Keras 3's own writers: legacy model.save('.h5') and save_weights('.weights.h5')."""
    app, layers, folder = keras_r50
    legacy = str(folder / "app_model.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        app.save(legacy)  # Keras 2 layout, weights under model_weights
    report = r50.load_weights(legacy, by_name=True)
    assert report["layout"] == "keras2-model/keras-applications"
    _check_applications_loaded(r50, layers, report)

    new = str(folder / "app.weights.h5")
    app.save_weights(new)  # Keras 3 layout: layers by position ("conv2d_17")
    with h5py.File(new) as f:
        assert "layers" in f and "conv1_conv" not in f["layers"]
    report = r50.load_weights(new, by_name=True)
    assert report["layout"] == "keras3/keras-applications"
    _check_applications_loaded(r50, layers, report)


def test_keras_applications_resnet101(coco_file, tmp_path):
    _, _, model = coco_file
    app = keras.applications.ResNet101(weights=None, include_top=False,
                                       input_shape=(None, None, 3))
    layers = _application_layers(app, np.random.default_rng(8))
    assert "conv4_block23_3_conv" in layers
    assert weights.keras_applications_name("conv4_block23_3_conv") == "res4w_branch2c"
    path = str(tmp_path / "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5")
    _write_applications_h5(path, layers, [l.name for l in app.layers])
    assert weights.verify(path, _without_size(weights.REGISTRY["keras-resnet101"]),
                          checksum=False) is None
    report = model.load_weights(path, by_name=True)
    _check_applications_loaded(model, layers, report)


def test_keras_model_as_source(r50, keras_r50):
    app, layers, _ = keras_r50
    report = weights.load_weights(r50.keras_model, app)
    _check_applications_loaded(r50, layers, report)


def test_name_mapping_table():
    m = weights.keras_applications_name
    assert m("conv1_conv") == "conv1" and m("conv1_bn") == "bn_conv1"
    assert m("conv2_block1_1_conv") == "res2a_branch2a"
    assert m("conv2_block3_2_conv") == "res2c_branch2b"
    assert m("conv3_block4_3_bn") == "bn3d_branch2c"
    assert m("conv5_block1_0_bn") == "bn5a_branch1"
    assert m("conv4_block2_out") is None and m("probs") is None and m("pool1_pad") is None


def test_unsupported_layouts_say_what_to_do(tmp_path, tiny):
    v2 = str(tmp_path / "resnet50v2.h5")
    _write_applications_h5(v2, {"conv1_conv": [np.zeros((7, 7, 3, 64), "float32")],
                                "conv2_block1_preact_bn": [np.zeros(64, "float32")] * 4},
                           ["conv1_conv", "conv2_block1_preact_bn"])
    with pytest.raises(WeightsError, match="ResNet V2"):
        tiny.load_weights(v2, by_name=True)
    own = str(tmp_path / "own.weights.h5")
    tiny.keras_model.save_weights(own)  # by layer name, whatever the suffix (issue 14)
    assert tiny.load_weights(own, by_name=True)["loaded"]
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    positional = str(tmp_path / "other.weights.h5")
    other.save_weights(positional)  # Keras 3 layout of an unrelated model
    with pytest.raises(WeightsError, match="by position"):
        tiny.load_weights(positional, by_name=True)


def test_get_imagenet_weights_picks_the_backbone_file(r50, monkeypatch):
    asked = []
    monkeypatch.setattr(weights, "fetch", lambda name, cache_dir=None: asked.append(name)
                        or f"/cache/{name}.h5")
    assert r50.get_imagenet_weights() == "/cache/imagenet-resnet50.h5"
    assert asked == ["imagenet-resnet50"]
