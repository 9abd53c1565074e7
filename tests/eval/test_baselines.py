"""The silhouette-ellipsoid baseline: its axes come back from a rendered ellipsoid; the flat renderer's colours."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from lrm_nerfstudio.cameras import CANONICAL_FOCAL, canonical_c2w, look_at, spherical_eye
from lrm_nerfstudio.eval.baselines import ellipsoid_mesh, fit_silhouette_ellipsoid, render_mesh

W = 256
INTRINSICS = np.array([CANONICAL_FOCAL * W, CANONICAL_FOCAL * W, W / 2, W / 2, W, W])


def _ellipsoid(axes, centre=(0.0, 0.0, 0.0), color=(0.8, 0.3, 0.1)) -> trimesh.Trimesh:
    sphere = trimesh.creation.icosphere(subdivisions=6)
    rgba = np.r_[np.asarray(color) * 255, 255].round().astype(np.uint8)
    vertices = sphere.vertices * np.asarray(axes) + np.asarray(centre)
    return trimesh.Trimesh(vertices, sphere.faces, vertex_colors=np.tile(rgba, (len(vertices), 1)), process=False)


def _view(mesh, c2w=None) -> np.ndarray:
    c2w = canonical_c2w() if c2w is None else c2w
    rgb, mask = render_mesh(mesh, c2w, INTRINSICS, np.ones(3))
    return np.concatenate([rgb, mask[..., None]], axis=-1)


def test_axes_of_a_rendered_ellipsoid_come_back():
    # the baseline's own assumption holds here (Y = mean of X and Z), so the fit is exact up to a pixel
    x, z = 0.6, 0.4
    truth = (x, 0.5 * (x + z), z)
    fit = fit_silhouette_ellipsoid(_view(_ellipsoid(truth)), canonical_c2w(), INTRINSICS[:4])
    pixel = 2.0 / (CANONICAL_FOCAL * W)  # world size of a pixel at the origin's depth
    np.testing.assert_allclose(fit.world_semi_axes(), truth, atol=0.5 * pixel)
    np.testing.assert_allclose(fit.center, 0.0, atol=pixel)
    np.testing.assert_allclose(fit.color, (0.8, 0.3, 0.1), atol=0.01)  # unlit render: the albedo itself
    # the naive reading (mask half-width x distance / focal) is more than a pixel too large: perspective is undone
    cols = np.nonzero(_view(_ellipsoid(truth))[..., 3].any(axis=0))[0]
    naive = 0.5 * (cols.max() + 1 - cols.min()) / INTRINSICS[0] * 2.0
    assert naive - x > pixel


def test_offset_ellipsoid_is_centred_behind_its_mask_and_meshed_in_place():
    axes, centre = (0.3, 0.3, 0.3), (0.25, 0.0, -0.2)
    fit = fit_silhouette_ellipsoid(_view(_ellipsoid(axes, centre)), canonical_c2w(), INTRINSICS[:4])
    np.testing.assert_allclose(fit.center, centre, atol=0.03)
    mesh = ellipsoid_mesh(fit)
    np.testing.assert_allclose(mesh.bounds.mean(axis=0), fit.center, atol=1e-6)
    np.testing.assert_allclose((mesh.bounds[1] - mesh.bounds[0]) / 2, fit.world_semi_axes(), rtol=1e-2)
    assert mesh.visual.vertex_colors.shape == (len(mesh.vertices), 4)


def test_another_camera_puts_the_view_axis_along_its_own_direction():
    # a camera on +X: its right axis is world -Y... (up stays +Z); the depth semi-axis lies along X
    c2w = look_at(spherical_eye(2.0, 90.0, 0.0))
    x, z = 0.5, 0.3
    truth = (0.5 * (x + z), x, z)  # world X is the depth axis here, world Y the image's horizontal
    fit = fit_silhouette_ellipsoid(_view(_ellipsoid(truth), c2w), c2w, INTRINSICS[:4])
    np.testing.assert_allclose(fit.world_semi_axes(), truth, atol=2.0 / (CANONICAL_FOCAL * W))


def test_empty_mask_is_refused():
    with pytest.raises(ValueError, match="mask is empty"):
        fit_silhouette_ellipsoid(np.zeros((8, 8, 4), np.float32), canonical_c2w(), INTRINSICS[:4])
