"""Distillation: optimise Gaussians with gsplat so that they render what the triplane NeRF renders (CUDA only).

The targets are the NeRF's own renders of the reconstruction from M orbit views (plus a few held-out views at
other angles); the Gaussians' parameters (centres, log-scales, rotations, opacity logits, SH) are optimised with
Adam on an L1 + D-SSIM loss, as 3DGS trains, with a fixed count (no densification). PSNR against the NeRF renders
is reported before and after, on the training and the held-out views.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras
from torch import Tensor
from torchmetrics.functional import structural_similarity_index_measure

from lrm_nerfstudio.mesh.turntable import orbit_cameras
from lrm_nerfstudio.splat.gaussians import Gaussians
from lrm_nerfstudio.splat.render import render_gaussians


@dataclass
class SplatRefineConfig:
    """Distillation of the NeRF into the Gaussians."""

    steps: int = 0
    """Optimisation steps (0: no refinement)."""
    num_views: int = 32
    """Orbit views M rendered by the NeRF as targets."""
    resolution: int = 128
    """Side of the target views in pixels."""
    views_per_step: int = 4
    """Views rendered per optimisation step."""
    ssim_weight: float = 0.2
    """Weight of the D-SSIM term (1 - SSIM); the rest is L1, as in 3DGS."""
    lr_means: float = 1.6e-4
    """Adam learning rate of the centres (world units; the object spans about 2)."""
    lr_scales: float = 5e-3
    """Adam learning rate of the log-scales."""
    lr_quats: float = 1e-3
    """Adam learning rate of the quaternions."""
    lr_opacities: float = 5e-2
    """Adam learning rate of the opacity logits."""
    lr_sh: float = 2.5e-3
    """Adam learning rate of the SH DC coefficients (the higher bands get 1/20 of it)."""
    seed: int = 0
    """Seed of the view order."""


@dataclass
class RefineResult:
    """The refined Gaussians and how close they came to the NeRF."""

    gaussians: Gaussians
    """The Gaussians after the last step."""
    psnr_before: float
    """PSNR (dB) of the converted Gaussians against the NeRF renders of the training views."""
    psnr_after: float
    """The same after refinement."""
    heldout_psnr_before: float | None
    """PSNR on the held-out views before (None without held-out views)."""
    heldout_psnr_after: float | None
    """And after."""
    seconds: float
    """Wall time of the optimisation."""


def distillation_cameras(num_views: int, resolution: int, heldout: bool = False) -> Cameras:
    """Orbit views around the object: golden-angle azimuths, elevations spread over [-20, 60] degrees.

    The held-out set is a quarter as many views (at least 2), at azimuths half-way between the training ones.
    """
    n = max(2, num_views // 4) if heldout else num_views
    i = np.arange(n) + (0.5 if heldout else 0.0)
    golden = 180.0 * (3.0 - math.sqrt(5.0))
    elevations = -20.0 + 80.0 * ((i * 0.618034 + (0.31 if heldout else 0.0)) % 1.0)
    return orbit_cameras(i * golden, elevations, resolution=resolution)


def psnr(rendered: Float[Tensor, "*bs 3"], target: Float[Tensor, "*bs 3"]) -> float:
    """PSNR in dB of images in [0, 1]."""
    mse = torch.mean((rendered.float() - target.float()) ** 2)
    return float(-10.0 * torch.log10(mse.clamp(min=1e-10)))


@torch.no_grad()
def _psnr_of(gaussians: Gaussians, cameras: Cameras, targets: Tensor, background: Tensor, batch: int) -> float:
    renders = torch.cat(
        [render_gaussians(gaussians, cameras[i : i + batch], background)[0] for i in range(0, len(cameras), batch)]
    )
    return psnr(renders, targets.to(renders.device))


def refine_gaussians(
    gaussians: Gaussians,
    cameras: Cameras,
    targets: Float[Tensor, "M H W 3"],
    background: Float[Tensor, "3"],
    config: SplatRefineConfig,
    heldout: tuple[Cameras, Float[Tensor, "V H W 3"]] | None = None,
) -> RefineResult:
    """Optimise `gaussians` (on a CUDA device) to render `targets` from `cameras` with gsplat.

    Raises:
        GsplatUnavailableError: no CUDA, or gsplat's CUDA extension is missing.
        ValueError: as many cameras as targets are needed.
    """
    if len(cameras) != len(targets):
        raise ValueError(f"refine_gaussians: {len(cameras)} cameras but {len(targets)} target images")
    device = gaussians.means.device
    targets = targets.to(device)
    batch = max(1, config.views_per_step)
    before = _psnr_of(gaussians, cameras, targets, background, batch)
    heldout_before = _psnr_of(gaussians, heldout[0], heldout[1].to(device), background, batch) if heldout else None

    params = {
        name: torch.nn.Parameter(getattr(gaussians, name).detach().clone())
        for name in ("means", "quats", "log_scales", "opacity_logits")
    }
    sh_dc = torch.nn.Parameter(gaussians.sh[:, :1].detach().clone())
    sh_rest = torch.nn.Parameter(gaussians.sh[:, 1:].detach().clone())
    groups = [
        {"params": [params["means"]], "lr": config.lr_means},
        {"params": [params["log_scales"]], "lr": config.lr_scales},
        {"params": [params["quats"]], "lr": config.lr_quats},
        {"params": [params["opacity_logits"]], "lr": config.lr_opacities},
        {"params": [sh_dc], "lr": config.lr_sh},
        {"params": [sh_rest], "lr": config.lr_sh / 20.0},
    ]
    optimizer = torch.optim.Adam(groups, eps=1e-15)

    def current() -> Gaussians:
        return Gaussians(
            means=params["means"],
            quats=torch.nn.functional.normalize(params["quats"], dim=-1),
            log_scales=params["log_scales"],
            opacity_logits=params["opacity_logits"],
            sh=torch.cat([sh_dc, sh_rest], dim=1),
            normals=gaussians.normals,
        )

    generator = torch.Generator().manual_seed(config.seed)
    start = time.perf_counter()
    for _ in range(config.steps):
        views = torch.randperm(len(cameras), generator=generator)[:batch]
        rendered, _ = render_gaussians(current(), cameras[views], background)
        target = targets[views.to(device)]
        loss = (1.0 - config.ssim_weight) * torch.abs(rendered - target).mean()
        if config.ssim_weight > 0:
            ssim = structural_similarity_index_measure(
                rendered.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2), data_range=1.0
            )
            loss = loss + config.ssim_weight * (1.0 - ssim)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start

    refined = current().detach()
    refined = Gaussians(
        means=refined.means,
        quats=refined.quats,
        log_scales=refined.log_scales,
        opacity_logits=refined.opacity_logits,
        sh=refined.sh,
        normals=_rotated_z(refined.quats),
    )
    after = _psnr_of(refined, cameras, targets, background, batch)
    heldout_after = _psnr_of(refined, heldout[0], heldout[1].to(device), background, batch) if heldout else None
    return RefineResult(refined, before, after, heldout_before, heldout_after, seconds)


def _rotated_z(quats: Float[Tensor, "N 4"]) -> Float[Tensor, "N 3"]:
    """The rotated +Z axis of unit quaternions (the normal of a flattened Gaussian)."""
    from gsplat.utils import normalized_quat_to_rotmat

    return normalized_quat_to_rotmat(quats)[..., :, 2]
