"""MaskRCNN: matterport's API on a Keras 3 model.

    model = MaskRCNN(mode="training", config=config, model_dir="logs")
    model.train(train_ds, val_ds, learning_rate=config.LEARNING_RATE, epochs=10,
                layers="heads")
    results = model.detect([image])   # [{"rois", "class_ids", "scores", "masks"}]

One set of layers (backbone + FPN, RPN, heads) is built per MaskRCNN; the training
graph and the inference graph are both wired from it, so a training-mode model can
also ``detect`` without a round trip through a file.

Over 500 lines on purpose: this is matterport's ``MaskRCNN`` class, whose public
methods (train, detect, load_weights, find_last, set_log_dir, mold_inputs, ...) are
the API users port; each method is a thin front for the module that does the work
(graphs here, training ``train.py``, files ``checkpoint.py``, molding ``transform.py``).
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
import weakref

import keras
import numpy as np
from keras import layers, ops

from .. import checkpoint, distribute, recipe
from .. import train as train_lib
from ..boxes import norm_boxes
from ..config import LOSS_NAMES
from ..data.dataset import to_rgb_uint8
from ..errors import ConfigError, WeightsError
from . import transform
from .anchors import compute_backbone_shapes, get_anchors
from .backbone import resnet_graph
from .byname import ByNameModel, is_keras3_positional
from .detection import DetectionLayer
from .fpn import fpn_graph
from .heads import ClassifierHead, MaskHead
from .inspection import InspectionMixin
from .layers import ActiveClassIds, DetectionBoxes, FirstSlots, MetaWindow, NormBoxes
from .losses import MRCNNBBoxLoss, MRCNNClassLoss, MRCNNMaskLoss
from .roi_align import PyramidROIAlign
from .rpn import ProposalLayer, RPNBBoxLoss, RPNClassLoss, build_rpn_model
from .spec import LAYER_REGEX, positive_count  # noqa: F401 (LAYER_REGEX: matterport's presets)
from .targets import DetectionTargetLayer

# BatchNorm's moving-average momentum on a loaded backbone (Keras' default, matterport's);
# a random backbone trains with Config.SCRATCH_BN_MOMENTUM.
BN_MOMENTUM = 0.99

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------- training model
class TrainingModel(ByNameModel):
    """The training graph: its outputs are the five losses; compute_loss sums them.

    Adds matterport's L2 weight decay (sum of w^2 / size(w) over trainable weights
    except BatchNorm gamma/beta) and tracks each loss as a metric so that the
    progress bar and logs show them under matterport's names. Under tf.distribute the
    total is divided by the replica count, as Keras' own compute_loss does
    (distribute.scale_loss), so that the summed replica gradients are their mean.
    """

    def __init__(self, *args, loss_weights=None, weight_decay=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_weights_ = {k: float((loss_weights or {}).get(k, 1.0)) for k in LOSS_NAMES}
        self.weight_decay = float(weight_decay)
        self.loss_trackers = [keras.metrics.Mean(name=n) for n in LOSS_NAMES]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        total = 0.0
        for name in LOSS_NAMES:
            total = total + self.loss_weights_[name] * ops.cast(y_pred[name], "float32")
        if self.weight_decay:
            reg = [ops.sum(ops.square(ops.cast(w, "float32"))) / float(np.prod(w.shape))
                   for w in self.trainable_weights
                   if w.name not in ("gamma", "beta")]
            if reg:
                total = total + self.weight_decay * ops.sum(ops.stack(reg))
        return distribute.scale_loss(total)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        for tracker, name in zip(self.loss_trackers, LOSS_NAMES):
            tracker.update_state(y_pred[name])
        return self.get_metrics_result()


# -------------------------------------------------------------------------- MaskRCNN
class MaskRCNN(InspectionMixin):
    """Mask R-CNN with matterport's API.

    mode: "training" or "inference"; config: a colabrcnn.Config; model_dir: where run
    folders with logs and checkpoints go (a Drive folder on Colab).
    """

    def __init__(self, mode, config, model_dir="logs"):
        if mode not in ("training", "inference"):
            raise ConfigError(f"mode must be 'training' or 'inference', got {mode!r}")
        if mode == "training" and not config.USE_RPN_ROIS:
            raise ConfigError("USE_RPN_ROIS=False (training the heads on externally "
                              "generated ROIs) is not supported; keep USE_RPN_ROIS=True")
        self.mode = mode
        self.config = config
        self.model_dir = model_dir
        self.run_name = (config.NAME or "model").lower()
        self.epoch = 0
        self._optimizer_state = None  # checkpoint whose optimizer state train() restores
        self._compiled_step = None  # see compile(): what the compiled step was built for
        # Where the weights came from (colabrcnn.recipe.weights_origin): random until
        # load_weights() loads a backbone. Decides TRAIN_BN="auto" and the optimizer.
        self.weights_origin = recipe.random_origin()
        self.log_dir = None
        self.checkpoint_path = None
        self.set_log_dir()
        # Several devices (GPU_COUNT > 1 or "auto"): the backend's distribution engine,
        # set up before any variable exists (resolves GPU_COUNT="auto" in self.config).
        self.distribution = distribute.setup(config)
        self._build()

    def scope(self):
        """Context of this model's distribution (JAX DataParallel / tf.distribute
        strategy; nothing on one device): create optimizers or call the Keras model's
        own fit/predict in it. train, detect and compile enter it themselves."""
        return self.distribution.scope()

    def _build(self):
        """(Re)build layers and this mode's graph from self.config."""
        from .. import memory
        # Mixed precision: layers take the dtype policy in force when they are created.
        self.dtype_policy = memory.mixed_precision_policy(self.config)
        with self.scope(), _dtype_policy(self.dtype_policy):
            self._build_layers()
        self._graphs = {}
        self.keras_model = self.graph(self.mode)
        self.apply_batchnorm()

    def apply_batchnorm(self) -> bool:
        """Set every BatchNorm layer to trained or frozen statistics as TRAIN_BN says
        for the current weights_origin ("auto": trained only for a random backbone, then
        with SCRATCH_BN_MOMENTUM). Takes effect at the next compile; returns the choice."""
        train_bn = recipe.resolve_train_bn(self.config.TRAIN_BN, self.weights_origin)
        scratch = train_bn and recipe.from_scratch(self.weights_origin)
        momentum = self.config.SCRATCH_BN_MOMENTUM if scratch else BN_MOMENTUM
        recipe.set_batchnorm(self.keras_model, train_bn, momentum)
        return train_bn

    # ------------------------------------------------------------------- building
    def _image_shape(self, mode):
        if mode == "inference":
            return transform.inference_image_shape(self.config)
        return np.asarray(self.config.IMAGE_SHAPE)

    def _build_layers(self):
        """Create every weight-owning part once."""
        c = self.config
        train_bn = recipe.resolve_train_bn(c.TRAIN_BN, self.weights_origin)
        inp = keras.Input(shape=(None, None, c.IMAGE_CHANNEL_COUNT), name="input_image")
        if callable(c.BACKBONE):
            if c.REMAT:
                raise ConfigError("REMAT applies to the built-in ResNet backbones; a "
                                  "callable BACKBONE can use keras.remat itself")
            _, c2, c3, c4, c5 = [None] + list(c.BACKBONE(inp, c))[-4:]
        else:
            # REMAT: residual blocks recompute their activations in the backward pass.
            _, c2, c3, c4, c5 = resnet_graph(inp, c.BACKBONE, train_bn=train_bn,
                                             remat=bool(c.REMAT), style=c.BACKBONE_STYLE)
        pyramid = fpn_graph(c2, c3, c4, c5, c.TOP_DOWN_PYRAMID_SIZE)
        self.backbone = keras.Model(inp, pyramid, name="backbone_fpn")
        self.rpn = build_rpn_model(len(c.RPN_ANCHOR_RATIOS), c.RPN_ANCHOR_STRIDE,
                                   c.TOP_DOWN_PYRAMID_SIZE, c.RPN_CONV_CHANNELS)
        self.classifier = ClassifierHead(c.NUM_CLASSES, c.FPN_CLASSIF_FC_LAYERS_SIZE,
                                         c.POOL_SIZE, train_bn, c.HEAD_BATCHNORM)
        self.mask_head = MaskHead(c.NUM_CLASSES, c.TOP_DOWN_PYRAMID_SIZE, train_bn,
                                  c.HEAD_BATCHNORM)

    def _rpn(self, pyramid):
        outs = [self.rpn(p) for p in pyramid]
        logits, probs, bbox = zip(*outs)
        # Concatenate the levels along the anchor axis (P2 first, as the anchors).
        return (layers.Concatenate(axis=1, name="rpn_class_logits")(list(logits)),
                layers.Concatenate(axis=1, name="rpn_class")(list(probs)),
                layers.Concatenate(axis=1, name="rpn_bbox")(list(bbox)))

    def _anchors(self, image_shape):
        return norm_boxes(get_anchors(self.config, image_shape), image_shape,
                          self.config.DETECTOR_STYLE)

    def _anchor_params(self, image_shape):
        """What ProposalLayer needs to regenerate ``_anchors`` (saved with exports)."""
        c = self.config
        return {"scales": list(c.RPN_ANCHOR_SCALES), "ratios": list(c.RPN_ANCHOR_RATIOS),
                "feature_shapes": compute_backbone_shapes(c, image_shape).tolist(),
                "feature_strides": list(c.BACKBONE_STRIDES),
                "anchor_stride": c.RPN_ANCHOR_STRIDE, "image_shape": list(image_shape[:2])}

    def graph(self, mode: str) -> keras.Model:
        """The keras Model of ``mode`` ("training" or "inference"), wired on first use
        from the shared layers (so a training-mode MaskRCNN also has an inference graph)."""
        if mode not in self._graphs:
            with self.scope(), _dtype_policy(self.dtype_policy):
                self._graphs[mode] = self._wire(mode)
        return self._graphs[mode]

    def _wire(self, mode):
        """Build the training or inference keras Model from the shared layers."""
        if mode == "training":
            return self._training_graph()
        return self._inference_graph()

    def _stem(self, mode):
        """Inputs, backbone + FPN and RPN of either graph, and both ROIAligns."""
        c = self.config
        image_shape = tuple(int(v) for v in self._image_shape(mode))
        input_image = keras.Input(shape=image_shape, name="input_image")
        input_meta = keras.Input(shape=(c.IMAGE_META_SIZE,), name="input_image_meta")
        pyramid = self.backbone(input_image)
        rpn_logits, rpn_probs, rpn_bbox = self._rpn(pyramid)
        roi_align = PyramidROIAlign((c.POOL_SIZE, c.POOL_SIZE), image_shape,
                                    style=c.DETECTOR_STYLE, name="roi_align_classifier")
        mask_align = PyramidROIAlign((c.MASK_POOL_SIZE, c.MASK_POOL_SIZE), image_shape,
                                     style=c.DETECTOR_STYLE, name="roi_align_mask")
        return (image_shape, input_image, input_meta, pyramid[:4],
                (rpn_logits, rpn_probs, rpn_bbox), roi_align, mask_align)

    def _window(self, image_shape, input_meta):
        """[B, 4] normalized window (where the real image sits) from the image meta."""
        return MetaWindow(image_shape, self.config.DETECTOR_STYLE, name="window",
                          dtype="float32")(input_meta)

    def _proposals(self, image_shape, count, rpn, rpn_bbox, window):
        """[B, count, 4] normalized ROIs from the RPN outputs; rpn: (rpn_class_logits,
        rpn_probs), the logits feed torchvision's way (DETECTOR_STYLE), the probs
        matterport's. torchvision's are clipped to ``window`` (the real image, as it
        clips to image_sizes), matterport's to the canvas (``window`` unused)."""
        c = self.config
        layer = ProposalLayer(self._anchors(image_shape), count, c.RPN_NMS_THRESHOLD,
                              c.PRE_NMS_LIMIT, c.RPN_BBOX_STD_DEV,
                              anchor_params=self._anchor_params(image_shape),
                              style=c.DETECTOR_STYLE, name="ROI", dtype="float32")
        if c.DETECTOR_STYLE == "torchvision":
            return layer(rpn[0], rpn_bbox, window)
        return layer(rpn[1], rpn_bbox)

    def _training_graph(self):
        """Images and targets in, matterport's five losses out (a TrainingModel)."""
        c = self.config
        image_shape, input_image, input_meta, fmaps, rpn, roi_align, mask_align = \
            self._stem("training")
        rpn_logits, rpn_probs, rpn_bbox = rpn
        num_anchors = self._anchors(image_shape).shape[0]
        input_rpn_match = keras.Input(shape=(num_anchors, 1), dtype="int32",
                                      name="input_rpn_match")
        input_rpn_bbox = keras.Input(shape=(c.RPN_TRAIN_ANCHORS_PER_IMAGE, 4),
                                     name="input_rpn_bbox")
        input_gt_class_ids = keras.Input(shape=(c.MAX_GT_INSTANCES,), dtype="int32",
                                         name="input_gt_class_ids")
        input_gt_boxes = keras.Input(shape=(c.MAX_GT_INSTANCES, 4), name="input_gt_boxes")
        mask_hw = tuple(c.MINI_MASK_SHAPE) if c.USE_MINI_MASK else image_shape[:2]
        input_gt_masks = keras.Input(shape=mask_hw + (c.MAX_GT_INSTANCES,), dtype="bool",
                                     name="input_gt_masks")
        gt_boxes = NormBoxes(image_shape, c.DETECTOR_STYLE, name="norm_gt_boxes",
                             dtype="float32")(
            input_gt_boxes)
        window = self._window(image_shape, input_meta) \
            if c.DETECTOR_STYLE == "torchvision" else None
        rpn_rois = self._proposals(image_shape, c.POST_NMS_ROIS_TRAINING,
                                   (rpn_logits, rpn_probs), rpn_bbox, window)
        rois, target_class_ids, target_deltas, target_masks, roi_valid = \
            DetectionTargetLayer(c.TRAIN_ROIS_PER_IMAGE, c.ROI_POSITIVE_RATIO,
                                 c.BBOX_STD_DEV, c.MASK_SHAPE, c.USE_MINI_MASK,
                                 name="proposal_targets", dtype="float32")(
                rpn_rois, input_gt_class_ids, gt_boxes, input_gt_masks)
        t = c.TRAIN_ROIS_PER_IMAGE
        class_logits, _, deltas = self.classifier(roi_align(rois, *fmaps), t)
        # The mask loss counts positives only, and the sampler puts them in the first
        # slots: the mask head (the costliest part of the heads) runs on those alone.
        n_pos = positive_count(t, c.ROI_POSITIVE_RATIO)
        pos_rois = FirstSlots(n_pos, name="positive_rois", dtype="float32")(rois)
        mask_logits = self.mask_head(mask_align(pos_rois, *fmaps), n_pos)
        active = ActiveClassIds(name="active_class_ids", dtype="float32")(input_meta)
        losses = {
            "rpn_class_loss": RPNClassLoss(name="rpn_class_loss", dtype="float32")(
                input_rpn_match, rpn_logits),
            "rpn_bbox_loss": RPNBBoxLoss(name="rpn_bbox_loss", dtype="float32")(
                input_rpn_bbox, input_rpn_match, rpn_bbox),
            "mrcnn_class_loss": MRCNNClassLoss(name="mrcnn_class_loss", dtype="float32")(
                target_class_ids, class_logits, roi_valid, active),
            "mrcnn_bbox_loss": MRCNNBBoxLoss(name="mrcnn_bbox_loss", dtype="float32")(
                target_deltas, target_class_ids, deltas),
            "mrcnn_mask_loss": MRCNNMaskLoss(name="mrcnn_mask_loss", dtype="float32")(
                target_masks, target_class_ids, mask_logits),
        }
        inputs = [input_image, input_meta, input_rpn_match, input_rpn_bbox,
                  input_gt_class_ids, input_gt_boxes, input_gt_masks]
        return TrainingModel(inputs=inputs, outputs=losses, name="mask_rcnn_training",
                             loss_weights=c.LOSS_WEIGHTS, weight_decay=c.WEIGHT_DECAY)

    def _inference_graph(self):
        """Images and meta in; detections, masks and the RPN's outputs out."""
        c = self.config
        image_shape, input_image, input_meta, fmaps, rpn, roi_align, mask_align = \
            self._stem("inference")
        rpn_logits, rpn_probs, rpn_bbox = rpn
        # torchvision's proposals are clipped to the window too (made first for them).
        window = self._window(image_shape, input_meta) \
            if c.DETECTOR_STYLE == "torchvision" else None
        rpn_rois = self._proposals(image_shape, c.POST_NMS_ROIS_INFERENCE,
                                   (rpn_logits, rpn_probs), rpn_bbox, window)
        r = c.POST_NMS_ROIS_INFERENCE
        _, probs, deltas = self.classifier(roi_align(rpn_rois, *fmaps), r)
        if window is None:
            window = self._window(image_shape, input_meta)
        detections = DetectionLayer(c.DETECTION_MAX_INSTANCES, c.DETECTION_MIN_CONFIDENCE,
                                    c.DETECTION_NMS_THRESHOLD, c.BBOX_STD_DEV,
                                    style=c.DETECTOR_STYLE, image_shape=image_shape,
                                    name="mrcnn_detection", dtype="float32")(
            rpn_rois, probs, deltas, window)
        det_boxes = DetectionBoxes(name="detection_boxes", dtype="float32")(detections)
        mask_logits = self.mask_head(mask_align(det_boxes, *fmaps),
                                     c.DETECTION_MAX_INSTANCES)
        masks = layers.Activation("sigmoid", name="mrcnn_mask_probs",
                                  dtype="float32")(mask_logits)
        return ByNameModel(
            [input_image, input_meta],
            {"detections": detections, "mrcnn_class": probs, "mrcnn_bbox": deltas,
             "mrcnn_mask": masks, "rpn_rois": rpn_rois, "rpn_class": rpn_probs,
             "rpn_bbox": rpn_bbox},
            name="mask_rcnn_inference")

    # ------------------------------------------------------------------- weights
    def save_weights(self, path):
        from .. import weights
        return weights.save_weights(self.keras_model, path)

    def load_weights(self, filepath, by_name=False, exclude=None, verbose=0, **kwargs):
        """Load weights by layer name from an HDF5 file (ours or matterport's), or
        torchvision's Mask R-CNN ``.pth`` (with a TorchvisionR50FPN config).

        exclude: layer names or regexes to skip, e.g. ``weights.HEADS`` when NUM_CLASSES
        differs from the file's. A checkpoint of ours also sets the epoch counter and
        the run folder, so that training continues there.
        """
        from .. import weights
        if weights.torchvision.is_torchvision_file(filepath):
            return self._load_torchvision(filepath, exclude, verbose, **kwargs)
        try:
            report = weights.load_weights(self.keras_model, filepath, by_name=by_name,
                                          exclude=exclude, verbose=verbose, **kwargs)
        except WeightsError:
            if isinstance(filepath, (str, os.PathLike)) and is_keras3_positional(filepath):
                report = self._load_positional(filepath, exclude)
            else:
                raise
        if not report["loaded"]:
            raise WeightsError(f"no layer of this model was found in {filepath}")
        self.set_log_dir(filepath)
        # A checkpoint of ours also carries the optimizer: restored at the next train().
        state = checkpoint.read_state(filepath)
        self._optimizer_state = filepath if state and state.get("has_optimizer") else None
        self.weights_origin = recipe.weights_origin(filepath, report, state,
                                                    previous=self.weights_origin)
        self.apply_batchnorm()
        return report

    def _load_torchvision(self, filepath, exclude, verbose, **kwargs):
        """A torchvision ``.pth`` (colabrcnn/weights/torchvision.py): its backbone is
        a loaded one (frozen BatchNorm, SGD with TRAIN_BN / OPTIMIZER "auto")."""
        from .. import weights
        report = weights.load_torchvision_weights(self, filepath, exclude=exclude,
                                                  verbose=verbose, **kwargs)
        if not report["loaded"]:
            raise WeightsError(f"no layer of this model was found in {filepath}")
        self.set_log_dir(filepath)
        self._optimizer_state = None
        self.weights_origin = recipe.weights_origin(filepath, report, None,
                                                    previous=self.weights_origin)
        self.apply_batchnorm()
        return report

    def _load_positional(self, filepath, exclude):
        """Load a Keras 3 ``.weights.h5`` file (layers stored by position) written from
        this model's training or inference graph: both graphs share the layers, so
        loading into the one that wrote it sets the weights of this model."""
        from .. import weights
        if exclude:
            raise WeightsError(
                f"{filepath} is a Keras 3 '.weights.h5' file, stored by layer position: it "
                f"loads whole into the graph that wrote it, so exclude= cannot apply. Save "
                f"by name instead (model.keras_model.save_weights('x.h5') or "
                f"MaskRCNN.save_weights) and load that with exclude=")
        problems = []
        for mode in (self.mode, "inference" if self.mode == "training" else "training"):
            graph = self.graph(mode)
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    keras.Model.load_weights(graph, filepath)
            except Exception as e:  # noqa: BLE001 - Keras says why the layout differs
                problems.append(f"{mode} graph: {e}")
                continue
            # Keras loads what it can and warns about parts it skipped: not this graph.
            skipped = [str(w.message) for w in caught if "freshly-initialized" in
                       str(w.message) or "could not be loaded" in str(w.message)]
            if skipped:
                problems.append(f"{mode} graph: {skipped[0]}")
                continue
            return {"loaded": list(weights.named_layers(graph)), "skipped": [],
                    "mismatched": [], "missing": [], "unused": [],
                    "layout": "keras3-positional", "renamed": {}}
        raise WeightsError(
            f"{filepath} is a Keras 3 '.weights.h5' file (layers by position) that fits "
            f"neither graph of this model (a different config?); some weights may have "
            f"been changed. " + " | ".join(problems))

    def get_imagenet_weights(self, cache_dir=None):
        """Path of ImageNet weights for this BACKBONE, downloaded and cached
        (matterport's method; see colabrcnn.weights.fetch)."""
        from .. import weights
        return weights.fetch(weights.imagenet_for(self.config.BACKBONE), cache_dir=cache_dir)

    def find_last(self):
        """Path of the newest complete checkpoint of the newest run of this config's NAME.

        Raises CheckpointNotFoundError (a FileNotFoundError) when there is none.
        """
        return checkpoint.require_last(self.model_dir, self.run_name)

    def set_log_dir(self, model_path=None):
        """Run folder and checkpoint naming; continues a run when given its checkpoint.

        With a checkpoint path inside a run folder (``<name><YYYYmmddTHHMM>/``) the run
        folder is reused and the epoch counter set from the file name.
        """
        self.log_dir, self.epoch = checkpoint.Checkpointer.run_for(
            self.model_dir, self.run_name, model_path)
        # matterport's attribute; {epoch:04d} is filled in per checkpoint.
        self.checkpoint_path = self.checkpointer.path_template

    @property
    def checkpointer(self):
        """The :class:`colabrcnn.checkpoint.Checkpointer` of the current run folder."""
        ckpt = checkpoint.Checkpointer(self.model_dir, self.run_name)
        ckpt.log_dir, ckpt.epoch = self.log_dir, self.epoch
        return ckpt

    def take_optimizer_state(self):
        """The checkpoint whose optimizer state the next compile should restore (set by
        load_weights), or None; cleared by asking."""
        path, self._optimizer_state = self._optimizer_state, None
        return path

    def rebuild(self, config):
        """Rebuild the layers and graph for ``config``, keeping the run folder and epoch
        (after an out-of-memory error, with a smaller setting)."""
        log_dir, epoch = self.log_dir, self.epoch
        self.config = config
        self._build()
        self.log_dir, self.epoch = log_dir, epoch

    # ------------------------------------------------------------------- training
    def build(self, mode, config):
        """(Re)build the layers and the ``mode`` graph for ``config`` (matterport's
        method); returns the Keras model, also ``self.keras_model``."""
        if mode not in ("training", "inference"):
            raise ConfigError(f"mode must be 'training' or 'inference', got {mode!r}")
        self.mode = mode
        self.rebuild(config)
        return self.keras_model

    def set_trainable(self, layer_regex, keras_model=None, indent=0, verbose=0):
        """Make layers whose names fully match the regex (or preset) trainable, in
        ``keras_model`` (default this model's); ``indent`` (matterport's) is unused."""
        return train_lib.set_trainable(keras_model or self.keras_model, layer_regex,
                                       verbose=verbose)

    def compile(self, learning_rate, momentum=None, optimizer=None, end_epoch=1,
                from_scratch=False):
        """Compile the training graph: SGD + schedule + accumulation (or ``optimizer``;
        ``from_scratch``: the SCRATCH_* recipe, see colabrcnn.train.make_optimizer).

        One compile per run: when the trainable weights and the optimizer's settings are
        those of the last compile, the compiled training step is kept (no retracing, no
        XLA compile) with its optimizer, whose state then carries on as on a resume;
        only the learning rate's numbers are set (a constant rate, or a schedule's base
        rate and length, which live in optimizer variables). Other changes (``layers``,
        the schedule's kind, momentum, the recipe) compile anew; so does a given
        ``optimizer``.
        """
        with self.scope():  # TF optimizers must be created in the strategy's scope
            key = None
            if optimizer is None:
                optimizer = train_lib.make_optimizer(self.config, learning_rate, end_epoch,
                                                     momentum, from_scratch=from_scratch)
                key = self._step_key(optimizer)
                if self._compiled_step == key:
                    self._set_learning_rate(optimizer)
                    return
            optimizer = distribute.optimizer_in_scope(optimizer, self.distribution)
            jit = "auto"
            if keras.backend.backend() == "torch":
                jit = False  # see DESIGN: torch.compile is unreliable here; train eagerly
            # With a mixed_float16 policy Keras wraps the optimizer in a LossScaleOptimizer.
            self.keras_model.compile(optimizer=optimizer, jit_compile=jit)
            # Create the optimizer's slots (momentum, ...) now: left to the first step,
            # they are created inside TensorFlow's trace, which then traces the whole
            # training step a second time (the shapes model's first step: 17.7 -> 11 s).
            if not self.keras_model.optimizer.built:
                self.keras_model.optimizer.build(self.keras_model.trainable_variables)
            self._compiled_step = key

    def _set_learning_rate(self, new_optimizer):
        """Give the kept optimizer the learning rate of ``new_optimizer`` (same step key)."""
        schedule = train_lib.schedule_of(new_optimizer)
        if schedule is None:
            self.keras_model.optimizer.learning_rate = float(
                ops.convert_to_numpy(new_optimizer.learning_rate))
        else:
            train_lib.schedule_of(self.keras_model.optimizer).assign_numbers(schedule)

    def _step_key(self, optimizer):
        """What the compiled training step depends on: the Keras model itself (rebuilt
        after an out-of-memory reduction), its trainable weights and the optimizer's
        settings. A constant learning rate is a variable of the optimizer, not part of
        it; nor are a schedule's numbers (see train.LearningRateSchedule.attach), only
        the shape of its formula."""
        settings = optimizer.get_config()
        settings.pop("name")  # unique per optimizer object
        schedule = train_lib.schedule_of(optimizer)
        if schedule is not None:
            settings["learning_rate"] = schedule.structure()
        elif isinstance(settings["learning_rate"], float):  # not a schedule
            settings.pop("learning_rate")
        return (weakref.ref(self.keras_model),
                tuple(v.path for v in self.keras_model.trainable_variables),
                type(optimizer).__name__, repr(sorted(settings.items())))

    def train(self, train_dataset, val_dataset, learning_rate, epochs, layers,
              augmentation=None, custom_callbacks=None, no_augmentation_sources=None,
              resume="auto", on_oom="raise", optimizer=None, verbose=1, seed=None,
              cache="ram", workers=2, use_multiprocessing=False, cache_dir=None):
        """Train up to epoch ``epochs`` (counted from where the last run stopped).

        layers: "heads", "3+", "4+", "5+", "all" or a regular expression of layer names.
        resume: "auto" continues from the newest complete checkpoint of this NAME in
            model_dir when it is further along than this model (after a disconnect, just
            run the same cells again); a path resumes from that file; False starts here.
        on_oom: "raise" turns out-of-memory into GPUMemoryError listing what to change;
            "reduce" halves IMAGES_PER_GPU (doubling gradient accumulation), rebuilds
            and continues from the last checkpoint.
        augmentation: an albumentations pipeline, a callable(image, masks, class_ids) or
            None; not applied to images of ``no_augmentation_sources``.
        cache: "ram", "disk" or None: decoded, resized images are kept so that epochs
            after the first decode nothing (see colabrcnn.data.loader).
        workers / use_multiprocessing: loader threads (default) or processes.
        Returns the Keras History of the last fit (None if nothing was left to do).
        The loop lives in :func:`colabrcnn.train.train`.
        """
        return train_lib.train(
            self, train_dataset, val_dataset, learning_rate, epochs, layers,
            augmentation=augmentation, custom_callbacks=custom_callbacks,
            no_augmentation_sources=no_augmentation_sources, resume=resume,
            on_oom=on_oom, optimizer=optimizer, verbose=verbose, seed=seed, cache=cache,
            workers=workers, use_multiprocessing=use_multiprocessing, cache_dir=cache_dir)

    # ------------------------------------------------------------------ inference
    def mold_inputs(self, images):
        """Resize/pad images for the network (see colabrcnn.model.transform).

        Returns molded_images [N, H, W, 3] float32, image_metas [N, META], windows [N, 4].
        """
        return transform.mold_inputs([to_rgb_uint8(image) for image in images],
                                     self.config)

    def unmold_detections(self, detections, mrcnn_mask, original_image_shape, image_shape,
                          window):
        """One image's network outputs -> boxes, class ids, scores and full-size masks."""
        return transform.unmold_detections(detections, mrcnn_mask, original_image_shape,
                                           image_shape, window, self.config.DETECTOR_STYLE)

    def detect(self, images, verbose=0):
        """Detect instances in a list of images (any count; batched by BATCH_SIZE).

        Returns one dict per image: rois [N, (y1, x1, y2, x2)] in original pixels,
        class_ids [N], scores [N], masks [H, W, N] bool at the original size.
        """
        model = self.graph("inference")
        images = list(images)
        bs = self.config.BATCH_SIZE
        results = []
        for start in range(0, len(images), bs):
            chunk = images[start:start + bs]
            molded, metas, windows = self.mold_inputs(chunk)
            pad = bs - len(chunk)
            if pad:  # keep the compiled batch size
                molded = np.concatenate([molded, np.repeat(molded[:1], pad, 0)])
                metas = np.concatenate([metas, np.repeat(metas[:1], pad, 0)])
            if verbose:
                logger.info("Processing %d images; molded %s", len(chunk), molded.shape)
            inputs = {"input_image": molded, "input_image_meta": metas}
            with self.scope():
                if self.distribution.distributed:
                    # predict() splits the batch over the devices (predict_on_batch
                    # would give every replica the whole batch under tf.distribute).
                    out = model.predict(inputs, batch_size=bs, verbose=0)
                else:
                    out = model.predict_on_batch(inputs)
            det = np.asarray(out["detections"])
            masks = np.asarray(out["mrcnn_mask"])
            for i, image in enumerate(chunk):
                rois, class_ids, scores, full = self.unmold_detections(
                    det[i], masks[i], np.asarray(image).shape, molded[i].shape, windows[i])
                results.append({"rois": rois, "class_ids": class_ids, "scores": scores,
                                "masks": full})
        return results

    def predict_folder(self, in_dir, out_dir, class_names=None, **kw):
        """Detect on every image of a folder; overlays, masks, COCO JSON in ``out_dir``
        (see :func:`colabrcnn.predict.predict_folder`)."""
        from ..predict import predict_folder
        return predict_folder(self, in_dir, out_dir, class_names, **kw)

    def predict_video(self, in_path, out_path, class_names=None, **kw):
        """Overlay detections on every frame of a video (see
        :func:`colabrcnn.predict.predict_video`)."""
        from ..predict import predict_video
        return predict_video(self, in_path, out_path, class_names, **kw)


@contextlib.contextmanager
def _dtype_policy(policy):
    """Set Keras' global dtype policy while layers are created, then restore it."""
    if not policy:
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)

