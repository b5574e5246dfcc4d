"""COCO metrics against pycocotools run directly, matterport AP, error analysis and the
HTML error browser — on hand-built ground truth and predictions (no model needed)."""
import json
import os

import numpy as np
import pytest
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from colabrcnn import evaluate, utils
from colabrcnn.data.dataset import Dataset

H = W = 96


class FakeDataset(Dataset):
    """Images given as arrays with their masks; classes a, b, c (c never annotated)."""

    def __init__(self, items, classes=("a", "b", "c"), paths=None, ann_file=None):
        super().__init__()
        for i, name in enumerate(classes):
            self.add_class("fake", i + 1, name)
        for k, (masks, ids) in enumerate(items):
            image = np.full(masks.shape[:2] + (3,), 40 + 10 * k, np.uint8)
            self.add_image("fake", image_id=k, path=paths[k] if paths else None, image=image,
                           masks=masks, ids=ids, file=ann_file)
        self.prepare()

    def image_reference(self, image_id):
        return self.image_info[image_id]["path"] or f"fake_{image_id}"

    def load_mask(self, image_id):
        info = self.image_info[image_id]
        return info["masks"], np.asarray(info["ids"], np.int32)


def box_masks(boxes, h=H, w=W):
    m = np.zeros((h, w, len(boxes)), bool)
    for k, (y1, x1, y2, x2) in enumerate(boxes):
        m[y1:y2, x1:x2, k] = True
    return m


def result(boxes, class_ids, scores, h=H, w=W):
    boxes = np.asarray(boxes, np.int32).reshape(-1, 4)
    return {"rois": boxes, "class_ids": np.asarray(class_ids, np.int32),
            "scores": np.asarray(scores, np.float32), "masks": box_masks(boxes, h, w)}


def no_result(h=H, w=W):
    return {"rois": np.zeros((0, 4), np.int32), "class_ids": np.zeros(0, np.int32),
            "scores": np.zeros(0, np.float32), "masks": np.zeros((h, w, 0), bool)}


# Image 0: a (small, 20x20) and b (medium, 40x35); image 1: two a's.
GT = [([(5, 5, 25, 25), (40, 30, 80, 65)], [1, 2]),
      ([(0, 0, 30, 30), (50, 50, 90, 92)], [1, 1])]


def gt_dataset(**kw):
    return FakeDataset([(box_masks(b), ids) for b, ids in GT], **kw)


def perfect_results():
    return [result(b, ids, np.linspace(0.9, 0.8, len(ids))) for b, ids in GT]


def coco_by_hand(boxes_per_image, ids_per_image):
    """The COCO ground truth written out directly with pycocotools (not our code)."""
    images, anns = [], []
    for i, (boxes, ids) in enumerate(zip(boxes_per_image, ids_per_image)):
        images.append({"id": i, "height": H, "width": W})
        for (y1, x1, y2, x2), cid in zip(boxes, ids):
            m = np.zeros((H, W), np.uint8)
            m[y1:y2, x1:x2] = 1
            rle = mask_util.encode(np.asfortranarray(m))
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cid,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(m.sum()),
                         "segmentation": rle, "iscrowd": 0})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"},
                                 {"id": 3, "name": "c"}]}
    gt.createIndex()
    return gt


def pycocotools_stats(gt, dets, iou_type):
    dets = [dict(d) for d in dets]
    for d in dets:
        if iou_type == "segm":
            d.pop("bbox")
        else:
            d.pop("segmentation")
    ev = COCOeval(gt, gt.loadRes(dets), iou_type)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats


