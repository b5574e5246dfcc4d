"""Where a training step's time goes, stage by stage (not a test).

    python benchmarks/profile_step.py                          # shapes + coins256, FLOPs
    python benchmarks/profile_step.py --preset coins256 --ratio --startup
    python benchmarks/profile_step.py --preset matterport      # FLOPs only on a CPU
    python benchmarks/profile_step.py --preset matterport --time

Presets:
  shapes      the demo's ResNet-18 at 128 px on the built-in shapes (README's preset);
  coins256    ResNet-18 at 256 px on the two real photos of datasets/coins, 2 images a
              step, TRAIN_ROIS_PER_IMAGE=64, POST_NMS_ROIS_TRAINING=500,
              MAX_GT_INSTANCES=64, TRAIN_BN=True, all layers;
  matterport  matterport's defaults: ResNet-101 at 1024 px, 81 classes, 2 images.

For each preset: the steady-state time of a whole training step (train_on_batch, all
layers), then each stage timed on its own, compiled the way the step is (a tf.function,
with XLA where Keras turns it on: on a GPU, not on a CPU), on the intermediate tensors
of one real forward pass: backbone (ResNet body), FPN, RPN head, proposals, ROI
targets, ROIAlign, box head, mask head, losses (forward + backward w.r.t. weights and
inputs where the step differentiates) and the optimizer update. Stages overlap less in
the fused step than alone, so their sum is not exactly the step. Stage timing needs the
TensorFlow backend; FLOPs (forward, convs and dense layers, counted from the layer
shapes) print on every backend, with the mask head on every sampled ROI (before) and on
the positive slots (now).

--ratio: the coins256 step against a keras.applications.ResNet50(weights=None)
classifier step on the same two 256 x 256 images, in the same run.
--startup: the time a train() call takes before its first step (less one step), for a
first and a second call with the same layers.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers as klayers  # noqa: E402
from keras import ops  # noqa: E402

from colabrcnn import Config, MaskRCNN  # noqa: E402
from colabrcnn.demo import ShapesConfig  # noqa: E402
from colabrcnn.model.anchors import compute_backbone_shapes  # noqa: E402
from colabrcnn.model.backbone import resnet_graph  # noqa: E402
from colabrcnn.model.fpn import fpn_graph  # noqa: E402
from colabrcnn.model.spec import positive_count  # noqa: E402

BACKEND = keras.backend.backend()
REPO = os.path.dirname(HERE)


# ------------------------------------------------------------------------- presets
def preset_config(name):
    if name == "shapes":
        return ShapesConfig()
    if name == "coins256":
        return Config(NAME="coins", NUM_CLASSES=2, BACKBONE="resnet18", IMAGE_MIN_DIM=256,
                      IMAGE_MAX_DIM=256, IMAGES_PER_GPU=2, TRAIN_ROIS_PER_IMAGE=64,
                      POST_NMS_ROIS_TRAINING=500, MAX_GT_INSTANCES=64, TRAIN_BN=True,
                      STEPS_PER_EPOCH=3, VALIDATION_STEPS=1)
    if name == "matterport":
        return Config(NAME="matterport", NUM_CLASSES=81)
    raise ValueError(name)


def preset_dataset(name, config):
    if name == "coins256":
        from colabrcnn.data.formats import load
        return load(os.path.join(REPO, "datasets", "coins"))
    from colabrcnn.data import shapes
    return shapes(max(4, config.BATCH_SIZE), int(config.IMAGE_SHAPE[0]), seed=0)


def first_batch(dataset, config):
    from colabrcnn.data.loader import DataGenerator
    return DataGenerator(dataset, config, shuffle=False, seed=0)[0]


# ----------------------------------------------------------------------------- FLOPs
def _conv_flops(layer):
    """2 x multiply-adds of a Conv2D / Conv2DTranspose / Dense with static shapes."""
    if not hasattr(layer, "kernel"):
        return 0
    k = layer.kernel.shape
    if isinstance(layer, klayers.Conv2DTranspose):
        h, w = layer.input.shape[1:3]
        return 2 * h * w * int(np.prod(k))
    if isinstance(layer, klayers.Conv2D):
        h, w = layer.output.shape[1:3]
        return 2 * h * w * int(np.prod(k))
    if isinstance(layer, klayers.Dense):
        return 2 * int(np.prod(k))
    return 0


def forward_flops(config):
    """{stage: forward FLOPs per step} (all images of a step), counted from shapes."""
    c = config
    b = c.BATCH_SIZE
    inp = keras.Input(tuple(int(v) for v in c.IMAGE_SHAPE))
    cs = resnet_graph(inp, c.BACKBONE)
    body = keras.Model(inp, cs[1:])
    pyramid = fpn_graph(*cs[1:], c.TOP_DOWN_PYRAMID_SIZE)
    full = keras.Model(inp, pyramid)
    body_f = sum(_conv_flops(layer) for layer in body.layers)
    fpn_f = sum(_conv_flops(layer) for layer in full.layers) - body_f
    a = len(c.RPN_ANCHOR_RATIOS)
    d = c.TOP_DOWN_PYRAMID_SIZE
    cells = sum(int(h) * int(w) for h, w in compute_backbone_shapes(c, c.IMAGE_SHAPE))
    rpn_f = 2 * cells * (9 * d * 512 + 512 * 6 * a)
    t = c.TRAIN_ROIS_PER_IMAGE
    fc, nc, p = c.FPN_CLASSIF_FC_LAYERS_SIZE, c.NUM_CLASSES, c.POOL_SIZE
    box_f = 2 * (p * p * d * fc + fc * fc + fc * nc * 5)
    m = c.MASK_POOL_SIZE
    mask_f = 2 * (4 * m * m * 9 * d * d + m * m * 4 * d * d + 4 * m * m * d * nc)
    n_pos = positive_count(t, c.ROI_POSITIVE_RATIO)
    return {"backbone": b * body_f, "fpn": b * fpn_f, "rpn head": b * rpn_f,
            "box head": b * t * box_f, "mask head (positives)": b * n_pos * mask_f,
            "mask head (all ROIs, before)": b * t * mask_f}


def print_flops(name, config):
    f = forward_flops(config)
    before = sum(v for k, v in f.items() if k != "mask head (positives)")
    after = sum(v for k, v in f.items() if k != "mask head (all ROIs, before)")
    print(f"\n[{name}] forward GFLOPs per step ({config.BACKBONE}, "
          f"{int(config.IMAGE_SHAPE[0])} px, {config.BATCH_SIZE} images, "
          f"{config.TRAIN_ROIS_PER_IMAGE} ROIs/image):")
    for k, v in f.items():
        print(f"  {k:<30s} {v / 1e9:10.1f}")
    # Training ~ forward + backward (about twice the forward) with all layers trained.
    print(f"  training step (~3x forward): before {3 * before / 1e9:.0f} GFLOPs, "
          f"now {3 * after / 1e9:.0f} GFLOPs ({after / before:.2f}x)")


# ---------------------------------------------------------------------------- timing
def timed(fn, *args, repeats=5, warmup=2):
    """Median seconds of fn(*args) after warm-up (compilation excluded)."""
    for _ in range(warmup):
        _block(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _block(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _block(x):
    for leaf in keras.tree.flatten(x):
        ops.convert_to_numpy(leaf)


def build(config, model_dir):
    keras.utils.set_random_seed(0)
    model = MaskRCNN("training", config, model_dir=model_dir)
    model.set_trainable("all")
    model.compile(config.LEARNING_RATE, config.LEARNING_MOMENTUM)
    return model


def step_time(model, batch, repeats):
    km = model.keras_model
    return timed(lambda: km.train_on_batch(batch), repeats=repeats)


def stage_times(model, batch, repeats):
    """{stage: seconds}, each stage compiled alone (TensorFlow backend) the way the
    step is: with XLA where Keras resolved ``jit_compile`` to True (a GPU), as a plain
    tf.function where it did not (Keras' "auto" on a CPU)."""
    import tensorflow as tf

    c = model.config
    km = model.keras_model
    jit = bool(km.jit_compile)
    get = km.get_layer
    mask_align, cls_align = get("roi_align_mask"), get("roi_align_classifier")
    targets = get("proposal_targets")
    probe = keras.Model(km.inputs, {
        "fmaps": list(cls_align.input[1:]), "rpn_probs": get("rpn_class").output,
        "rpn_bbox": get("rpn_bbox").output, "rpn_logits": get("rpn_class_logits").output,
        "rpn_rois": get("ROI").output, "targets": list(targets.output),
        "pos_rois": get("positive_rois").output})
    v = probe(batch, training=False)
    fmaps = [tf.constant(ops.convert_to_numpy(f)) for f in v["fmaps"]]
    p6 = fmaps[3][:, ::2, ::2]
    rois, t_ids, t_deltas, t_masks, t_valid = [tf.constant(ops.convert_to_numpy(t))
                                               for t in v["targets"]]
    pos_rois = tf.constant(ops.convert_to_numpy(v["pos_rois"]))
    gt = [tf.constant(batch[k]) for k in ("input_gt_class_ids", "input_gt_boxes",
                                          "input_gt_masks")]
    gt_boxes_norm = get("norm_gt_boxes")(gt[1])
    image = tf.constant(batch["input_image"])

    def fwd_bwd(fn, variables, *xs):
        """Forward + gradient w.r.t. ``variables`` and the float inputs, compiled."""
        def run(*args):
            with tf.GradientTape() as tape:
                tape.watch([a for a in args if a.dtype.is_floating])
                out = fn(*args)
                loss = tf.add_n([tf.reduce_sum(tf.square(tf.cast(o, tf.float32)))
                                 for o in keras.tree.flatten(out)])
            return tape.gradient(loss, list(variables) + [a for a in args
                                                          if a.dtype.is_floating])
        return tf.function(run, jit_compile=jit), xs

    def fwd(fn, *xs):
        return tf.function(fn, jit_compile=jit), xs

    bb = model.backbone
    names = [layer.name for layer in bb.layers]
    # The ResNet body's outputs C2..C5: the input of each lateral 1x1 FPN conv.
    c_out = [bb.get_layer(n).input for n in ("fpn_c2p2", "fpn_c3p3", "fpn_c4p4", "fpn_c5p5")]
    body = keras.Model(bb.input, c_out)
    body_vars = body.trainable_variables
    assert "fpn_c5p5" in names
    out = {}
    f, a = fwd_bwd(lambda x: body(x, training=True), body_vars, image)
    out["backbone"] = timed(f, *a, repeats=repeats)
    f, a = fwd_bwd(lambda x: bb(x, training=True), bb.trainable_variables, image)
    out["fpn"] = max(0.0, timed(f, *a, repeats=repeats) - out["backbone"])
    f, a = fwd_bwd(lambda *ps: [model.rpn(p) for p in ps], model.rpn.trainable_variables,
                   *fmaps, p6)
    out["rpn head"] = timed(f, *a, repeats=repeats)
    probs, deltas = [tf.constant(ops.convert_to_numpy(v[k])) for k in ("rpn_probs",
                                                                      "rpn_bbox")]
    f, a = fwd(lambda p, d: get("ROI")(p, d), probs, deltas)
    out["proposals"] = timed(f, *a, repeats=repeats)
    rpn_rois = tf.constant(ops.convert_to_numpy(v["rpn_rois"]))
    f, a = fwd(lambda r, i, b, m: targets(r, i, b, m), rpn_rois, gt[0], gt_boxes_norm, gt[2])
    out["targets"] = timed(f, *a, repeats=repeats)
    f, a = fwd_bwd(lambda r, pr, *fm: [cls_align(r, *fm), mask_align(pr, *fm)], [],
                   rois, pos_rois, *fmaps)
    out["roi align"] = timed(f, *a, repeats=repeats)
    pooled = tf.constant(ops.convert_to_numpy(cls_align(rois, *fmaps)))
    pooled_mask = tf.constant(ops.convert_to_numpy(mask_align(pos_rois, *fmaps)))
    t = c.TRAIN_ROIS_PER_IMAGE
    n_pos = pos_rois.shape[1]
    # The heads as small models over the pooled ROIs (their layers are the model's).
    x = keras.Input(tuple(pooled.shape[1:]))
    box_head = keras.Model(x, list(model.classifier(x, t)))
    x = keras.Input(tuple(pooled_mask.shape[1:]))
    mask_head = keras.Model(x, model.mask_head(x, n_pos))
    f, a = fwd_bwd(lambda x: box_head(x, training=True), box_head.trainable_variables,
                   pooled)
    out["box head"] = timed(f, *a, repeats=repeats)
    f, a = fwd_bwd(lambda x: mask_head(x, training=True), mask_head.trainable_variables,
                   pooled_mask)
    out["mask head"] = timed(f, *a, repeats=repeats)
    logits, _, box_deltas = box_head(pooled)
    mask_logits = mask_head(pooled_mask)
    active = get("active_class_ids")(tf.constant(batch["input_image_meta"]))
    rpn_logits = tf.constant(ops.convert_to_numpy(v["rpn_logits"]))
    match, rbbox = tf.constant(batch["input_rpn_match"]), tf.constant(batch["input_rpn_bbox"])
    consts = [tf.constant(ops.convert_to_numpy(x)) for x in (logits, box_deltas, mask_logits)]

    def losses(rl, rb, cl, bd, ml):
        return [get("rpn_class_loss")(match, rl), get("rpn_bbox_loss")(rbbox, match, rb),
                get("mrcnn_class_loss")(t_ids, cl, t_valid, active),
                get("mrcnn_bbox_loss")(t_deltas, t_ids, bd),
                get("mrcnn_mask_loss")(t_masks, t_ids, ml)]
    f, a = fwd_bwd(losses, [], rpn_logits, deltas, *consts)
    out["losses"] = timed(f, *a, repeats=repeats)
    opt = km.optimizer
    variables = km.trainable_variables
    grads = [tf.zeros_like(w) + 1e-6 for w in variables]
    apply = tf.function(lambda gs: opt.apply_gradients(zip(gs, variables)),
                        jit_compile=jit)
    out["optimizer"] = timed(apply, grads, repeats=repeats)
    return out


def profile(name, args, model_dir):
    config = preset_config(name)
    print_flops(name, config)
    if name == "matterport" and not args.time:
        print("  (time it with --time; on a CPU one step takes minutes)")
        return
    model = build(config, model_dir)
    batch = first_batch(preset_dataset(name, config), config)
    step = step_time(model, batch, args.repeats)
    print(f"[{name}] backend {BACKEND}: training step {step * 1e3:.0f} ms "
          f"(steady state, all layers, TRAIN_BN={config.TRAIN_BN})")
    if BACKEND != "tensorflow":
        print("  (stage split: TensorFlow backend only)")
        return step
    stages = stage_times(model, batch, args.repeats)
    total = sum(stages.values())
    for k, v in stages.items():
        print(f"  {k:<14s} {v * 1e3:9.1f} ms  {100 * v / total:5.1f}%")
    print(f"  {'sum':<14s} {total * 1e3:9.1f} ms  (whole step {step * 1e3:.0f} ms)")
    return step


def ratio(args, model_dir):
    """coins256 step (TRAIN_BN=True) / keras.applications.ResNet50 classifier step.

    The two steps are timed in turns (ours, theirs, ours, ...) so that a change of the
    machine's speed during the run (a shared VM) falls on both; the ratio of the
    medians is printed with the spread of the per-turn ratios.
    """
    config = preset_config("coins256")
    model = build(config, model_dir)
    batch = first_batch(preset_dataset("coins256", config), config)
    km = model.keras_model
    keras.utils.set_random_seed(0)
    net = keras.applications.ResNet50(weights=None, input_shape=(256, 256, 3))
    net.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                loss="sparse_categorical_crossentropy")
    images = batch["input_image"]
    labels = np.arange(len(images)) % 1000
    steps = {"ours": lambda: km.train_on_batch(batch),
             "theirs": lambda: net.train_on_batch(images, labels)}
    for fn in steps.values():  # compile and warm up
        for _ in range(2):
            _block(fn())
    times = {k: [] for k in steps}
    for _ in range(max(3, args.repeats)):
        for k, fn in steps.items():
            t0 = time.perf_counter()
            _block(fn())
            times[k].append(time.perf_counter() - t0)
    ours, theirs = (statistics.median(times[k]) for k in ("ours", "theirs"))
    turns = [a / b for a, b in zip(times["ours"], times["theirs"])]
    print(f"\n[ratio] coins256 step {ours * 1e3:.0f} ms / keras.applications.ResNet50 "
          f"step {theirs * 1e3:.0f} ms on the same 2 images = {ours / theirs:.2f} "
          f"(per turn {min(turns):.2f}-{max(turns):.2f}, {len(turns)} turns)")


