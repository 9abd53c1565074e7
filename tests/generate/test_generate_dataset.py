"""lrm-generate: the docs/DATA.md contract, camera convention, nerfstudio loading, determinism, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lrm_nerfstudio.cameras import CANONICAL_FOCAL, canonical_c2w
from lrm_nerfstudio.generate.generate import GenerateConfig, main

RES = 64


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gen") / "ds"
    main(GenerateConfig(output=root, num_objects=6, num_views=6, resolution=RES, seed=0, workers=1, progress=False))
    return root


def _frames(folder: Path):
    meta = json.loads((folder / "transforms.json").read_text())
    for frame in meta["frames"]:
        yield meta, frame


def test_fixture_call_is_fast(tmp_path):
    start = time.perf_counter()
    main(GenerateConfig(output=tmp_path / "ds", num_objects=6, num_views=6, resolution=32, workers=1, progress=False))
    assert time.perf_counter() - start < 3.0


def test_dataset_contract(dataset):
    meta = json.loads((dataset / "dataset.json").read_text())
    assert meta["format"] == "lrm-multiview" and meta["version"] == 1
    splits = meta["splits"]
    assert len(splits["val"]) >= 1 and len(splits["test"]) >= 1
    everything = splits["train"] + splits["val"] + splits["test"]
    assert sorted(everything) == sorted(p.name for p in dataset.iterdir() if p.is_dir())
    assert len(set(everything)) == 6
    assert meta["camera"]["distance_range"][0] <= 2.0 <= meta["camera"]["distance_range"][1]
    assert meta["scene_box"] == [[-1, -1, -1], [1, 1, 1]]
    assert meta["generator"]["config"]["seed"] == 0
    assert not [p for p in dataset.iterdir() if p.name.startswith(".")]
    for oid in everything:
        folder = dataset / oid
        transforms = json.loads((folder / "transforms.json").read_text())
        assert transforms["camera_model"] == "PINHOLE"
        assert (transforms["w"], transforms["h"]) == (RES, RES)
        assert (folder / transforms["mesh_path"]).is_file()
        assert len(transforms["frames"]) == 6
        for _, frame in _frames(folder):
            rgba = Image.open(folder / frame["file_path"])
            assert rgba.mode == "RGBA" and rgba.size == (RES, RES)
            depth = np.asarray(Image.open(folder / frame["depth_file_path"]))
            assert depth.dtype in (np.uint16, np.int32) and depth.max() > 1000  # millimetres
            normals = Image.open(folder / frame["normal_file_path"])
            assert normals.mode == "RGB"
            alpha = np.asarray(rgba)[..., 3]
            assert ((alpha > 0) == (depth > 0)).all()
            assert 0 < (alpha > 0).mean() < 0.9  # something visible, not cut by the frame
            # The object stays inside the frame: the border rows/columns are background.
            assert alpha[0].max() == alpha[-1].max() == alpha[:, 0].max() == alpha[:, -1].max() == 0
        # Normals: unit vectors once decoded.
        frame0 = transforms["frames"][0]
        n = np.asarray(Image.open(folder / frame0["normal_file_path"]), dtype=np.float64) / 255 * 2 - 1
        hit = np.asarray(Image.open(folder / frame0["file_path"]))[..., 3] > 0
        assert np.allclose(np.linalg.norm(n[hit], axis=-1), 1.0, atol=0.03)


def test_view0_is_canonical(dataset):
    meta, frame = next(_frames(dataset / "000000"))
    c2w = np.asarray(frame["transform_matrix"])
    assert np.allclose(c2w[:3], canonical_c2w(), atol=1e-6)
    assert frame["fl_x"] == pytest.approx(CANONICAL_FOCAL * meta["w"])
    assert meta["cx"] == meta["w"] / 2


def test_camera_convention_mesh_projects_into_mask_and_depth(dataset):
    import open3d as o3d
    import trimesh

    for oid in ("000000", "000003"):
        folder = dataset / oid
        mesh = trimesh.load(folder / "mesh.ply", process=False)
        verts = np.asarray(mesh.vertices)
        assert np.abs(verts).max() <= 1.0
        scene = o3d.t.geometry.RaycastingScene()
        scene.add_triangles(o3d.core.Tensor(verts.astype(np.float32)), o3d.core.Tensor(mesh.faces.astype(np.uint32)))
        for meta, frame in _frames(folder):
            c2w = np.asarray(frame["transform_matrix"])
            fx, fy, cx, cy = frame["fl_x"], frame["fl_y"], meta["cx"], meta["cy"]
            alpha = np.asarray(Image.open(folder / frame["file_path"]))[..., 3] > 0
            depth = np.asarray(Image.open(folder / frame["depth_file_path"])).astype(np.float64) / 1000.0
            # World -> camera (OpenGL: camera looks down -Z), then pinhole with image y pointing down.
            cam = (verts - c2w[:3, 3]) @ c2w[:3, :3]
            z = -cam[:, 2]
            assert (z > 0).all()
            u = fx * cam[:, 0] / z + cx
            v = -fy * cam[:, 1] / z + cy
            assert (u > 0).all() and (u < meta["w"]).all() and (v > 0).all() and (v < meta["h"]).all()
            col, row = np.floor(u).astype(int), np.floor(v).astype(int)
            dilated = alpha.copy()
            dilated[1:] |= alpha[:-1]
            dilated[:-1] |= alpha[1:]
            dilated[:, 1:] |= dilated[:, :-1]
            dilated[:, :-1] |= dilated[:, 1:]
            assert dilated[row, col].mean() > 0.99
            # Depth at projected pixels: for face centroids visible from the camera (an independent ray cast
            # to each), the rendered z-depth at their pixel matches their z. Not exactly: the pixel centre is up to
            # 0.7 px away and slanted faces change depth across a pixel, hence the median.
            cen = verts[mesh.faces].mean(axis=1)
            to_c = cen - c2w[:3, 3]
            dist_c = np.linalg.norm(to_c, axis=1)
            rays = np.concatenate([np.broadcast_to(c2w[:3, 3], cen.shape), to_c / dist_c[:, None]], axis=1)
            visible = scene.cast_rays(o3d.core.Tensor(rays.astype(np.float32)))["t_hit"].numpy() > dist_c - 1e-3
            cc_cam = to_c[visible] @ c2w[:3, :3]
            zc = -cc_cam[:, 2]
            uc = np.floor(fx * cc_cam[:, 0] / zc + cx).astype(int)
            vc = np.floor(-fy * cc_cam[:, 1] / zc + cy).astype(int)
            err = np.abs(depth[vc, uc] - zc)
            assert visible.sum() > 10 and np.median(err) < 0.03 and (err < 0.1).mean() > 0.75
            # Unproject every foreground pixel with its z-depth: the point lies on the mesh.
            rr, cc = np.nonzero(alpha)
            zz = depth[rr, cc]
            pc = np.stack([(cc + 0.5 - cx) / fx * zz, -(rr + 0.5 - cy) / fy * zz, -zz], axis=1)
            pw = pc @ c2w[:3, :3].T + c2w[:3, 3]
            dist = scene.compute_distance(o3d.core.Tensor(pw.astype(np.float32))).numpy()
            assert np.median(dist) < 2e-3 and (dist < 0.01).mean() > 0.97


def test_loads_in_nerfstudio_dataparser(dataset):
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
    from nerfstudio.data.utils.data_utils import get_depth_image_from_path

    folder = dataset / "000001"
    parser = NerfstudioDataParserConfig(data=folder).setup()
    train = parser.get_dataparser_outputs("train")
    val = parser.get_dataparser_outputs("val")
    assert len(train.image_filenames) + len(val.image_filenames) == 6 and len(val.image_filenames) >= 1
    assert len(train.metadata["depth_filenames"]) == len(train.image_filenames)
    assert train.metadata["depth_unit_scale_factor"] == pytest.approx(1e-3)
    assert train.cameras.width[0].item() == RES
    depth_path = train.metadata["depth_filenames"][0]
    depth = get_depth_image_from_path(depth_path, RES, RES, 1e-3).numpy()[..., 0]
    raw = np.asarray(Image.open(depth_path)).astype(np.float64) / 1000.0
    assert np.allclose(depth, raw, atol=1e-6) and 1.0 < depth.max() < 3.5
    # Without auto orientation or scaling the cameras are exactly ours.
    plain = NerfstudioDataParserConfig(
        data=folder, orientation_method="none", center_method="none", auto_scale_poses=False, eval_mode="all"
    ).setup()
    out = plain.get_dataparser_outputs("train")
    _, frame0 = next(_frames(folder))
    assert np.allclose(out.cameras.camera_to_worlds[0].numpy(), np.asarray(frame0["transform_matrix"])[:3], atol=1e-5)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_across_runs_and_worker_counts(tmp_path):
    kwargs = {"num_objects": 3, "num_views": 3, "resolution": 16, "seed": 7, "progress": False}
    main(GenerateConfig(output=tmp_path / "a", workers=1, **kwargs))
    main(GenerateConfig(output=tmp_path / "b", workers=1, **kwargs))
    main(GenerateConfig(output=tmp_path / "c", workers=2, **kwargs))
    a, b, c = (_tree_bytes(tmp_path / x) for x in "abc")
    assert a == b
    assert a == c
    main(GenerateConfig(output=tmp_path / "d", workers=1, **{**kwargs, "seed": 8}))
    assert _tree_bytes(tmp_path / "d") != a


def test_resume_after_kill_keeps_finished_objects(tmp_path):
    root = tmp_path / "ds"
    kwargs = {"num_objects": 40, "num_views": 8, "resolution": 64, "seed": 3, "workers": 1, "progress": False}
    code = (
        "from lrm_nerfstudio.generate.generate import GenerateConfig, main\n"
        f"main(GenerateConfig(output={str(root)!r}, **{kwargs!r}))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list(root.glob("0*/transforms.json"))) >= 3:
                break
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    finished = sorted(p.parent.name for p in root.glob("0*/transforms.json"))
    assert 3 <= len(finished) < 40, "the run was not killed mid-way"
    assert not (root / "dataset.json").exists()
    mtimes = {oid: (root / oid / "transforms.json").stat().st_mtime_ns for oid in finished}
    summary = main(GenerateConfig(output=root, **kwargs))
    assert summary["skipped_finished"] == len(finished)
    assert summary["rendered"] == 40 - len(finished)
    assert {oid: (root / oid / "transforms.json").stat().st_mtime_ns for oid in finished} == mtimes
    assert not list(root.glob(".tmp-*"))
    meta = json.loads((root / "dataset.json").read_text())
    assert sum(len(v) for v in meta["splits"].values()) == 40
    # A rerun renders nothing.
    assert main(GenerateConfig(output=root, **kwargs))["rendered"] == 0


def test_bad_output_and_mismatched_config(tmp_path):
    not_a_dir = tmp_path / "file.txt"
    not_a_dir.write_text("x")
    with pytest.raises(ValueError, match="file.txt"):
        main(GenerateConfig(output=not_a_dir, num_objects=1, num_views=1, resolution=8, workers=1, progress=False))
    root = tmp_path / "ds"
    main(GenerateConfig(output=root, num_objects=1, num_views=1, resolution=8, workers=1, progress=False))
    with pytest.raises(ValueError, match="different generator config"):
        main(GenerateConfig(output=root, num_objects=1, num_views=2, resolution=8, workers=1, progress=False))
    with pytest.raises(ValueError, match="num_views"):
        main(GenerateConfig(output=root, num_objects=1, num_views=0, resolution=8, workers=1, progress=False))
