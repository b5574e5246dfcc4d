"""Split one annotated dataset into training and validation parts.

    train, val = train_val_split(ds, val_fraction=0.2, seed=0)

Both parts are prepared datasets with the same classes and class ids as ``ds``. The
split is deterministic for a seed. With ``stratify=True`` (default) images are assigned
class by class, rarest class first (iterative stratification, Sechidis et al. 2011), so
each class gets about ``val_fraction`` of its images in validation, and every class
with at least 2 images appears in both parts whenever the images allow it; a class with
a single image stays in training and a warning says so.
"""
from __future__ import annotations

import copy
import warnings

import numpy as np

from ..errors import AnnotationError


def _image_classes(dataset):
    """Per image, the set of class ids of its (trainable) instances."""
    out = []
    for i, info in enumerate(dataset.image_info):
        if "instances" in info:
            out.append({int(inst["class_id"]) for inst in info["instances"]})
        else:  # a Dataset subclass without records: ask load_mask
            _, ids = dataset.load_mask(i)
            out.append({int(c) for c in np.asarray(ids).reshape(-1)})
    return out


def _subset(dataset, ids):
    if hasattr(dataset, "subset"):
        return dataset.subset(ids)
    # Any Dataset whose load_mask reads image_info: copy it, keep these records.
    out = copy.copy(dataset)
    out.class_info = copy.deepcopy(dataset.class_info)
    out.image_info = [dataset.image_info[int(i)] for i in ids]
    out.prepare()
    return out


def _stratified(labels, n_val, val_fraction, rng):
    """Indices of validation images: iterative stratification with a repair pass."""
    n = len(labels)
    classes = sorted({c for s in labels for c in s})
    per_class = {c: [i for i in range(n) if c in labels[i]] for c in classes}
    # Wanted validation images per class: at least 1 and at most n_c - 1 when n_c >= 2.
    want = {}
    for c, imgs in per_class.items():
        k = len(imgs)
        want[c] = {1: int(np.clip(round(val_fraction * k), 1, k - 1)) if k >= 2 else 0}
        want[c][0] = k - want[c][1]
    room = {1: n_val, 0: n - n_val}   # 1 = val, 0 = train
    part = np.full(n, -1)
    order = rng.permutation(n)        # tie-breaks and image order come from the seed
    rank = np.empty(n, dtype=int)
    rank[order] = np.arange(n)
    remaining = {c: set(imgs) for c, imgs in per_class.items()}
    while any(remaining.values()):
        # The class with the fewest unassigned images goes first: rare classes are
        # placed while there is still room on both sides.
        c = min((c for c in classes if remaining[c]), key=lambda c: (len(remaining[c]), c))
        for i in sorted(remaining[c], key=lambda i: rank[i]):
            if want[c][1] != want[c][0]:
                s = 1 if want[c][1] > want[c][0] else 0
            elif room[1] != room[0]:
                s = 1 if room[1] > room[0] else 0
            else:
                s = int(rng.integers(2))
            if room[s] <= 0:
                s = 1 - s
            part[i] = s
            room[s] -= 1
            for k in labels[i]:
                want[k][s] -= 1
                remaining[k].discard(i)
    for i in order:  # images without instances fill what is left
        if part[i] < 0:
            s = 1 if room[1] > 0 else 0
            part[i] = s
            room[s] -= 1
    _repair(part, labels, per_class)
    return np.flatnonzero(part == 1)


def _repair(part, labels, per_class):
    """Move images so every class with >= 2 images is on both sides, where possible."""
    for _ in range(2 * len(part)):
        moved = False
        for c, imgs in sorted(per_class.items()):
            if len(imgs) < 2:
                continue
            for side in (1, 0):
                if any(part[i] == side for i in imgs):
                    continue
                # Move an image of c from the other side, one whose other classes keep
                # an image there, preferring images with the fewest classes.
                for i in sorted(imgs, key=lambda i: (len(labels[i]), i)):
                    others = labels[i] - {c}
                    if all(any(part[j] == 1 - side for j in per_class[k] if j != i)
                           for k in others if len(per_class[k]) >= 2) and \
                            sum(part[j] == 1 - side for j in imgs) > 1:
                        part[i] = side
                        moved = True
                        break
        if not moved:
            return


def train_val_split(dataset, val_fraction=0.2, seed=0, stratify=True):
    """Split a prepared dataset into (train, val) prepared datasets.

    Args:
        dataset: a prepared Dataset (any ``colabrcnn.data.formats`` reader's output, or a
            Dataset subclass whose ``load_mask`` reads ``image_info``).
        val_fraction: share of images for validation, 0 < val_fraction < 1; at least one
            image goes to each part.
        seed: the same seed gives the same split.
        stratify: balance classes across the parts (see the module docstring).

    Returns:
        (train, val): datasets sharing the class ids and names of ``dataset``.
    """
    if not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got "
                         f"{val_fraction!r}")
    n = len(dataset.image_info)
    if n < 2:
        raise AnnotationError(f"cannot split {n} image(s) into training and validation; "
                              "annotate more images or validate on the training set")
    n_val = int(np.clip(round(val_fraction * n), 1, n - 1))
    rng = np.random.default_rng(seed)
    if stratify:
        labels = _image_classes(dataset)
        val = _stratified(labels, n_val, val_fraction, rng)
    else:
        labels = None
        val = np.sort(rng.permutation(n)[:n_val])
    val_set = set(int(i) for i in val)
    train_ids = [i for i in range(n) if i not in val_set]
    val_ids = sorted(val_set)
    if stratify:
        names = list(getattr(dataset, "class_names", None) or
                     [c["name"] for c in dataset.class_info])
        _warn_coverage(labels, train_ids, val_ids, names)
    return _subset(dataset, train_ids), _subset(dataset, val_ids)


def _warn_coverage(labels, train_ids, val_ids, names):
    counts = {}
    for i, s in enumerate(labels):
        for c in s:
            counts[c] = counts.get(c, 0) + 1
    in_train = {c for i in train_ids for c in labels[i]}
    in_val = {c for i in val_ids for c in labels[i]}
    single = sorted(names[c] for c, k in counts.items() if k < 2)
    if single:
        warnings.warn(f"class(es) {single} appear in only one image, which stays in training: "
                      "validation cannot measure them; annotate more images of them",
                      stacklevel=3)
    lost = sorted(names[c] for c, k in counts.items() if k >= 2 and
                  (c not in in_train or c not in in_val))
    if lost:
        warnings.warn(f"class(es) {lost} could not be put in both training and validation "
                      "(their images share classes in a way no split satisfies); try another "
                      "seed or val_fraction", stacklevel=3)
    empty = sorted(names[c] for c in range(1, len(names)) if c not in counts)
    if empty:
        warnings.warn(f"class(es) {empty} have no instances at all", stacklevel=3)
