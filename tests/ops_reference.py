"""Plain numpy references for colabrcnn.model.ops, and the random inputs the tests use.

Imported by tests/test_ops.py in-process and by the per-backend child processes
(``sys.path.insert(0, "tests")``), so it needs numpy only.
"""
import numpy as np


def nms_numpy(boxes, scores, max_output, iou_threshold, score_threshold=None):
    """Greedy NMS on one image, the textbook loop.

    boxes [N, 4] (y1, x1, y2, x2, either corner order), scores [N]. Visits boxes by
    descending score (stable: ties keep the lower index first), keeps a box unless its
    IoU with a kept box is > iou_threshold, skips scores < score_threshold, stops at
    max_output. IoU is computed in float32 in the same operation order as the ops
    module (and TF's kernel), so the comparisons agree exactly. Returns a list of ints.
    """
    boxes = np.asarray(boxes, np.float32)
    scores = np.asarray(scores, np.float32)
    thr = np.float32(iou_threshold)
    y1 = np.minimum(boxes[:, 0], boxes[:, 2])
    x1 = np.minimum(boxes[:, 1], boxes[:, 3])
    y2 = np.maximum(boxes[:, 0], boxes[:, 2])
    x2 = np.maximum(boxes[:, 1], boxes[:, 3])
    area = (y2 - y1) * (x2 - x1)
    kept = []
    for i in np.argsort(np.float32(0) - scores, kind="stable"):
        if len(kept) >= max_output:
            break
        if score_threshold is not None and scores[i] < np.float32(score_threshold):
            continue
        if kept:
            # IoU of box i with every kept box j, elementwise float32 (exact as scalars).
            j = np.asarray(kept)
            ih = np.maximum(np.minimum(y2[j], y2[i]) - np.maximum(y1[j], y1[i]), np.float32(0))
            iw = np.maximum(np.minimum(x2[j], x2[i]) - np.maximum(x1[j], x1[i]), np.float32(0))
            inter = ih * iw
            union = (area[j] + area[i]) - inter
            iou = np.where(union > 0, inter / np.where(union > 0, union, np.float32(1)),
                           np.float32(0))
            if np.any(iou > thr):
                continue
        kept.append(int(i))
    return kept


def nms_numpy_batched(boxes, scores, max_output, iou_threshold, score_threshold=None):
    """[B, N, 4], [B, N] -> (indices [B, max_output] int32, zero-padded; num_valid [B])."""
    batch = boxes.shape[0]
    indices = np.zeros((batch, max_output), np.int32)
    num_valid = np.zeros((batch,), np.int32)
    for b in range(batch):
        kept = nms_numpy(boxes[b], scores[b], max_output, iou_threshold, score_threshold)
        indices[b, :len(kept)] = kept
        num_valid[b] = len(kept)
    return indices, num_valid


def crop_and_resize_numpy(images, boxes, box_indices, crop_size, extrapolation_value=0.0):
    """tf.image.crop_and_resize, straight from its documented formula, in float64."""
    images = np.asarray(images, np.float64)
    boxes = np.asarray(boxes, np.float64)
    _, height, width, channels = images.shape
    crop_h, crop_w = crop_size
    out = np.zeros((len(boxes), crop_h, crop_w, channels), np.float64)
    for n, (y1, x1, y2, x2) in enumerate(boxes):
        image = images[int(box_indices[n])]
        for i in range(crop_h):
            if crop_h > 1:
                in_y = y1 * (height - 1) + i * (y2 - y1) * (height - 1) / (crop_h - 1)
            else:
                in_y = 0.5 * (y1 + y2) * (height - 1)
            for j in range(crop_w):
                if crop_w > 1:
                    in_x = x1 * (width - 1) + j * (x2 - x1) * (width - 1) / (crop_w - 1)
                else:
                    in_x = 0.5 * (x1 + x2) * (width - 1)
                if not (0 <= in_y <= height - 1 and 0 <= in_x <= width - 1):
                    out[n, i, j] = extrapolation_value
                    continue
                top, bottom = int(np.floor(in_y)), int(np.ceil(in_y))
                left, right = int(np.floor(in_x)), int(np.ceil(in_x))
                dy, dx = in_y - top, in_x - left
                top_row = image[top, left] + (image[top, right] - image[top, left]) * dx
                bottom_row = (image[bottom, left]
                              + (image[bottom, right] - image[bottom, left]) * dx)
                out[n, i, j] = top_row + (bottom_row - top_row) * dy
    return out


