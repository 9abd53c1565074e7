"""gsplat rendering and refinement (CUDA; skipped with the reason without it), and the camera conversion (CPU)."""

from __future__ import annotations

import pytest
import torch

from lrm_nerfstudio.model.reference import sphere_rgb_density
from lrm_nerfstudio.splat.convert import SplatConversionConfig, gaussians_from_field
from lrm_nerfstudio.splat.refine import SplatRefineConfig, distillation_cameras, psnr, refine_gaussians
from lrm_nerfstudio.splat.render import (
    GsplatUnavailableError,
    camera_matrices,
    gsplat_unavailable_reason,
    render_gaussians,
)

REASON = gsplat_unavailable_reason()
needs_gsplat = pytest.mark.skipif(REASON is not None, reason=str(REASON))
CENTRE = torch.tensor([0.1, -0.2, 0.15])
RADIUS = 0.5


sphere_field = sphere_rgb_density(CENTRE, RADIUS, density=200.0, width=0.01)


def test_gaussians_project_onto_the_pixels_of_the_nerf_rays():
    """gsplat's viewmats / Ks put a point of a pixel's ray (nerfstudio, OpenGL) back on that pixel's centre."""
    cameras = distillation_cameras(6, 32)
    viewmats, intrinsics, width, height = camera_matrices(cameras)
    assert (width, height) == (32, 32) and viewmats.shape == (6, 4, 4)
    for i in range(len(cameras)):
        rays = cameras.generate_rays(camera_indices=i, keep_shape=True)
        for row, col in [(0, 0), (5, 20), (31, 31), (16, 3)]:
            point = rays.origins[row, col] + 1.7 * rays.directions[row, col]
            cam = viewmats[i] @ torch.cat([point, torch.ones(1)])
            assert cam[2] > 0  # OpenCV: in front of the camera is +z
            uv = intrinsics[i] @ (cam[:3] / cam[2])
            torch.testing.assert_close(uv[:2], torch.tensor([col + 0.5, row + 0.5]), atol=1e-3, rtol=0)


@pytest.mark.skipif(REASON is None, reason="CUDA and gsplat are available here")
def test_without_cuda_render_refuses_with_the_reason():
    g = gaussians_from_field(sphere_field, SplatConversionConfig(num_gaussians=100, resolution=16))
    with pytest.raises(GsplatUnavailableError, match="CUDA"):
        render_gaussians(g, distillation_cameras(2, 16), torch.ones(3))


@needs_gsplat
def test_render_silhouette_matches_the_sphere():
    g = gaussians_from_field(sphere_field, SplatConversionConfig(num_gaussians=50_000)).to("cuda")
    cameras = distillation_cameras(4, 64)
    rgb, alpha = render_gaussians(g, cameras, torch.zeros(3))
    assert rgb.shape == (4, 64, 64, 3) and alpha.shape == (4, 64, 64, 1)
    # the sphere's silhouette: pixels whose ray passes within RADIUS of the centre
    for i in range(len(cameras)):
        rays = cameras.generate_rays(camera_indices=i, keep_shape=True)
        to_centre = CENTRE - rays.origins
        along = (to_centre * rays.directions).sum(-1, keepdim=True)
        miss = (to_centre - along * rays.directions).norm(dim=-1)
        inside = miss < RADIUS
        seen = alpha[i, ..., 0].cpu() > 0.5
        assert (seen & inside).sum() / (seen | inside).sum() > 0.9


@needs_gsplat
def test_refinement_raises_psnr():
    target_g = gaussians_from_field(sphere_field, SplatConversionConfig(num_gaussians=20_000)).to("cuda")
    cameras = distillation_cameras(8, 64)
    background = torch.ones(3)
    with torch.no_grad():
        targets, _ = render_gaussians(target_g, cameras, background)
    start = target_g.detach()
    start.sh[:, 0] += 0.8  # wrong colours, right geometry
    result = refine_gaussians(start, cameras, targets, background, SplatRefineConfig(steps=150, views_per_step=4))
    assert result.psnr_after > result.psnr_before + 3.0
    with torch.no_grad():
        again, _ = render_gaussians(result.gaussians, cameras, background)
    assert psnr(again, targets) == pytest.approx(result.psnr_after, abs=1e-3)


def test_the_rasterization_call_fits_gsplats_signature_and_shapes(monkeypatch):
    """Without CUDA, check the arguments handed to `gsplat.rasterization` against its signature and shape asserts.

    gsplat's kernel itself is not run (it needs CUDA); the call is recorded, bound to the real signature, and
    the shapes checked as gsplat 1.4.0 asserts them.
    """
    import inspect

    import gsplat

    from lrm_nerfstudio.splat import render

    calls = []
    signature = inspect.signature(gsplat.rasterization)

    def recording(**kwargs):
        calls.append(signature.bind(**kwargs).arguments)
        c, h, w = kwargs["viewmats"].shape[0], kwargs["height"], kwargs["width"]
        return torch.zeros(c, h, w, 3), torch.zeros(c, h, w, 1), {}

    monkeypatch.setattr(gsplat, "rasterization", recording)
    monkeypatch.setattr(render, "gsplat_unavailable_reason", lambda device=None: None)
    g = gaussians_from_field(sphere_field, SplatConversionConfig(num_gaussians=300, resolution=16, sh_degree=1))
    rgb, alpha = render_gaussians(g, distillation_cameras(3, 20), torch.ones(3))
    assert rgb.shape == (3, 20, 20, 3) and alpha.shape == (3, 20, 20, 1)
    (args,) = calls
    n = len(g)
    assert args["means"].shape == (n, 3) and args["quats"].shape == (n, 4) and args["scales"].shape == (n, 3)
    assert args["opacities"].shape == (n,) and args["colors"].shape == (n, 4, 3) and args["sh_degree"] == 1
    assert args["viewmats"].shape == (3, 4, 4) and args["Ks"].shape == (3, 3, 3)
    assert args["backgrounds"].shape == (3, 3) and (args["width"], args["height"]) == (20, 20)
    assert (args["scales"] > 0).all() and ((args["opacities"] > 0) & (args["opacities"] < 1)).all()
    torch.testing.assert_close(args["quats"].norm(dim=-1), torch.ones(n))
