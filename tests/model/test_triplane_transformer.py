"""CameraEmbedder, TriplaneTransformer (adaLN) and TriplaneUpsampler."""

import pytest
import torch
import torch.nn.functional as F

from lrm_nerfstudio.model.camera_embedder import CameraEmbedderConfig
from lrm_nerfstudio.model.triplane_transformer import TriplaneTransformerConfig
from lrm_nerfstudio.model.upsampler import TriplaneUpsamplerConfig


def _transformer(**kw):
    cfg = {
        "triplane_low_res": 4,
        "inner_dim": 32,
        "num_layers": 2,
        "num_heads": 4,
        "mlp_ratio": 2.0,
        "cond_dim": 24,
        "mod_dim": 16,
    }
    cfg.update(kw)
    return TriplaneTransformerConfig(**cfg).setup()


def test_camera_embedder_shape():
    emb = CameraEmbedderConfig(embed_dim=16).setup()
    out = emb(torch.randn(3, 16))
    assert out.shape == (3, 16) and torch.isfinite(out).all() and emb.out_dim == 16


def test_transformer_shapes_and_finite():
    torch.manual_seed(0)
    tr = _transformer()
    out = tr(torch.randn(2, 5, 24), torch.randn(2, 16))
    assert out.shape == (2, 3, 32, 4, 4) and torch.isfinite(out).all()
    assert out.is_contiguous()


def test_plane_layout_follows_tokens():
    """Output [b, p, :, i, j] is the token at plane p, row i, column j of `pos_embed` (no layers: only the norm)."""
    tr = _transformer(num_layers=0)
    out = tr(torch.randn(1, 5, 24), torch.randn(1, 16))
    expected = F.layer_norm(tr.pos_embed, (32,), tr.norm.weight, tr.norm.bias, eps=tr.config.eps)
    torch.testing.assert_close(out[0], expected.permute(0, 3, 1, 2))


def test_adaln_zero_init_ignores_camera_and_nonzero_uses_it():
    torch.manual_seed(0)
    tr = _transformer()
    tokens = torch.randn(1, 5, 24)
    cam_a, cam_b = torch.randn(1, 16), torch.randn(1, 16)
    # Zero-initialised modulation: training starts as plain LayerNorm, so the camera has no effect.
    torch.testing.assert_close(tr(tokens, cam_a), tr(tokens, cam_b))
    with torch.no_grad():
        for name, p in tr.named_parameters():
            if ".mod." in name:
                p.normal_(0.0, 0.1)
    assert (tr(tokens, cam_a) - tr(tokens, cam_b)).abs().max() > 1e-3


def test_image_tokens_matter():
    torch.manual_seed(0)
    tr = _transformer()
    cam = torch.randn(1, 16)
    assert (tr(torch.randn(1, 5, 24), cam) - tr(torch.randn(1, 5, 24), cam)).abs().max() > 1e-3


def test_matmul_flops_counts_something_sensible():
    tr = _transformer()
    # Dominant terms for tiny sizes: L=48, D=32; must at least count the self-attention qkv and MLP.
    assert tr.matmul_flops(2, 5) > 2 * 2 * 2 * (48 * 32 * 96 + 2 * 48 * 32 * 64)


def test_upsampler_is_a_stride_2_deconv_per_plane():
    torch.manual_seed(0)
    up = TriplaneUpsamplerConfig(in_dim=8, out_dim=5).setup()
    planes = torch.randn(2, 3, 8, 4, 4)
    out = up(planes)
    assert out.shape == (2, 3, 5, 8, 8)
    for p in range(3):  # same kernel on each plane, no mixing between planes
        torch.testing.assert_close(out[:, p], up.deconv(planes[:, p]))


def test_upsampler_scale_4_maps_each_token_to_its_own_4x4_block():
    """Known answer for `scale`: a token of ones at (row 1, column 2) of a 4x4 plane, all else zero, changes only
    texels [4:8, 8:12] of the 16x16 output, by the kernel itself."""
    torch.manual_seed(0)
    up = TriplaneUpsamplerConfig(in_dim=3, out_dim=2, scale=4).setup()
    planes = torch.zeros(1, 3, 3, 4, 4)
    planes[0, :, :, 1, 2] = 1.0
    with torch.no_grad():
        out = up(planes) - up.deconv.bias.view(1, 1, 2, 1, 1)
    assert out.shape == (1, 3, 2, 16, 16)
    expected = up.deconv.weight.detach().sum(0)  # [out, 4, 4]: the kernel summed over the token's channels
    for p in range(3):
        torch.testing.assert_close(out[0, p, :, 4:8, 8:12], expected)
        outside = out[0, p].clone()
        outside[:, 4:8, 8:12] = 0.0
        assert outside.abs().max() == 0.0


def _patch_coordinate_tokens(g: int) -> torch.Tensor:
    """A CLS token, then g x g patch tokens (raster order) whose 2 channels are the patch centre's normalised image
    coordinates (u to the right, v down, both in [-1, 1])."""
    centres = (torch.arange(g) + 0.5) / g * 2 - 1
    v, u = torch.meshgrid(centres, centres, indexing="ij")
    return torch.cat([torch.zeros(1, 2), torch.stack([u, v], dim=-1).reshape(g * g, 2)])[None]


