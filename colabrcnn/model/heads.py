"""Box/class head and mask head, as layer sets shared by the training and
inference graphs (so one set of weights serves both).

matterport wraps each layer in TimeDistributed over ROIs; here ROIs are folded into the
batch ([B, R, ...] -> [B*R, ...]) around the convs. Kernel shapes, and so the weights
in matterport files, are the same.

``batchnorm=False`` (Config.HEAD_BATCHNORM) leaves out the BatchNorm layers: torchvision's
v1 heads (TwoMLPHead, MaskRCNNHeads) are plain conv/FC + ReLU. The other layers keep
their names and shapes (``colabrcnn/weights/torchvision_heads.py`` fills them).
"""
import keras
import numpy as np
from keras import layers, ops

from .backbone import BatchNorm


@keras.saving.register_keras_serializable(package="colabrcnn")
class _FoldROIs(layers.Layer):
    """[B, R, h, w, C] -> [B*R, h, w, C]."""

    def call(self, x):
        return keras.ops.reshape(x, (-1,) + tuple(x.shape[2:]))

    def compute_output_shape(self, s):
        return (None,) + tuple(s[2:])


@keras.saving.register_keras_serializable(package="colabrcnn")
class _UnfoldROIs(layers.Layer):
    """[B*R, ...] -> [B, R, ...] with R static."""

    def __init__(self, num_rois, **kwargs):
        super().__init__(**kwargs)
        self.num_rois = int(num_rois)

    def call(self, x):
        return keras.ops.reshape(x, (-1, self.num_rois) + tuple(x.shape[1:]))

    def compute_output_shape(self, s):
        return (None, self.num_rois) + tuple(s[1:])

    def get_config(self):
        return {**super().get_config(), "num_rois": self.num_rois}


@keras.saving.register_keras_serializable(package="colabrcnn")
class ROIConv(layers.Conv2D):
    """The box head's first "FC" layer: a 'valid' Conv2D whose kernel covers the whole
    pooled ROI (matterport's layer and weights, kernel [7, 7, C, fc]), computed as one
    matmul of the flattened ROI. Same result; on XLA CPU the convolution's backward
    took ~17x longer than the matmul's (benchmarks/profile_step.py)."""

    def call(self, inputs):
        kh, kw, cin, cout = self.kernel.shape
        if (tuple(inputs.shape[1:3]) != (kh, kw) or self.padding != "valid"
                or tuple(self.strides) != (1, 1) or tuple(self.dilation_rate) != (1, 1)
                or self.groups != 1):
            return super().call(inputs)
        x = ops.reshape(inputs, (-1, int(np.prod((kh, kw, cin)))))       # [N, k*k*C]
        y = ops.matmul(x, ops.reshape(self.kernel, (-1, cout)))           # [N, fc]
        if self.use_bias:
            y = y + self.bias
        if self.activation is not None:
            y = self.activation(y)
        return ops.reshape(y, (-1, 1, 1, cout))


@keras.saving.register_keras_serializable(package="colabrcnn")
class BlockConv2DTranspose(layers.Conv2DTranspose):
    """The mask head's upsampling layer: a 'valid' Conv2DTranspose whose kernel equals
    its stride (matterport's and torchvision's 2x2, stride 2; kernel [kh, kw, out, in]).
    Each input pixel then paints its own kh x kw block of the output, with no overlap,
    so the layer is one matmul [N*H*W, in] x [in, kh*kw*out] and a reshape. Same
    weights and result; JAX's CPU XLA ran the transposed convolution's forward +
    backward ~30x slower than TensorFlow (1.85 s against 58 ms for 42 ROIs of 14x14x256,
    two thirds of a 256-px training step)."""

    def call(self, inputs):
        kh, kw, cout, cin = self.kernel.shape
        if (tuple(self.strides) != (kh, kw) or self.padding != "valid"
                or tuple(self.dilation_rate) != (1, 1) or self.output_padding is not None
                or self.data_format != "channels_last"):
            return super().call(inputs)
        h, w = inputs.shape[1], inputs.shape[2]
        # y[n, i*kh + a, j*kw + b, o] = sum_c x[n, i, j, c] * kernel[a, b, o, c]
        k = ops.reshape(ops.transpose(self.kernel, (3, 0, 1, 2)), (cin, kh * kw * cout))
        y = ops.matmul(ops.reshape(inputs, (-1, cin)), k)                  # [N*H*W, a*b*o]
        y = ops.reshape(y, (-1, h, w, kh, kw, cout))
        y = ops.reshape(ops.transpose(y, (0, 1, 3, 2, 4, 5)), (-1, h * kh, w * kw, cout))
        if self.use_bias:
            y = y + self.bias
        if self.activation is not None:
            y = self.activation(y)
        return y


