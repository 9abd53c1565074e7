"""Field -> Gaussians: centres on the surface, occupancy IoU, colours and normals from the field, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gsplat.utils import normalized_quat_to_rotmat
from scipy.spatial import cKDTree

from lrm_nerfstudio.model.reference import sphere_rgb_density, sphere_triplane
from lrm_nerfstudio.splat.convert import (
    SplatConversionConfig,
    gaussians_from_field,
    gaussians_from_triplane,
    orthographic_weights,
)
from lrm_nerfstudio.splat.gaussians import SH_C0, EmptyReconstructionError, quats_from_normals

CENTRE = torch.tensor([0.1, -0.2, 0.15])
RADIUS = 0.5
LATTICE = 64
VOXEL = 2.0 / (LATTICE - 1)


sphere_field = sphere_rgb_density(CENTRE, RADIUS)
"""An off-centre solid sphere of density 50 with a 0.02-wide edge, coloured by position."""


@pytest.fixture(scope="module")
def sphere_triplane_field():
    """A TriplaneField and a hand-made triplane whose density is 1 on the sphere."""
    return sphere_triplane(CENTRE, RADIUS)


def occupancy_iou(g, resolution: int = 48) -> float:
    """IoU of the Gaussians' occupancy and the sphere's on a lattice of voxel centres.

    A point is inside the Gaussians when it lies behind the disc of its nearest Gaussian ((x - mu) . n < 0): the
    inside / outside test of an oriented point cloud, so it checks centres and normals together.
    """
    axis = -1.0 + (np.arange(resolution) + 0.5) * 2.0 / resolution
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    means, normals = g.means.numpy(), g.normals.numpy()
    _, nearest = cKDTree(means).query(grid)
    occupied = ((grid - means[nearest]) * normals[nearest]).sum(-1) < 0
    inside = np.linalg.norm(grid - CENTRE.numpy(), axis=-1) < RADIUS
    return float((occupied & inside).sum() / (occupied | inside).sum())


def radial_error(means: torch.Tensor) -> torch.Tensor:
    return ((means - CENTRE).norm(dim=-1) - RADIUS).abs()


def check_shapes_and_ranges(g, n_max: int) -> None:
    assert 0 < len(g) <= n_max
    assert (g.means.abs() <= 1.0).all()
    torch.testing.assert_close(g.quats.norm(dim=-1), torch.ones(len(g)), atol=1e-5, rtol=0)
    torch.testing.assert_close(g.normals.norm(dim=-1), torch.ones(len(g)), atol=1e-5, rtol=0)
    assert torch.isfinite(g.log_scales).all() and torch.isfinite(g.opacity_logits).all()
    assert (g.opacities >= 1 / 255).all() and (g.opacities < 1).all()
    # flattened along the normal: the rotated third axis (gsplat's own quaternion convention) is the normal
    torch.testing.assert_close(normalized_quat_to_rotmat(g.quats)[..., :, 2], g.normals, atol=1e-4, rtol=0)
    torch.testing.assert_close(g.scales[:, 2], 0.1 * g.scales[:, 0])


def test_surface_placement_on_the_analytic_sphere():
    g = gaussians_from_field(sphere_field, SplatConversionConfig(num_gaussians=20_000, resolution=LATTICE))
    check_shapes_and_ranges(g, 20_000)
    assert len(g) == 20_000  # a solid sphere: every Gaussian is visible
    error = radial_error(g.means)
    assert error.mean() < 0.3 * VOXEL and error.max() < 0.5 * VOXEL
    radial = (g.means - CENTRE) / (g.means - CENTRE).norm(dim=-1, keepdim=True)
    assert (radial * g.normals).sum(-1).min() > 0.99  # normals point outwards along the density gradient
    assert occupancy_iou(g) > 0.85
    # colour from the field at the centre, as SH DC: rgb = 0.5 + C0 * f_dc
    torch.testing.assert_close(0.5 + SH_C0 * g.sh[:, 0], (g.means + 1) / 2, atol=1e-5, rtol=0)
    # spacing: 20k discs on the sphere's area, about sqrt(area / N) apart
    spacing = (4 * np.pi * RADIUS**2 / 20_000) ** 0.5
    assert 0.3 * spacing < float(g.scales[:, 0].median()) < 1.5 * spacing


def test_density_placement_is_near_the_surface_but_less_tight():
    g = gaussians_from_field(
        sphere_field, SplatConversionConfig(num_gaussians=20_000, resolution=LATTICE, placement="density")
    )
    check_shapes_and_ranges(g, 20_000)
    error = radial_error(g.means)
    assert float(error.median()) < VOXEL
    iou = occupancy_iou(g)
    assert iou > 0.5
    # a shell a few voxels thick (the field's faint halo draws samples too): why "surface" is the default
    surface = gaussians_from_field(sphere_field, SplatConversionConfig(num_gaussians=20_000, resolution=LATTICE))
    assert 3 * float(radial_error(surface.means).mean()) < float(error.mean())
    assert occupancy_iou(surface) > iou


def test_sphere_triplane_through_the_triplane_field(sphere_triplane_field):
    field, planes = sphere_triplane_field
    config = SplatConversionConfig(num_gaussians=10_000, resolution=LATTICE, iso_level=1.0)
    g = gaussians_from_triplane(field, planes, config)
    check_shapes_and_ranges(g, 10_000)
    assert float(radial_error(g.means).mean()) < 0.3 * VOXEL
    assert occupancy_iou(g) > 0.9
    # colours are the field's own at the centres, through rgb_density_at
    rgb, _ = field.rgb_density_at(g.means[None], planes)
    torch.testing.assert_close(g.rgb, rgb[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(g.rgb, torch.sigmoid(2 * g.means), atol=1e-3, rtol=0)
    radial = (g.means - CENTRE) / (g.means - CENTRE).norm(dim=-1, keepdim=True)
    assert float((radial * g.normals).sum(-1).min()) > 0.99


def test_more_gaussians_and_higher_sh_degree():
    g = gaussians_from_field(
        sphere_field, SplatConversionConfig(num_gaussians=40_000, resolution=32, sh_degree=2, opacity_samples=4)
    )
    assert g.sh.shape == (len(g), 9, 3) and g.sh_degree == 2
    assert (g.sh[:, 1:] == 0).all()


def test_empty_field_is_an_empty_reconstruction():
    empty = lambda p: (torch.full_like(p, 0.5), torch.zeros(len(p)))
    for placement in ("surface", "density"):
        config = SplatConversionConfig(num_gaussians=100, resolution=16, placement=placement)
        with pytest.raises(EmptyReconstructionError, match="empty reconstruction"):
            gaussians_from_field(empty, config)


def test_a_faint_field_gives_no_gaussians_rather_than_invisible_ones():
    faint = sphere_rgb_density(CENTRE, RADIUS, density=0.005)
    with pytest.raises(EmptyReconstructionError, match="below 1/255 opacity"):
        gaussians_from_field(faint, SplatConversionConfig(num_gaussians=2000, resolution=32))


def test_count_must_be_positive():
    for count in (0, -5):
        with pytest.raises(ValueError, match="number of Gaussians must be > 0"):
            gaussians_from_field(sphere_field, SplatConversionConfig(num_gaussians=count))
    with pytest.raises(ValueError, match="sh_degree"):
        gaussians_from_field(sphere_field, SplatConversionConfig(sh_degree=4))


def test_quaternions_take_z_to_the_normal():
    normals = torch.nn.functional.normalize(torch.randn(500, 3), dim=-1)
    normals = torch.cat([normals, torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [0.0, 0.0, -1.0 + 1e-9]])])
    normals = torch.nn.functional.normalize(normals, dim=-1)
    q = quats_from_normals(normals)
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(len(q)))
    torch.testing.assert_close(normalized_quat_to_rotmat(q)[..., :, 2], normals, atol=1e-4, rtol=0)


def test_orthographic_weights_known_answer():
    # one opaque voxel behind a half-transparent one along x: the back voxel is seen unoccluded from -x
    grid = torch.zeros(4, 4, 4)
    grid[1, 2, 2], grid[2, 2, 2] = np.log(2.0), 100.0
    w = orthographic_weights(grid, spacing=1.0)
    assert float(w[1, 2, 2]) == pytest.approx(0.5)  # alpha of the front voxel, seen directly
    assert float(w[2, 2, 2]) == pytest.approx(1.0)  # from +x, y or z it is seen directly
    assert float(w.sum() - w[1, 2, 2] - w[2, 2, 2]) == 0.0