def startup(args, model_dir):
    """Time before the first step of a first and a second train() call, less a step."""
    config = preset_config("coins256")
    dataset = preset_dataset("coins256", config)
    keras.utils.set_random_seed(0)
    model = MaskRCNN("training", config, model_dir=model_dir)

    class FirstStep(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if self.first is None:
                self.first = time.perf_counter()

    results = []
    for epochs in (1, 2):
        probe = FirstStep()
        probe.first = None
        t0 = time.perf_counter()
        model.train(dataset, None, config.LEARNING_RATE, epochs=epochs, layers="all",
                    custom_callbacks=[probe], verbose=0, resume=False)
        results.append(probe.first - t0)
    step = step_time(model, first_batch(dataset, config), args.repeats)
    print(f"\n[startup] coins256 train(): first step done {results[0]:.1f} s after the "
          f"first call, {results[1]:.1f} s after the second; less one step ({step:.1f} s): "
          f"start-up {results[0] - step:.1f} s and {results[1] - step:.1f} s (about 0 "
          f"when the step is reused; the step's own spread shows)")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", action="append",
                   choices=["shapes", "coins256", "matterport"],
                   help="repeatable; default: shapes, coins256 and matterport's FLOPs")
    p.add_argument("--time", action="store_true", help="also time the matterport preset")
    p.add_argument("--ratio", action="store_true")
    p.add_argument("--startup", action="store_true")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    presets = args.preset or ["shapes", "coins256", "matterport"]
    print(f"backend {BACKEND} (keras {keras.__version__})")
    with tempfile.TemporaryDirectory() as model_dir:
        for name in presets:
            profile(name, args, model_dir)
        if args.ratio:
            ratio(args, model_dir)
        if args.startup:
            startup(args, model_dir)


if __name__ == "__main__":
    main()
