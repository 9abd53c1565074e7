"""OpenLRM renders and folders of nerfstudio-data objects, read in place: cameras by reprojection, splits, packing,
training steps, and every bad input named."""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from conftest import tiny_trainer_config
from layout_fixture import all_ids, write_nerfstudio_folders, write_openlrm
from PIL import Image

from lrm_nerfstudio.data.dataset_format import DatasetFormatError
from lrm_nerfstudio.data.layouts import LayoutOptions, detect_layout, hash_splits
from lrm_nerfstudio.data.lrm_datamanager import LRMDataManagerConfig
from lrm_nerfstudio.data.lrm_dataparser import LRMDataParserConfig
from lrm_nerfstudio.data.shards import PackShardsConfig, pack_shards
from lrm_nerfstudio.generate.generate import GenerateConfig
from lrm_nerfstudio.generate.generate import main as generate
from lrm_nerfstudio.generate.renderer import CameraSamplerConfig
from lrm_nerfstudio.model.processor import ProcessorConfig

LAYOUTS = ("openlrm", "nerfstudio-folders")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    """6 objects x 5 views at 48 px; one focal length per object, as OpenLRM's intrinsics.npy holds one."""
    root = tmp_path_factory.mktemp("rendered") / "ds"
    cameras = CameraSamplerConfig(focal_range=(0.75, 0.75), distance_range=(2.0, 2.4))  # no focal cap
    generate(GenerateConfig(output=root, num_objects=6, num_views=5, resolution=48, workers=1, progress=False,
                            cameras=cameras))  # fmt: skip
    return root


def _write(kind: str, src: Path, dst: Path, ids: list[str] | None = None) -> Path:
    ids = all_ids(src) if ids is None else ids
    return (write_openlrm if kind == "openlrm" else write_nerfstudio_folders)(src, dst, ids)


@pytest.fixture(scope="module", params=LAYOUTS)
def layout_set(request, rendered, tmp_path_factory) -> tuple[str, Path]:
    return request.param, _write(request.param, rendered, tmp_path_factory.mktemp(request.param) / "root")


def _listed(parser) -> list[str]:
    return [oid for ids in parser.list_objects().values() for oid in ids]


def _parser(data: Path, **kw):
    return LRMDataParserConfig(data=data, **kw).setup()


def test_detected_and_split_by_uid_hash(layout_set, rendered):
    kind, root = layout_set
    assert detect_layout(root, LayoutOptions()) == kind and detect_layout(rendered, LayoutOptions()) == "lrm-multiview"
    parser = _parser(root, val_fraction=0.3, test_fraction=0.3)
    ids = all_ids(rendered)
    assert parser.list_objects() == hash_splits(sorted(ids), 0.3, 0.3)
    assert sorted(oid for v in parser.list_objects().values() for oid in v) == sorted(ids)
    # the split of a uid does not depend on the other uids
    few = hash_splits(sorted(ids)[:3], 0.3, 0.3)
    assert all(oid in parser.list_objects()[s] for s, v in few.items() for oid in v)
    everything = hash_splits([f"uid{i}" for i in range(2000)], 0.1, 0.2)
    assert 150 < len(everything["val"]) < 250 and 320 < len(everything["test"]) < 480


def test_cameras_reproject_mesh_into_alpha(layout_set, rendered):
    """Ground-truth vertices, projected with the cameras the dataparser returns, fall inside the alpha masks."""
    _, root = layout_set
    parser = _parser(root)
    for oid in all_ids(rendered)[:3]:
        obj = parser.load_object(oid)
        cams = parser.object_cameras(obj)
        verts = torch.from_numpy(np.asarray(trimesh.load(rendered / oid / "mesh.ply", process=False).vertices)).float()
        assert len(obj) == 5 and obj.image_paths[0].name == "000.png"
        for v in range(len(obj)):
            c2w = cams.camera_to_worlds[v]
            cam = (verts - c2w[:3, 3]) @ c2w[:3, :3]  # OpenGL: the camera looks down -Z, image y points down
            z = -cam[:, 2]
            assert (z > 0).all()
            u = (cams.fx[v] * cam[:, 0] / z + cams.cx[v]).floor().long()
            row = (-cams.fy[v] * cam[:, 1] / z + cams.cy[v]).floor().long()
            alpha = np.asarray(Image.open(obj.image_paths[v]))[..., 3] > 0
            grown = alpha.copy()  # one pixel of slack for vertices on the silhouette
            grown[1:] |= alpha[:-1]
            grown[:-1] |= alpha[1:]
            grown[:, 1:] |= grown[:, :-1].copy()
            grown[:, :-1] |= grown[:, 1:].copy()
            assert grown[row.numpy(), u.numpy()].mean() > 0.99


