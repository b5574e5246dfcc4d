"""ResNet backbones and the feature pyramid, with matterport's layer names.

ResNet-50/101 follow matterport's (Caffe-style: stride on the first 1x1 conv, convs with
bias) so that ``mask_rcnn_coco.h5`` and the old ImageNet file load by name. ResNet-18
is ours: basic blocks, for CPU demos and tests.
"""
import keras
from keras import layers


@keras.saving.register_keras_serializable(package="colabrcnn")
class BatchNorm(layers.BatchNormalization):
    """BatchNormalization that stays in inference mode unless ``train_bn``.

    matterport freezes BN statistics by default (small batches give bad statistics);
    gamma/beta still train when the layer is trainable.
    """

    def __init__(self, train_bn=False, **kwargs):
        super().__init__(**kwargs)
        self.train_bn = bool(train_bn)

    def call(self, inputs, training=None):
        return super().call(inputs, training=bool(training) and self.train_bn)

    def get_config(self):
        return {**super().get_config(), "train_bn": self.train_bn}


def _conv(filters, kernel, name, strides=1, padding="valid"):
    return layers.Conv2D(filters, kernel, strides=strides, padding=padding, name=name,
                         use_bias=True, kernel_initializer="he_normal")


def bottleneck_block(x, kernel_size, filters, stage, block, strides=None, train_bn=False):
    """Bottleneck block; with ``strides`` it is a conv block (projection shortcut)."""
    f1, f2, f3 = filters
    conv_name = f"res{stage}{block}_branch"
    bn_name = f"bn{stage}{block}_branch"
    s = strides or 1
    y = _conv(f1, 1, conv_name + "2a", strides=s)(x)
    y = BatchNorm(train_bn, name=bn_name + "2a")(y)
    y = layers.Activation("relu")(y)
    y = _conv(f2, kernel_size, conv_name + "2b", padding="same")(y)
    y = BatchNorm(train_bn, name=bn_name + "2b")(y)
    y = layers.Activation("relu")(y)
    y = _conv(f3, 1, conv_name + "2c")(y)
    y = BatchNorm(train_bn, name=bn_name + "2c")(y)
    if strides is not None:
        shortcut = _conv(f3, 1, conv_name + "1", strides=s)(x)
        shortcut = BatchNorm(train_bn, name=bn_name + "1")(shortcut)
    else:
        shortcut = x
    y = layers.Add(name=f"res{stage}{block}_add")([y, shortcut])
    return layers.Activation("relu", name=f"res{stage}{block}_out")(y)


def basic_block(x, filters, stage, block, strides=1, train_bn=False):
    """ResNet-18 basic block (two 3x3 convs), same naming scheme."""
    conv_name = f"res{stage}{block}_branch"
    bn_name = f"bn{stage}{block}_branch"
    y = _conv(filters, 3, conv_name + "2a", strides=strides, padding="same")(x)
    y = BatchNorm(train_bn, name=bn_name + "2a")(y)
    y = layers.Activation("relu")(y)
    y = _conv(filters, 3, conv_name + "2b", padding="same")(y)
    # Zero-initialised last gamma: each block starts as identity, which keeps
    # activations tame when training from scratch.
    y = BatchNorm(train_bn, name=bn_name + "2b", gamma_initializer="zeros")(y)
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _conv(filters, 1, conv_name + "1", strides=strides)(x)
        shortcut = BatchNorm(train_bn, name=bn_name + "1")(shortcut)
    else:
        shortcut = x
    y = layers.Add(name=f"res{stage}{block}_add")([y, shortcut])
    return layers.Activation("relu", name=f"res{stage}{block}_out")(y)


STAGE4_BLOCKS = {"resnet50": 5, "resnet101": 22}


@keras.saving.register_keras_serializable(package="colabrcnn")
class Remat(layers.Layer):
    """Runs a residual block (a small sub-model) under ``keras.remat``.

    Only the block's input is kept for the backward pass; its inner activations are
    recomputed there. That trades ~20-30% more compute for most of the backbone's
    activation memory. The block's layers keep their matterport names (the sub-model
    is flattened by weight loading and layer selection, like any nested model).
    """

    def __init__(self, inner, **kwargs):
        kwargs.setdefault("name", inner.name + "_remat")
        super().__init__(**kwargs)
        self.inner = inner

    @property
    def layers(self):
        return [self.inner]

    def call(self, x):
        # No keyword arguments cross the remat boundary: TF's recompute_grad accepts
        # them only eagerly. BatchNorm takes `training` from Keras' call context.
        return keras.remat(self.inner)(x)

    def compute_output_shape(self, input_shape):
        return self.inner.compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(),
                "inner": keras.saving.serialize_keras_object(self.inner)}

    @classmethod
    def from_config(cls, config):
        config["inner"] = keras.saving.deserialize_keras_object(config["inner"])
        return cls(**config)


def _block(x, remat, name, fn):
    """Apply ``fn`` (one residual block) to x, as a rematerialised sub-model if asked."""
    if not remat:
        return fn(x)
    inp = keras.Input(shape=tuple(x.shape[1:]), name=f"input_{name}")
    return Remat(keras.Model(inp, fn(inp), name=name))(x)


