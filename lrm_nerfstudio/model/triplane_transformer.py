"""Image-to-triplane decoder: learnable triplane tokens attend to the image tokens, modulated by the camera."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float
from nerfstudio.configs.base_config import InstantiateConfig
from torch import Tensor, nn

from lrm_nerfstudio.cameras import CANONICAL_DISTANCE, CANONICAL_FOCAL


@dataclass
class TriplaneTransformerConfig(InstantiateConfig):
    """Configuration for :class:`TriplaneTransformer`."""

    _target: type = field(default_factory=lambda: TriplaneTransformer)
    triplane_low_res: int = 32
    """Side n of each token plane (3 n^2 tokens; paper: 32)."""
    inner_dim: int = 1024
    """Token width D (paper: 1024)."""
    num_layers: int = 16
    """Number of decoder layers (paper: 16)."""
    num_heads: int = 16
    """Attention heads; `inner_dim` must be divisible by it."""
    mlp_ratio: float = 4.0
    """MLP hidden width as a multiple of `inner_dim`."""
    cond_dim: int = 768
    """Width D_enc of the image tokens (the encoder's `out_dim`)."""
    mod_dim: int = 1024
    """Width D_mod of the camera embedding."""
    eps: float = 1e-6
    """LayerNorm epsilon."""
    block_style: Literal["lrm", "triposr"] = "lrm"
    """lrm (LRM paper, OpenLRM): camera-modulated LayerNorms (adaLN), cross-attention -> self-attention -> GELU
    MLP, a final LayerNorm. triposr (TripoSR's Transformer1D): no camera; GroupNorm + linear in, then per layer
    affine LayerNorms with self-attention -> cross-attention -> GEGLU MLP, then a linear out plus the input
    tokens as a residual."""
    qkv_bias: bool = True
    """Biases on the attention query/key/value projections (OpenLRM and TripoSR: none)."""
    out_bias: bool = True
    """Bias on the attention output projections (OpenLRM: none; TripoSR: yes)."""
    modln_affine: bool = False
    """Give the modulated LayerNorms their own affine weight and bias under the modulation (OpenLRM)."""
    group_norm_groups: int = 32
    """Groups of the input GroupNorm (block_style triposr)."""
    group_norm_eps: float = 1e-6
    """Epsilon of the input GroupNorm (block_style triposr)."""

    @property
    def uses_camera(self) -> bool:
        """Whether the decoder is conditioned on the source camera (TripoSR's is not)."""
        return self.block_style == "lrm"

    image_lift: bool = False
    """Start the triplane tokens from the image as well as from the position tokens: the patch tokens, projected
    to D, are resampled onto the XZ plane (the plane the canonical source camera faces) and averaged along the
    viewing axis onto XY and YZ. Not in the paper. Without it a from-scratch decoder must learn through attention
    which image patch each texel looks at, which takes far more steps than a CPU run has; with it, the decoder
    refines a lifted image from the first step (`lrm-tiny`; measured in the README)."""
    lift_extent: float = CANONICAL_FOCAL / CANONICAL_DISTANCE * 2.0
    """Half-width of the [-1, 1] box in normalised image coordinates of the canonical source view (0.75: the
    box spans the middle 75% of the image at distance 2 and focal 0.75)."""
    lift_volume: bool = False
    """With `image_lift`: lift along the canonical camera's rays instead of orthographically. Each patch token
    also gives its ray an occupancy in each of n depth slices (a sigmoid of a linear map of the token); the n^3
    voxels take the features of the patch they project to (perspective, camera at `CANONICAL_DISTANCE`) times
    that occupancy, and XY, XZ and YZ start as the volume's means over Z, Y and X. The orthographic lift leaves
    XY and YZ constant along Y, so every object's depth must come through attention from position tokens that
    share no weights across texels; here one linear map, shared by all patches, places depth from the first
    step (measured in experiments/TRAINING.md). Not in the paper."""


def patch_maps(tokens: Float[Tensor, "B T K"], what: str) -> Float[Tensor, "B K g g"]:
    """The patch tokens (after the CLS token) as image-aligned maps; `what` names the caller in the error."""
    b, t, k = tokens.shape
    g = math.isqrt(t - 1)
    if g * g != t - 1:
        raise ValueError(f"{what} needs a CLS token and a square grid of patch tokens, got {t} tokens")
    return tokens[:, 1:].reshape(b, g, g, k).permute(0, 3, 1, 2)


def project_to_volume(maps: Float[Tensor, "B K h w"], n: int, extent: float) -> Float[Tensor, "B K n n n"]:
    """Bilinear samples of image-aligned maps of the canonical source view at the projections of the n^3 voxel
    centres of the [-1, 1] box, indexed [y, z, x] (y from the camera's side). The canonical camera sits on -Y at
    `CANONICAL_DISTANCE`, so a voxel's depth is that distance + y; `extent` is the box's half-width in normalised
    image coordinates at y = 0. Outside the image the samples are zero."""
    b, k = maps.shape[:2]
    c = (torch.arange(n, device=maps.device, dtype=maps.dtype) + 0.5) / n * 2 - 1
    yy, zz, xx = torch.meshgrid(c, c, c, indexing="ij")
    scale = extent * CANONICAL_DISTANCE / (CANONICAL_DISTANCE + yy)
    grid = torch.stack([xx * scale, -zz * scale], dim=-1).view(1, n * n, n, 2)  # image x = +X, image y = -Z
    out = F.grid_sample(maps, grid.expand(b, -1, -1, -1), mode="bilinear", align_corners=False)
    return out.view(b, k, n, n, n)


def slice_occupancy(logits: Float[Tensor, "B n n n n"]) -> Float[Tensor, "B n n n"]:
    """Per-voxel logit from per-pixel logits of each depth slice projected to the volume ([B, slice, y, z, x]):
    voxel (y, z, x) takes its own slice y's logit."""
    return torch.diagonal(logits, dim1=1, dim2=2).permute(0, 3, 1, 2)


def planes_from_volume(volume: Float[Tensor, "B D n n n"]) -> Float[Tensor, "B 3 D n n"]:
    """XY (rows y, columns x), XZ (rows z, columns x) and YZ (rows z, columns y) as the means of a [y, z, x]
    volume over Z, Y and X."""
    return torch.stack([volume.mean(dim=3), volume.mean(dim=2), volume.mean(dim=4).transpose(2, 3)], dim=1)


class ModLN(nn.Module):
    """LayerNorm without affine, modulated by a conditioning vector: `norm(x) * (1 + scale) + shift` (DiT adaLN)."""

    def __init__(self, dim: int, mod_dim: int, eps: float, affine: bool = False) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=affine)
        self.mod = nn.Sequential(nn.SiLU(), nn.Linear(mod_dim, 2 * dim))
        # Zero init: training starts as a plain LayerNorm and the camera's influence is learnt.
        nn.init.zeros_(self.mod[1].weight)
        nn.init.zeros_(self.mod[1].bias)

    def forward(self, x: Float[Tensor, "B L D"], mod: Float[Tensor, "B D_mod"]) -> Float[Tensor, "B L D"]:
        shift, scale = self.mod(mod).unsqueeze(1).chunk(2, dim=-1)
        return self.norm(x) * (1 + scale) + shift