def test_explicit_uid_lists_and_extra_roots(rendered, tmp_path):
    ids = all_ids(rendered)
    first = write_openlrm(rendered, tmp_path / "a", ids[:3])
    write_openlrm(rendered, tmp_path / "b", ids[3:])
    (tmp_path / "uids.json").write_text(json.dumps(ids))
    (tmp_path / "val.json").write_text(json.dumps([ids[4]]))
    (tmp_path / "test.json").write_text(json.dumps([ids[0]]))
    parser = _parser(first, uids=tmp_path / "uids.json", val_uids=tmp_path / "val.json",
                     test_uids=tmp_path / "test.json", extra_roots=(tmp_path / "b",))  # fmt: skip
    assert parser.list_objects() == {"train": [ids[1], ids[2], ids[3], ids[5]], "val": [ids[4]], "test": [ids[0]]}
    assert parser.load_object(ids[5]).root == tmp_path / "b" / ids[5]
    for content, problem in (("{", "cannot read the uid list"), ('{"a": 1}', "must be a JSON list"),
                             ('["a", "a"]', "listed twice"), ('["../x"]', "plain folder name")):  # fmt: skip
        (tmp_path / "bad.json").write_text(content)
        with pytest.raises(DatasetFormatError, match=re.escape(str(tmp_path / "bad.json")) + ": .*" + problem):
            _parser(first, uids=tmp_path / "bad.json")


def _bad(path: Path, action: str) -> None:
    if action == "delete":
        path.unlink()
    elif action == "garbage":
        path.write_bytes(b"not a png")
    elif action == "shape":
        np.save(path, np.eye(3))
    elif action == "nan":
        pose = np.load(path)
        pose[0, 3] = np.nan
        np.save(path, pose)
    elif action == "pickle":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)


OPENLRM_BAD = [
    ("intrinsics.npy", "delete", "intrinsics file does not exist"),
    ("intrinsics.npy", "shape", r"intrinsics must be \[\[fx, fy\], \[cx, cy\], \[w, h\]\] \(shape 3x2\), got shape"),
    ("intrinsics.npy", "pickle", "cannot read intrinsics as a .npy array"),
    ("pose/002.npy", "shape", r"pose must be a 3x4 camera-to-world matrix, got shape \(3, 3\)"),
    ("pose/002.npy", "nan", r"pose has non-finite values \(NaN or inf\)"),
    ("pose/003.npy", "delete", "pose file does not exist"),
    ("rgba/000.png", "delete", r"view 000 \(the source view\) does not exist"),
    ("rgba/001.png", "garbage", "cannot decode image"),
]


@pytest.mark.parametrize("name, action, problem", OPENLRM_BAD)
def test_openlrm_bad_input_named_eager_and_skipped(rendered, tmp_path, name, action, problem):
    root = write_openlrm(rendered, tmp_path / "root", all_ids(rendered))
    victim = all_ids(rendered)[2]
    _bad(root / victim / name, action)
    path = re.escape(str(root / victim / name))
    with pytest.raises(DatasetFormatError, match=f"^{path}: {problem}"):
        _parser(root, skip_bad_objects=False)
    with warnings.catch_warnings(record=True) as caught:  # skipped and reported once, by file and problem
        warnings.simplefilter("always")
        parser = _parser(root, max_bad_fraction=0.5)
    reports = [str(w.message) for w in caught if "skipping bad object" in str(w.message)]
    assert len(reports) == 1 and re.search(f"'{victim}': {path}: {problem}", reports[0])
    assert victim not in _listed(parser) and parser.tracker.bad.keys() == {victim}


