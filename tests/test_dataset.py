"""Dataset contract (matterport's) and image reading that always gives RGB uint8."""
import numpy as np
import pytest
from PIL import Image

from colabrcnn import Dataset
from colabrcnn.data.dataset import read_image, to_rgb_uint8
from colabrcnn.errors import AnnotationError


def make_dataset():
    ds = Dataset()
    ds.add_class("fruit", 1, "apple")
    ds.add_class("fruit", 2, "banana")
    ds.add_class("coco", 7, "train")
    ds.add_class("fruit", 1, "apple")  # duplicate: ignored
    ds.add_image("fruit", image_id="a.jpg", path="/data/a.jpg", width=64, height=32)
    ds.add_image("coco", image_id=42, path="/coco/000042.jpg", width=10, height=20)
    return ds.prepare()


# ------------------------------------------------------------- contract
def test_classes_and_ids_after_prepare():
    ds = make_dataset()
    assert ds.class_names == ["BG", "apple", "banana", "train"]
    assert ds.num_classes == 4
    assert list(ds.class_ids) == [0, 1, 2, 3]
    assert ds.num_images == 2 and len(ds) == 2
    assert list(ds.image_ids) == [0, 1]
    assert ds.image_info[0]["width"] == 64 and ds.image_info[0]["height"] == 32
    assert ds.sources == ["", "coco", "fruit"]
    assert ds.source_class_ids["fruit"] == [0, 1, 2]
    assert ds.source_class_ids["coco"] == [0, 3]


def test_map_source_class_id_and_back():
    ds = make_dataset()
    assert ds.map_source_class_id("fruit.2") == 2
    assert ds.map_source_class_id("coco.7") == 3
    assert ds.get_source_class_id(3, "coco") == 7
    with pytest.raises(KeyError):
        ds.map_source_class_id("coco.8")


def test_image_reference_and_source_link():
    ds = make_dataset()
    assert ds.image_reference(0) == "/data/a.jpg"
    assert ds.source_image_link(1) == "/coco/000042.jpg"
    assert ds.image_from_source_map["coco.42"] == 1


def test_class_names_keep_text_before_comma():
    ds = Dataset()
    ds.add_class("x", 1, "person, standing")
    ds.prepare()
    assert ds.class_names == ["BG", "person"]


def test_source_with_dot_rejected():
    with pytest.raises(AnnotationError, match="dot"):
        Dataset().add_class("my.source", 1, "thing")


def test_base_load_mask_warns_and_returns_no_instances():
    ds = make_dataset()
    with pytest.warns(UserWarning, match="not overridden"):
        masks, ids = ds.load_mask(0)
    assert masks.shape == (32, 64, 0) and masks.dtype == bool
    assert ids.shape == (0,) and ids.dtype == np.int32


def test_in_memory_image_record():
    ds = Dataset()
    ds.add_image("mem", image_id=0, path=None, image=np.full((3, 4), 7, np.uint8))
    ds.prepare()
    img = ds.load_image(0)
    assert img.shape == (3, 4, 3) and img.dtype == np.uint8 and (img == 7).all()


# ----------------------------------------------------------- image files
def load_file(tmp_path, pil_image, name, **save_kwargs):
    path = tmp_path / name
    pil_image.save(path, **save_kwargs)
    ds = Dataset()
    ds.add_image("files", image_id=name, path=str(path))
    ds.prepare()
    img = ds.load_image(0)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    return img


def test_grayscale_png(tmp_path):
    a = np.arange(6 * 7, dtype=np.uint8).reshape(6, 7) * 5
    img = load_file(tmp_path, Image.fromarray(a, "L"), "gray.png")
    assert img.shape == (6, 7, 3)
    for c in range(3):
        np.testing.assert_array_equal(img[..., c], a)


def test_rgba_png_drops_alpha(tmp_path):
    a = np.zeros((5, 6, 4), np.uint8)
    a[..., 0], a[..., 1], a[..., 2], a[..., 3] = 10, 20, 30, 128
    a[2, 3] = (200, 100, 50, 0)
    img = load_file(tmp_path, Image.fromarray(a, "RGBA"), "rgba.png")
    assert img.shape == (5, 6, 3)
    assert tuple(img[0, 0]) == (10, 20, 30)
    assert tuple(img[2, 3]) == (200, 100, 50)


def test_palette_png(tmp_path):
    p = Image.new("P", (4, 3))
    palette = [0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9)
    p.putpalette(palette)
    idx = np.array([[0, 1, 2, 1], [1, 1, 1, 1], [2, 2, 2, 2]], np.uint8)
    p.putdata(idx.ravel().tolist())
    img = load_file(tmp_path, p, "palette.png")
    assert img.shape == (3, 4, 3)
    assert tuple(img[0, 0]) == (0, 0, 0)
    assert tuple(img[0, 1]) == (255, 0, 0)
    assert tuple(img[2, 3]) == (0, 0, 255)


