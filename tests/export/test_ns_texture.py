"""`mesh.ns_texture.unwrap_mesh_with_xatlas`, the stand-in for nerfstudio's, returns what nerfstudio's returns:
texel points on the surface where the texture coordinates say, inward unit directions, and an OBJ (written by
nerfstudio's own `export_textured_mesh`) whose texture shows each face's colour on that face. nerfstudio's function
passes the same checks, so they test the convention, not this implementation."""

from __future__ import annotations

from copy import deepcopy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import trimesh
import yaml
from nerfstudio.exporter import texture_utils
from nerfstudio.exporter.exporter_utils import Mesh

from lrm_nerfstudio.mesh import ns_texture

N = 128


@pytest.fixture(scope="module")
def sphere() -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions=2)  # 320 faces, unit radius


def tensors(mesh: trimesh.Trimesh) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (torch.tensor(mesh.vertices, dtype=torch.float32), torch.tensor(mesh.faces),
            torch.tensor(mesh.vertex_normals, dtype=torch.float32))  # fmt: skip


UNWRAPS = {"project": ns_texture.unwrap_mesh_with_xatlas, "nerfstudio": texture_utils.unwrap_mesh_with_xatlas}


def color(points: np.ndarray) -> np.ndarray:
    return 0.5 + 0.5 * np.asarray(points)


@pytest.mark.parametrize("which", ["project", "nerfstudio"])
def test_texels_lie_where_their_texture_coordinates_say(sphere, which):
    vertices, faces, normals = tensors(sphere)
    texcoords, origins, directions = UNWRAPS[which](vertices, faces, normals, num_pixels_per_side=N)
    assert texcoords.shape == (len(faces), 3, 2) and origins.shape == directions.shape == (N, N, 3)
    uv_corners = texcoords.double().numpy()
    # texel (h, w)'s centre in nerfstudio's convention: u = (w + 0.5) / N, v = (h + 0.5) / N
    h, w = np.mgrid[0:N, 0:N]
    centres = np.stack([(w.ravel() + 0.5) / N, (h.ravel() + 0.5) / N], 1)
    a, b, c = uv_corners[:, 0], uv_corners[:, 1], uv_corners[:, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])

    def cross(p, q, r):  # [T, F]: twice the signed area of (p, q, r) for every texel p
        return (q[None, :, 0] - p[:, None, 0]) * (r[None, :, 1] - p[:, None, 1]) - (q[None, :, 1] - p[:, None, 1]) * (
            r[None, :, 0] - p[:, None, 0]
        )

    bary = np.stack([cross(centres, b, c), cross(centres, c, a), cross(centres, a, b)], -1) / area[None, :, None]
    inside = (bary > 1e-3).all(-1) & (np.abs(area) > 1e-9)[None]  # [T, F], away from edges
    texel, face = np.nonzero(inside)
    assert len(texel) > 0.15 * N * N  # a real share of the atlas (small charts: much of it is padding)
    expected = np.einsum("kj,kjc->kc", bary[texel, face], sphere.vertices[sphere.faces[face]])
    got = origins.reshape(-1, 3).double().numpy()[texel]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    dirs = directions.reshape(-1, 3).double().numpy()
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=1), 1.0, atol=1e-5)
    if which == "nerfstudio":
        return  # it extrapolates its nearest triangle into the gutters, off the surface
    # every texel (gutters too) is a point of the surface, looking inward along the normal
    all_origins = origins.reshape(-1, 3).double().numpy()
    radius = np.linalg.norm(all_origins, axis=1)
    assert radius.min() > 0.95 and radius.max() < 1.0 + 1e-4
    assert (np.einsum("kc,kc->k", dirs, all_origins / radius[:, None]) < -0.95).all()


class _ColorAtSurface:
    """A model for `export_textured_mesh`: each texture ray's colour is `color` at the middle of the ray (the
    surface point it was started from), so the baked texture is known exactly."""

    config = SimpleNamespace(eval_num_rays_per_chunk=4096)

    def get_outputs_for_camera_ray_bundle(self, bundle):
        middle = bundle.origins + 0.5 * bundle.fars * bundle.directions
        rgb = torch.as_tensor(color(middle.numpy()), dtype=torch.float32)
        return {"rgb": rgb, "accumulation": torch.ones_like(rgb[..., :1])}

    def get_rgba_image(self, outputs, output_name="rgb"):
        return torch.cat([outputs["rgb"], outputs["accumulation"]], -1)


