"""UV texture baking: known answers through the UVs, the atlas, the gutters, file round trips, the glTF validator."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image
from scipy import ndimage

from lrm_nerfstudio.mesh.cleanup import MeshCleanupError, check_cleanup_options, clean_mesh
from lrm_nerfstudio.mesh.marching_cubes import NoSurfaceError, extract_mesh, save_mesh
from lrm_nerfstudio.mesh.texture import (
    MAX_TEXTURE_RESOLUTION,
    TextureBakeError,
    bake_texture,
    check_texture_resolution,
    clean_and_bake,
    rasterize_uv,
    uv_to_texel,
)

CENTRE = torch.tensor([0.1, -0.05, 0.0])
RADIUS = 0.6


def density(points: torch.Tensor) -> torch.Tensor:
    return 50.0 * torch.sigmoid((RADIUS - (points - CENTRE).norm(dim=-1)) / 0.02)


def color(points: torch.Tensor) -> torch.Tensor:
    return 0.5 + 0.5 * points


@pytest.fixture(scope="module")
def sphere() -> trimesh.Trimesh:
    return extract_mesh(density, resolution=48, color_fn=color)


def texture_at_surface(textured, count: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """Random surface points of the textured mesh and the texture's colour there, read through the UVs (bilinear)."""
    mesh = textured.mesh
    points, face = trimesh.sample.sample_surface(mesh, count, seed=0)
    bary = trimesh.triangles.points_to_barycentric(mesh.vertices[mesh.faces[face]], points)
    uv = np.einsum("kj,kjc->kc", bary, mesh.visual.uv[mesh.faces[face]])
    xy = uv_to_texel(uv, textured.image.shape[0])
    image = textured.image.astype(np.float64)
    read = np.stack(
        [ndimage.map_coordinates(image[..., c], [xy[:, 1], xy[:, 0]], order=1, mode="nearest") for c in range(3)], 1
    )
    return points, read


@pytest.mark.parametrize("target_faces", [None, 400])
def test_known_answer_through_the_uvs(sphere, target_faces):
    mesh, _ = clean_mesh(sphere, target_faces=target_faces)
    if target_faces is not None:
        assert len(mesh.faces) <= target_faces
    textured = bake_texture(mesh, color, 256)
    points, read = texture_at_surface(textured)
    error = np.abs(read - (0.5 + 0.5 * points) * 255.0)
    assert error.max() < 3.0 and error.mean() < 1.0, (error.max(), error.mean())
    # the textured mesh is the same surface: every point lies on the sphere up to the marching-cubes error
    radius = np.linalg.norm(textured.mesh.vertices - CENTRE.numpy(), axis=1)
    assert np.abs(radius - RADIUS).max() < 0.05


def test_uvs_in_unit_square_and_every_face_has_area(sphere):
    # marching cubes leaves a few triangles of ~1e-9 area (xatlas gives them zero UV area); clean-up welds them
    cleaned, textured = clean_and_bake(sphere, color, texture_resolution=128, target_faces=None)
    uv, faces = textured.mesh.visual.uv, textured.mesh.faces
    assert uv.min() >= 0.0 and uv.max() <= 1.0
    corners = uv[faces]
    area = 0.5 * np.abs(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]))
    assert (area > 0).all()
    assert len(faces) == len(cleaned.faces) and 0.97 * len(sphere.faces) < len(faces) < len(sphere.faces)
    assert cleaned.is_watertight
    assert textured.report["chart_count"] >= 2  # a closed sphere cannot be one flat chart


