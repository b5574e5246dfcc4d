"""Operations Keras 3 lacks, or where a backend's own kernel matters.

Two operations, each with a pure ``keras.ops`` version that runs on every backend and
inside compiled functions (``tf.function(jit_compile=True)``, ``jax.jit``) with static
shapes, and a dispatch to a backend's native kernel where one exists:

* ``non_max_suppression`` — padded, batched, static-shape greedy NMS (RPN proposals,
  detections).
* ``crop_and_resize`` — ``tf.image.crop_and_resize`` semantics (the sampling behind
  matterport's ROIAlign), differentiable with respect to the images.

Every function takes ``implementation``: ``"pure"`` (keras.ops), ``"native"`` (the
backend's kernel; an error where there is none) or ``"auto"`` (the native kernel only
where it compiles wherever the model runs and gives the same answers; see
``auto_implementation`` for what is native where and why).

Boxes are ``(y1, x1, y2, x2)`` throughout, as in matterport and TensorFlow.
"""
import functools

import keras
from keras import ops

IMPLEMENTATIONS = ("auto", "native", "pure")

# Boxes per NMS tile. Within a tile, boxes suppress each other in parallel (a
# [tile, tile] IoU matrix per step); tiles run one after another. 512 is TF's default
# and keeps each IoU block at 1 MiB per image.
NMS_TILE_SIZE = 512


def _check_implementation(implementation):
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, "
                         f"got {implementation!r}")


def _torch_is_compiling():
    """True while torch.compile / dynamo traces the current call (native kernels with
    data-dependent output shapes must not be used then)."""
    import torch

    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return bool(compiler.is_compiling())
    return bool(torch._dynamo.is_compiling())


@functools.lru_cache(maxsize=None)
def _torchvision_nms():
    """torchvision.ops.nms, or None where torchvision is missing or broken (looked up
    once)."""
    try:
        import torch
        from torchvision.ops import nms

        # A torchvision built for another torch can import and still lack the op.
        nms(torch.zeros((1, 4)), torch.zeros((1,)), 0.5)
    except Exception:  # not installed or not working: the pure version is used
        return None
    return nms


def auto_implementation(op, backend=None):
    """Which implementation ``implementation="auto"`` picks for ``op`` on ``backend``.

    op: "non_max_suppression" or "crop_and_resize". Returns "native" or "pure".
    """
    backend = backend or keras.backend.backend()
    if op == "non_max_suppression":
        # TF: tf.image.non_max_suppression_padded compiles under XLA, but it is not
        # exact greedy NMS at the edges (see _nms_tf_padded), and it is the same
        # blocked algorithm as ours written in TF ops (no C++ kernel; about as fast on
        # CPU), so auto is pure. JAX has no NMS.
        # torch: torchvision's C++/CUDA kernel when it is importable and we run eagerly.
        if backend == "torch" and _torchvision_nms() is not None and not _torch_is_compiling():
            return "native"
        return "pure"
    if op == "crop_and_resize":
        # TF's CropAndResize kernel has no XLA lowering ("No registered 'CropAndResize'
        # OpKernel for XLA_CPU_JIT"), and Keras compiles TF training steps with XLA on
        # GPUs, so auto must be the pure version there. JAX and torch have no kernel with
        # these semantics (torchvision's roi_align samples bin centres and clamps at the
        # border instead of returning 0 outside the image).
        return "pure"
    raise ValueError(f"unknown op {op!r}")


# ---------------------------------------------------------------------------------------
# Non-max suppression
# ---------------------------------------------------------------------------------------

