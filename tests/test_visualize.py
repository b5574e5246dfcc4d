"""Overlays change the right pixels; matterport's matplotlib displays and the run plots
draw what they should (Agg backend)."""
import csv

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.patches import Polygon, Rectangle  # noqa: E402

from colabrcnn import visualize  # noqa: E402

NAMES = ["BG", "square", "circle", "triangle"]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def scene():
    image = np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    masks = np.zeros((64, 80, 2), bool)
    masks[10:30, 10:30, 0] = True
    masks[35:60, 40:75, 1] = True
    boxes = np.array([[10, 10, 30, 30], [35, 40, 60, 75]])
    return image, boxes, masks, np.array([1, 2]), np.array([0.9, 0.75])


def test_overlay_changes_exactly_the_masked_pixels():
    image, boxes, masks, ids, scores = scene()
    out = visualize.draw_instances(image, boxes, masks, ids, NAMES, scores,
                                   show_boxes=False, show_labels=False)
    changed = np.any(out != image, axis=-1)
    np.testing.assert_array_equal(changed, masks.any(-1))
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert (image == scene()[0]).all()  # input untouched
    # Inside a mask the pixel is the blend with the class colour.
    color = np.array(visualize.class_color(1, "square"), np.float32)
    want = (image[15, 15] * 0.5 + color * 0.5).astype(np.uint8)
    np.testing.assert_array_equal(out[15, 15], want)


def test_boxes_and_labels_only_add_pixels_near_the_boxes():
    image, boxes, masks, ids, scores = scene()
    plain = visualize.draw_instances(image, boxes, masks, ids, NAMES, scores,
                                     show_boxes=False, show_labels=False)
    boxed = visualize.draw_instances(image, boxes, masks, ids, NAMES, scores,
                                     show_boxes=True, show_labels=False)
    extra = np.any(boxed != plain, axis=-1)
    outline = np.zeros_like(extra)
    for y1, x1, y2, x2 in boxes:
        outline[y1:y2, x1:x2] = True
        outline[y1 + 1:y2 - 1, x1 + 1:x2 - 1] = False
    assert extra.any() and not (extra & ~outline).any()


def test_class_colours_are_stable():
    assert visualize.class_color(3, "cat") == visualize.class_color(7, "cat")
    assert visualize.class_color(1, "cat") != visualize.class_color(1, "dog")
    assert visualize.instance_colors([1, 2, 1], NAMES)[0] == \
        visualize.instance_colors([1, 2, 1], NAMES)[2]


def test_display_instances_draws_boxes_outlines_and_captions():
    image, boxes, masks, ids, scores = scene()
    fig, ax = plt.subplots()
    got = visualize.display_instances(image, boxes, masks, ids, NAMES, scores, ax=ax)
    assert got is ax
    rects = [p for p in ax.patches if isinstance(p, Rectangle)]
    polys = [p for p in ax.patches if isinstance(p, Polygon)]
    assert len(rects) == 2 and len(polys) == 2
    assert sorted(t.get_text() for t in ax.texts) == ["circle 0.750", "square 0.900"]
    assert len(ax.images) == 1
    # Stable class colour for the outline of instance 0 (a square).
    np.testing.assert_allclose(polys[0].get_edgecolor()[:3],
                               np.array(visualize.class_color(1, "square")) / 255)

    fig, ax = plt.subplots()
    visualize.display_instances(image, boxes, masks, ids, NAMES, ax=ax, show_bbox=False)
    assert len(ax.patches) == 2 and all(isinstance(p, Polygon) for p in ax.patches)
    fig, ax = plt.subplots()
    visualize.display_instances(image, boxes, masks, ids, NAMES, ax=ax, show_mask=False,
                                captions=["x", "y"])
    assert len(ax.patches) == 2 and [t.get_text() for t in ax.texts] == ["x", "y"]
    assert (ax.images[0].get_array() == image).all()   # no mask blended in


def test_a_mask_with_a_hole_has_two_outlines_and_empty_input_draws_nothing(capsys):
    image = np.zeros((40, 40, 3), np.uint8)
    ring = np.zeros((40, 40, 1), bool)
    ring[5:35, 5:35, 0] = True
    ring[15:25, 15:25, 0] = False
    fig, ax = plt.subplots()
    visualize.display_instances(image, np.array([[5, 5, 35, 35]]), ring, [1], NAMES, ax=ax,
                                show_bbox=False)
    assert len(ax.patches) == 2
    fig, ax = plt.subplots()
    visualize.display_instances(image, np.zeros((0, 4)), np.zeros((40, 40, 0), bool), [],
                                NAMES, ax=ax)
    assert len(ax.patches) == 0 and "No instances" in capsys.readouterr().out


