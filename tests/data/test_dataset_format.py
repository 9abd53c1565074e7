"""Every bad input raises DatasetFormatError naming the file; tolerated inputs load as documented."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from make_fixture import write_dataset, write_dataset_json, write_object
from PIL import Image

from lrm_nerfstudio.data.dataset_format import DatasetFormatError, load_rgba, read_image_size, reset_alpha_warning
from lrm_nerfstudio.data.lrm_dataparser import LRMDataParserConfig


def parse(root: Path, **kwargs):
    return LRMDataParserConfig(data=root, **kwargs).setup()


def starts_with(path: Path, problem: str) -> str:
    return "^" + re.escape(str(path)) + ".*" + problem


@pytest.fixture
def ds(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "ds", n_train=2, n_val=1, n_test=1, n_views=3, width=16)


def edit_transforms(obj: Path, fn) -> Path:
    path = obj / "transforms.json"
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))
    return path


def test_valid_dataset_parses(ds: Path):
    parser = parse(ds)
    assert parser.eager
    assert parser.list_objects() == {"train": ["obj_train_000", "obj_train_001"], "val": ["obj_val_000"],
                                     "test": ["obj_test_000"]}  # fmt: skip
    out = parser.get_dataparser_outputs("train")
    assert len(out.image_filenames) == 3
    assert out.scene_box.aabb.tolist() == [[-1, -1, -1], [1, 1, 1]]


def test_missing_dataset_json(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetFormatError, match=starts_with(tmp_path / "empty" / "dataset.json", "does not exist")):
        parse(tmp_path / "empty")


def test_missing_data_folder(tmp_path: Path):
    with pytest.raises(DatasetFormatError, match=starts_with(tmp_path / "nope", "not a dataset folder")):
        parse(tmp_path / "nope")


@pytest.mark.parametrize(
    "content, problem",
    [
        ("{not json", "malformed JSON"),
        ("[1, 2]", "top level must be an object"),
        ('{"format": "other", "splits": {}}', "'format' is 'other'"),
        ('{"format": "lrm-multiview"}', "missing key 'splits'"),
        ('{"format": "lrm-multiview", "splits": {"train": "a"}}', "must be a list"),
        ('{"format": "lrm-multiview", "splits": {"train": [3]}}', "non-empty strings"),
        ('{"format": "lrm-multiview", "splits": {"train": ["a"], "val": []}}', "split 'val' is empty"),
        ('{"format": "lrm-multiview", "splits": {"train": ["a", "a"]}}', "listed twice"),
        ('{"format": "lrm-multiview", "splits": {"train": ["a"], "test": ["a"]}}', "in both 'train' and"),
        ('{"format": "lrm-multiview", "splits": {"train": ["../x"]}}', "plain folder name"),
        ('{"format": "lrm-multiview", "splits": {"trian": ["a"]}}', "unknown split"),
    ],
)
def test_bad_dataset_json(tmp_path: Path, content: str, problem: str):
    (tmp_path / "dataset.json").write_text(content)
    with pytest.raises(DatasetFormatError, match=starts_with(tmp_path / "dataset.json", problem)):
        parse(tmp_path)


def _del(key):
    return lambda d: d.pop(key)


@pytest.mark.parametrize(
    "edit, problem",
    [
        (_del("frames"), "missing or empty 'frames'"),
        (lambda d: d.update(frames=[]), "missing or empty 'frames'"),
        (_del("fl_x"), "missing intrinsic 'fl_x'"),
        (lambda d: d.update(fl_x="big"), "'fl_x' must be a number"),
        (lambda d: d.update(fl_y=-3.0), "focal lengths must be positive"),
        (lambda d: d.update(cx=100.0), "principal point"),
        (lambda d: d.update(w=0), "positive integers"),
        (lambda d: d.update(camera_model="OPENCV_FISHEYE"), "not supported"),
        (lambda d: d.update(k1=0.1), "non-zero distortion"),
        (lambda d: d["frames"][1].pop("file_path"), r"frames\[1\] has no string 'file_path'"),
        (lambda d: d["frames"][0].pop("transform_matrix"), "no 'transform_matrix'"),
        (lambda d: d["frames"][0].update(transform_matrix=[[1, 2]]), "must be 4x4"),
        (lambda d: d["frames"][0].update(transform_matrix=[["a"] * 4] * 4), "not a numeric matrix"),
        (lambda d: d["frames"][2]["transform_matrix"][0].__setitem__(3, float("nan")), "non-finite"),
        (lambda d: d["frames"][0].update(transform_matrix=np.diag([2.0, 2, 2, 1]).tolist()), "not rigid"),
        (lambda d: d["frames"][0].update(transform_matrix=np.diag([1, 1, -1, 1.0]).tolist()), "not rigid"),
    ],
)
def test_bad_transforms(ds: Path, edit, problem: str):
    path = edit_transforms(ds / "obj_val_000", edit)
    with pytest.raises(DatasetFormatError, match=starts_with(path, problem)):
        parse(ds)


def test_malformed_transforms_json(ds: Path):
    path = ds / "obj_train_001" / "transforms.json"
    path.write_text("{oops")
    with pytest.raises(DatasetFormatError, match=starts_with(path, "malformed JSON")):
        parse(ds)


def test_missing_object_folder(ds: Path):
    write_dataset_json(ds, {"train": ["obj_train_000", "ghost"]})
    with pytest.raises(DatasetFormatError, match=starts_with(ds / "ghost", "object folder does not exist")):
        parse(ds)


def test_frame_points_at_missing_file(ds: Path):
    img = ds / "obj_test_000" / "images" / "002.png"
    img.unlink()
    with pytest.raises(DatasetFormatError, match=starts_with(img, "image file does not exist")):
        parse(ds)


def test_undecodable_image(ds: Path):
    img = ds / "obj_train_000" / "images" / "001.png"
    img.write_bytes(b"this is not a png")
    with pytest.raises(DatasetFormatError, match=starts_with(img, "cannot decode image")):
        parse(ds)
    with pytest.raises(DatasetFormatError, match=starts_with(img, "cannot decode image")):
        load_rgba(img)


def test_truncated_png_fails_on_load(ds: Path):
    img = ds / "obj_train_000" / "images" / "001.png"
    img.write_bytes(img.read_bytes()[:60])
    with pytest.raises(DatasetFormatError, match=starts_with(img, "cannot decode image")):
        load_rgba(img)


def test_image_size_mismatch(ds: Path):
    img = ds / "obj_train_001" / "images" / "000.png"
    Image.new("RGBA", (20, 16)).save(img)
    with pytest.raises(DatasetFormatError, match=starts_with(img, "image is 20x16 but .* says w=16, h=16")):
        parse(ds)


def test_grayscale_rejected(tmp_path: Path):
    write_object(tmp_path, "gray", n_views=2, width=16, mode="L")
    write_dataset_json(tmp_path, {"train": ["gray"]})
    img = tmp_path / "gray" / "images" / "000.png"
    with pytest.raises(DatasetFormatError, match=starts_with(img, "grayscale")):
        parse(tmp_path)
    with pytest.raises(DatasetFormatError, match=starts_with(img, "grayscale")):
        load_rgba(img)


def test_rgb_without_alpha_accepted_with_one_warning(tmp_path: Path):
    write_object(tmp_path, "rgb", n_views=3, width=16, mode="RGB")
    write_dataset_json(tmp_path, {"train": ["rgb"]})
    reset_alpha_warning()
    with pytest.warns(UserWarning, match="assuming alpha = 1") as record:
        rgba = parse(tmp_path) and load_rgba(tmp_path / "rgb" / "images" / "001.png")
    assert sum("assuming alpha" in str(w.message) for w in record) == 1
    assert rgba.shape == (16, 16, 4) and rgba.dtype == np.float32
    assert (rgba[..., 3] == 1).all()


def test_16bit_accepted(tmp_path: Path):
    write_object(tmp_path, "deep", n_views=2, width=16, mode="RGBA16")
    write_dataset_json(tmp_path, {"train": ["deep"]})
    parse(tmp_path)
    img = tmp_path / "deep" / "images" / "000.png"
    assert read_image_size(img)[:2] == (16, 16)
    rgba = load_rgba(img)
    ref = load_rgba_reference(img)
    assert rgba.dtype == np.float32 and 0 <= rgba.min() and rgba.max() <= 1
    np.testing.assert_allclose(rgba, ref, atol=1 / 255)


def load_rgba_reference(path: Path) -> np.ndarray:
    from make_fixture import view_rgba

    return view_rgba(0, 2, 16, 16).astype(np.float32) / 255


def test_skip_bad_objects_eager(ds: Path):
    bad = ds / "obj_train_001" / "transforms.json"
    bad.write_text("{")
    with pytest.warns(UserWarning, match="skipping bad object 'obj_train_001'"):
        parser = parse(ds, skip_bad_objects=True, max_bad_fraction=0.5)
    assert parser.object_ids("train") == ["obj_train_000"]
    assert parser.tracker.bad == {"obj_train_001": parser._bad["obj_train_001"]}
    # 1 bad of the 4 objects is more than the default 1 %: a clear error naming the file and the fraction
    problem = r"malformed JSON.*1 of the 4 objects .* bad, more"
    with pytest.raises(DatasetFormatError, match=starts_with(bad, problem)), pytest.warns(UserWarning):
        parse(ds)


def test_single_image_is_inference(tmp_path: Path):
    img = tmp_path / "photo.png"
    Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(img)
    parser = parse(img)
    assert parser.inference_only and parser.list_objects() == {"train": [], "val": [], "test": []}
    with pytest.raises(DatasetFormatError, match=starts_with(tmp_path / "missing.png", "does not exist")):
        parse(tmp_path / "missing.png")
