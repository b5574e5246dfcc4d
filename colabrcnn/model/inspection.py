"""matterport's inspection methods of MaskRCNN (its inspect_model / inspect_weights
notebooks): run_graph, ancestor, get_trainable_layers, find_trainable_layer,
get_anchors / anchors and detect_molded.

In Keras 3 the graph's named tensors are layer outputs (a layer's internal steps are
not tensors of the model), so ``run_graph`` runs the sub-model from the inputs to any
layer outputs of ``keras_model``, and ``ancestor`` finds layer outputs by name.
"""
from __future__ import annotations

import re
from collections import OrderedDict

import keras
import numpy as np

from ..boxes import norm_boxes
from ..errors import ConfigError
from .anchors import get_anchors
from .matterport import log


class InspectionMixin:
    """Methods MaskRCNN takes from matterport for looking inside the model."""

    # matterport's model.anchors: pixel anchors of the last get_anchors() image shape.
    @property
    def anchors(self):
        last = self.__dict__.get("_last_anchors")
        if last is None:
            last = get_anchors(self.config, self._image_shape("inference"))
        return last

    @anchors.setter
    def anchors(self, value):
        self.__dict__["_last_anchors"] = value

    def get_anchors(self, image_shape):
        """Normalized anchors [A, (y1, x1, y2, x2)] for an image shape (P2 first);
        ``self.anchors`` holds them in pixels."""
        pixels = get_anchors(self.config, image_shape)
        self.anchors = pixels
        return norm_boxes(pixels, tuple(image_shape)[:2], self.config.DETECTOR_STYLE)

    # ------------------------------------------------------------------ layers
    def find_trainable_layer(self, layer):
        """The layer that holds the weights of a (TimeDistributed-)wrapped layer."""
        if type(layer).__name__ == "TimeDistributed":
            return self.find_trainable_layer(layer.layer)
        return layer

    def get_trainable_layers(self):
        """Every layer with weights, nested models (backbone, RPN) opened, each once."""
        found, seen = [], set()

        def visit(model):
            for layer in model.layers:
                if isinstance(layer, keras.Model):
                    visit(layer)
                    continue
                layer = self.find_trainable_layer(layer)
                if id(layer) not in seen and layer.weights:
                    seen.add(id(layer))
                    found.append(layer)
        visit(self.keras_model)
        return found

    # ------------------------------------------------------------ graph tensors
    def ancestor(self, tensor, name, checked=None):
        """The nearest upstream tensor of ``tensor`` produced by a layer whose name
        fully matches ``name`` (a string or compiled regex), or None.

        matterport searched TensorFlow op names ("ROI/pre_nms_anchors:0"); here the
        searchable tensors are layer outputs: a trailing ":0" is ignored, and names of
        a layer's internal steps find nothing.
        """
        checked = checked if checked is not None else []
        if len(checked) > 500:
            return None
        if isinstance(name, str):
            name = re.compile(re.sub(r":\d+$", "", name).replace("/", r"(\_\d+)*/"))
        for parent in _parents(tensor):
            if any(parent is c for c in checked):
                continue
            if name.fullmatch(_producer(parent)):
                return parent
            checked.append(parent)
            found = self.ancestor(parent, name, checked)
            if found is not None:
                return found
        return None

    def _output_tensor(self, model, tensor):
        """A (name, tensor) request -> the model tensor to compute.

        A string is a layer name. The mask head's last conv ("mrcnn_mask") gives logits
        with ROIs folded into the batch; matterport's mrcnn_mask was its sigmoid per
        ROI, which is the "mrcnn_mask_probs" layer here.
        """
        if isinstance(tensor, str):
            tensor = model.get_layer(tensor).output
        try:
            if tensor is model.get_layer("mrcnn_mask").output:
                return model.get_layer("mrcnn_mask_probs").output
        except ValueError:
            pass  # no such layer (training graph) or a layer used twice
        return tensor

    def run_graph(self, images, outputs, image_metas=None):
        """Compute named intermediate outputs of the inference graph.

        outputs: [(name, tensor)], tensors from ``keras_model`` (e.g.
        ``keras_model.get_layer("ROI").output``) or layer names. ``image_metas``: when
        given, ``images`` are already molded (resized, padded, mean subtracted).
        Returns an OrderedDict name -> array (batch of ``len(images)``), and logs each.
        """
        if self.mode != "inference":
            raise ConfigError("run_graph needs a model created with mode='inference' "
                              "(its tensors come from the inference graph)")
        model = self.keras_model
        outputs = OrderedDict(outputs)
        for key, tensor in outputs.items():
            if tensor is None:
                raise ValueError(f"run_graph: the tensor for {key!r} is None (an ancestor "
                                 f"that was not found?)")
        tensors = [self._output_tensor(model, t) for t in outputs.values()]
        sub = keras.Model(model.inputs, tensors)
        if image_metas is None:
            molded, image_metas, _ = self.mold_inputs(images)
        else:
            molded = np.asarray(images)
        molded, image_metas = np.asarray(molded), np.asarray(image_metas)
        n = len(molded)
        pad = -n % self.config.BATCH_SIZE  # keep the compiled batch size
        if pad:
            molded = np.concatenate([molded, np.repeat(molded[:1], pad, 0)])
            image_metas = np.concatenate([image_metas, np.repeat(image_metas[:1], pad, 0)])
        results = []
        bs = self.config.BATCH_SIZE
        with self.scope():
            for start in range(0, len(molded), bs):
                out = sub.predict_on_batch([molded[start:start + bs],
                                            image_metas[start:start + bs]])
                results.append([np.asarray(o) for o in
                                (out if isinstance(out, (list, tuple)) else [out])])
        values = [np.concatenate(parts)[:n] for parts in zip(*results)]
        outputs_np = OrderedDict(zip(outputs.keys(), values))
        for key, value in outputs_np.items():
            log(key, value)
        return outputs_np

    def detect_molded(self, molded_images, image_metas, verbose=0):
        """``detect`` for images already molded (e.g. ``mold_image`` of
        ``load_image_gt``'s image) with their metas; boxes and masks are in the molded
        image's pixels. Returns one dict per image like ``detect``."""
        molded_images = np.asarray(molded_images)
        image_metas = np.asarray(image_metas)
        if verbose:
            log("Processing {} images".format(len(molded_images)))
            log("molded_images", molded_images)
            log("image_metas", image_metas)
        model = self.graph("inference")
        bs = self.config.BATCH_SIZE
        results = []
        for start in range(0, len(molded_images), bs):
            chunk = molded_images[start:start + bs]
            metas = image_metas[start:start + bs]
            pad = bs - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[:1], pad, 0)])
                metas = np.concatenate([metas, np.repeat(metas[:1], pad, 0)])
            with self.scope():
                out = model.predict_on_batch({"input_image": chunk,
                                              "input_image_meta": metas})
            det = np.asarray(out["detections"])
            masks = np.asarray(out["mrcnn_mask"])
            for i in range(len(molded_images[start:start + bs])):
                shape = chunk[i].shape
                rois, class_ids, scores, full = self.unmold_detections(
                    det[i], masks[i], shape, shape, [0, 0, shape[0], shape[1]])
                results.append({"rois": rois, "class_ids": class_ids, "scores": scores,
                                "masks": full})
        return results


def _history(tensor):
    return getattr(tensor, "_keras_history", None)


def _producer(tensor):
    """Name of the layer that produced a Keras tensor ('' for none)."""
    history = _history(tensor)
    return history[0].name if history is not None else ""


def _parents(tensor):
    """The input tensors of the layer call that produced ``tensor``."""
    history = _history(tensor)
    if history is None:
        return []
    operation, node_index = history[0], history[1]
    nodes = getattr(operation, "_inbound_nodes", [])
    if node_index >= len(nodes):
        return []
    return list(keras.tree.flatten(nodes[node_index].input_tensors))