def test_image_lift_puts_each_patch_where_the_canonical_camera_sees_it():
    """Known answer: with an identity projection, the XZ plane at a point holds the image coordinates where the
    canonical source camera (distance 2, focal 0.75) sees it; XY keeps u and YZ keeps v (the other averaged out)."""
    from lrm_nerfstudio.cameras import canonical_c2w
    from lrm_nerfstudio.model.triplane_field import sample_triplanes

    tr = _transformer(triplane_low_res=8, inner_dim=2, num_heads=1, cond_dim=2, image_lift=True)
    with torch.no_grad():
        tr.lift.weight.copy_(torch.eye(2))
        tr.lift.bias.zero_()
    planes = tr.lift_image(_patch_coordinate_tokens(8)).permute(0, 1, 4, 2, 3)  # [1, 3, C, n, n]

    torch.manual_seed(0)
    xz = torch.rand(50, 2) * 1.6 - 0.8
    points = torch.stack([xz[:, 0], torch.zeros(50), xz[:, 1]], dim=-1)  # on the plane y = 0 through the origin
    c2w = torch.from_numpy(canonical_c2w()).float()
    cam = (points - c2w[:, 3]) @ c2w[:, :3]  # world -> OpenGL camera (looks down -z)
    u = 2 * 0.75 * cam[:, 0] / -cam[:, 2]
    v = -2 * 0.75 * cam[:, 1] / -cam[:, 2]

    feats = sample_triplanes(points[None], planes)[0]  # [P, 3 planes, 2]
    torch.testing.assert_close(feats[:, 1], torch.stack([u, v], dim=-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(feats[:, 0], torch.stack([u, torch.zeros(50)], dim=-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(feats[:, 2], torch.stack([torch.zeros(50), v], dim=-1), atol=1e-5, rtol=0)


def test_volume_lift_places_each_patch_at_its_depth_slice_in_perspective():
    """Known answer: identity features and an occupancy that is 1 in depth slice j alone (y = -0.375) put each
    patch's image coordinates in that slice only, where the canonical camera sees the voxel (perspective: at this
    depth the box fills more of the image than at y = 0); XY holds them in row j, YZ in column j, XZ over all
    rows (1/n of them: one slice of n occupied), each a mean over the axis it drops."""
    from lrm_nerfstudio.cameras import canonical_c2w

    n, j = 8, 2
    tr = _transformer(triplane_low_res=n, inner_dim=2, num_heads=1, cond_dim=2, image_lift=True, lift_volume=True)
    with torch.no_grad():
        tr.lift.weight.copy_(torch.eye(2))
        tr.lift.bias.zero_()
        tr.lift_occupancy.weight.zero_()
        tr.lift_occupancy.bias.fill_(-40.0)
        tr.lift_occupancy.bias[j] = 40.0
    planes = tr.lift_image(_patch_coordinate_tokens(8))[0]  # [3, n, n, C]

    c = (torch.arange(n) + 0.5) / n * 2 - 1
    zz, xx = torch.meshgrid(c, c, indexing="ij")
    points = torch.stack([xx, torch.full_like(xx, float(c[j])), zz], dim=-1).reshape(-1, 3)  # slice j, [z, x]
    c2w = torch.from_numpy(canonical_c2w()).float()
    cam = (points - c2w[:, 3]) @ c2w[:, :3]
    uv = torch.stack([2 * 0.75 * cam[:, 0] / -cam[:, 2], -2 * 0.75 * cam[:, 1] / -cam[:, 2]], dim=-1).view(n, n, 2)
    assert uv[..., 0].abs().max() > 0.8  # beyond the 0.75 of y = 0: perspective, and still inside the patch grid

    torch.testing.assert_close(planes[1], uv / n, atol=1e-5, rtol=0)  # XZ [z, x]
    xy = torch.zeros(n, n, 2)
    xy[j, :, 0] = uv[0, :, 0]  # every z of slice j occupied: u does not depend on z, v averages to 0
    torch.testing.assert_close(planes[0], xy, atol=1e-5, rtol=0)
    yz = torch.zeros(n, n, 2)
    yz[:, j, 1] = uv[:, 0, 1]
    torch.testing.assert_close(planes[2], yz, atol=1e-5, rtol=0)


def test_volume_lift_learns_its_occupancy_and_needs_the_image_lift():
    torch.manual_seed(0)
    tr = _transformer(image_lift=True, lift_volume=True)
    tr(torch.randn(2, 17, 24), torch.randn(2, 16)).square().sum().backward()
    assert tr.lift_occupancy.weight.grad.abs().max() > 0
    with pytest.raises(ValueError, match="lift_volume needs image_lift"):
        _transformer(lift_volume=True)


def test_image_lift_changes_the_tokens_and_needs_a_square_grid():
    torch.manual_seed(0)
    plain, lifted = _transformer(), _transformer(image_lift=True)
    lifted.load_state_dict(plain.state_dict(), strict=False)
    tokens, cam = torch.randn(1, 17, 24), torch.randn(1, 16)
    assert (plain(tokens, cam) - lifted(tokens, cam)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="square grid of patch tokens, got 6 tokens"):
        lifted(torch.randn(1, 6, 24), cam)
