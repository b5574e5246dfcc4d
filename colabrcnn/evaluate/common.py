"""Helpers the evaluation modules share: progress bars, image selection, detection
streams, crowd regions, JSON output, class names."""
from __future__ import annotations

import json
import os

import numpy as np


def progress(iterable=None, total=None, desc=None, verbose=1):
    from tqdm.auto import tqdm
    return tqdm(iterable, total=total, desc=desc, disable=not verbose, leave=verbose > 1)


def split_crowd(dataset, image_id, masks, class_ids):
    """(instance masks, class ids, crowd masks, crowd class ids) of one image."""
    class_ids = np.asarray(class_ids, dtype=np.int64)
    crowd = class_ids < 0
    crowd_masks, crowd_ids = masks[..., crowd], -class_ids[crowd]
    masks, class_ids = masks[..., ~crowd], class_ids[~crowd]
    if hasattr(dataset, "load_crowd_mask"):
        cm, cid = dataset.load_crowd_mask(image_id)
        if len(cid):
            crowd_masks = np.concatenate([crowd_masks, cm.astype(bool)], axis=-1)
            crowd_ids = np.concatenate([crowd_ids, np.abs(np.asarray(cid, np.int64))])
    return masks, class_ids, crowd_masks, crowd_ids


def write_json(path, data):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)
    return path


def select_ids(dataset, image_ids, limit):
    image_ids = list(dataset.image_ids if image_ids is None else image_ids)
    return image_ids[:limit] if limit else image_ids


def detect_stream(model, dataset, image_ids, batch_size=None, verbose=1, desc="detect"):
    """Yield (image_id, result) with a progress bar, batch by batch (masks are not kept)."""
    bs = int(batch_size or getattr(getattr(model, "config", None), "BATCH_SIZE", 1) or 1)
    bar = progress(total=len(image_ids), desc=desc, verbose=verbose)
    try:
        for start in range(0, len(image_ids), bs):
            chunk = image_ids[start:start + bs]
            results = model.detect([dataset.load_image(i) for i in chunk])
            for image_id, r in zip(chunk, results):
                yield image_id, r
            bar.update(len(chunk))
    finally:
        bar.close()


def class_name(class_names, cid):
    cid = int(cid)
    if class_names is not None and 0 <= cid < len(class_names):
        return str(class_names[cid])
    return str(cid)