class GEGLU(nn.Module):
    """GEGLU feed-forward (Shazeer 2020) as in TripoSR: `out(a * gelu(g))` with `[a | g] = proj(x)`."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, 2 * hidden)
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: Float[Tensor, "B L D"]) -> Float[Tensor, "B L D"]:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return self.out(a * F.gelu(gate))


class TriplaneTransformerLayer(nn.Module):
    """One decoder layer, each sub-block pre-normed and residual.

    lrm style: modLN -> cross-attention -> modLN -> self-attention -> modLN -> GELU MLP.
    triposr style: LayerNorm -> self-attention -> LayerNorm -> cross-attention -> LayerNorm -> GEGLU MLP.
    """

    def __init__(self, config: TriplaneTransformerConfig) -> None:
        super().__init__()
        c = config
        dim, num_heads, cond_dim = c.inner_dim, c.num_heads, c.cond_dim
        if dim % num_heads != 0:
            raise ValueError(f"inner_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.style = c.block_style
        hidden = round(dim * c.mlp_ratio)
        lrm = self.style == "lrm"

        def norm() -> nn.Module:
            return ModLN(dim, c.mod_dim, c.eps, c.modln_affine) if lrm else nn.LayerNorm(dim, eps=c.eps)

        # Registered in the lrm order (cross, self, MLP) so that a seed gives the same init as before styles.
        self.norm_cross = norm()
        self.cross_q = nn.Linear(dim, dim, bias=c.qkv_bias)
        # Keys and values of the image tokens in one matmul (one GEMM of twice the width runs closer to peak).
        self.cross_kv = nn.Linear(cond_dim, 2 * dim, bias=c.qkv_bias)
        self.cross_out = nn.Linear(dim, dim, bias=c.out_bias)
        self.norm_self = norm()
        self.self_qkv = nn.Linear(dim, 3 * dim, bias=c.qkv_bias)
        self.self_out = nn.Linear(dim, dim, bias=c.out_bias)
        self.norm_mlp = norm()
        self.mlp: nn.Module = (
            nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)) if lrm else GEGLU(dim, hidden)
        )

    def _heads(self, x: Tensor) -> Tensor:
        b, length, d = x.shape
        return x.view(b, length, self.num_heads, d // self.num_heads).transpose(1, 2)

    def _merge(self, x: Tensor) -> Tensor:
        b, h, length, dh = x.shape
        return x.transpose(1, 2).reshape(b, length, h * dh)

    def _norm(self, norm: nn.Module, x: Tensor, mod: Tensor | None) -> Tensor:
        return norm(x, mod) if isinstance(norm, ModLN) else norm(x)

    def _cross(self, h: Tensor, cond: Tensor) -> Tensor:
        q = self._heads(self.cross_q(h))
        k, v = (self._heads(t) for t in self.cross_kv(cond).chunk(2, dim=-1))
        return self.cross_out(self._merge(F.scaled_dot_product_attention(q, k, v)))

    def _self(self, h: Tensor) -> Tensor:
        q, k, v = (self._heads(t) for t in self.self_qkv(h).chunk(3, dim=-1))
        return self.self_out(self._merge(F.scaled_dot_product_attention(q, k, v)))

    def forward(
        self, x: Float[Tensor, "B L D"], cond: Float[Tensor, "B T D_enc"], mod: Float[Tensor, "B D_mod"] | None
    ) -> Float[Tensor, "B L D"]:
        if self.style == "lrm":
            if mod is None:
                raise ValueError("a camera-modulated (lrm style) decoder layer needs the camera embedding")
            x = x + self._cross(self._norm(self.norm_cross, x, mod), cond)
            x = x + self._self(self._norm(self.norm_self, x, mod))
        else:
            x = x + self._self(self.norm_self(x))
            x = x + self._cross(self.norm_cross(x), cond)
        return x + self.mlp(self._norm(self.norm_mlp, x, mod))


class TriplaneTransformer(nn.Module):
    """Image-to-triplane decoder of LRM (Hong et al. 2023, §3.2 "Image-to-triplane decoder").

    Learnable position tokens shaped 3 x n x n x D (one per texel of the three low-resolution planes) pass through
    `num_layers` layers of cross-attention to the image tokens, self-attention over all 3 n^2 tokens and an MLP.
    Every norm before them is modulated by the camera embedding (§3.2 "Camera features", adaLN). A final LayerNorm
    closes the stack.
    """

    def __init__(self, config: TriplaneTransformerConfig) -> None:
        super().__init__()
        self.config = config
        n, d = config.triplane_low_res, config.inner_dim
        self.out_dim: int = d
        """Channels D of the output planes."""
        # Small random init as in ViT position embeddings; the tokens are the only thing telling texels apart.
        self.pos_embed = nn.Parameter(torch.randn(3, n, n, d) * (1.0 / math.sqrt(d)))
        self.layers = nn.ModuleList(TriplaneTransformerLayer(config) for _ in range(config.num_layers))
        if config.block_style == "triposr":
            if d % config.group_norm_groups != 0:
                raise ValueError(f"inner_dim {d} is not divisible by group_norm_groups {config.group_norm_groups}")
            self.in_norm = nn.GroupNorm(config.group_norm_groups, d, eps=config.group_norm_eps)
            self.proj_in = nn.Linear(d, d)
            self.proj_out = nn.Linear(d, d)
            self.norm = None
        else:
            self.norm = nn.LayerNorm(d, eps=config.eps)
        self.lift = nn.Linear(config.cond_dim, d) if config.image_lift else None
        if config.lift_volume and not config.image_lift:
            raise ValueError("lift_volume needs image_lift")
        self.lift_occupancy = nn.Linear(config.cond_dim, n) if config.lift_volume else None

    def lift_image(self, image_tokens: Float[Tensor, "B T D_enc"]) -> Float[Tensor, "B 3 n n D"]:
        """Orthographic lift of the patch tokens onto the three planes (`image_lift`), ordered like `pos_embed`.

        Canonical view: the camera sits on -Y looking at +Y with +Z up, so image columns run along +X and image
        rows along -Z. Plane rows and columns index (y, x) for XY, (z, x) for XZ and (z, y) for YZ, each from -1
        at index 0 (as `sample_triplanes` reads them).
        """
        assert self.lift is not None
        b = image_tokens.shape[0]
        n = self.config.triplane_low_res
        feats = patch_maps(self.lift(image_tokens), "image_lift")  # [B, D, rows, cols]
        if self.lift_occupancy is not None:
            return self._lift_volume(feats, patch_maps(self.lift_occupancy(image_tokens), "image_lift"))
        centres = (
            (torch.arange(n, device=feats.device, dtype=feats.dtype) + 0.5) / n * 2 - 1
        ) * self.config.lift_extent
        zz, xx = torch.meshgrid(centres, centres, indexing="ij")
        grid = torch.stack([xx, -zz], dim=-1)  # image x = world x, image y (down) = -world z
        xz = F.grid_sample(feats, grid[None].expand(b, -1, -1, -1), mode="bilinear", align_corners=False)
        xy = xz.mean(dim=2, keepdim=True).expand(-1, -1, n, -1)  # mean over z, repeated along y (rows)
        yz = xz.mean(dim=3, keepdim=True).expand(-1, -1, -1, n)  # mean over x, repeated along y (columns)
        return torch.stack([xy, xz, yz], dim=1).permute(0, 1, 3, 4, 2)

    def _lift_volume(
        self, feats: Float[Tensor, "B D g g"], logits: Float[Tensor, "B n g g"]
    ) -> Float[Tensor, "B 3 n n D"]:
        """Perspective lift (`lift_volume`): voxel (x, y, z) gets the features of the pixel it projects to times
        that pixel's occupancy logit for depth slice y, through a sigmoid; the planes are the volume's means."""
        d = feats.shape[1]
        both = project_to_volume(
            torch.cat([feats, logits], dim=1), self.config.triplane_low_res, self.config.lift_extent
        )
        volume = both[:, :d] * torch.sigmoid(slice_occupancy(both[:, d:]))[:, None]
        return planes_from_volume(volume).permute(0, 1, 3, 4, 2)

    def forward(
        self, image_tokens: Float[Tensor, "B T D_enc"], camera_embedding: Float[Tensor, "B D_mod"] | None = None
    ) -> Float[Tensor, "B 3 D n n"]:
        """Decode image tokens into token planes (plane index first, then rows, then columns).

        `camera_embedding` is required by the lrm style and ignored by the triposr style.
        """
        b = image_tokens.shape[0]
        n, d = self.config.triplane_low_res, self.config.inner_dim
        x = self.pos_embed.reshape(1, 3 * n * n, d).expand(b, -1, -1)
        if self.lift is not None:
            x = x + self.lift_image(image_tokens).reshape(b, 3 * n * n, d)
        if self.norm is None:  # triposr style: the stack is a residual around the normed, projected tokens
            residual = x
            x = self.proj_in(self.in_norm(x.transpose(1, 2)).transpose(1, 2))
            for layer in self.layers:
                x = layer(x, image_tokens, None)
            x = self.proj_out(x) + residual
        else:
            for layer in self.layers:
                x = layer(x, image_tokens, camera_embedding)
            x = self.norm(x)
        return x.view(b, 3, n, n, d).permute(0, 1, 4, 2, 3).contiguous()

    def matmul_flops(self, batch: int, num_image_tokens: int) -> int:
        """Multiply-add FLOPs (2 per MAC) of the forward pass's Linear and attention matmuls."""
        c = self.config
        length, d, t = 3 * c.triplane_low_res**2, c.inner_dim, num_image_tokens
        hidden = round(d * c.mlp_ratio)
        per_layer = (
            length * d * d  # cross q
            + t * c.cond_dim * 2 * d  # cross kv
            + 2 * length * t * d  # cross QK^T and AV
            + length * d * d  # cross out
            + length * d * 3 * d  # self qkv
            + 2 * length * length * d  # self QK^T and AV
            + length * d * d  # self out
            + (3 if c.block_style == "triposr" else 2) * length * d * hidden  # MLP (GEGLU: a double-width input)
            + (3 * c.mod_dim * 2 * d if c.uses_camera else 0)  # modulation linears (tiny)
        )
        extra = 2 * length * d * d if c.block_style == "triposr" else 0  # proj_in, proj_out
        return 2 * batch * (c.num_layers * per_layer + extra)
