"""Losses of LRM training (Hong et al. 2023, §3.3): MSE + λ·LPIPS, plus the mask and triplane TV terms of OpenLRM
and TripoSR.

The perceptual term uses the `lpips` package (Zhang et al. 2018). Its linear heads ship inside the package, but
its backbone (VGG16 by default) comes from torchvision's model zoo, which cannot be downloaded offline. Instead of
crashing at setup, as every stock nerfstudio model does here, the loss looks for the backbone in the torch cache
and, when it is missing, turns itself off with one clear warning.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Float
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor, nn

PerceptualNet = Literal["vgg", "alex", "squeeze"]
MIN_PATCH_SIZE = {"vgg": 16, "alex": 32, "squeeze": 24}
"""Smallest patch side whose deepest LPIPS features are still non-empty (measured); smaller patches are upsampled."""


def backbone_weights_path(net: PerceptualNet) -> Path:
    """Where torchvision caches the ImageNet weights of the LPIPS backbone `net`."""
    from torchvision.models import AlexNet_Weights, SqueezeNet1_1_Weights, VGG16_Weights

    url = {
        "vgg": VGG16_Weights.IMAGENET1K_V1.url,
        "alex": AlexNet_Weights.IMAGENET1K_V1.url,
        "squeeze": SqueezeNet1_1_Weights.IMAGENET1K_V1.url,
    }[net]
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


class PerceptualLoss(nn.Module):
    """LPIPS between image patches, or nothing when its backbone weights are not available.

    Args:
        net: LPIPS backbone.
        enabled: Set False to skip LPIPS altogether (no warning).
    """

    def __init__(self, net: PerceptualNet = "vgg", enabled: bool = True) -> None:
        super().__init__()
        self.net_name = net
        self.lpips: nn.Module | None = None
        self.unavailable_reason: str | None = None
        if not enabled:
            self.unavailable_reason = "disabled in the config"
            return
        weights = backbone_weights_path(net)
        if not weights.is_file():
            self.unavailable_reason = f"torchvision's {net} weights are not in the torch cache ({weights})"
            CONSOLE.print(
                f"[bold yellow]LPIPS is off: {self.unavailable_reason}. The perceptual loss and the LPIPS metric are "
                f"disabled; training and evaluation go on with the other terms. To enable them, copy "
                f"{weights.name} into {weights.parent} (or point TORCH_HOME at a cache that has it)."
            )
            return
        import lpips

        with warnings.catch_warnings():  # lpips still calls torchvision with the deprecated `pretrained=` argument
            warnings.simplefilter("ignore", UserWarning)
            model = lpips.LPIPS(net=net, verbose=False)
        model.eval()
        for param in model.parameters():
            param.requires_grad_(False)
        self.lpips = model

    @property
    def available(self) -> bool:
        return self.lpips is not None

    def train(self, mode: bool = True) -> PerceptualLoss:
        super().train(mode)
        if self.lpips is not None:  # dropout in the LPIPS heads must stay off
            self.lpips.eval()
        return self

    def forward(self, pred: Float[Tensor, "P 3 h w"], target: Float[Tensor, "P 3 h w"]) -> Float[Tensor, ""] | None:
        """Mean LPIPS over patches with values in [0, 1]; None when LPIPS is unavailable."""
        if self.lpips is None:
            return None
        min_size = MIN_PATCH_SIZE[self.net_name]
        if min(pred.shape[-2:]) < min_size:
            scale = min_size / min(pred.shape[-2:])
            pred = nn.functional.interpolate(pred, scale_factor=scale, mode="bilinear", align_corners=False)
            target = nn.functional.interpolate(target, scale_factor=scale, mode="bilinear", align_corners=False)
        return self.lpips(pred * 2 - 1, target * 2 - 1).mean()


def triplane_tv_loss(triplanes: Float[Tensor, "B 3 C R R"]) -> Float[Tensor, ""]:
    """Total variation of the planes (mean squared difference of neighbours), as in OpenLRM."""
    dx = triplanes[..., :, 1:] - triplanes[..., :, :-1]
    dy = triplanes[..., 1:, :] - triplanes[..., :-1, :]
    return dx.pow(2).mean() + dy.pow(2).mean()
