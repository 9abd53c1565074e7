"""Image encoder: a transformers ViT (DINO / DINOv2) turning the source image into tokens."""

from __future__ import annotations

import math
import os
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Float
from nerfstudio.configs.base_config import InstantiateConfig
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor, nn
from torch.nn import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PretrainedWeightsMissing(RuntimeError):
    """Raised when `pretrained` weights cannot be found and `on_missing_weights="error"`."""


@dataclass
class ImageEncoderConfig(InstantiateConfig):
    """Configuration for :class:`ImageEncoder`."""

    _target: type = field(default_factory=lambda: ImageEncoder)
    pretrained: str | None = None
    """Local folder or hub id handed to `transformers.AutoModel.from_pretrained`; None builds a random ViT."""
    on_missing_weights: Literal["random", "error"] = "random"
    """What to do when `pretrained` cannot be loaded: print one message and use a random init, or raise."""
    allow_download: bool = False
    """Let transformers fetch a hub id missing from the local HF cache (needs internet; off so startup never waits)."""
    architecture: Literal["vit", "dinov2", "dinov2_registers"] = "vit"
    """Backbone family of the random init (ViTModel as in DINO ViT-B/16, Dinov2Model, or
    Dinov2WithRegistersModel as in OpenLRM v1.1); ignored once loaded."""
    num_register_tokens: int = 4
    """Register tokens of `dinov2_registers` (dropped from the output tokens, as OpenLRM does)."""
    layer_norm_eps: float | None = None
    """LayerNorm epsilon of the random init; None keeps the family's default (ViT 1e-12, DINOv2 1e-6)."""
    normalize: bool = True
    """Normalise the [0, 1] input with the ImageNet mean and std (DINO, TripoSR); OpenLRM's DINOv2 takes [0, 1]."""
    pos_interpolation: Literal["size", "triposr"] = "size"
    """How a ViT resizes its position embeddings to other inputs: to the patch grid size (transformers >= 4.4x),
    or with `scale_factor = (n + 0.1) / n0` as transformers 4.35 did, which TripoSR was trained with (the two
    give different embeddings)."""
    image_size: int = 512
    """Nominal input resolution (position embeddings are interpolated for other sizes)."""
    patch_size: int = 16
    """Patch size in pixels."""
    hidden_size: int = 768
    """Token width D_enc of the random init."""
    num_layers: int = 12
    """Number of transformer layers of the random init."""
    num_heads: int = 12
    """Number of attention heads of the random init."""
    mlp_ratio: int = 4
    """MLP hidden width as a multiple of `hidden_size` (random init)."""
    freeze: bool = False
    """Keep the encoder weights fixed (the paper fine-tunes them, so False)."""