def test_display_differences_shows_gt_and_predictions():
    image, boxes, masks, ids, scores = scene()
    pred_masks = masks.copy()
    pred_masks[10:30, 10:20, 0] = False   # half the square: IoU 0.5
    fig, ax = plt.subplots()
    visualize.display_differences(image, boxes, ids, masks, boxes, ids, scores, pred_masks,
                                  NAMES, ax=ax)
    rects = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(rects) == 4 and len(ax.patches) == 8
    texts = [t.get_text() for t in ax.texts if t.get_text()]
    assert sorted(texts) == ["0.75 / 1.00", "0.90 / 0.50"]
    edge = [tuple(np.round(r.get_edgecolor()[:3], 3)) for r in rects]
    assert edge[:2] == [(0, 1, 0)] * 2 and edge[2:] == [(1, 0, 0)] * 2


def test_display_top_masks_has_one_panel_per_class_plus_the_image():
    image, boxes, masks, ids, scores = scene()
    fig = visualize.display_top_masks(image, masks, ids, NAMES, limit=3)
    axes = [a for a in fig.axes if a.images]
    assert len(axes) == 4
    assert [a.get_title() for a in axes[1:]] == ["circle", "square", "-"]


def test_plot_history_from_log_csv_and_from_a_dict(tmp_path):
    names = ["loss", "rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss",
             "mrcnn_bbox_loss", "mrcnn_mask_loss"]
    path = tmp_path / "log.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch"] + names + ["val_" + n for n in names])
        for e in range(4):
            w.writerow([e] + [1.0 / (e + 1)] * 6 + [1.2 / (e + 1)] * 6)
    out = tmp_path / "plots" / "history.png"
    fig = visualize.plot_history(str(path), out_png=str(out))
    assert out.exists()
    axes = [a for a in fig.axes if a.lines]
    assert len(axes) == 6 and all(len(a.lines) == 2 for a in axes)
    assert [a.get_title() for a in axes] == names
    np.testing.assert_array_equal(axes[0].lines[0].get_xdata(), [1, 2, 3, 4])

    fig = visualize.plot_history({"loss": [3, 2, 1], "mrcnn_mask_loss": [1, 0.5, 0.2]})
    axes = [a for a in fig.axes if a.lines]
    assert len(axes) == 2 and all(len(a.lines) == 1 for a in axes)
    with pytest.raises(ValueError, match="no loss"):
        visualize.plot_history({"lr": [0.1]})


def test_plot_per_class_ap_one_bar_per_class_and_type(tmp_path):
    metrics = {"per_class": {"a": {"bbox": 0.5, "segm": 0.4},
                             "b": {"bbox": 0.9, "segm": 1.0},
                             "c": {"bbox": None, "segm": None}}}
    out = tmp_path / "ap.png"
    fig = visualize.plot_per_class_ap(metrics, out_png=str(out))
    assert out.exists()
    ax = fig.axes[0]
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(bars) == 6
    assert sorted(round(b.get_height(), 2) for b in bars) == [0, 0, 0.4, 0.5, 0.9, 1.0]
    assert [t.get_text() for t in ax.texts].count("n/a") == 2
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]


# ------------------------------------------------------------ matterport's inspection
def test_random_colors_are_distinct_unit_rgb_and_follow_random_seed():
    import random
    random.seed(3)
    a = visualize.random_colors(5)
    random.seed(3)
    assert visualize.random_colors(5) == a
    assert len(set(a)) == 5 and all(0 <= c <= 1 for rgb in a for c in rgb)
    assert {max(rgb) for rgb in visualize.random_colors(4, bright=False)} == {0.7}


def test_draw_box_outlines_two_pixels_in_place():
    image = np.zeros((40, 40, 3), np.uint8)
    out = visualize.draw_box(image, np.array([10, 5, 30, 25]), (255, 0, 0))
    assert out is image
    red = image[..., 0] == 255
    assert red[10, 15] and red[30, 15] and red[20, 5] and red[20, 25]   # the four sides
    assert not red[20, 15] and not red[5, 5] and not red[35, 35]       # inside / outside
    assert (image[..., 1:] == 0).all()