def crop_and_resize_numpy_grad(image_shape, boxes, box_indices, crop_size, grad_crops):
    """Gradient w.r.t. the images of sum(grad_crops * crop_and_resize_numpy(images, ...)).

    The crop is linear in the images, so this is its adjoint: each sample point hands
    its upstream gradient to its four corners with the bilinear weights of the same
    documented formula. Assumes no sample point lies on an integer coordinate (there
    the split between neighbours depends on rounding).
    """
    boxes = np.asarray(boxes, np.float64)
    grad_crops = np.asarray(grad_crops, np.float64)
    _, height, width, _ = image_shape
    crop_h, crop_w = crop_size
    grad = np.zeros(image_shape, np.float64)
    for n, (y1, x1, y2, x2) in enumerate(boxes):
        b = int(box_indices[n])
        for i in range(crop_h):
            in_y = (y1 * (height - 1) + i * (y2 - y1) * (height - 1) / (crop_h - 1)
                    if crop_h > 1 else 0.5 * (y1 + y2) * (height - 1))
            for j in range(crop_w):
                in_x = (x1 * (width - 1) + j * (x2 - x1) * (width - 1) / (crop_w - 1)
                        if crop_w > 1 else 0.5 * (x1 + x2) * (width - 1))
                if not (0 <= in_y <= height - 1 and 0 <= in_x <= width - 1):
                    continue
                top, left = int(np.floor(in_y)), int(np.floor(in_x))
                dy, dx = in_y - top, in_x - left
                g = grad_crops[n, i, j]
                grad[b, top, left] += g * (1 - dy) * (1 - dx)
                grad[b, top, left + 1] += g * (1 - dy) * dx
                grad[b, top + 1, left] += g * dy * (1 - dx)
                grad[b, top + 1, left + 1] += g * dy * dx
    return grad


def off_grid_boxes(rng, n, height, width, crop_size, margin=0.02):
    """[n, 4] float32 boxes (some flipped, some partly outside the image) none of whose
    sample points lies within ``margin`` pixels of an integer coordinate: gradients are
    then the same whatever the rounding of the sampling grid."""
    crop_h, crop_w = crop_size
    out = []
    while len(out) < n:
        y = rng.uniform(-0.2, 1.2, 2)
        x = rng.uniform(-0.2, 1.2, 2)
        ys = y[0] * (height - 1) + np.arange(crop_h) * (y[1] - y[0]) * (height - 1) / max(
            crop_h - 1, 1)
        xs = x[0] * (width - 1) + np.arange(crop_w) * (x[1] - x[0]) * (width - 1) / max(
            crop_w - 1, 1)
        coords = np.concatenate([ys, xs])
        if np.all(np.abs(coords - np.round(coords)) > margin):
            out.append([y[0], x[0], y[1], x[1]])
    return np.asarray(out, np.float32)


# ---------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------