class ImageEncoder(nn.Module):
    """ViT image encoder of LRM (Hong et al. 2023, §3.1 "Image encoder").

    The paper fine-tunes DINO ViT-B/16 at 512² and keeps all output tokens (CLS and patches) of the last layer,
    after its final LayerNorm, as the conditioning of the image-to-triplane decoder.
    """

    config: ImageEncoderConfig

    def __init__(self, config: ImageEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = self._build_backbone()
        model_type = self.backbone.config.model_type
        self.is_dinov2 = model_type in ("dinov2", "dinov2_with_registers")
        self.num_registers: int = int(getattr(self.backbone.config, "num_register_tokens", 0) or 0)
        """Register tokens after CLS in the backbone's output (removed by `forward`)."""
        if config.pos_interpolation == "triposr":
            if model_type != "vit":
                raise ValueError(f"pos_interpolation='triposr' needs a ViT backbone, got {model_type}")
            self.backbone.embeddings.interpolate_pos_encoding = types.MethodType(
                interpolate_pos_encoding_scale_factor, self.backbone.embeddings
            )
        self.out_dim: int = int(self.backbone.config.hidden_size)
        """Token width D_enc."""
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if config.freeze:
            self.backbone.requires_grad_(False)

    def _random_backbone(self) -> nn.Module:
        from transformers import Dinov2Config, Dinov2Model, ViTConfig, ViTModel

        c = self.config
        eps = {} if c.layer_norm_eps is None else {"layer_norm_eps": c.layer_norm_eps}
        if c.architecture == "vit":
            cfg = ViTConfig(
                hidden_size=c.hidden_size,
                num_hidden_layers=c.num_layers,
                num_attention_heads=c.num_heads,
                intermediate_size=c.hidden_size * c.mlp_ratio,
                image_size=c.image_size,
                patch_size=c.patch_size,
                **eps,
            )
            return ViTModel(cfg, add_pooling_layer=False)
        if c.architecture == "dinov2_registers":
            from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

            cfg = Dinov2WithRegistersConfig(
                hidden_size=c.hidden_size,
                num_hidden_layers=c.num_layers,
                num_attention_heads=c.num_heads,
                mlp_ratio=c.mlp_ratio,
                image_size=c.image_size,
                patch_size=c.patch_size,
                num_register_tokens=c.num_register_tokens,
                **eps,
            )
            model = Dinov2WithRegistersModel(cfg)
            model.embeddings.mask_token = None  # only for masked pre-training; an unused param upsets DDP
            return model
        cfg = Dinov2Config(
            hidden_size=c.hidden_size,
            num_hidden_layers=c.num_layers,
            num_attention_heads=c.num_heads,
            mlp_ratio=c.mlp_ratio,
            image_size=c.image_size,
            patch_size=c.patch_size,
            use_mask_token=False,  # masking is for self-supervised pre-training; an unused param upsets DDP
            **eps,
        )
        return Dinov2Model(cfg)

    def _build_backbone(self) -> nn.Module:
        c = self.config
        if c.pretrained is None:
            return self._random_backbone()
        from transformers import AutoConfig, AutoModel

        is_local = Path(c.pretrained).expanduser().is_dir()
        # A hub id is only looked up in the local HF cache unless downloads are allowed: offline, a network lookup
        # could wait on DNS/connect timeouts instead of failing at once.
        local_only = is_local or not c.allow_download or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "")
        source = str(Path(c.pretrained).expanduser()) if is_local else c.pretrained
        try:
            hf_config = AutoConfig.from_pretrained(source, local_files_only=local_only)
            kwargs = {}
            if hf_config.model_type == "vit":
                kwargs["add_pooling_layer"] = False  # the pooler is unused by LRM; unused params upset DDP
            elif hf_config.model_type == "dinov2":
                kwargs["use_mask_token"] = False
            return AutoModel.from_pretrained(source, local_files_only=local_only, **kwargs)
        except (OSError, ValueError) as err:
            if is_local:
                where = f"the local folder {source}"
            elif local_only:
                where = (
                    f"the hub id '{source}' in the local Hugging Face cache ($HF_HOME, default ~/.cache/huggingface)"
                )
            else:
                where = f"the hub id '{source}' (local Hugging Face cache, then the hub)"
            how = (
                "Provide the weights as a local folder written by `save_pretrained` (config.json + "
                "model.safetensors) and pass its path as `pretrained`, or put the model in the HF cache "
                "(`huggingface-cli download " + (c.pretrained if not is_local else "<hub id>") + "` on a machine "
                "with internet, then copy the cache)"
                + ("" if c.allow_download else ", or set allow_download=True where there is internet")
                + "."
            )
            msg = f"Image encoder: could not load pretrained weights from {where} ({type(err).__name__}). {how}"
            if c.on_missing_weights == "error":
                raise PretrainedWeightsMissing(msg) from err
            CONSOLE.print(
                f"[bold yellow]{msg} Falling back to a RANDOMLY initialised {c.architecture} encoder "
                f"({c.num_layers} layers x {c.hidden_size}, patch {c.patch_size}).[/bold yellow]"
            )
            return self._random_backbone()

    def forward(self, images: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B T D_enc"]:
        """Encode source images.

        Args:
            images: RGB in [0, 1]; any resolution divisible by the patch size (position embeddings are interpolated).

        Returns:
            Tokens of the last layer after its final LayerNorm: CLS first, then the patches in raster order.
        """
        x = (images - self.mean) / self.std if self.config.normalize else images
        if self.is_dinov2:
            out = self.backbone(pixel_values=x)  # Dinov2 always interpolates its position embeddings
        else:
            out = self.backbone(pixel_values=x, interpolate_pos_encoding=True)
        tokens = out.last_hidden_state
        if self.num_registers:
            tokens = torch.cat([tokens[:, :1], tokens[:, 1 + self.num_registers :]], dim=1)
        return tokens


def interpolate_pos_encoding_scale_factor(
    self: nn.Module, embeddings: Float[Tensor, "B T D"], height: int, width: int
) -> Float[Tensor, "1 T D"]:
    """ViT position embeddings resized as transformers 4.35 did (TripoSR pins it): bicubic with
    `scale_factor = (n + 0.1) / n0`, so source texels map by that factor rather than by n / n0.

    Bound as the `interpolate_pos_encoding` method of a transformers `ViTEmbeddings` (`self`).
    """
    pos = self.position_embeddings
    num_patches, num_positions = embeddings.shape[1] - 1, pos.shape[1] - 1
    if num_patches == num_positions and height == width:
        return pos
    n0 = math.isqrt(num_positions)
    h0, w0 = height // self.patch_size + 0.1, width // self.patch_size + 0.1
    dim = embeddings.shape[-1]
    grid = pos[:, 1:].reshape(1, n0, n0, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=(h0 / n0, w0 / n0), mode="bicubic", align_corners=False)
    if grid.shape[-2:] != (int(h0), int(w0)):
        raise ValueError(f"position embeddings of a {n0}x{n0} grid cannot be resized to {int(h0)}x{int(w0)}")
    return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)
