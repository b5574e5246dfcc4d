"""colabrcnn.notebook: the helpers the notebooks use, without a model (quick)."""
import json
import os
import zipfile

import numpy as np
import pytest

from colabrcnn import ColabRCNNError
from colabrcnn import notebook as nb
from colabrcnn.data import shapes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sample_dataset_is_found_from_anywhere_in_the_checkout(tmp_path, monkeypatch):
    expected = os.path.join(REPO, "datasets", "coins")
    assert nb.find_sample("coins") == expected
    assert nb.find_sample("coins", start=os.path.join(REPO, "notebooks")) == expected
    monkeypatch.chdir(tmp_path)   # a temp working dir: found from the package instead
    assert nb.find_sample("coins") == expected
    assert nb.find_sample("no_such_sample") is None


def test_bring_data_folder_zip_and_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "mydata"
    folder.mkdir()
    (folder / "a.json").write_text("{}")
    assert nb.bring_data(str(folder)) == str(folder)
    # A zip with one top folder is extracted once; the data folder inside is returned.
    archive = tmp_path / "mydata.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(folder / "a.json", "mydata/a.json")
    got = nb.bring_data(str(archive), dest=str(tmp_path / "data"))
    assert got == str(tmp_path / "data" / "mydata" / "mydata")
    assert os.path.exists(os.path.join(got, "a.json"))
    assert nb.bring_data(str(archive), dest=str(tmp_path / "data")) == got   # cached
    with pytest.raises(ColabRCNNError, match="data not found"):
        nb.bring_data(str(tmp_path / "nope"))
    with pytest.raises(ColabRCNNError, match="no data given"):
        nb.bring_data(None)


def test_colab_only_helpers_say_what_to_do_elsewhere(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(nb, "platform", lambda: "local")
    assert nb.upload(str(tmp_path / "up")) == []
    assert "Colab only" in capsys.readouterr().out
    assert nb.bring_data("upload", dest=str(tmp_path)) is None
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "x.txt").write_text("x")
    zipped = nb.download(str(folder))   # a folder is zipped first
    assert zipped.endswith(".zip") and os.path.exists(zipped)
    assert "not on Colab" in capsys.readouterr().out
    monkeypatch.setattr(nb, "platform", lambda: "kaggle")
    nb.download(zipped)
    assert "Output" in capsys.readouterr().out


def test_default_model_dir(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(nb, "platform", lambda: "local")
    assert nb.default_model_dir("runs") == str(tmp_path / "runs")


def test_find_checkpoint_last_best_and_class_names(tmp_path):
    from colabrcnn import checkpoint as T
    assert nb.find_checkpoint(str(tmp_path / "missing")) is None
    assert nb.find_checkpoint(str(tmp_path)) is None
    old, new = tmp_path / "x20250101T0000", tmp_path / "x20260101T0000"
    for run in (old, new):
        run.mkdir()
        for epoch in (1, 2):
            open(T.checkpoint_path(str(run), "x", epoch), "w").close()
    os.utime(T.checkpoint_path(str(old), "x", 2), (1, 1))
    os.utime(T.checkpoint_path(str(old), "x", 1), (1, 1))
    # Plain (empty) files are not readable HDF5: find_checkpoint skips them...
    assert nb.find_checkpoint(str(tmp_path)) is None
    # ... so write real ones.
    import h5py
    for run in (old, new):
        for epoch in (1, 2):
            with h5py.File(T.checkpoint_path(str(run), "x", epoch), "w"):
                pass
    os.utime(T.checkpoint_path(str(old), "x", 2), (1, 1))
    last = nb.find_checkpoint(str(tmp_path))
    assert last == T.checkpoint_path(str(new), "x", 2)
    assert nb.find_checkpoint(str(new)) == last         # a run folder works too
    assert nb.find_checkpoint(str(tmp_path), "best") == last   # no best kept: the last
    best = new / "mask_rcnn_x_best.h5"
    with h5py.File(best, "w"):
        pass
    assert nb.find_checkpoint(str(tmp_path), "best") == str(best)
    with pytest.raises(ColabRCNNError):
        nb.find_checkpoint(str(tmp_path), "first")
    assert nb.load_class_names(last, 3) == ["BG", "class_1", "class_2"]
    nb.save_class_names(str(new), ["BG", "coin"])
    assert nb.load_class_names(last) == ["BG", "coin"]
    assert json.load(open(new / "class_names.json")) == ["BG", "coin"]


def test_pictures_tables_and_browsers(capsys):
    a = np.zeros((10, 6, 3), np.uint8)
    b = np.zeros((7, 5, 3), np.uint8)
    both = nb.side_by_side(a, b)
    assert both.shape == (10, 6 + 4 + 5, 3) and both[9, 12, 0] == 255
    table = nb.format_table([{"lever": "base", "GiB": 1.23456, "s": None},
                             {"lever": "remat", "GiB": 1.0}])
    lines = table.splitlines()
    assert lines[0].split() == ["lever", "GiB", "s"] and "1.23" in lines[2]
    assert "n/a" in lines[2]
    ds = shapes(3, 64, seed=0)
    widget = nb.browse_dataset(ds)
    assert widget is not None and widget.children[0].max == 2
    widget.children[0].value = 2            # moving the slider redraws the picture
    assert widget.children[2].value[:4] == b"\x89PNG"
    assert "3/3" in widget.children[1].value
    images = [ds.load_image(i) for i in ds.image_ids]
    masks, ids = ds.load_mask(0)
    from colabrcnn.utils import extract_bboxes
    results = [{"rois": extract_bboxes(masks), "masks": masks, "class_ids": ids,
                "scores": np.ones(len(ids))}] * 3
    assert nb.browse_results(images, results, ds.class_names) is not None
    assert nb.browse_images(images, titles=["a", "b", "c"]) is not None
    with pytest.raises(ColabRCNNError):
        nb.browse_results(images, results[:1])