def test_perfect_predictions_give_ap_1():
    m = evaluate.coco_metrics_from_results(gt_dataset(), perfect_results())
    for t in ("bbox", "segm"):
        for k in ("AP", "AP50", "AP75", "AR10", "AR100", "APs", "APm"):
            assert m[t][k] == pytest.approx(1.0), (t, k)
        assert m[t]["APl"] is None  # no large object in the ground truth
        assert m[t]["AR1"] < 1  # image 1 holds two objects
    assert m["per_class"]["a"] == {"bbox": pytest.approx(1.0), "segm": pytest.approx(1.0)}
    assert m["num_ground_truth"] == 4 and m["num_predictions"] == 4
    assert m["images_without_predictions"] == 0


def test_matches_pycocotools_run_directly_on_a_mixed_case():
    # Shifted, wrongly-classed, duplicate and missing predictions, with scores.
    preds = [([(5, 5, 25, 25), (45, 30, 85, 65), (6, 6, 25, 25), (40, 30, 80, 65)],
              [1, 2, 1, 1], [0.9, 0.7, 0.6, 0.95]),
             ([(2, 3, 30, 30), (0, 60, 10, 70)], [1, 2], [0.5, 0.8])]
    results = [result(b, c, s) for b, c, s in preds]
    ours = evaluate.coco_metrics_from_results(gt_dataset(), results)
    gt = coco_by_hand([b for b, _ in GT], [c for _, c in GT])
    dets = []
    for i, (boxes, ids, scores) in enumerate(preds):
        for (y1, x1, y2, x2), cid, s in zip(boxes, ids, scores):
            m = np.zeros((H, W), np.uint8)
            m[y1:y2, x1:x2] = 1
            dets.append({"image_id": i, "category_id": cid, "score": s,
                         "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "segmentation": mask_util.encode(np.asfortranarray(m))})
    for t in ("bbox", "segm"):
        stats = pycocotools_stats(gt, dets, t)
        got = [ours[t][k] for k in evaluate.METRIC_NAMES]
        want = [None if s == -1 else s for s in stats]
        assert len(got) == 12
        for name, g, w in zip(evaluate.METRIC_NAMES, got, want):
            if w is None:
                assert g is None, (t, name)
            else:
                assert g == pytest.approx(w, abs=1e-9), (t, name)
    assert 0 < ours["segm"]["AP"] < 1


def test_half_the_objects_found_gives_known_values():
    # One class, two GT, one perfect prediction: precision 1 up to recall 0.5, then 0:
    # COCO's 101-point interpolation gives 51/101 at every IoU; recall 0.5.
    ds = FakeDataset([(box_masks([(5, 5, 45, 45), (50, 50, 90, 90)]), [1, 1])])
    m = evaluate.coco_metrics_from_results(ds, [result([(5, 5, 45, 45)], [1], [0.9])])
    for t in ("bbox", "segm"):
        assert m[t]["AP"] == pytest.approx(51 / 101)
        assert m[t]["AP50"] == pytest.approx(51 / 101)
        assert m[t]["AR100"] == pytest.approx(0.5)
        assert m[t]["AR1"] == pytest.approx(0.5)


def test_no_predictions_at_all_gives_zero_not_nan(tmp_path):
    out = tmp_path / "metrics.json"
    m = evaluate.coco_metrics_from_results(gt_dataset(), [no_result(), no_result()],
                                           out_json=str(out))
    for t in ("bbox", "segm"):
        assert m[t]["AP"] == 0.0 and m[t]["AP50"] == 0.0 and m[t]["AR100"] == 0.0
        for v in m[t].values():
            assert v is None or np.isfinite(v)
    assert m["images_without_predictions"] == 2
    text = out.read_text()
    assert "NaN" not in text and json.loads(text)["segm"]["AP"] == 0.0


def test_an_image_without_predictions_counts_as_misses():
    good = perfect_results()
    m = evaluate.coco_metrics_from_results(gt_dataset(), [good[0], no_result()])
    assert m["images_without_predictions"] == 1
    assert m["segm"]["AR100"] < 1.0 and m["segm"]["AP"] < 1.0
    assert m["per_class"]["b"]["segm"] == pytest.approx(1.0)  # b is only in image 0


def test_a_class_without_ground_truth_is_none_and_does_not_drag_the_mean():
    results = perfect_results()
    # A confident false positive of class c (which has no ground truth anywhere).
    r = results[0]
    extra = result(np.concatenate([r["rois"], [[60, 0, 90, 20]]]), [1, 2, 3], [0.9, 0.8, 0.99])
    m = evaluate.coco_metrics_from_results(gt_dataset(), [extra, results[1]])
    assert m["per_class"]["c"] == {"bbox": None, "segm": None}
    assert m["segm"]["AP"] == pytest.approx(1.0)
    json.dumps(m)  # JSON-ready


def test_crowd_regions_are_coco_crowd_annotations():
    # Class id -1: a crowd region of class a. A detection on it is not a false positive.
    masks = box_masks([(5, 5, 25, 25), (40, 40, 90, 90)])
    ds = FakeDataset([(masks, [1, -1])])
    r = result([(5, 5, 25, 25), (45, 45, 85, 85)], [1, 1], [0.9, 0.95])
    m = evaluate.coco_metrics_from_results(ds, [r])
    assert m["num_ground_truth"] == 1 and m["num_crowd"] == 1
    assert m["segm"]["AP"] == pytest.approx(1.0)
    a = evaluate.analyze_errors(ds, [r])[0]
    assert a["ignored"] == [1] and not a["false_positives"] and a["num_gt"] == 1


def test_results_must_line_up_with_image_ids():
    with pytest.raises(ValueError, match="2 images"):
        evaluate.coco_metrics_from_results(gt_dataset(), perfect_results()[:1])


def test_matterport_ap_is_reexported():
    assert evaluate.compute_ap is utils.compute_ap
    assert evaluate.compute_ap_range is utils.compute_ap_range


class FakeModel:
    """detect() returns prepared results by image content (the fill value)."""

    class config:
        BATCH_SIZE = 2

    def __init__(self, by_fill):
        self.by_fill = by_fill
        self.log_dir = None
        self.calls = 0

    def detect(self, images, verbose=0):
        self.calls += 1
        return [self.by_fill[int(im[0, 0, 0])] for im in images]


def test_coco_metrics_and_evaluate_ap_drive_a_model(tmp_path):
    ds = gt_dataset()
    res = perfect_results()
    res[1] = result([(0, 0, 30, 30)], [1], [0.9])   # misses one a in image 1
    model = FakeModel({40: res[0], 50: res[1]})
    out = tmp_path / "m.json"
    m = evaluate.coco_metrics(model, ds, out_json=str(out), verbose=0,
                              results_json=str(tmp_path / "r.json"))
    assert m == evaluate.coco_metrics_from_results(ds, res)
    assert json.loads(out.read_text()) == json.loads(json.dumps(m))
    assert len(json.loads((tmp_path / "r.json").read_text())) == 3
    mean, per_image = evaluate.evaluate_ap(model, ds, verbose=0, return_per_image=True)
    assert per_image[0] == 1.0 and per_image[1] == pytest.approx(0.5)
    assert mean == pytest.approx(0.75)
    assert evaluate.evaluate_ap(model, ds, limit=1, verbose=0) == 1.0


# ------------------------------------------------------------------ error analysis
def error_case():
    """Image 0 holds every kind of error; image 1 is perfect."""
    gt0 = [(5, 5, 25, 25), (40, 40, 70, 70), (70, 5, 90, 30), (5, 60, 30, 90)]
    ids0 = [1, 1, 2, 1]
    preds0 = [(5, 5, 25, 25),     # 0 matches gt 0
              (5, 6, 25, 25),     # 1 duplicate of gt 0
              (70, 5, 90, 30),    # 2 right place, wrong class (confusion b -> a)
              (80, 80, 95, 95),   # 3 background false positive
              (40, 40, 55, 55)]   # 4 poor localization on gt 1 (IoU 0.25)
    # gt 3 (5, 60, 30, 90) is missed.
    ds = FakeDataset([(box_masks(gt0), ids0), (box_masks([(10, 10, 40, 40)]), [2])])
    results = [result(preds0, [1, 1, 1, 2, 1], [0.9, 0.8, 0.85, 0.6, 0.7]),
               result([(10, 10, 40, 40)], [2], [0.9])]
    return ds, results


def test_analyze_errors_sorts_every_prediction_and_ground_truth():
    ds, results = error_case()
    a0, a1 = evaluate.analyze_errors(ds, results)
    assert [(m["gt"], m["pred"]) for m in a0["matches"]] == [(0, 0)]
    assert a0["matched_ious"] == [1.0] and a0["mean_iou"] == 1.0
    kinds = {f["pred"]: f["kind"] for f in a0["false_positives"]}
    assert kinds == {1: "duplicate", 3: "background", 4: "localization"}
    assert [(c["gt"], c["pred"], c["gt_class"], c["pred_class"]) for c in a0["confusions"]] \
        == [(2, 2, "b", "a")]
    assert [(m["gt"], m["class_name"]) for m in a0["misses"]] == [(1, "a"), (3, "a")]
    assert a0["num_errors"] == 3 + 2 + 1
    assert a0["num_gt"] == 4 and a0["num_pred"] == 5 and a0["ap50"] < 1
    assert a1["num_errors"] == 0 and a1["ap50"] == 1.0
    json.dumps([a0, a1])
    assert evaluate.worst_images([a1, a0], 1)[0]["image_id"] == 0
    # A score threshold drops predictions before matching.
    b0 = evaluate.analyze_errors(ds, results, min_score=0.75)[0]
    assert b0["num_pred"] == 3 and {f["pred"] for f in b0["false_positives"]} == {1}


def test_html_report_shows_the_worst_image_with_links(tmp_path):
    from colabrcnn import visualize
    paths = []
    for k in range(2):
        p = tmp_path / "data" / f"img_{k}.png"
        p.parent.mkdir(exist_ok=True)
        visualize.save_image(p, np.zeros((H, W, 3), np.uint8))
        paths.append(str(p))
    ann = tmp_path / "data" / "via_region_data.json"
    ann.write_text("{}")
    ds, results = error_case()
    ds = FakeDataset([(ds.image_info[i]["masks"], ds.image_info[i]["ids"]) for i in range(2)],
                     paths=paths, ann_file=str(ann))
    analysis = evaluate.analyze_errors(ds, results)
    out = tmp_path / "run"
    page = evaluate.html_report(ds, results, analysis, str(out), k=1)
    text = open(page).read()
    assert os.path.dirname(page) == str(out)
    assert "img_0.png" in text and "img_1.png" not in text  # only the worst, k=1
    assert 'href="../data/img_0.png"' in text
    assert 'href="../data/via_region_data.json"' in text
    assert "missed a" in text and "b #2 predicted as a" in text
    thumbs = sorted(os.listdir(out / "errors"))
    assert thumbs == ["001_image0_gt.png", "001_image0_pred.png"]
    for t in thumbs:
        assert f'src="errors/{t}"' in text


def test_evaluate_model_writes_the_run_files(tmp_path):
    ds, results = error_case()
    model = FakeModel({40: results[0], 50: results[1]})
    done = evaluate.evaluate_model(model, ds, str(tmp_path), k=5, verbose=0)
    for key in ("metrics_json", "per_class_png", "analysis_json", "report"):
        assert os.path.exists(done[key]), key
    assert "fake_0" in open(done["report"]).read()
    saved = json.loads(open(done["analysis_json"]).read())
    assert saved["summary"]["misses"] == 2 and saved["summary"]["confusions"] == 1
    assert done["metrics"]["per_class"]["c"]["segm"] is None
    assert "n/a" in evaluate.format_metrics(done["metrics"])
