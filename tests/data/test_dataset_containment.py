"""A shared dataset cannot make the tools read outside it, nor decode an image bomb (docs/SECURITY.md).

Every path in transforms.json / dataset.json must stay inside its object folder (symlinks followed: the real file
must lie inside the dataset), for the dataparser, `lrm-pack-shards` (which then writes nothing) and `lrm-eval`; and
a dataset image's pixel count is checked from its header before decoding.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from lrm_run_helpers import run_tool, save_tiny_run, tool
from make_fixture import write_dataset
from PIL import Image

from lrm_nerfstudio.data.dataset_format import DatasetFormatError, load_rgba, read_image_size
from lrm_nerfstudio.data.lrm_dataparser import LRMDataParserConfig
from lrm_nerfstudio.data.shards import PackShardsConfig
from lrm_nerfstudio.data.shards import main as pack_main


@pytest.fixture
def ds(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "ds", n_train=2, n_val=1, n_test=1, n_views=3, width=16)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A readable PNG outside the dataset (what an attacker's path would point at)."""
    path = tmp_path / "secret.png"
    Image.fromarray(np.full((16, 16, 4), 200, np.uint8)).save(path)
    return path


def first_object(ds: Path) -> Path:
    return ds / json.loads((ds / "dataset.json").read_text())["splits"]["train"][0]


def edit(obj: Path, fn) -> Path:
    path = obj / "transforms.json"
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))
    return path


def parse(root: Path, **kwargs):
    return LRMDataParserConfig(data=root, **kwargs).setup()


def frame_key(key: str, value: str):
    def fn(data):
        data["frames"][1][key] = value

    return fn


def escapes(outside: Path) -> list[tuple[str, str]]:
    return [
        ("file_path", "../../secret.png"),
        ("file_path", str(outside)),
        ("file_path", "images/../../" + "x/../../secret.png"),
        ("depth_file_path", str(outside)),
        ("normal_file_path", "../../secret.png"),
        ("mask_file_path", "/etc/passwd"),
    ]


@pytest.mark.parametrize("case", range(6))
def test_paths_out_of_the_object_are_refused(ds: Path, outside: Path, case: int):
    key, value = escapes(outside)[case]
    transforms = edit(first_object(ds), frame_key(key, value))
    with pytest.raises(DatasetFormatError) as err:
        parse(ds)
    msg = str(err.value)
    assert msg.startswith(str(transforms)) and f"frames[1].{key}" in msg and repr(value) in msg, msg


def test_mesh_path_out_of_the_object_is_refused(ds: Path, outside: Path):
    transforms = edit(first_object(ds), lambda d: d.update(mesh_path=str(outside)))
    with pytest.raises(DatasetFormatError, match="mesh_path .* is absolute") as err:
        parse(ds)
    assert str(err.value).startswith(str(transforms))


def test_symlink_out_of_the_dataset_is_refused(ds: Path, outside: Path):
    obj = first_object(ds)
    image = obj / json.loads((obj / "transforms.json").read_text())["frames"][0]["file_path"]
    image.unlink()
    image.symlink_to(outside)
    with pytest.raises(DatasetFormatError, match="outside the dataset folder") as err:
        parse(ds)
    assert "frames[0].file_path" in str(err.value) and str(outside.resolve()) in str(err.value)


def test_object_folder_symlinked_out_is_refused(ds: Path, tmp_path: Path):
    obj = first_object(ds)
    moved = tmp_path / "elsewhere"
    shutil.move(obj, moved)
    obj.symlink_to(moved, target_is_directory=True)
    with pytest.raises(DatasetFormatError, match="outside the dataset folder"):
        parse(ds)


def test_symlink_inside_the_dataset_is_followed(ds: Path):
    ids = json.loads((ds / "dataset.json").read_text())["splits"]["train"]
    a, b = ds / ids[0], ds / ids[1]
    name = json.loads((a / "transforms.json").read_text())["frames"][0]["file_path"]
    (a / name).unlink()
    os.symlink(b / name, a / name)  # objects may share files
    parser = parse(ds)
    obj = parser.load_object(ids[0])
    assert load_rgba(obj.image_paths[0]).shape == (16, 16, 4)