def non_max_suppression(boxes, scores, max_output_size, iou_threshold, score_threshold=None,
                        implementation="auto"):
    """Greedy non-max suppression per image, padded to a static output size.

    boxes: [B, N, 4] float (y1, x1, y2, x2); corners in either order (canonicalised
        with min/max, as TF's kernel does).
    scores: [B, N] float.
    max_output_size: Python int, the number of output slots.
    iou_threshold: Python float; a box is dropped if its IoU with an already kept
        (higher-scored) box is > iou_threshold.
    score_threshold: Python float or None; boxes with score < score_threshold are never
        selected.
    Ties in score are broken by the lower index first. Zero-area boxes have IoU 0 with
    everything (never NaN): they neither suppress nor get suppressed.

    Returns (indices, num_valid):
        indices: [B, max_output_size] int32, kept box indices in descending score order;
            slots at and past num_valid hold 0 (safe to gather with).
        num_valid: [B] int32.
    """
    _check_implementation(implementation)
    max_output_size = int(max_output_size)
    iou_threshold = float(iou_threshold)
    score_threshold = None if score_threshold is None else float(score_threshold)
    if max_output_size < 0:
        raise ValueError(f"max_output_size must be >= 0, got {max_output_size}")
    backend = keras.backend.backend()
    if implementation == "auto":
        implementation = auto_implementation("non_max_suppression", backend)
    if implementation == "pure":
        return _nms_pure(boxes, scores, max_output_size, iou_threshold, score_threshold)
    if backend == "tensorflow":
        return _nms_tf_padded(boxes, scores, max_output_size, iou_threshold, score_threshold)
    if backend == "torch":
        if _torchvision_nms() is None:
            raise ValueError("implementation='native' on torch needs torchvision "
                             "(torchvision.ops.nms); it is not importable here")
        if _torch_is_compiling():
            raise ValueError("implementation='native' on torch runs eagerly only "
                             "(torchvision's nms has a data-dependent output shape)")
        return _nms_torchvision(boxes, scores, max_output_size, iou_threshold,
                                score_threshold)
    raise ValueError(f"no native non_max_suppression on the {backend} backend; "
                     f"use implementation='pure' or 'auto'")


def _canonical_corners(boxes):
    """[..., 4] boxes -> four [...] arrays (y_min, x_min, y_max, x_max)."""
    y1, x1, y2, x2 = (boxes[..., k] for k in range(4))
    return (ops.minimum(y1, y2), ops.minimum(x1, x2),
            ops.maximum(y1, y2), ops.maximum(x1, x2))


def _pairwise_iou(a, b):
    """IoU between every box of ``a`` and every box of ``b``.

    a, b: tuples of four [B, M] / [B, K] arrays (canonical y1, x1, y2, x2).
    Returns [B, M, K]. Same formula and operation order as TF's CPU kernel and
    ``nms_numpy``, so float32 results agree bit for bit; 0 where the union is 0.
    """
    ay1, ax1, ay2, ax2 = (c[:, :, None] for c in a)   # [B, M, 1]
    by1, bx1, by2, bx2 = (c[:, None, :] for c in b)   # [B, 1, K]
    ih = ops.maximum(ops.minimum(ay2, by2) - ops.maximum(ay1, by1), 0.0)
    iw = ops.maximum(ops.minimum(ax2, bx2) - ops.maximum(ax1, bx1), 0.0)
    inter = ih * iw
    union = (ay2 - ay1) * (ax2 - ax1) + (by2 - by1) * (bx2 - bx1) - inter
    positive = union > 0.0
    return ops.where(positive, inter / ops.where(positive, union, 1.0), 0.0)