def random_boxes(rng, batch, n, clustered=True):
    """[batch, n, 4] float32 boxes in [0, 1]: around a few centres (heavy overlap, like
    RPN proposals) when clustered, uniform otherwise. Some corners come flipped."""
    if clustered:
        centres = rng.uniform(0.1, 0.9, (batch, max(n // 40, 1), 2))
        pick = rng.integers(0, centres.shape[1], (batch, n))
        c = np.take_along_axis(centres, pick[..., None], axis=1)
        c = c + rng.normal(0, 0.03, (batch, n, 2))
        size = rng.uniform(0.05, 0.3, (batch, n, 2))
    else:
        c = rng.uniform(0, 1, (batch, n, 2))
        size = rng.uniform(0.01, 0.4, (batch, n, 2))
    boxes = np.concatenate([c - size / 2, c + size / 2], axis=-1)
    boxes = np.clip(boxes, 0, 1).astype(np.float32)
    flip = rng.random((batch, n)) < 0.1
    boxes[flip] = boxes[flip][:, [2, 3, 0, 1]]
    return boxes


def nms_cases(seed=0):
    """(name, boxes [B,N,4], scores [B,N], max_output, iou_threshold, score_threshold)."""
    rng = np.random.default_rng(seed)
    cases = []
    for n, max_out, thr in [(1, 5, 0.5), (7, 3, 0.5), (300, 100, 0.7), (513, 600, 0.5),
                            (1100, 300, 0.7), (1100, 1500, 0.3)]:
        boxes = random_boxes(rng, 2, n)
        scores = rng.random((2, n)).astype(np.float32)
        cases.append((f"clustered_n{n}_iou{thr}", boxes, scores, max_out, thr, None))
    n = 700
    boxes = random_boxes(rng, 2, n, clustered=False)
    cases.append(("uniform", boxes, rng.random((2, n)).astype(np.float32), 800, 0.4, None))
    # Identical scores everywhere (ties broken by index) and few distinct values.
    boxes = random_boxes(rng, 2, 600)
    cases.append(("equal_scores", boxes, np.full((2, 600), 0.5, np.float32), 200, 0.5, None))
    coarse = (rng.integers(0, 5, (2, 600)) / 4).astype(np.float32)
    cases.append(("few_score_values", boxes, coarse, 600, 0.5, None))
    # Zero-area boxes (points and lines, some at the origin) mixed in with normal ones.
    boxes = random_boxes(rng, 2, 400)
    boxes[:, ::7, 2] = boxes[:, ::7, 0]            # zero height
    boxes[:, 3::11, 3] = boxes[:, 3::11, 1]        # zero width
    boxes[:, 5::13] = np.tile(boxes[:, 5::13, :2], 2)          # points
    boxes[:, 9::50] = 0.0                          # the point (0, 0)
    cases.append(("zero_area", boxes, rng.random((2, 400)).astype(np.float32), 300, 0.5, None))
    # Score threshold, with scores that hit it exactly; max_output beyond the survivors.
    boxes = random_boxes(rng, 2, 900)
    scores = (rng.integers(0, 20, (2, 900)) / 20).astype(np.float32)
    cases.append(("score_threshold", boxes, scores, 1000, 0.6, 0.5))
    scores = rng.random((2, 900)).astype(np.float32)
    cases.append(("threshold_drops_all", boxes, scores, 50, 0.6, 2.0))
    return cases


def crop_cases(seed=0):
    """(name, images [B,H,W,C], boxes [N,4], box_indices [N], crop_size)."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(2, 17, 23, 3)).astype(np.float32)
    y = rng.uniform(-0.2, 1.2, (40, 2))
    x = rng.uniform(-0.2, 1.2, (40, 2))
    boxes = np.stack([y[:, 0], x[:, 0], y[:, 1], x[:, 1]], axis=-1).astype(np.float32)
    boxes[:5] = [[0, 0, 1, 1], [0.2, 0.3, 0.2, 0.3], [0.5, 0.5, 0.6, 0.7],
                 [1.0, 1.0, 0.0, 0.0], [-0.5, -0.5, 1.5, 1.5]]
    box_indices = rng.integers(0, 2, 40).astype(np.int32)
    return [(f"crop{size[0]}x{size[1]}", images, boxes, box_indices, size)
            for size in [(7, 7), (14, 14), (1, 1), (1, 5), (3, 1)]]