class ClassifierHead:
    """Pooled ROIs [B, R, 7, 7, C] -> class logits [B, R, NC], probs, deltas [B, R, NC, 4]."""

    def __init__(self, num_classes, fc_size, pool_size, train_bn, batchnorm=True):
        self.num_classes = num_classes
        self.conv1 = ROIConv(fc_size, pool_size, padding="valid", name="mrcnn_class_conv1")
        self.bn1 = BatchNorm(train_bn, name="mrcnn_class_bn1") if batchnorm else None
        self.conv2 = layers.Conv2D(fc_size, 1, name="mrcnn_class_conv2")
        self.bn2 = BatchNorm(train_bn, name="mrcnn_class_bn2") if batchnorm else None
        # Predictors start near neutral (torchvision/detectron2): logits ~0 give a first
        # class loss of about ln(NUM_CLASSES), deltas ~0 keep the boxes where they are.
        self.logits = layers.Dense(
            num_classes, name="mrcnn_class_logits",
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.01))
        self.bbox = layers.Dense(
            4 * num_classes, name="mrcnn_bbox_fc",
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.001))

    def __call__(self, pooled, num_rois, training=None):
        x = _FoldROIs()(pooled)
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2)):
            x = conv(x)
            if bn is not None:
                x = bn(x, training=training)
            x = layers.Activation("relu")(x)
        x = layers.Flatten()(x)                                   # [B*R, fc]
        x = _UnfoldROIs(num_rois)(x)                              # [B, R, fc]
        logits = layers.Activation("linear", dtype="float32")(self.logits(x))
        probs = layers.Activation("softmax", name="mrcnn_class", dtype="float32")(logits)
        deltas = layers.Reshape((num_rois, self.num_classes, 4), name="mrcnn_bbox",
                                dtype="float32")(self.bbox(x))
        return logits, probs, deltas


class MaskHead:
    """Pooled ROIs [B, R, 14, 14, C] -> mask logits [B, R, 28, 28, NC]."""

    def __init__(self, num_classes, channels, train_bn, batchnorm=True):
        # He init for the ReLU convs, and mask logits ~0 (std 0.001) so that the first
        # mask loss is about ln 2 (detectron2's initialisation; shapes unchanged).
        self.convs = [layers.Conv2D(channels, 3, padding="same", name=f"mrcnn_mask_conv{i}",
                                    kernel_initializer="he_normal")
                      for i in range(1, 5)]
        self.bns = [BatchNorm(train_bn, name=f"mrcnn_mask_bn{i}") if batchnorm else None
                    for i in range(1, 5)]
        self.deconv = BlockConv2DTranspose(channels, 2, strides=2, activation="relu",
                                           name="mrcnn_mask_deconv",
                                           kernel_initializer="he_normal")
        # matterport puts a sigmoid in this layer; we keep logits for a stable loss
        # and apply the sigmoid outside (same weights).
        self.out = layers.Conv2D(num_classes, 1, name="mrcnn_mask",
                                 kernel_initializer=keras.initializers.RandomNormal(stddev=0.001))

    def __call__(self, pooled, num_rois, training=None):
        x = _FoldROIs()(pooled)
        for conv, bn in zip(self.convs, self.bns):
            x = conv(x)
            if bn is not None:
                x = bn(x, training=training)
            x = layers.Activation("relu")(x)
        x = self.deconv(x)
        x = self.out(x)
        return _UnfoldROIs(num_rois, dtype="float32")(x)
