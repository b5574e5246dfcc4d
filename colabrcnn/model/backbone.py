"""ResNet backbones with matterport's layer names: image -> [C1, C2, C3, C4, C5].

ResNet-50/101 follow matterport's (Caffe-style: stride on the first 1x1 conv, convs with
bias) so that ``mask_rcnn_coco.h5`` and the old ImageNet file load by name. With
``style="torchvision"`` (Config.BACKBONE_STYLE) they are torchvision's ResNet v1.5 under
the same layer names: stride on the 3x3 conv, PyTorch's symmetric padding of strided
convs and of the stem's max-pool, convs without bias, BatchNorm epsilon 1e-5 (its
FrozenBatchNorm2d), so that its weights load (``colabrcnn/weights/torchvision.py``).
ResNet-18 is ours: basic blocks, for CPU demos and tests. Block counts and filters come from
``model/spec.py``; the feature pyramid is in ``model/fpn.py``.
"""
import keras
from keras import layers

from .spec import BASIC_FILTERS, BOTTLENECK_FILTERS, STAGE_BLOCKS, block_letter


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


STYLES = ("matterport", "torchvision")
# torchvision's FrozenBatchNorm2d epsilon (Keras' and matterport's default is 1e-3).
TORCHVISION_BN_EPSILON = 1e-5


def _conv(filters, kernel, name, strides=1, padding="valid", use_bias=True):
    return layers.Conv2D(filters, kernel, strides=strides, padding=padding, name=name,
                         use_bias=use_bias, kernel_initializer="he_normal")


def _torch_conv(x, filters, kernel, name, strides=1):
    """PyTorch's Conv2d(padding=kernel // 2, bias=False): symmetric zero padding (Keras'
    "same" pads a strided conv at the bottom/right only) then a 'valid' conv."""
    pad = kernel // 2
    if pad:
        x = layers.ZeroPadding2D(pad, name=name + "_pad")(x)
    return _conv(filters, kernel, name, strides=strides, use_bias=False)(x)


def torchvision_bottleneck_block(x, filters, stage, block, strides=None, train_bn=False):
    """torchvision's Bottleneck (ResNet v1.5: the stride is on the 3x3 'branch2b' conv);
    with ``strides`` a conv block (projection shortcut, 1x1 conv with that stride)."""
    f1, f2, f3 = filters
    conv_name = f"res{stage}{block}_branch"
    bn_name = f"bn{stage}{block}_branch"
    s = strides or 1
    eps = TORCHVISION_BN_EPSILON
    y = _torch_conv(x, f1, 1, conv_name + "2a")
    y = BatchNorm(train_bn, epsilon=eps, name=bn_name + "2a")(y)
    y = layers.Activation("relu")(y)
    y = _torch_conv(y, f2, 3, conv_name + "2b", strides=s)
    y = BatchNorm(train_bn, epsilon=eps, name=bn_name + "2b")(y)
    y = layers.Activation("relu")(y)
    y = _torch_conv(y, f3, 1, conv_name + "2c")
    # Zero last gamma, as in bottleneck_block (torchvision's zero_init_residual).
    y = BatchNorm(train_bn, epsilon=eps, name=bn_name + "2c", gamma_initializer="zeros")(y)
    if strides is not None:
        shortcut = _torch_conv(x, f3, 1, conv_name + "1", strides=s)
        shortcut = BatchNorm(train_bn, epsilon=eps, name=bn_name + "1")(shortcut)
    else:
        shortcut = x
    y = layers.Add(name=f"res{stage}{block}_add")([y, shortcut])
    return layers.Activation("relu", name=f"res{stage}{block}_out")(y)


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
    # Zero-initialised last gamma ("zero_init_residual", as torchvision offers): from
    # random weights each block starts as identity instead of adding up exploding
    # branches. An initializer only: weight files load by name as before.
    y = BatchNorm(train_bn, name=bn_name + "2c", gamma_initializer="zeros")(y)
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


def resnet_graph(input_image, architecture: str, train_bn: bool = False,
                 remat: bool = False, style: str = "matterport") -> list:
    """ResNet body -> [C1, C2, C3, C4, C5] (strides 2, 4, 8, 16, 32).

    remat: recompute each residual block's activations in the backward pass.
    style: "matterport" (Caffe-style) or "torchvision" (v1.5, see the module docstring;
        ResNet-50/101 only).
    """
    if architecture not in STAGE_BLOCKS:
        raise ValueError(f"unknown architecture {architecture}")
    if style not in STYLES:
        raise ValueError(f"unknown backbone style {style!r}: use one of {STYLES}")
    torchvision = style == "torchvision"
    if torchvision and architecture == "resnet18":
        raise ValueError("BACKBONE_STYLE='torchvision' builds ResNet-50/101 (torchvision's "
                         "Mask R-CNN backbones); resnet18 is matterport-style only")
    x = layers.ZeroPadding2D((3, 3))(input_image)
    if torchvision:
        x = _conv(64, 7, "conv1", strides=2, use_bias=False)(x)
        x = BatchNorm(train_bn, epsilon=TORCHVISION_BN_EPSILON, name="bn_conv1")(x)
        x = layers.Activation("relu")(x)
        # MaxPool2d(3, 2, padding=1): zero padding is exact here, x >= 0 after the ReLU.
        x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
        c1 = x = layers.MaxPooling2D((3, 3), strides=(2, 2), padding="valid")(x)
    else:
        x = _conv(64, 7, "conv1", strides=2)(x)
        x = BatchNorm(train_bn, name="bn_conv1")(x)
        x = layers.Activation("relu")(x)
        c1 = x = layers.MaxPooling2D((3, 3), strides=(2, 2), padding="same")(x)

    outs = []
    for stage, blocks in STAGE_BLOCKS[architecture].items():
        for b in range(blocks):
            block = block_letter(b)
            if architecture == "resnet18":
                # Basic blocks; the first of stages 3-5 halves the resolution.
                strides = (1 if stage == 2 else 2) if b == 0 else 1
                fn = (lambda t, f=BASIC_FILTERS[stage], st=stage, bl=block, s=strides:
                      basic_block(t, f, st, bl, strides=s, train_bn=train_bn))
            else:
                # Bottlenecks; block 'a' is a conv block (projection shortcut).
                strides = (1 if stage == 2 else 2) if b == 0 else None
                if torchvision:
                    fn = (lambda t, f=list(BOTTLENECK_FILTERS[stage]), st=stage, bl=block,
                          s=strides: torchvision_bottleneck_block(t, f, st, bl, strides=s,
                                                                  train_bn=train_bn))
                else:
                    fn = (lambda t, f=list(BOTTLENECK_FILTERS[stage]), st=stage, bl=block,
                          s=strides: bottleneck_block(t, 3, f, st, bl, strides=s,
                                                      train_bn=train_bn))
            x = _block(x, remat, f"res{stage}{block}", fn)
        outs.append(x)
    return [c1] + outs
