"""Tar shards: packing, identical training batches, lazy member reads, and errors naming the shard and member."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lrm_nerfstudio.data.dataset_format import DatasetFormatError
from lrm_nerfstudio.data.lrm_datamanager import LRMDataManagerConfig
from lrm_nerfstudio.data.lrm_dataparser import LRMDataParserConfig
from lrm_nerfstudio.data.shards import PackShardsConfig, pack_shards
from lrm_nerfstudio.model.processor import ProcessorConfig


@pytest.fixture(scope="module")
def sharded(procedural_dataset, tmp_path_factory) -> Path:
    return pack_shards(
        PackShardsConfig(dataset=procedural_dataset, output=tmp_path_factory.mktemp("sh") / "ds", num_shards=2)
    )


def copy_of(sharded: Path, tmp_path: Path) -> Path:
    out = tmp_path / "ds"
    shutil.copytree(sharded, out)
    return out


def make_dm(data: Path, eager: bool = True, skip_bad_objects: bool = True, **kwargs):
    cfg = {"objects_per_batch": 2, "target_views_per_object": 3, "patch_size": 16, "render_resolution_range": (32, 64)}
    cfg.update(
        num_workers=0,
        processor=ProcessorConfig(resolution=32),
        eval_resolution=32,
        load_depth=True,
        background="random",
    )
    cfg.update(kwargs)
    parser = LRMDataParserConfig(eager_validation_max_objects=1000 if eager else 0, skip_bad_objects=skip_bad_objects)
    return LRMDataManagerConfig(data=data, dataparser=parser, **cfg).setup(test_mode="val")


def test_pack_layout(procedural_dataset: Path, sharded: Path):
    folder = json.loads((procedural_dataset / "dataset.json").read_text())
    meta = json.loads((sharded / "dataset.json").read_text())
    assert meta["splits"] == folder["splits"]
    assert meta["storage"] == {"type": "tar-shards", "index": "shards.json"}
    index = json.loads((sharded / "shards.json").read_text())
    assert index["shards"] == ["shards/shard-00000.tar", "shards/shard-00001.tar"]
    ids = [oid for split in ("train", "val", "test") for oid in folder["splits"].get(split, [])]
    assert sorted(index["objects"]) == sorted(ids)
    assert {entry[0] for entry in index["objects"].values()} == {0, 1}  # both shards hold objects
    assert not any(p.is_dir() for p in sharded.iterdir() if p.name != "shards")  # no object folders


@pytest.mark.parametrize("num_workers", [0, 2])
def test_train_batches_equal_folder_batches(procedural_dataset: Path, sharded: Path, num_workers: int):
    folder_dm, shard_dm = make_dm(procedural_dataset), make_dm(sharded, num_workers=num_workers)
    assert shard_dm.dataparser.shards is not None and folder_dm.dataparser.shards is None
    for step in range(3):
        (rb_f, b_f), (rb_s, b_s) = folder_dm.next_train(step), shard_dm.next_train(step)
        assert b_f["object_ids"] == b_s["object_ids"]
        for key in ("image", "alpha", "depth", "source_images", "source_cameras"):
            assert torch.equal(b_f[key], b_s[key]), key
        assert torch.equal(rb_f.origins, rb_s.origins) and torch.equal(rb_f.directions, rb_s.directions)
        assert torch.equal(rb_f.metadata["background_color"], rb_s.metadata["background_color"])
    cam_f, eval_f = folder_dm.next_eval_image(0)
    cam_s, eval_s = shard_dm.next_eval_image(0)
    assert torch.equal(eval_f["image"], eval_s["image"]) and torch.equal(cam_f.fx, cam_s.fx)


def test_lazy_mode_reads_only_the_objects_used(sharded: Path):
    dm = make_dm(sharded, eager=False)
    parser = dm.dataparser
    assert not parser.eager
    _, batch = dm.next_train(0)
    obj = parser.load_object(batch["object_ids"][0])
    assert obj.source is not None and obj.source.shard.name.startswith("shard-")
    assert str(obj.image_paths[0]).startswith(str(obj.source.shard))  # paths name the shard and the member
    # every member of the object, nothing of other objects
    assert all(name.startswith(obj.object_id + "/") for name in obj.source.members)


def test_missing_shard_is_named(sharded: Path, tmp_path: Path):
    data = copy_of(sharded, tmp_path)
    (data / "shards" / "shard-00001.tar").unlink()
    with pytest.raises(DatasetFormatError, match=r"shard-00001\.tar: shard file does not exist"):
        make_dm(data)


def test_missing_index_is_named(sharded: Path, tmp_path: Path):
    data = copy_of(sharded, tmp_path)
    (data / "shards.json").unlink()
    with pytest.raises(DatasetFormatError, match=r"shards\.json: shard index does not exist"):
        make_dm(data)


def test_truncated_shard_is_named(sharded: Path, tmp_path: Path):
    data = copy_of(sharded, tmp_path)
    shard = data / "shards" / "shard-00000.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(DatasetFormatError, match=r"shard-00000\.tar: shard is truncated"):
        make_dm(data)


def test_corrupt_tar_header_is_named(sharded: Path, tmp_path: Path):
    data = copy_of(sharded, tmp_path)
    index = json.loads((data / "shards.json").read_text())
    oid, (number, start, _) = next((k, v) for k, v in index["objects"].items() if v[0] == 1)
    shard = data / index["shards"][number]
    raw = bytearray(shard.read_bytes())
    raw[start : start + 512] = b"\x07" * 512  # the object's first tar header
    shard.write_bytes(bytes(raw))
    with pytest.raises(DatasetFormatError, match=rf"shard-00001\.tar: corrupt shard.*{oid}"):
        make_dm(data)


def test_corrupt_image_member_names_shard_and_member(sharded: Path, tmp_path: Path):
    """Lazy mode: the bad PNG surfaces when a worker decodes it, naming `<shard>/<object>/<member>`."""
    data = copy_of(sharded, tmp_path)
    dm = make_dm(data, eager=False)
    _, batch = dm.next_train(0)
    oid = batch["object_ids"][0]
    archive = dm.dataparser.load_object(oid).source
    for name, (offset, size) in archive.members.items():
        if name.endswith(".png") and "/images/" in name:
            with open(archive.shard, "r+b") as f:
                f.seek(offset)
                f.write(b"\0" * size)
    dm = make_dm(data, eager=False, skip_bad_objects=False)
    with pytest.raises(DatasetFormatError, match=rf"shard-0000[01]\.tar/{oid}/images/\d+\.png: cannot decode image"):
        dm.next_train(0)
    # eager validation catches it at setup, with the same path
    with pytest.raises(DatasetFormatError, match=rf"shard-0000[01]\.tar/{oid}/images/\d+\.png"):
        make_dm(data, skip_bad_objects=False)


def test_pack_refuses_existing_output_and_bad_count(procedural_dataset: Path, sharded: Path):
    with pytest.raises(DatasetFormatError, match="already holds a dataset"):
        pack_shards(PackShardsConfig(dataset=procedural_dataset, output=sharded))
    with pytest.raises(ValueError, match="num_shards"):
        pack_shards(PackShardsConfig(dataset=procedural_dataset, output=sharded.parent / "x", num_shards=0))


def test_ground_truth_mesh_reads_from_its_shard(procedural_dataset: Path, sharded: Path, tmp_path: Path):
    import trimesh

    from lrm_nerfstudio.data.dataset_format import load_object_mesh, read_dataset_json, read_object
    from lrm_nerfstudio.data.shards import ShardIndex

    oid = read_dataset_json(procedural_dataset).splits["test"][0]
    packed = ShardIndex(read_dataset_json(sharded)).read_object(oid, check_images=False)
    assert packed.source is not None and packed.mesh_path == packed.root / "mesh.ply"
    want = trimesh.load(procedural_dataset / oid / "mesh.ply", process=False)
    got = load_object_mesh(packed)
    assert torch.equal(torch.from_numpy(got.vertices), torch.from_numpy(want.vertices))
    assert (got.faces == want.faces).all()

    folder = read_object(procedural_dataset / oid, oid, check_images=False)
    assert (load_object_mesh(folder).vertices == want.vertices).all()
    missing = read_object(procedural_dataset / oid, oid, check_images=False)
    missing.mesh_path = missing.root / "nope.ply"
    with pytest.raises(DatasetFormatError, match="nope.ply: mesh file does not exist"):
        load_object_mesh(missing)
    packed.mesh_path = packed.root / "nope.ply"
    with pytest.raises(DatasetFormatError, match=r"shard-\d+\.tar/.*nope.ply: mesh file does not exist"):
        load_object_mesh(packed)
    corrupt = tmp_path / "mesh.ply"
    corrupt.write_bytes(b"ply\nnot really\n")
    folder.mesh_path = corrupt
    with pytest.raises(DatasetFormatError, match="mesh.ply: cannot read the mesh"):
        load_object_mesh(folder)