def resnet_graph(input_image, architecture, train_bn=False, remat=False):
    """ResNet body -> [C1, C2, C3, C4, C5] (strides 2, 4, 8, 16, 32).

    remat: recompute each residual block's activations in the backward pass.
    """
    x = layers.ZeroPadding2D((3, 3))(input_image)
    x = _conv(64, 7, "conv1", strides=2)(x)
    x = BatchNorm(train_bn, name="bn_conv1")(x)
    x = layers.Activation("relu")(x)
    c1 = x = layers.MaxPooling2D((3, 3), strides=(2, 2), padding="same")(x)

    def bottleneck(x, filters, stage, block, strides=None):
        return _block(x, remat, f"res{stage}{block}", lambda t: bottleneck_block(
            t, 3, filters, stage, block, strides=strides, train_bn=train_bn))

    if architecture == "resnet18":
        outs = []
        for stage, filters in zip((2, 3, 4, 5), (64, 128, 256, 512)):
            for block, strides in (("a", 1 if stage == 2 else 2), ("b", 1)):
                x = _block(x, remat, f"res{stage}{block}",
                           lambda t, f=filters, st=stage, b=block, s=strides: basic_block(
                               t, f, st, b, strides=s, train_bn=train_bn))
            outs.append(x)
        return [c1] + outs

    if architecture not in STAGE4_BLOCKS:
        raise ValueError(f"unknown architecture {architecture}")
    # Stage 2
    x = bottleneck(x, [64, 64, 256], 2, "a", strides=1)
    x = bottleneck(x, [64, 64, 256], 2, "b")
    c2 = x = bottleneck(x, [64, 64, 256], 2, "c")
    # Stage 3
    x = bottleneck(x, [128, 128, 512], 3, "a", strides=2)
    for b in "bcd":
        x = bottleneck(x, [128, 128, 512], 3, b)
    c3 = x
    # Stage 4: 'a' then 5 (ResNet-50) or 22 (ResNet-101) identity blocks b, c, ...
    x = bottleneck(x, [256, 256, 1024], 4, "a", strides=2)
    for i in range(STAGE4_BLOCKS[architecture]):
        x = bottleneck(x, [256, 256, 1024], 4, chr(98 + i))
    c4 = x
    # Stage 5
    x = bottleneck(x, [512, 512, 2048], 5, "a", strides=2)
    x = bottleneck(x, [512, 512, 2048], 5, "b")
    c5 = bottleneck(x, [512, 512, 2048], 5, "c")
    return [c1, c2, c3, c4, c5]


def fpn_graph(c2, c3, c4, c5, channels):
    """Top-down feature pyramid -> [P2, P3, P4, P5, P6], all with ``channels``."""
    p5 = layers.Conv2D(channels, 1, name="fpn_c5p5")(c5)
    p4 = layers.Add(name="fpn_p4add")([
        layers.UpSampling2D(2, name="fpn_p5upsampled")(p5),
        layers.Conv2D(channels, 1, name="fpn_c4p4")(c4)])
    p3 = layers.Add(name="fpn_p3add")([
        layers.UpSampling2D(2, name="fpn_p4upsampled")(p4),
        layers.Conv2D(channels, 1, name="fpn_c3p3")(c3)])
    p2 = layers.Add(name="fpn_p2add")([
        layers.UpSampling2D(2, name="fpn_p3upsampled")(p3),
        layers.Conv2D(channels, 1, name="fpn_c2p2")(c2)])
    # 3x3 convs smooth the upsampling artefacts.
    p2 = layers.Conv2D(channels, 3, padding="same", name="fpn_p2")(p2)
    p3 = layers.Conv2D(channels, 3, padding="same", name="fpn_p3")(p3)
    p4 = layers.Conv2D(channels, 3, padding="same", name="fpn_p4")(p4)
    p5 = layers.Conv2D(channels, 3, padding="same", name="fpn_p5")(p5)
    # P6 only feeds the RPN (anchors of the largest scale).
    p6 = layers.MaxPooling2D(pool_size=1, strides=2, name="fpn_p6")(p5)
    return [p2, p3, p4, p5, p6]


def build_rpn_model(anchors_per_location, anchor_stride, depth):
    """RPN head applied to every pyramid level with shared weights ('rpn_model').

    [B, h, w, depth] -> rpn_class_logits [B, h*w*A, 2], rpn_probs [B, h*w*A, 2],
    rpn_bbox [B, h*w*A, 4] (deltas), A = anchors_per_location.
    """
    fmap = keras.Input(shape=(None, None, depth), name="input_rpn_feature_map")
    shared = layers.Conv2D(512, 3, padding="same", activation="relu", strides=anchor_stride,
                           name="rpn_conv_shared")(fmap)
    x = layers.Conv2D(2 * anchors_per_location, 1, name="rpn_class_raw",
                      kernel_initializer=keras.initializers.RandomNormal(stddev=0.01))(shared)
    logits = layers.Reshape((-1, 2))(x)
    probs = layers.Activation("softmax", name="rpn_class_xxx", dtype="float32")(logits)
    x = layers.Conv2D(4 * anchors_per_location, 1, name="rpn_bbox_pred",
                      kernel_initializer=keras.initializers.RandomNormal(stddev=0.01))(shared)
    bbox = layers.Reshape((-1, 4))(x)
    return keras.Model(fmap, [logits, probs, bbox], name="rpn_model")
