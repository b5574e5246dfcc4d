"""Batch prediction on a folder and a video, and the `predict`/`evaluate` commands, with a
tiny untrained model (TensorFlow backend)."""
import json
import os
import shutil

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from colabrcnn import cli, visualize
from colabrcnn.predict import instance_id_image, list_images, predict_folder, predict_video
from tiny_model import CLASS_NAMES, TinyConfig, tiny_model

SIZES = {"a.png": (64, 64), "b.jpg": (48, 80), "sub_c.png": (100, 60)}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("logs"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, (h, w) in SIZES.items():
        visualize.save_image(d / name, rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    (d / "notes.txt").write_text("not an image")
    return d


def read_unchanged(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_instance_id_image_numbers_by_score_and_higher_score_wins():
    masks = np.zeros((10, 10, 3), bool)
    masks[0:5, 0:5, 0] = True
    masks[3:8, 3:8, 1] = True     # overlaps instance 0
    masks[9, 9, 2] = True
    ids, order = instance_id_image(masks, scores=[0.5, 0.9, 0.7])
    assert ids.dtype == np.uint16 and list(order) == [1, 2, 0]
    assert ids[4, 4] == 1          # the 0.9 instance wins the overlap
    assert ids[0, 0] == 3 and ids[9, 9] == 2 and ids[9, 0] == 0


def test_predict_folder_writes_overlays_instance_pngs_and_coco_json(model, folder, tmp_path):
    out = tmp_path / "pred"
    done = predict_folder(model, folder, out, CLASS_NAMES, verbose=0)
    assert [os.path.basename(r["file"]) for r in done["images"]] == sorted(SIZES)
    expected = model.detect([cv2.cvtColor(cv2.imread(str(folder / n)), cv2.COLOR_BGR2RGB)
                             for n in sorted(SIZES)])
    coco = COCO(done["coco_json"])
    assert [c["name"] for c in coco.dataset["categories"]] == CLASS_NAMES[1:]
    total = 0
    for rec, r in zip(done["images"], expected):
        h, w = SIZES[os.path.basename(rec["file"])]
        n = len(r["class_ids"])
        assert n > 0 and len(rec["class_ids"]) == n
        total += n
        overlay = read_unchanged(rec["overlay"])
        assert overlay.shape == (h, w, 3)
        ids = read_unchanged(rec["mask"])
        assert ids.dtype == np.uint16 and ids.shape == (h, w)
        order = np.argsort(-r["scores"], kind="stable")
        want, _ = instance_id_image(r["masks"][..., order])
        np.testing.assert_array_equal(ids, want)
        np.testing.assert_allclose(rec["scores"], r["scores"][order], rtol=1e-6)
        assert rec["class_ids"] == r["class_ids"][order].tolist()
    assert len(coco.dataset["annotations"]) == total
    assert {im["file_name"] for im in coco.dataset["images"]} == set(SIZES)
    # The annotations are valid COCO results too.
    assert len(coco.loadRes(coco.dataset["annotations"]).getAnnIds()) == total


def test_predict_folder_per_instance_masks_and_switches(model, folder, tmp_path):
    out = tmp_path / "pred"
    done = model.predict_folder(folder, out, CLASS_NAMES, mask_format="per_instance",
                                save_overlays=False, coco_json=False, min_score=0.0,
                                batch_size=3, verbose=0)
    assert done["coco_json"] is None and not (out / "coco_predictions.json").exists()
    assert not (out / "overlays").exists()
    for rec in done["images"]:
        h, w = SIZES[os.path.basename(rec["file"])]
        assert len(rec["mask"]) == len(rec["class_ids"]) > 0
        for k, path in enumerate(rec["mask"]):
            name = os.path.basename(path)
            assert name.startswith(f"{k + 1:03d}_") and \
                name.endswith(CLASS_NAMES[rec["class_ids"][k]] + ".png")
            m = read_unchanged(path)
            assert m.shape == (h, w) and m.dtype == np.uint8
            assert set(np.unique(m)) <= {0, 255}
    done = predict_folder(model, folder, tmp_path / "none", None, mask_format=None,
                          verbose=0)
    assert not (tmp_path / "none" / "masks").exists()
    names = [c["name"] for c in json.load(open(done["coco_json"]))["categories"]]
    assert all(n.startswith("class_") for n in names)


def test_unreadable_images_are_skipped_and_reported(model, tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    visualize.save_image(d / "good.png", np.zeros((64, 64, 3), np.uint8))
    (d / "broken.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="broken.png"):
        done = predict_folder(model, d, tmp_path / "out", CLASS_NAMES, verbose=0)
    assert [os.path.basename(r["file"]) for r in done["images"]] == ["good.png"]
    assert len(done["errors"]) == 1 and "broken.png" in done["errors"][0][0]
    assert list_images(d) == [str(d / "broken.png"), str(d / "good.png")]


def test_predict_video_writes_every_frame(model, tmp_path):
    src = str(tmp_path / "in.avi")
    writer = cv2.VideoWriter(src, cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    assert writer.isOpened()
    rng = np.random.default_rng(1)
    for _ in range(5):
        writer.write(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    writer.release()
    dst = str(tmp_path / "out" / "pred.avi")
    done = model.predict_video(src, dst, CLASS_NAMES, verbose=0)
    assert done["frames"] == 5 and done["instances"] > 0
    cap = cv2.VideoCapture(dst)
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0)
    frames = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        assert frame.shape == (48, 64, 3)
        frames += 1
    cap.release()
    assert frames == 5 and done["fps"] == pytest.approx(10.0)
    assert predict_video(model, src, str(tmp_path / "two.avi"), max_frames=2,
                         verbose=0)["frames"] == 2


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("saved")
    weights = model.save_weights(str(d / "tiny.h5"))
    config = d / "config.json"
    config.write_text(TinyConfig().to_json())
    return str(weights), str(config)


def test_cli_predict(saved, folder, tmp_path, capsys):
    weights, config = saved
    out = tmp_path / "cli"
    code = cli.main(["predict", "--weights", weights, "--config", config, "--images",
                     str(folder), "--out", str(out), "--classes", "square,circle,triangle",
                     "--mask-format", "per_instance"])
    assert code == 0
    assert (out / "coco_predictions.json").exists()
    assert sorted(os.listdir(out / "overlays")) == ["a.png", "b.png", "sub_c.png"]
    assert sorted(os.listdir(out / "masks")) == ["a", "b", "sub_c"]
    # An .h5 file without its Config (none given, none beside it) is a clear error,
    # not a traceback.
    (tmp_path / "bare").mkdir()
    bare = shutil.copy(weights, tmp_path / "bare" / "tiny.h5")
    assert cli.main(["predict", "--weights", str(bare), "--images", str(folder),
                     "--out", str(out)]) == 1
    assert "--config" in capsys.readouterr().err


def test_cli_evaluate_on_shapes(saved, tmp_path):
    weights, config = saved
    out = tmp_path / "eval"
    # No --config: the config.json beside the weights is used (as in the notebooks).
    assert os.path.dirname(config) == os.path.dirname(weights)
    code = cli.main(["evaluate", "--weights", weights, "--shapes", "3",
                     "--out", str(out), "--report", "2"])
    assert code == 0
    metrics = json.load(open(out / "coco_metrics.json"))
    assert set(metrics["per_class"]) == {"square", "circle", "triangle"}
    assert metrics["num_images"] == 3
    assert (out / "per_class_ap.png").exists()
    html = (out / "errors.html").read_text()
    assert html.count("<tr id=") == 2