# ------------------------------------------------------------------------------------------------- lrm-pack-shards
def test_pack_refuses_a_path_out_and_writes_nothing(ds: Path, outside: Path, tmp_path: Path, capsys):
    edit(first_object(ds), frame_key("file_path", str(outside)))
    out = tmp_path / "shards"
    for validate in (True, False):
        assert pack_main(PackShardsConfig(dataset=ds, output=out, num_shards=2, validate=validate)) == 2
        assert "frames[1].file_path" in capsys.readouterr().err
        assert not out.exists()


def test_pack_refuses_a_stray_symlink_out_and_writes_nothing(ds: Path, outside: Path, tmp_path: Path):
    (first_object(ds) / "images" / "extra.png").symlink_to(outside)  # not named by transforms.json, still packed
    out = tmp_path / "shards"
    result = run_tool([tool("lrm-pack-shards"), "--dataset", str(ds), "--output", str(out)], timeout=300, expect=2)
    assert "extra.png" in result.stderr and "outside the dataset folder" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_pack_copies_a_symlink_inside_the_dataset_as_a_file(ds: Path, tmp_path: Path):
    ids = json.loads((ds / "dataset.json").read_text())["splits"]["train"]
    a, b = ds / ids[0], ds / ids[1]
    name = json.loads((a / "transforms.json").read_text())["frames"][0]["file_path"]
    want = load_rgba(b / name)
    (a / name).unlink()
    os.symlink(b / name, a / name)
    out = tmp_path / "shards"
    assert pack_main(PackShardsConfig(dataset=ds, output=out, num_shards=1)) == 0
    obj = parse(out).load_object(ids[0])
    np.testing.assert_array_equal(load_rgba(obj.image_paths[0], obj.source), want)


# ------------------------------------------------------------------------------------------------------ image bombs
def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height RGBA pixels, with a few bytes of data (nothing is allocated)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def test_huge_header_is_refused_before_decoding(tmp_path: Path):
    bomb = png_header(tmp_path / "bomb.png", 20000, 20000)
    with pytest.raises(DatasetFormatError, match="image too large") as err:
        read_image_size(bomb)  # PIL's own guard fires first at this size: 400 Mpx
    assert str(err.value).startswith(str(bomb))
    with pytest.raises(DatasetFormatError, match="image too large"):
        load_rgba(bomb)
    big = png_header(tmp_path / "big.png", 5000, 5000)  # under PIL's guard, over ours (4096^2)
    with pytest.raises(DatasetFormatError, match="5000x5000 = 25000000 pixels, over the limit of 16777216"):
        read_image_size(big)


def test_max_pixels_is_configurable(ds: Path):
    with pytest.raises(DatasetFormatError, match="over the limit of 100"):
        parse(ds, max_pixels=100)  # the fixture's images are 16 x 16
    parser = parse(ds, max_pixels=100, eager_validation_max_objects=0)  # lazily: refused when loaded
    obj = parser.load_object(json.loads((ds / "dataset.json").read_text())["splits"]["train"][0])
    with pytest.raises(DatasetFormatError, match="over the limit of 100"):
        load_rgba(obj.image_paths[0], obj.source, obj.max_pixels)
    assert parse(ds, max_pixels=256).object_ids("train")


@pytest.mark.slow
def test_lrm_eval_answers_a_bomb_and_a_path_out_with_a_message(procedural_dataset: Path, outside: Path, tmp_path):
    config = save_tiny_run(procedural_dataset, tmp_path / "run")
    data = tmp_path / "ds"
    shutil.copytree(procedural_dataset, data)
    val = data / json.loads((data / "dataset.json").read_text())["splits"]["val"][0]
    image = val / json.loads((val / "transforms.json").read_text())["frames"][2]["file_path"]
    png_header(image, 20000, 20000)
    cmd = [tool("lrm-eval"), "--load-config", str(config), "--data", str(data), "--split", "val",
           "--output-dir", str(tmp_path / "eval"), "--mesh-resolution", "16"]  # fmt: skip
    out = run_tool(cmd, timeout=600, expect=None)
    text = " ".join((out.stdout + out.stderr).split())
    assert out.returncode != 0
    assert str(image) in text and "image too large" in text, text[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    png_header(image, 64, 64).unlink()
    shutil.copy(procedural_dataset / image.relative_to(data), image)
    edit(val, frame_key("file_path", str(outside)))
    out = run_tool(cmd, timeout=600, expect=None)
    text = " ".join((out.stdout + out.stderr).split())
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "frames[1].file_path" in text and str(outside) in text, text[-3000:]
