"""ResNet backbones (model/backbone.py): shapes, weight counts, names, BatchNorm, Remat."""
import keras
import numpy as np
import pytest

from colabrcnn.model.backbone import BatchNorm, Remat, basic_block, resnet_graph
from colabrcnn.model.spec import STAGE_BLOCKS
from layer_checks import round_trip, to_numpy


def _body(arch, size=64, **kw):
    inp = keras.Input((size, size, 3))
    return keras.Model(inp, resnet_graph(inp, arch, **kw))


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_resnet_outputs_have_strides_2_to_32(arch):
    body = _body(arch)
    channels = [64, 64, 128, 256, 512] if arch == "resnet18" else [64, 256, 512, 1024, 2048]
    assert [tuple(t.shape[1:]) for t in body.outputs] == \
        [(64 // s, 64 // s, c) for s, c in zip((4, 4, 8, 16, 32), channels)]


@pytest.mark.parametrize("arch,app", [("resnet50", "ResNet50"), ("resnet101", "ResNet101")])
def test_resnet_weights_match_keras_applications(arch, app):
    # matterport's ResNets are Caffe-style (stride on the first 1x1, convs with bias):
    # the same weights, one for one, as keras.applications' ResNet v1 without its top.
    ours = _body(arch)
    ref = getattr(keras.applications, app)(include_top=False, weights=None,
                                           input_shape=(64, 64, 3))
    assert ours.count_params() == ref.count_params()
    assert sorted(tuple(w.shape) for w in ours.weights) == \
        sorted(tuple(w.shape) for w in ref.weights)


def test_resnet_layer_names_are_matterports():
    names = {layer.name for layer in _body("resnet101").layers}
    last4 = "res4" + chr(ord("a") + STAGE_BLOCKS["resnet101"][4] - 1)
    assert last4 == "res4w"
    for name in ("conv1", "bn_conv1", "res2a_branch1", "bn2a_branch1", "res2c_branch2c",
                 "res3d_branch2b", last4 + "_branch2c", "res5c_branch2a", "bn5c_branch2c"):
        assert name in names, name
    names18 = {layer.name for layer in _body("resnet18").layers}
    assert {"res2b_branch2b", "res3a_branch1", "bn5b_branch2b"} <= names18
    assert "res2a_branch1" not in names18  # same width: identity shortcut


def test_batchnorm_freezes_statistics_unless_train_bn():
    x = np.random.default_rng(0).normal(3.0, 2.0, (4, 5, 5, 8)).astype(np.float32)
    frozen, trained = BatchNorm(False), BatchNorm(True)
    # training=True with train_bn=False normalises with the moving statistics (0, 1).
    np.testing.assert_allclose(to_numpy(frozen(x, training=True)), x / np.sqrt(1 + 1e-3),
                               rtol=1e-5)
    out = to_numpy(trained(x, training=True))  # batch statistics
    assert abs(out.mean()) < 1e-4 and abs(out.std() - 1) < 1e-2
    copy = round_trip(trained)
    assert copy.train_bn is True


def test_remat_block_round_trip_gives_the_same_output():
    inp = keras.Input((8, 8, 16))
    block = Remat(keras.Model(inp, basic_block(inp, 16, 2, "a"), name="res2a"))
    x = np.random.default_rng(1).normal(size=(2, 8, 8, 16)).astype(np.float32)
    y = to_numpy(block(x))
    copy = round_trip(block)
    copy(x)
    copy.set_weights(block.get_weights())
    np.testing.assert_allclose(to_numpy(copy(x)), y, rtol=1e-5, atol=1e-5)
    assert [layer.name for layer in copy.layers] == ["res2a"]
