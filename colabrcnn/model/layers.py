"""Small weightless graph layers of the assembly in ``model/maskrcnn.py``: box
normalisation and reading the image meta vector."""
import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="colabrcnn")
class NormBoxes(layers.Layer):
    """Pixel boxes [B, N, 4] -> normalized, for a fixed image shape, by
    ``colabrcnn.boxes.norm_boxes``' rule of ``style`` ("matterport" or "torchvision")."""

    def __init__(self, image_shape, style="matterport", **kwargs):
        super().__init__(**kwargs)
        self.image_shape = [int(v) for v in image_shape[:2]]
        self.style = style

    def call(self, boxes):
        h, w = self.image_shape
        if self.style == "torchvision":
            return ops.cast(boxes, "float32") / ops.convert_to_tensor(
                [float(h), float(w), float(h), float(w)])
        scale = ops.convert_to_tensor([h - 1.0, w - 1.0, h - 1.0, w - 1.0])
        shift = ops.convert_to_tensor([0.0, 0.0, 1.0, 1.0])
        return (ops.cast(boxes, "float32") - shift) / scale

    def compute_output_shape(self, s):
        return s

    def get_config(self):
        return {**super().get_config(), "image_shape": self.image_shape,
                "style": self.style}


@keras.saving.register_keras_serializable(package="colabrcnn")
class MetaWindow(layers.Layer):
    """image_meta [B, META] -> normalized window [B, 4] (where the real image sits)."""

    def __init__(self, image_shape, style="matterport", **kwargs):
        super().__init__(**kwargs)
        self.norm = NormBoxes(image_shape, style)

    def build(self, input_shape):
        self.norm.build((input_shape[0], 4))  # no weights; marks the sub-layer built

    def call(self, meta):
        return self.norm(ops.cast(meta[:, 7:11], "float32"))

    def compute_output_shape(self, s):
        return (s[0], 4)

    def get_config(self):
        return {**super().get_config(), "image_shape": self.norm.image_shape,
                "style": self.norm.style}


@keras.saving.register_keras_serializable(package="colabrcnn")
class ActiveClassIds(layers.Layer):
    """image_meta [B, META] -> active_class_ids [B, NUM_CLASSES]."""

    def call(self, meta):
        return ops.cast(meta[:, 12:], "float32")

    def compute_output_shape(self, s):
        return (s[0], s[1] - 12)


@keras.saving.register_keras_serializable(package="colabrcnn")
class DetectionBoxes(layers.Layer):
    """detections [B, N, 6] -> boxes [B, N, 4]."""

    def call(self, det):
        return det[..., :4]

    def compute_output_shape(self, s):
        return tuple(s[:-1]) + (4,)


@keras.saving.register_keras_serializable(package="colabrcnn")
class FirstSlots(layers.Layer):
    """[B, T, ...] -> [B, count, ...]: the first ``count`` ROI slots (the positives)."""

    def __init__(self, count, **kwargs):
        super().__init__(**kwargs)
        self.count = int(count)

    def call(self, x):
        return x[:, :self.count]

    def compute_output_shape(self, s):
        return (s[0], self.count) + tuple(s[2:])

    def get_config(self):
        return {**super().get_config(), "count": self.count}