def test_openlrm_lazy_bad_object_counted_then_run_stops_past_fraction(rendered, tmp_path):
    ids = all_ids(rendered)
    root = write_openlrm(rendered, tmp_path / "root", ids)
    for oid in ids[:2]:
        _bad(root / oid / "pose" / "001.npy", "nan")
    lazy = {"eager_validation_max_objects": 0, "val_fraction": 0.0, "test_fraction": 0.0}
    cfg = {"num_workers": 0, "objects_per_batch": 6, "target_views_per_object": 2, "patch_size": 8,
           "render_resolution_range": (16, 16), "processor": ProcessorConfig(resolution=16)}  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parser = LRMDataParserConfig(max_bad_fraction=0.5, **lazy)
        dm = LRMDataManagerConfig(data=root, dataparser=parser, **cfg).setup()  # its display object: the first good
        for step in range(3):
            _, batch = dm.next_train(step)
            assert not set(batch["object_ids"]) & set(ids[:2])
    reports = sorted(str(w.message) for w in caught if "skipping bad object" in str(w.message))
    assert [r.split("'")[1] for r in reports] == ids[:2]  # each once, though met in several steps
    assert len(dm.dataparser.tracker.bad) == 2
    dm = LRMDataManagerConfig(data=root, dataparser=LRMDataParserConfig(max_bad_fraction=0.2, **lazy), **cfg).setup()
    pose = re.escape(str(root / ids[0] / "pose" / "001.npy"))
    problem = "pose has non-finite.* 2 of the 6 objects .* are bad, more"
    with pytest.raises(DatasetFormatError, match=f"^{pose}: {problem}"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for step in range(3):
            dm.next_train(step)


def test_openlrm_files_outside_the_object_folder_refused(rendered, tmp_path):
    ids = all_ids(rendered)
    root = write_openlrm(rendered, tmp_path / "root", ids)
    secret = tmp_path / "secret.png"
    secret.write_bytes((root / ids[0] / "rgba" / "001.png").read_bytes())
    (root / ids[0] / "rgba" / "001.png").unlink()
    os.symlink(secret, root / ids[0] / "rgba" / "001.png")
    with pytest.raises(
        DatasetFormatError, match=re.escape(str(root / ids[0] / "rgba" / "001.png")) + ": leads outside"
    ):
        _parser(root, skip_bad_objects=False)
    big = root / ids[1] / "pose" / "001.npy"
    np.save(big, np.zeros((100, 100)))
    with pytest.raises(DatasetFormatError, match=re.escape(str(big)) + ": pose file is 80128 bytes, too large"):
        _parser(root, skip_bad_objects=False, uids=_uids(tmp_path, ids[1:]))


def _uids(tmp_path: Path, ids: list[str]) -> Path:
    path = tmp_path / "uids.json"
    path.write_text(json.dumps(ids))
    return path


def test_nerfstudio_folders_bad_object_named(rendered, tmp_path):
    root = write_nerfstudio_folders(rendered, tmp_path / "root", all_ids(rendered))
    victim = root / all_ids(rendered)[1] / "transforms.json"
    data = json.loads(victim.read_text())
    data["frames"][2]["transform_matrix"][0][0] = float("nan")
    victim.write_text(json.dumps(data))
    with pytest.raises(DatasetFormatError, match=f"^{re.escape(str(victim))}: frames\\[2\\].transform_matrix has non"):
        _parser(root, skip_bad_objects=False)
    (root / "not-an-object").mkdir()  # folders without transforms.json are not objects
    assert "not-an-object" not in _listed(_parser(root, max_bad_fraction=0.5))


def test_pack_shards_reads_layouts_and_gives_the_same_views(layout_set, rendered, tmp_path):
    kind, root = layout_set
    packed = pack_shards(PackShardsConfig(dataset=root, output=tmp_path / "packed", num_shards=2))
    assert json.loads((packed / "dataset.json").read_text())["packed_from"] == kind
    a, b = _parser(root), _parser(packed)
    assert a.list_objects() == {s: v for s, v in b.list_objects().items()}
    oid = all_ids(rendered)[0]
    oa, ob = a.load_object(oid), b.load_object(oid)
    np.testing.assert_array_equal(oa.c2w, ob.c2w)
    np.testing.assert_allclose(oa.intrinsics, ob.intrinsics)


@pytest.mark.slow
def test_training_steps_on_a_layout(layout_set):
    """lrm-tiny (shrunk) takes a few steps on the layout through nerfstudio's trainer; the loss is finite."""
    _, root = layout_set
    config = tiny_trainer_config(root, max_num_iterations=2, vis="tensorboard", steps_per_save=1000,
                                 steps_per_eval_batch=1000, steps_per_eval_image=1000, steps_per_eval_all_images=1000,
                                 output_dir=root.parent / "run")  # fmt: skip
    config.pipeline.model.processor.resolution = 32
    config.set_timestamp()
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    trainer.train()
    loss = trainer.pipeline.get_train_loss_dict(2)[1]
    assert all(torch.isfinite(v).all() for v in loss.values())
