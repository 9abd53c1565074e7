"""Image metrics of a rendered view against the true one: PSNR, SSIM and (when its weights are available) LPIPS.

One implementation for the model's own evaluation (`ns-eval`, the trainer's eval images) and for `lrm-eval`
(eval/image_metrics.py adds the mask metrics).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor
from torchmetrics.functional import structural_similarity_index_measure

from lrm_nerfstudio.model.losses import PerceptualLoss


def psnr(squared_error: Tensor) -> float:
    """PSNR in dB of a tensor of squared errors of [0, 1] values (their mean; capped at 100 dB)."""
    return float(-10.0 * torch.log10(squared_error.mean().clamp(min=1e-10)))


@torch.no_grad()
def image_quality(
    pred_rgb: Float[Tensor, "H W 3"], true_rgb: Float[Tensor, "H W 3"], perceptual: PerceptualLoss | None = None
) -> dict[str, float]:
    """{"psnr", "ssim", "lpips" (only when `perceptual` is available)} of one view; the prediction is clamped to
    [0, 1] and both are compared on the prediction's device."""
    pred = pred_rgb.clamp(0, 1).float()
    true = true_rgb.to(pred.device).float()
    out = {"psnr": psnr((pred - true) ** 2)}
    pred_nchw, true_nchw = pred.permute(2, 0, 1)[None], true.permute(2, 0, 1)[None]
    out["ssim"] = float(structural_similarity_index_measure(pred_nchw, true_nchw, data_range=1.0))
    if perceptual is not None and perceptual.available:
        lpips = perceptual(pred_nchw, true_nchw)
        if lpips is not None:
            out["lpips"] = float(lpips)
    return out