def test_gutters_take_their_charts_colours(sphere):
    textured = bake_texture(sphere, color, 128)
    n = 128
    raster = rasterize_uv(textured.mesh.visual.uv, textured.mesh.faces, n)
    reached = np.zeros(n * n, bool)
    reached[raster.texel] = True
    reached = reached.reshape(n, n)
    assert 0.3 < reached.mean() < 0.95  # charts and gutters both exist
    # the sphere's colours are all >= 0.5 - 0.5 * 0.65: no texel is left black, gutters included
    assert textured.image.min() >= int(255 * (0.5 - 0.5 * 0.66))
    # a texel next to a chart takes the colour of a reached texel beside it
    ring = ndimage.binary_dilation(reached, np.ones((3, 3), bool)) & ~reached
    image = textured.image.astype(int)
    for i, j in np.argwhere(ring)[::7]:
        window = np.s_[max(0, i - 1) : i + 2, max(0, j - 1) : j + 2]
        neighbours = image[window][reached[window]]
        assert (np.abs(neighbours - image[i, j]).max(1) == 0).any()


def test_rasterize_matches_a_point_in_triangle_reference():
    rng = np.random.default_rng(0)
    n = 32
    uv = rng.uniform(0.05, 0.95, size=(3, 2))
    raster = rasterize_uv(uv, np.array([[0, 1, 2]]), n, margin=1.0)
    corners = uv_to_texel(uv, n)
    inside_reference = set()
    for y in range(n):
        for x in range(n):
            w = trimesh.triangles.points_to_barycentric(
                np.concatenate([corners, np.zeros((3, 1))], 1)[None], np.array([[x, y, 0.0]])
            )[0]
            if (w >= -1e-9).all():
                inside_reference.add(y * n + x)
    inside = set(raster.texel[raster.inside].tolist())
    assert inside == inside_reference
    assert len(raster.texel) > len(inside)  # the one-texel margin around the triangle
    np.testing.assert_allclose(raster.bary.sum(1), 1.0)
    assert (raster.bary >= 0).all()


def test_clean_and_bake_drops_floaters_and_keeps_vertex_colours():
    def two_spheres(points: torch.Tensor) -> torch.Tensor:
        big = torch.sigmoid((0.5 - points.norm(dim=-1)) / 0.02)
        small = torch.sigmoid((0.06 - (points - torch.tensor([0.8, 0.8, 0.8])).norm(dim=-1)) / 0.02)
        return 50.0 * (big + small)

    mesh = extract_mesh(two_spheres, resolution=64, color_fn=color)
    timings: dict[str, float] = {}
    cleaned, textured = clean_and_bake(mesh, color, texture_resolution=64, target_faces=1000, timings=timings)
    assert cleaned.metadata["cleanup"]["components_dropped"] == 1
    assert np.linalg.norm(cleaned.vertices, axis=1).max() < 0.6
    assert len(cleaned.faces) <= 1000 and textured is not None and len(textured.mesh.faces) == len(cleaned.faces)
    assert set(timings) == {"cleanup", "unwrap", "bake"}
    # the decimated mesh's vertex colours are the field's at its new vertices (queried in float32: a value on a
    # rounding boundary may land one step off the float64 answer)
    expected = np.clip((0.5 + 0.5 * cleaned.vertices) * 255 + 0.5, 0, 255).astype(np.int64)
    np.testing.assert_array_less(np.abs(cleaned.visual.vertex_colors[:, :3].astype(np.int64) - expected), 2)
    # normals stay outward after decimation
    assert (np.einsum("fc,fc->f", cleaned.face_normals, cleaned.triangles_center) > 0).mean() > 0.99
    only_colours, none = clean_and_bake(mesh, color, texture_resolution=0, min_component_fraction=0.0)
    assert none is None and 0.97 * len(mesh.faces) < len(only_colours.faces) <= len(mesh.faces)  # slivers welded
    assert only_colours.metadata["cleanup"]["components_dropped"] == 0