def _nms_pure(boxes, scores, max_output_size, iou_threshold, score_threshold=None,
              tile_size=NMS_TILE_SIZE):
    """Blocked greedy NMS in keras.ops (the algorithm of TF's non_max_suppression_padded).

    Boxes are sorted by score and cut into tiles of ``tile_size``. Tile by tile:
      1. drop the boxes that overlap a box already kept in an earlier tile (those are
         final), one earlier tile at a time: a [tile, tile] IoU block per pair;
      2. resolve the tile against itself: starting from "all remaining candidates
         kept", repeat keep = candidates & not(any higher-ranked kept box in the tile
         overlaps) until nothing changes. The only fixed point of that update is the
         greedy answer (position p depends only on positions < p), and after k rounds
         the first k positions are final, so it stops within tile_size + 1 rounds —
         usually a handful.
    The tile loop stops early once every image has max_output_size kept boxes. Memory
    is O(B * tile^2), never O(N^2); every shape is static.
    """
    boxes = ops.cast(ops.convert_to_tensor(boxes), "float32")
    scores = ops.cast(ops.convert_to_tensor(scores), "float32")
    n = boxes.shape[1]
    if n is None:
        raise ValueError("non_max_suppression needs a static number of boxes (axis 1)")
    if n == 0 or max_output_size == 0:
        num_valid = ops.zeros_like(ops.sum(ops.cast(scores, "int32"), axis=1))
        idx = ops.zeros_like(ops.repeat(num_valid[:, None], max_output_size, axis=1))
        return idx, num_valid

    tile = min(int(tile_size), n)
    num_tiles = -(-n // tile)
    n_pad = num_tiles * tile

    # Sort by descending score. argsort is stable on all three backends (TF: top_k,
    # lower index first; jnp.argsort stable; Keras' torch argsort uses stable=True), so
    # ties keep the lower index first. 0 - s rather than -s keeps 0.0 and -0.0 equal.
    order = ops.cast(ops.argsort(0.0 - scores, axis=-1), "int32")         # [B, N]
    eligible = ops.ones_like(scores, dtype="int32") if score_threshold is None else \
        ops.cast(scores >= score_threshold, "int32")
    eligible = ops.take_along_axis(eligible, order, axis=1)                # [B, N]
    coords = [ops.take_along_axis(c, order, axis=1) for c in _canonical_corners(boxes)]

    # Pad to whole tiles with zero boxes that are never candidates, then view as
    # [B, num_tiles, tile] so a tile is picked with one take along axis 1.
    pad = [[0, 0], [0, n_pad - n]]
    coords = [ops.reshape(ops.pad(c, pad), (-1, num_tiles, tile)) for c in coords]
    eligible = ops.reshape(ops.pad(eligible, pad), (-1, num_tiles, tile)) > 0
    order = ops.pad(order, pad)                                            # [B, n_pad]

    # Strictly-upper-triangular mask: within a tile, position j can suppress i iff j < i.
    ranks = ops.arange(tile)
    earlier = ops.expand_dims(ranks[:, None] < ranks[None, :], 0)          # [1, tile, tile]
    tile_ids = ops.reshape(ops.arange(num_tiles), (1, num_tiles, 1))

    def take_tile(x, t):
        return ops.take(x, t, axis=1)                                      # [B, tile]

    def process_tile(t, keep, num_kept):
        tile_boxes = [take_tile(c, t) for c in coords]
        candidates = take_tile(eligible, t)                                # [B, tile]

        # 1. Suppression by the boxes kept in earlier tiles s < t.
        def cross(s, suppressed):
            kept_boxes = [take_tile(c, s) for c in coords]
            kept = take_tile(keep, s)                                      # [B, tile]
            overlap = _pairwise_iou(kept_boxes, tile_boxes) > iou_threshold  # [B, kept, cand]
            hit = ops.logical_and(overlap, kept[:, :, None])
            return ops.logical_or(suppressed, ops.any(hit, axis=1))

        suppressed = ops.fori_loop(0, t, cross, ops.zeros_like(candidates))
        candidates = ops.logical_and(candidates, ops.logical_not(suppressed))

        # 2. Self-suppression inside the tile, iterated to the greedy fixed point.
        overlap = ops.logical_and(_pairwise_iou(tile_boxes, tile_boxes) > iou_threshold,
                                  earlier)                                 # [B, tile, tile]

        def self_step(kept_in_tile, _changed):
            hit = ops.any(ops.logical_and(overlap, kept_in_tile[:, :, None]), axis=1)
            new = ops.logical_and(candidates, ops.logical_not(hit))
            return new, ops.any(ops.not_equal(new, kept_in_tile))

        kept_in_tile, _ = ops.while_loop(lambda _k, changed: changed, self_step,
                                         (candidates, ops.convert_to_tensor(True)))

        keep = ops.where(tile_ids == t, kept_in_tile[:, None, :], keep)
        num_kept = num_kept + ops.sum(ops.cast(kept_in_tile, "int32"), axis=1)
        return t + 1, keep, num_kept

    def more_tiles(t, _keep, num_kept):
        return ops.logical_and(t < num_tiles, ops.any(num_kept < max_output_size))

    _, keep, num_kept = ops.while_loop(
        more_tiles, process_tile,
        (ops.convert_to_tensor(0, "int32"), ops.zeros_like(eligible),
         ops.zeros_like(eligible[:, 0, 0], dtype="int32")))

    # The first max_output_size kept positions in sorted order: top_k of a key that is
    # larger for earlier positions and 0 for dropped ones.
    keep = ops.reshape(keep, (-1, n_pad))                                   # [B, n_pad]
    key = ops.where(keep, n_pad - ops.arange(n_pad, dtype="int32"), 0)
    k = min(max_output_size, n_pad)
    values, positions = ops.top_k(key, k)                                  # [B, k]
    indices = ops.take_along_axis(order, ops.cast(positions, "int32"), axis=1)
    indices = ops.where(values > 0, indices, 0)
    if k < max_output_size:
        indices = ops.pad(indices, [[0, 0], [0, max_output_size - k]])
    num_valid = ops.minimum(num_kept, max_output_size)
    return ops.cast(indices, "int32"), ops.cast(num_valid, "int32")


def _nms_tf_padded(boxes, scores, max_output_size, iou_threshold, score_threshold):
    """tf.image.non_max_suppression_padded (compiles under jit_compile=True).

    Not used by "auto": it is not exact greedy NMS at the edges —
      * it drops a box whose IoU equals the threshold (>=, the kernel and we use >);
      * it marks suppressed boxes by zeroing their coordinates and then treats every
        kept box with no coordinate > 0 as invalid, so a kept box at (0, 0, 0, 0), or
        one lying entirely at negative coordinates, is silently left out;
      * it keeps scores > score_threshold (we keep >=) and canonicalises coordinates by
        looking at the first box only.
    We canonicalise ourselves and apply our score threshold by sending ineligible boxes
    in as zero boxes (which its validity rule then drops), so on boxes with some
    positive coordinate and IoUs not exactly at the threshold it matches ``_nms_pure``.
    It is the same blocked algorithm in TF ops, not a C++ kernel, so speed is alike.
    """
    import tensorflow as tf

    boxes = tf.cast(boxes, tf.float32)
    scores = tf.cast(scores, tf.float32)
    boxes = tf.stack(_canonical_corners(boxes), axis=-1)
    if score_threshold is not None:
        eligible = scores >= score_threshold
        boxes = tf.where(eligible[..., None], boxes, 0.0)
    indices, num_valid = tf.image.non_max_suppression_padded(
        boxes, scores, max_output_size, iou_threshold=iou_threshold,
        pad_to_max_output_size=True, canonicalized_coordinates=True)
    return tf.cast(indices, tf.int32), tf.cast(num_valid, tf.int32)


def _nms_torchvision(boxes, scores, max_output_size, iou_threshold, score_threshold):
    """torchvision.ops.nms per image, eagerly, padded to max_output_size.

    torchvision sorts scores without a stable tie rule and compares IoU with a double
    threshold, so we sort stably ourselves, hand it strictly decreasing stand-in scores,
    and give it the float32 threshold as a double: the result is then exactly greedy
    NMS with ties broken by the lower index, as in ``_nms_pure``.
    """
    import torch

    nms = _torchvision_nms()
    boxes = ops.cast(ops.convert_to_tensor(boxes), "float32")             # [B, N, 4]
    scores = ops.cast(ops.convert_to_tensor(scores), "float32")           # [B, N]
    threshold = float(torch.tensor(iou_threshold, dtype=torch.float32))
    batch, n = scores.shape
    y1, x1, y2, x2 = _canonical_corners(boxes)
    xyxy = torch.stack([x1, y1, x2, y2], dim=-1)                          # [B, N, 4]
    indices = torch.zeros((batch, max_output_size), dtype=torch.int32, device=boxes.device)
    num_valid = torch.zeros((batch,), dtype=torch.int32, device=boxes.device)
    for b in range(batch):
        order = torch.argsort(0.0 - scores[b], stable=True)                # [N]
        if score_threshold is not None:
            order = order[scores[b][order] >= score_threshold]
        ranked = -torch.arange(order.numel(), dtype=torch.float32, device=boxes.device)
        kept = nms(xyxy[b][order], ranked, threshold)[:max_output_size]    # positions
        num_valid[b] = kept.numel()
        indices[b, :kept.numel()] = order[kept].to(torch.int32)
    return indices, num_valid


# ---------------------------------------------------------------------------------------
# Crop and resize
# ---------------------------------------------------------------------------------------

def crop_and_resize(images, boxes, box_indices, crop_size, implementation="auto"):
    """Bilinear crops of boxes from images, with ``tf.image.crop_and_resize`` semantics.

    images: [B, H, W, C] float (float16/bfloat16 are computed in float32).
    boxes: [N, 4] normalised (y1, x1, y2, x2); y = 0 is row 0 and y = 1 is row H - 1.
        y1 > y2 gives an upside-down crop, as in TF.
    box_indices: [N] int32, the image each box is cut from.
    crop_size: (h, w) Python ints. For h == 1 the crop samples the box centre row.
    Sample points outside [0, H - 1] x [0, W - 1] are 0 (the pure version reads the
    border for points less than 1e-3 pixel outside, which float32 rounding of a box
    edge lying on the border produces).
    Returns [N, h, w, C] in images' dtype. The pure version is differentiable with
    respect to images (the mask head trains through it). TF's native kernel is too, but
    its CPU gradient (CropAndResizeGradImage) is not deterministic where boxes overlap:
    its threads race on the shared pixels, so repeats of one call differ (by up to 2 in
    a test case, more often when the CPU is busy). Train through the pure version.
    """
    _check_implementation(implementation)
    crop_h, crop_w = (int(s) for s in crop_size)
    if crop_h < 1 or crop_w < 1:
        raise ValueError(f"crop_size must be positive, got {crop_size}")
    backend = keras.backend.backend()
    if implementation == "auto":
        implementation = auto_implementation("crop_and_resize", backend)
    if implementation == "pure":
        return _crop_and_resize_pure(images, boxes, box_indices, (crop_h, crop_w))
    if backend == "tensorflow":
        # Eager and plain tf.function only: no XLA kernel (see auto_implementation).
        import tensorflow as tf

        images = tf.convert_to_tensor(images)
        crops = tf.image.crop_and_resize(images, tf.cast(boxes, tf.float32),
                                         tf.cast(box_indices, tf.int32), (crop_h, crop_w))
        return tf.cast(crops, images.dtype)  # TF returns float32 for every input dtype
    raise ValueError(f"no native crop_and_resize on the {backend} backend; "
                     f"use implementation='pure' or 'auto'")


# Pixels by which a sample point may fall outside the image and still read the border
# (float32 rounding of the sampling grid; see _crop_and_resize_pure).
BORDER_SLACK = 1e-3


def _sample_grid(lo, hi, size, crop):
    """Sample coordinates along one axis, exactly as TF's kernel computes them.

    lo, hi: [N] normalised box edges; size: image extent (H or W) as a float scalar;
    crop: output extent (Python int). Returns [N, crop] float32 pixel coordinates.
    """
    if crop > 1:
        scale = (hi - lo) * (size - 1.0) / float(crop - 1)                # [N]
        steps = ops.arange(crop, dtype="float32")                           # [crop]
        return lo[:, None] * (size - 1.0) + steps[None, :] * scale[:, None]
    return (0.5 * (lo + hi) * (size - 1.0))[:, None]


def _crop_and_resize_pure(images, boxes, box_indices, crop_size):
    """Gathers + bilinear weights. Four gathers of [N, h, w, C] corner values from the
    flattened [B*H*W, C] images; their gradient is a scatter-add into the images on
    every backend."""
    images = ops.convert_to_tensor(images)
    dtype = images.dtype
    crop_h, crop_w = crop_size
    boxes = ops.cast(ops.convert_to_tensor(boxes), "float32")
    box_indices = ops.cast(ops.convert_to_tensor(box_indices), "int32")
    shape = ops.shape(images)
    height, width, channels = shape[1], shape[2], shape[3]
    h_f = ops.cast(height, "float32")
    w_f = ops.cast(width, "float32")

    in_y = _sample_grid(boxes[:, 0], boxes[:, 2], h_f, crop_h)            # [N, h]
    in_x = _sample_grid(boxes[:, 1], boxes[:, 3], w_f, crop_w)            # [N, w]
    # Inside the image, with a little slack: a box edge on the border (clipped boxes
    # are common) can land an ulp outside after rounding — XLA fuses the sampling
    # grid into FMAs, so e.g. a flipped [1, 0] box ends at -5e-7 — and TF would return
    # 0 there. Within the slack we sample the border instead.
    valid_y = ops.logical_and(in_y >= -BORDER_SLACK, in_y <= h_f - 1.0 + BORDER_SLACK)
    valid_x = ops.logical_and(in_x >= -BORDER_SLACK, in_x <= w_f - 1.0 + BORDER_SLACK)

    top = ops.floor(in_y)
    left = ops.floor(in_x)
    y_lerp = (in_y - top)[:, :, None, None]                                # [N, h, 1, 1]
    x_lerp = (in_x - left)[:, None, :, None]                               # [N, 1, w, 1]
    # Indices clipped into the image; samples outside it are zeroed below. The second
    # corner is the next pixel, not ceil(): a compiler that recomputes the coordinate
    # with other rounding could otherwise pair floor(7.9999995) = 7 with ceil(8.0000005)
    # = 9 and send the gradient a pixel too far (for integer coordinates its weight is 0).
    top_i = ops.clip(ops.cast(top, "int32"), 0, height - 1)
    bottom_i = ops.clip(ops.cast(top, "int32") + 1, 0, height - 1)
    left_i = ops.clip(ops.cast(left, "int32"), 0, width - 1)
    right_i = ops.clip(ops.cast(left, "int32") + 1, 0, width - 1)

    # Row offsets into the flattened [B*H*W, C] images: (b*H + y)*W.
    base = box_indices[:, None] * height                                  # [N, 1]
    top_rows = ((base + top_i) * width)[:, :, None]                       # [N, h, 1]
    bottom_rows = ((base + bottom_i) * width)[:, :, None]
    left_cols = left_i[:, None, :]                                        # [N, 1, w]
    right_cols = right_i[:, None, :]
    flat = ops.reshape(images, (-1, channels))                            # [B*H*W, C]

    def corner(rows, cols):
        # [N, h, w, C], gathered in the input dtype, interpolated in float32.
        return ops.cast(ops.take(flat, rows + cols, axis=0), "float32")

    top_left, top_right = corner(top_rows, left_cols), corner(top_rows, right_cols)
    bottom_left = corner(bottom_rows, left_cols)
    bottom_right = corner(bottom_rows, right_cols)
    top_row = top_left + (top_right - top_left) * x_lerp
    bottom_row = bottom_left + (bottom_right - bottom_left) * x_lerp
    crops = top_row + (bottom_row - top_row) * y_lerp                     # [N, h, w, C]

    valid = ops.logical_and(valid_y[:, :, None], valid_x[:, None, :])     # [N, h, w]
    crops = ops.where(valid[..., None], crops, 0.0)
    return ops.cast(crops, dtype)