@pytest.mark.parametrize("which", ["project", "nerfstudio"])
def test_obj_round_trip_shows_each_face_its_colour(sphere, which, tmp_path, monkeypatch):
    monkeypatch.setattr(texture_utils, "unwrap_mesh_with_xatlas", UNWRAPS[which])
    vertices, faces, normals = tensors(sphere)
    pipeline = SimpleNamespace(device=torch.device("cpu"), model=_ColorAtSurface())
    texture_utils.export_textured_mesh(Mesh(vertices, faces, normals), pipeline, tmp_path, None,
                                       num_pixels_per_side=N)  # fmt: skip
    obj = trimesh.load(tmp_path / "mesh.obj", force="mesh", process=False)
    image = np.asarray(obj.visual.material.image.convert("RGB"), np.float64) / 255.0
    assert image.shape == (N, N, 3)
    # each face's centroid: its UV from the OBJ (v up, image row 0 at v = 1), the texel there, its colour
    uv = obj.visual.uv[obj.faces].mean(1)
    column = np.clip((uv[:, 0] * N).astype(int), 0, N - 1)
    row = np.clip(((1.0 - uv[:, 1]) * N).astype(int), 0, N - 1)
    seen = image[row, column]
    expected = color(obj.vertices[obj.faces].mean(1))
    error = np.abs(seen - expected).max(1)
    assert np.median(error) < 0.03 and np.quantile(error, 0.95) < 0.08, (np.median(error), error.max())


def test_ns_export_gets_it_when_an_lrm_config_loads(monkeypatch):
    from lrm_nerfstudio.lrm_config import lrm_tiny_method

    monkeypatch.setattr(texture_utils, "unwrap_mesh_with_xatlas", UNWRAPS["nerfstudio"])  # restored afterwards
    text = yaml.dump(deepcopy(lrm_tiny_method.config))
    yaml.load(text, Loader=yaml.Loader)  # as nerfstudio's eval_setup reads config.yml
    assert texture_utils.unwrap_mesh_with_xatlas is ns_texture.unwrap_mesh_with_xatlas


def test_texture_render_skips_normals_the_viewer_keeps_them(procedural_dataset):
    """nerfstudio's texture stage renders 2048^2 rays through `get_outputs_for_camera_ray_bundle`: no density-gradient
    pass there. The viewer (and evaluation) render through `get_outputs_for_camera` and still get normals."""
    from conftest import tiny_trainer_config

    from lrm_nerfstudio.splat.refine import distillation_cameras

    torch.manual_seed(0)
    model = tiny_trainer_config(procedural_dataset).pipeline.setup(device="cpu", test_mode="val").model.eval()
    camera = distillation_cameras(1, 12)
    viewer = model.get_outputs_for_camera(camera)
    assert viewer["normals"].shape == (12, 12, 3)
    texture = model.get_outputs_for_camera_ray_bundle(camera.generate_rays(camera_indices=0, keep_shape=True))
    assert "normals" not in texture and texture["rgb"].shape == (12, 12, 3)
    torch.testing.assert_close(texture["rgb"], viewer["rgb"])
    torch.testing.assert_close(texture["accumulation"], viewer["accumulation"])


def test_benchmark_times_both_unwraps(tmp_path):
    import json
    import sys
    from pathlib import Path

    from lrm_run_helpers import run_tool

    script = Path(__file__).resolve().parents[2] / "scripts" / "benchmark_ns_export.py"
    out = run_tool([sys.executable, str(script), "--unwrap-only", "--target-num-faces", "400",
                    "--num-pixels-per-side", "32", "--nerfstudio-faces", "20"])  # fmt: skip
    record = json.loads(out.stdout)  # nothing but the JSON on stdout
    assert record["faces"] == 400 and record["num_pixels_per_side"] == 32
    assert record["nerfstudio_s"] == pytest.approx(20 * record["nerfstudio_s_at_20_faces"])
    assert record["project_s"] > 0
