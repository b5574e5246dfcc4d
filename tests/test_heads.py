"""Box/class head and mask head (model/heads.py): shapes, weight counts, names."""
import keras
import numpy as np

from colabrcnn.model.heads import BlockConv2DTranspose, ClassifierHead, MaskHead, ROIConv
from layer_checks import round_trip, to_numpy, weight_count


def test_classifier_head_shapes_and_weights():
    nc, fc, c, r = 4, 32, 8, 5
    head = ClassifierHead(nc, fc, 7, train_bn=False)
    pooled = keras.Input((r, 7, 7, c))
    model = keras.Model(pooled, head(pooled, r))
    x = np.random.default_rng(0).normal(size=(2, r, 7, 7, c)).astype(np.float32)
    logits, probs, deltas = [to_numpy(t) for t in model(x)]
    assert logits.shape == (2, r, nc) and probs.shape == (2, r, nc)
    assert deltas.shape == (2, r, nc, 4)
    np.testing.assert_allclose(probs.sum(-1), 1, rtol=1e-5)
    layers = [head.conv1, head.bn1, head.conv2, head.bn2, head.logits, head.bbox]
    assert [layer.name for layer in layers] == [
        "mrcnn_class_conv1", "mrcnn_class_bn1", "mrcnn_class_conv2", "mrcnn_class_bn2",
        "mrcnn_class_logits", "mrcnn_bbox_fc"]
    # conv 7x7 as the first "FC", BN (4 per channel), 1x1 conv, then two Dense layers.
    expected = (49 * c * fc + fc) + 4 * fc + (fc * fc + fc) + 4 * fc + (fc * nc + nc) \
        + (fc * 4 * nc + 4 * nc)
    assert weight_count(layers) == expected == model.count_params()


def test_mask_head_shapes_and_weights():
    nc, c, r = 3, 8, 4
    head = MaskHead(nc, c, train_bn=False)
    pooled = keras.Input((r, 14, 14, c))
    model = keras.Model(pooled, head(pooled, r))
    out = to_numpy(model(np.ones((2, r, 14, 14, c), np.float32)))
    assert out.shape == (2, r, 28, 28, nc)
    names = [layer.name for layer in head.convs + head.bns + [head.deconv, head.out]]
    assert names == [f"mrcnn_mask_conv{i}" for i in range(1, 5)] + \
        [f"mrcnn_mask_bn{i}" for i in range(1, 5)] + ["mrcnn_mask_deconv", "mrcnn_mask"]
    expected = 4 * (9 * c * c + c) + 4 * 4 * c + (4 * c * c + c) + (c * nc + nc)
    assert model.count_params() == expected


def test_roi_conv_is_the_valid_convolution_it_replaces():
    x = np.random.default_rng(0).normal(size=(6, 7, 7, 8)).astype(np.float32)
    ours = ROIConv(16, 7, padding="valid", name="mrcnn_class_conv1")
    conv = keras.layers.Conv2D(16, 7, padding="valid")
    y = to_numpy(ours(x))
    conv(x)
    conv.set_weights(ours.get_weights())
    assert [tuple(w.shape) for w in ours.weights] == [(7, 7, 8, 16), (16,)]
    np.testing.assert_allclose(y, to_numpy(conv(x)), rtol=1e-5, atol=1e-5)
    assert y.shape == (6, 1, 1, 16)
    # Other input sizes fall back to the convolution.
    big = np.random.default_rng(1).normal(size=(2, 9, 9, 8)).astype(np.float32)
    np.testing.assert_allclose(to_numpy(ours(big)), to_numpy(conv(big)), rtol=1e-5,
                               atol=1e-5)
    round_trip(ours)


def test_block_deconv_is_the_transposed_convolution_it_replaces(monkeypatch):
    # Non-square input, bias and relu: the matmul + reshape must place each pixel's
    # 2x2 block where Keras' transposed convolution puts it.
    x = np.random.default_rng(0).normal(size=(3, 5, 7, 8)).astype(np.float32)
    ours = BlockConv2DTranspose(6, 2, strides=2, activation="relu",
                                bias_initializer="random_normal", name="mrcnn_mask_deconv")
    ref = keras.layers.Conv2DTranspose(6, 2, strides=2, activation="relu")
    ours.build(x.shape)
    ref.build(x.shape)
    ref.set_weights(ours.get_weights())
    expected = to_numpy(ref(x))

    # The block path must not go through the transposed convolution at all.
    def refuse(self, inputs):
        raise AssertionError("BlockConv2DTranspose fell back to Conv2DTranspose.call")
    monkeypatch.setattr(keras.layers.Conv2DTranspose, "call", refuse)
    y = to_numpy(ours(x))
    monkeypatch.undo()
    assert y.shape == (3, 10, 14, 6)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    round_trip(ours)

    # A kernel larger than its stride overlaps blocks: the layer falls back.
    wide = BlockConv2DTranspose(4, 3, strides=2, padding="same")
    ref3 = keras.layers.Conv2DTranspose(4, 3, strides=2, padding="same")
    wide.build(x.shape)
    ref3.build(x.shape)
    ref3.set_weights(wide.get_weights())
    np.testing.assert_allclose(to_numpy(wide(x)), to_numpy(ref3(x)), rtol=1e-5, atol=1e-5)