def test_16bit_png_scales_to_8bit(tmp_path):
    a = np.zeros((4, 5), np.uint16)
    a[0, 0] = 65535
    a[1, 2] = 32768     # half range -> 128 (32768 / 65535 * 255 = 127.5)
    a[3, 4] = 257       # 257 / 65535 * 255 = 1.0
    pil = Image.fromarray(a)
    assert pil.mode == "I;16"
    img = load_file(tmp_path, pil, "deep.png")
    assert tuple(img[0, 0]) == (255, 255, 255)
    assert tuple(img[1, 2]) == (128, 128, 128)
    assert tuple(img[3, 4]) == (1, 1, 1)
    assert tuple(img[2, 2]) == (0, 0, 0)


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotated_jpeg_is_turned_upright(tmp_path, orientation):
    # Stored as 40 wide x 24 high with a red block in the stored top-left corner.
    a = np.full((24, 40, 3), 255, np.uint8)
    a[:8, :8] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    img = load_file(tmp_path, Image.fromarray(a), f"rot{orientation}.jpg",
                    exif=exif, quality=95)
    # Rotated by 90 degrees: height and width swap.
    assert img.shape == (40, 24, 3)
    # Orientation 6 means "rotate 90 degrees clockwise to view": the stored top-left
    # lands top-right. Orientation 8 (counter-clockwise) puts it bottom-left.
    corner = {6: img[2:6, -6:-2], 8: img[-6:-2, 2:6]}[orientation]
    other = {6: img[2:6, 2:6], 8: img[-6:-2, -6:-2]}[orientation]
    assert (corner[..., 0] > 200).all() and (corner[..., 1:] < 60).all()
    assert (other > 200).all()  # the opposite corner stays white


def test_cmyk_tiff(tmp_path):
    a = np.zeros((3, 3, 4), np.uint8)
    a[0, 0] = (255, 0, 0, 0)    # cyan
    a[1, 1] = (0, 255, 0, 0)    # magenta
    a[2, 2] = (0, 0, 0, 255)    # black
    img = load_file(tmp_path, Image.fromarray(a, "CMYK"), "cmyk.tif")
    assert img.shape == (3, 3, 3)
    assert tuple(img[0, 0]) == (0, 255, 255)
    assert tuple(img[1, 1]) == (255, 0, 255)
    assert tuple(img[2, 2]) == (0, 0, 0)
    assert tuple(img[0, 1]) == (255, 255, 255)  # no ink: white


def test_garbage_file_raises_annotation_error_naming_it(tmp_path):
    path = tmp_path / "not_an_image.jpg"
    path.write_bytes(b"this is not a JPEG at all" * 10)
    ds = Dataset()
    ds.add_image("files", image_id="x", path=str(path))
    ds.prepare()
    with pytest.raises(AnnotationError, match="not_an_image.jpg") as info:
        ds.load_image(0)
    assert info.value.file is not None and info.value.file.endswith("not_an_image.jpg")


def test_truncated_file_raises_annotation_error(tmp_path):
    full = tmp_path / "full.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
                    ).save(full)
    cut = tmp_path / "cut.png"
    cut.write_bytes(full.read_bytes()[:200])
    with pytest.raises(AnnotationError, match="cut.png"):
        read_image(str(cut))


def test_missing_file_raises_annotation_error_naming_it(tmp_path):
    ds = Dataset()
    ds.add_image("files", image_id="x", path=str(tmp_path / "missing_photo.png"))
    ds.prepare()
    with pytest.raises(AnnotationError, match="missing_photo.png") as info:
        ds.load_image(0)
    assert "not found" in str(info.value)


def test_read_image_from_bytes(tmp_path):
    path = tmp_path / "b.png"
    Image.fromarray(np.full((2, 3, 3), 9, np.uint8)).save(path)
    img = read_image(path.read_bytes())
    assert img.shape == (2, 3, 3) and (img == 9).all()


# ------------------------------------------------------------ to_rgb_uint8
def test_to_rgb_uint8_layouts():
    assert to_rgb_uint8(np.ones((2, 2), bool))[0, 0].tolist() == [255, 255, 255]
    assert to_rgb_uint8(np.full((2, 2, 1), 3, np.uint8)).shape == (2, 2, 3)
    assert to_rgb_uint8(np.full((2, 2), 0.5))[0, 0, 0] == 128   # float in [0, 1]
    assert to_rgb_uint8(np.full((2, 2), 200.0))[0, 0, 0] == 200  # float in [0, 255]
    with pytest.raises(AnnotationError, match="shape"):
        to_rgb_uint8(np.zeros((2, 2, 5), np.uint8))