def test_files_round_trip_with_the_texture(sphere, tmp_path):
    cleaned, textured = clean_and_bake(sphere, color, texture_resolution=64, target_faces=800)
    paths = save_mesh(cleaned, tmp_path, "mesh", textured=textured)
    assert {p.name for p in paths.values()} == {"mesh.glb", "mesh.obj", "mesh.mtl", "mesh.png", "mesh.ply"}

    glb = trimesh.load(paths["glb"], force="mesh")
    material = glb.visual.material
    assert glb.visual.kind == "texture" and len(glb.faces) == len(textured.mesh.faces)
    np.testing.assert_array_equal(np.asarray(material.baseColorTexture.convert("RGB")), textured.image)
    assert material.metallicFactor == 0.0 and material.roughnessFactor == 1.0 and not material.doubleSided

    obj = trimesh.load(paths["obj"], force="mesh")
    assert obj.visual.kind == "texture"
    np.testing.assert_array_equal(np.asarray(obj.visual.material.image.convert("RGB")), textured.image)
    np.testing.assert_allclose(obj.visual.uv, textured.mesh.visual.uv, atol=1e-6)
    mtl = paths["mtl"].read_text()
    assert "map_Kd mesh.png" in mtl and "Kd 1.000000 1.000000 1.000000" in mtl

    ply = trimesh.load(paths["ply"], force="mesh")
    assert ply.visual.kind == "vertex" and len(ply.faces) == len(cleaned.faces)
    np.testing.assert_array_equal(np.asarray(Image.open(paths["texture"])), textured.image)


def _gltf_validator() -> tuple[str, dict[str, str]]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the Khronos glTF validator (npm gltf-validator) runs on node")
    root = subprocess.run(["npm", "root", "-g"], check=False, capture_output=True, text=True, timeout=60).stdout.strip()
    env = {**os.environ, "NODE_PATH": root}
    found = subprocess.run(
        [node, "-e", "require('gltf-validator')"], check=False, env=env, capture_output=True, timeout=60
    )
    assert found.returncode == 0, "gltf-validator is missing: npm install -g gltf-validator (.ci/run does)"
    return node, env


VALIDATE_JS = """
const validator = require('gltf-validator');
const bytes = new Uint8Array(require('fs').readFileSync(process.argv[1]));
validator.validateBytes(bytes, {maxIssues: 0}).then(
  (report) => console.log(JSON.stringify(report)),
  (error) => { console.error(String(error)); process.exit(1); });
"""


def test_glb_passes_the_khronos_validator(sphere, tmp_path):
    node, env = _gltf_validator()
    cleaned, textured = clean_and_bake(sphere, color, texture_resolution=64, target_faces=800)
    path = save_mesh(cleaned, tmp_path, "mesh", ("glb",), textured=textured)["glb"]
    result = subprocess.run(
        [node, "-e", VALIDATE_JS, str(path)], check=False, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["issues"]["numErrors"] == 0, report["issues"]["messages"]
    info = report["info"]
    assert info["materialCount"] == 1 and info["hasTextures"] and info["totalTriangleCount"] == len(cleaned.faces)


def test_bad_options_are_refused_with_a_reason(sphere, tmp_path):
    assert check_texture_resolution(0) is None and check_texture_resolution(1024) is None
    for bad in (-1, MAX_TEXTURE_RESOLUTION + 1, 8):
        message = check_texture_resolution(bad)
        assert message is not None and "--texture-resolution" in message and str(bad) in message
    for bad in (0, -5):
        message = check_cleanup_options(bad, 0.05)
        assert message is not None and "--target-faces must be > 0" in message
    assert "--min-component-fraction" in (check_cleanup_options(None, 1.5) or "")
    with pytest.raises(MeshCleanupError, match="--target-faces"):
        clean_mesh(sphere, target_faces=0)
    with pytest.raises(TextureBakeError, match="--texture-resolution"):
        bake_texture(sphere, color, -4)
    with pytest.raises(TextureBakeError, match="no faces"):
        bake_texture(trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), int)), color, 64)
    with pytest.raises(ValueError, match=r"color_fn must return a tensor \[P, 3\]"):
        bake_texture(sphere, lambda p: p[:, :2], 32)


def test_empty_reconstruction_writes_no_mesh(tmp_path):
    with pytest.raises(NoSurfaceError, match="no surface found"):
        extract_mesh(lambda p: torch.zeros(len(p)), resolution=16)
    empty = trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), int))
    with pytest.raises(NoSurfaceError, match="no faces"):
        save_mesh(empty, tmp_path, "mesh")
    assert not list(tmp_path.iterdir())
