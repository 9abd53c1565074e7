"""Image metrics of one rendered view against the true one: PSNR, SSIM, LPIPS (when its weights are available),
PSNR on the union of the predicted and true masks, and the IoU of those masks.

Masks are thresholded at 0.5: the true alpha, and the prediction's accumulation (for a NeRF, its opacity).
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor

from lrm_nerfstudio.model.losses import PerceptualLoss
from lrm_nerfstudio.model.metrics import image_quality, psnr

MASK_THRESHOLD = 0.5
"""Alpha / accumulation above this counts as object."""


@torch.no_grad()
def view_metrics(
    pred_rgb: Float[Tensor, "H W 3"],
    true_rgb: Float[Tensor, "H W 3"],
    pred_alpha: Float[Tensor, "H W 1"],
    true_alpha: Float[Tensor, "H W 1"],
    perceptual: PerceptualLoss | None = None,
) -> dict[str, float | None]:
    """Metrics of one view; both images composited on the same background, values in [0, 1]. Computed on the
    device of `perceptual` when it is available, else on the prediction's.

    Returns:
        {"psnr", "ssim", "lpips" (only when `perceptual` is available), "masked_psnr" (None when neither mask has a
        pixel), "mask_iou" (1 when both masks are empty)}.
    """
    device = next(perceptual.parameters()).device if perceptual is not None and perceptual.available else None
    device = device or pred_rgb.device
    pred = pred_rgb.to(device).clamp(0, 1).float()
    true = true_rgb.to(device).float()
    out: dict[str, float | None] = dict(image_quality(pred, true, perceptual))
    squared = (pred - true) ** 2
    pred_mask = pred_alpha[..., 0].to(pred.device) > MASK_THRESHOLD
    true_mask = true_alpha[..., 0].to(pred.device) > MASK_THRESHOLD
    union = pred_mask | true_mask
    out["masked_psnr"] = psnr(squared[union]) if union.any() else None
    out["mask_iou"] = mask_iou(pred_alpha, true_alpha)
    return out


def mask_iou(pred_alpha: Float[Tensor, "H W 1"], true_alpha: Float[Tensor, "H W 1"]) -> float:
    """IoU of the predicted and true masks (alpha / accumulation > 0.5); 1 when both are empty."""
    pred_mask = pred_alpha[..., 0] > MASK_THRESHOLD
    true_mask = true_alpha[..., 0].to(pred_mask.device) > MASK_THRESHOLD
    union = float((pred_mask | true_mask).sum())
    return float((pred_mask & true_mask).sum()) / union if union else 1.0


def mean_metrics(rows: list[dict[str, float | None]]) -> dict[str, float | None]:
    """Mean of each metric over rows, ignoring missing and None values (None if no row has it)."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    out: dict[str, float | None] = {}
    for key in keys:
        values = [row[key] for row in rows if row.get(key) is not None and math.isfinite(row[key])]  # type: ignore[arg-type]
        out[key] = float(sum(values) / len(values)) if values else None
    return out