def test_draw_boxes_draws_boxes_refinements_captions_and_masks():
    image, boxes, masks, ids, scores = scene()
    refined = boxes + 2
    fig, ax = plt.subplots()
    got = visualize.draw_boxes(image, boxes=boxes, refined_boxes=refined, masks=masks,
                               captions=["one", "two"], visibilities=[2, 0], title="t",
                               ax=ax)
    assert got is ax and ax.get_title() == "t"
    rects = [p for p in ax.patches if isinstance(p, Rectangle)]
    # Box 0: dashed box + refined box; box 1 (visibility 0): its box only, grey.
    assert len(rects) == 3 and len(ax.lines) == 1
    assert len([p for p in ax.patches if isinstance(p, Polygon)]) == 2
    np.testing.assert_allclose(rects[2].get_edgecolor()[:3], [0.502, 0.502, 0.502],
                               atol=1e-3)
    # The first caption sits on its refined box, the second on its box.
    assert [(t.get_text(), t.get_position()) for t in ax.texts] == \
        [("one", (12, 12)), ("two", (40, 35))]
    shown = ax.images[0].get_array()
    assert (shown[~masks.any(-1)] == image[~masks.any(-1)]).all()
    assert (shown[masks[..., 0]] != image[masks[..., 0]]).any()
    with pytest.raises(ValueError):
        visualize.draw_boxes(image)


def test_draw_rois_shows_positive_refinements_and_prints_the_ratio(capsys):
    np.random.seed(0)
    image = np.zeros((64, 64, 3), np.uint8)
    rois = np.array([[4, 4, 20, 20], [30, 30, 60, 60], [0, 0, 10, 10]])
    refined = rois + 1
    mask = np.ones((3, 14, 14), np.float32)
    ax = visualize.draw_rois(image, rois, refined, mask, np.array([1, 0, 2]),
                             NAMES, limit=10)
    rects = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(rects) == 5 and len(ax.lines) == 2        # 3 ROIs + 2 refined
    assert sorted(t.get_text() for t in ax.texts) == ["circle", "square"]
    out = capsys.readouterr().out
    assert "Positive ROIs:  2" in out and "Negative ROIs:  1" in out and "0.67" in out
    assert ax.get_title() == "3 ROIs"
    ax = visualize.draw_rois(image, rois, refined, mask, np.array([1, 0, 2]), NAMES,
                             limit=2)
    assert ax.get_title() == "Showing 2 random ROIs out of 3"


def test_precision_recall_and_overlap_plots():
    ax = visualize.plot_precision_recall(0.75, np.array([1, 1, 0.5]), np.array([0, .5, 1]))
    assert ax.get_title() == "Precision-Recall Curve. AP@50 = 0.750"
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), [0, .5, 1])
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), [1, 1, .5])

    overlaps = np.array([[0.8, 0.1], [0.7, 0.0]])
    fig = visualize.plot_overlaps(np.array([1, 2]), np.array([1, 2]), np.array([.9, .6]),
                                  overlaps, NAMES)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["0.800\nmatch", "0.100\n", "0.700\nwrong",
                                                "0.000\n"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["square (0.90)",
                                                            "circle (0.60)"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["square", "circle"]


def test_display_table_prints_headless_and_returns_html(capsys):
    markup = visualize.display_table([["NAME", "SHAPE"], ["w", (2, 3)]])
    assert markup.startswith("<table><tr><td>NAME") and markup.count("<tr>") == 2
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "SHAPE"] and lines[1].split() == ["w", "(2,", "3)"]


def test_display_weight_stats_flags_dead_weights_but_not_conv_biases(capsys):
    import keras

    conv = keras.layers.Conv2D(2, 1, name="conv")
    conv.build((None, 4, 4, 3))
    dense = keras.layers.Dense(2, kernel_initializer="zeros", name="dense")
    dense.build((None, 3))

    class Model:
        def get_trainable_layers(self):
            return [conv, dense]

    table = visualize.display_weight_stats(Model())
    assert table[0] == ["WEIGHT NAME", "SHAPE", "MIN", "MAX", "STD"]
    names = [row[0] for row in table[1:]]
    assert len(names) == 4
    assert "dead?" not in names[0] and "dead?" not in names[1]   # conv kernel, conv bias
    assert "dead?" in names[2] and "dead?" in names[3]           # zero dense kernel, bias
    assert table[1][1] == "(1, 1, 3, 2)"
    assert "WEIGHT NAME" in capsys.readouterr().out
