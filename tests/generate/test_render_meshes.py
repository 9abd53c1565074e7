"""lrm-render-meshes: vertex-coloured OBJ and textured GLB keep their colours; bad meshes are skipped by name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from lrm_nerfstudio.generate.render_meshes import RenderMeshesConfig, main
from lrm_nerfstudio.generate.renderer import LightingConfig

# Ambient 1, no lights: the rendered colour is the material colour itself.
FLAT = LightingConfig(ambient_range=(1.0, 1.0), key_range=(0.0, 0.0), fill_range=(0.0, 0.0))


def _config(src: Path, out: Path, **kw) -> RenderMeshesConfig:
    return RenderMeshesConfig(
        input=src, output=out, num_views=3, resolution=32, workers=1, progress=False, lighting=FLAT, **kw
    )


def _pixels(folder: Path) -> np.ndarray:
    meta = json.loads((folder / "transforms.json").read_text())
    out = []
    for frame in meta["frames"]:
        rgba = np.asarray(Image.open(folder / frame["file_path"]))
        out.append(rgba[rgba[..., 3] > 0, :3])
    return np.concatenate(out).astype(np.float64) / 255.0


def test_vertex_colours_and_texture_are_rendered(tmp_path):
    src = tmp_path / "meshes"
    src.mkdir()
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=3.0)  # any size: it is normalised
    colors = np.tile(np.array([[230, 40, 20, 255]], dtype=np.uint8), (len(sphere.vertices), 1))
    colors[sphere.vertices[:, 2] > 0] = (20, 200, 60, 255)  # upper half green, lower half red
    trimesh.Trimesh(sphere.vertices, sphere.faces, vertex_colors=colors).export(src / "ball.obj")

    # A textured card: the UVs map a two-colour texture across it.
    plane = trimesh.Trimesh(
        vertices=[[-1, 0, -1], [1, 0, -1], [1, 0, 1], [-1, 0, 1]], faces=[[0, 1, 2], [0, 2, 3]], process=False
    )
    tex = np.zeros((8, 8, 3), dtype=np.uint8)
    tex[:, :4] = (250, 200, 10)  # left half yellow
    tex[:, 4:] = (10, 60, 240)  # right half blue
    uv = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    material = trimesh.visual.material.PBRMaterial(
        baseColorTexture=Image.fromarray(tex), baseColorFactor=[255, 255, 255, 255]
    )  # glTF: base colour = texture x factor; trimesh's SimpleMaterial would export a 0.4 grey factor
    plane.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    plane.export(src / "card.glb")

    summary = main(_config(src, tmp_path / "out"))
    assert summary["rendered"] == 2 and summary["bad"] == 0
    ball = _pixels(tmp_path / "out" / "ball")
    red, green = np.array([230, 40, 20]) / 255, np.array([20, 200, 60]) / 255
    near = np.minimum(np.abs(ball - red).max(1), np.abs(ball - green).max(1))
    assert (near < 0.08).mean() > 0.6  # interpolation blends only the band at the equator
    assert (np.abs(ball - red).max(1) < 0.05).any() and (np.abs(ball - green).max(1) < 0.05).any()

    # The card faces the canonical camera (on -Y): view 0 shows yellow on the left, blue on the right.
    folder = tmp_path / "out" / "card"
    meta = json.loads((folder / "transforms.json").read_text())
    rgba = np.asarray(Image.open(folder / meta["frames"][0]["file_path"])).astype(np.float64)
    row = rgba[16]
    left = row[(row[:, 3] > 0)][:3, :3] / 255
    right = row[(row[:, 3] > 0)][-3:, :3] / 255
    assert np.abs(left - np.array([250, 200, 10]) / 255).max() < 0.05
    assert np.abs(right - np.array([10, 60, 240]) / 255).max() < 0.05
    mesh = trimesh.load(folder / meta["mesh_path"], process=False)
    assert np.abs(mesh.vertices).max() <= 1.0 + 1e-6

    ds = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert ds["splits"] == {"train": ["ball", "card"]}  # n < 3: nothing held out, each id listed once


def test_default_material_and_bad_meshes_reported(tmp_path):
    src = tmp_path / "meshes"
    src.mkdir()
    trimesh.creation.box().export(src / "good.stl")
    (src / "garbage.obj").write_text("this is not\x00 a mesh\nf 9 9 9\n")
    (src / "empty.ply").write_text("ply\nformat ascii 1.0\nelement vertex 0\nelement face 0\nend_header\n")
    flat = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [2, 0, 0]], [[0, 1, 2]], process=False)
    flat.export(src / "line.obj")
    nan = trimesh.creation.box()
    verts = nan.vertices.copy()
    verts[0] = np.nan
    trimesh.Trimesh(verts, nan.faces, process=False).export(src / "nan.ply")

    summary = main(_config(src, tmp_path / "out", default_color=(0.2, 0.4, 0.8)))
    assert summary["rendered"] == 1
    assert summary["bad"] == 4
    text = "\n".join(summary["bad_meshes"])
    for name in ("garbage.obj", "empty.ply", "line.obj", "nan.ply"):
        assert name in text
    assert "degenerate" in text and "non-finite" in text
    px = _pixels(tmp_path / "out" / "good")
    assert np.abs(px - np.array([0.2, 0.4, 0.8])).max() < 0.01
    ds = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert ds["splits"]["train"] == ["good"]
    # Rerun: nothing re-rendered, bad ones reported again.
    again = main(_config(src, tmp_path / "out", default_color=(0.2, 0.4, 0.8)))
    assert again["rendered"] == 0 and again["skipped_finished"] == 1 and again["bad"] == 4


def test_bad_input_folder(tmp_path):
    with pytest.raises(ValueError, match="nowhere"):
        main(_config(tmp_path / "nowhere", tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no mesh files"):
        main(_config(tmp_path / "empty", tmp_path / "out"))


def test_orbit_evaluation_set(tmp_path):
    """--orbit: view 0 canonical, then evenly spaced azimuths on one orbit; --all-in-split test: an evaluation set."""
    from lrm_nerfstudio.cameras import CANONICAL_DISTANCE, CANONICAL_FOCAL, canonical_c2w

    src = tmp_path / "meshes"
    src.mkdir()
    trimesh.creation.box().export(src / "a.stl")
    trimesh.creation.icosphere(subdivisions=1).export(src / "b.ply")
    config = _config(src, tmp_path / "out", orbit=True, orbit_elevation=30.0, all_in_split="test")
    config.num_views = 5
    assert main(config)["rendered"] == 2
    meta = json.loads((tmp_path / "out" / "a" / "transforms.json").read_text())
    poses = np.array([f["transform_matrix"] for f in meta["frames"]])
    assert np.allclose(poses[0, :3], canonical_c2w(), atol=1e-7)
    eyes = poses[:, :3, 3]
    assert np.allclose(np.linalg.norm(eyes, axis=1), CANONICAL_DISTANCE)
    assert np.allclose(np.rad2deg(np.arcsin(eyes[1:, 2] / CANONICAL_DISTANCE)), 30.0)
    azimuths = np.rad2deg(np.arctan2(eyes[1:, 0], -eyes[1:, 1])) % 360
    assert np.allclose(azimuths, [0.0, 90.0, 180.0, 270.0], atol=1e-6)
    assert all(f["fl_x"] == CANONICAL_FOCAL * 32 for f in meta["frames"])
    ds = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert ds["splits"] == {"test": ["a", "b"]}
    assert ds["camera"]["orbit"] == {"views": 4, "elevation": 30.0}
    # random views (the default) keep the stamp of datasets rendered before --orbit existed
    from lrm_nerfstudio.generate.render_meshes import recorded_config

    assert "orbit" not in recorded_config(_config(src, tmp_path / "x"))
    assert recorded_config(config)["orbit"] is True
