"""Rendering 3D Gaussians with gsplat (`gsplat.rasterization`, CUDA only) from nerfstudio cameras.

gsplat's rasteriser is a CUDA kernel (its PyPI wheel compiles it on first use, which needs the CUDA toolkit's
nvcc). Nothing here renders on the CPU: without CUDA, callers keep the triplane NeRF renderer and say why
(`gsplat_unavailable_reason`).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras
from torch import Tensor

from lrm_nerfstudio.splat.gaussians import Gaussians


class GsplatUnavailableError(RuntimeError):
    """gsplat cannot rasterise here (no CUDA device, or its CUDA extension is missing)."""


@functools.cache
def _extension_problem() -> str | None:
    try:
        from gsplat.cuda._backend import _C  # imports (and on first use JIT-builds) gsplat's CUDA extension
    except Exception as err:  # noqa: BLE001 (a failed JIT build raises compiler errors of many types)
        return f"gsplat's CUDA extension failed to build or load ({type(err).__name__}: {err})"
    if _C is None:
        return "gsplat's CUDA extension is not built and no CUDA toolkit (nvcc) was found to build it"
    return None


def gsplat_unavailable_reason(device: torch.device | str | None = None) -> str | None:
    """None when gsplat can rasterise on `device` (default: cuda), else one sentence saying why not."""
    device = torch.device(device or "cuda")
    if device.type != "cuda":
        return f"gsplat's rasteriser needs a CUDA device, and the model runs on {device}"
    if not torch.cuda.is_available():
        return "gsplat's rasteriser needs CUDA, and torch sees no CUDA device here"
    return _extension_problem()


def camera_matrices(cameras: Cameras) -> tuple[Float[Tensor, "C 4 4"], Float[Tensor, "C 3 3"], int, int]:
    """gsplat's world-to-camera matrices (OpenCV axes) and intrinsics of nerfstudio (OpenGL) cameras.

    Uses splatfacto's own conversion (`get_viewmat`), so the Gaussians land on the pixels through which
    `cameras.generate_rays` shoots the NeRF's rays. All cameras must share one image size.
    """
    from nerfstudio.models.splatfacto import get_viewmat

    widths, heights = cameras.width.reshape(-1), cameras.height.reshape(-1)
    if len(widths) == 0 or (widths != widths[0]).any() or (heights != heights[0]).any():
        raise ValueError("render_gaussians: all cameras must have the same image size")
    c2w = cameras.camera_to_worlds.reshape(-1, 3, 4)
    # nerfstudio builds the intrinsics matrices on the CPU whatever the cameras' device
    intrinsics = cameras.get_intrinsics_matrices().reshape(-1, 3, 3).to(c2w.device)
    return get_viewmat(c2w), intrinsics, int(widths[0]), int(heights[0])


def render_gaussians(
    gaussians: Gaussians, cameras: Cameras, background: Float[Tensor, "3"], **rasterize_kwargs
) -> tuple[Float[Tensor, "C H W 3"], Float[Tensor, "C H W 1"]]:
    """Render every camera with `gsplat.rasterization` (one batched call; differentiable in the Gaussians).

    Args:
        gaussians: on the CUDA device to render on.
        cameras: nerfstudio cameras of one image size.
        background: RGB composited behind the Gaussians.
        rasterize_kwargs: passed on to `gsplat.rasterization` (e.g. `packed`, `rasterize_mode`).

    Returns:
        Colours composited on `background`, and the accumulated opacities.

    Raises:
        GsplatUnavailableError: no CUDA, or gsplat's CUDA extension is missing.
    """
    device = gaussians.means.device
    reason = gsplat_unavailable_reason(device)
    if reason is not None:
        raise GsplatUnavailableError(reason)
    from gsplat import rasterization

    viewmats, intrinsics, width, height = camera_matrices(cameras.to(device))
    backgrounds = background.to(device=device, dtype=torch.float32).expand(len(viewmats), 3)
    colors, alphas, _ = rasterization(
        means=gaussians.means,
        quats=gaussians.quats,
        scales=gaussians.scales,
        opacities=gaussians.opacities,
        colors=gaussians.sh,
        viewmats=viewmats.float(),
        Ks=intrinsics.float(),
        width=width,
        height=height,
        sh_degree=gaussians.sh_degree,
        backgrounds=backgrounds,
        render_mode="RGB",
        **rasterize_kwargs,
    )
    return colors.clamp(0.0, 1.0), alphas


@torch.no_grad()
def render_frames(
    gaussians: Gaussians, cameras: Cameras, background: Float[Tensor, "3"], batch: int = 8
) -> list[np.ndarray]:
    """Frames [H, W, 3] in [0, 1] of every camera, `batch` cameras per gsplat call (turntables)."""
    frames: list[np.ndarray] = []
    for start in range(0, len(cameras), batch):
        rgb, _ = render_gaussians(gaussians, cameras[start : start + batch], background)
        frames.extend(rgb.cpu().numpy())
    return frames
