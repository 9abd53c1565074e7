"""Encoder -> camera embedder -> transformer -> upsampler -> field: every part receives gradients."""

import torch
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.model_components.ray_samplers import UniformSampler

from lrm_nerfstudio.cameras import canonical_source_camera
from lrm_nerfstudio.model.camera_embedder import CameraEmbedderConfig
from lrm_nerfstudio.model.encoder import ImageEncoderConfig
from lrm_nerfstudio.model.triplane_field import TriplaneFieldConfig
from lrm_nerfstudio.model.triplane_transformer import TriplaneTransformerConfig
from lrm_nerfstudio.model.upsampler import TriplaneUpsamplerConfig


def _chain():
    enc = ImageEncoderConfig(image_size=32, patch_size=8, hidden_size=32, num_layers=1, num_heads=2).setup()
    cam = CameraEmbedderConfig(embed_dim=16).setup()
    tr = TriplaneTransformerConfig(
        triplane_low_res=4, inner_dim=32, num_layers=2, num_heads=4, cond_dim=enc.out_dim, mod_dim=cam.out_dim
    ).setup()
    up = TriplaneUpsamplerConfig(in_dim=tr.out_dim, out_dim=8).setup()
    field = TriplaneFieldConfig(triplane_dim=up.out_dim, density_bias=0.0).setup()
    return enc, cam, tr, up, field


def _loss(enc, cam, tr, up, field, b=2):
    images = torch.rand(b, 3, 32, 32)
    cameras = canonical_source_camera().expand(b, 16) + 0.1 * torch.randn(b, 16)
    triplanes = up(tr(enc(images), cam(cameras)))
    n = 4 * b
    origins = torch.randn(n, 3) * 0.3 + torch.tensor([0.0, -2.0, 0.0])
    bundle = RayBundle(
        origins=origins,
        directions=torch.tensor([[0.0, 1.0, 0.0]]).expand(n, 3),
        pixel_area=torch.ones(n, 1),
        nears=torch.full((n, 1), 0.5),
        fars=torch.full((n, 1), 3.5),
    )
    samples = UniformSampler(num_samples=8)(bundle)
    out = field(samples, triplanes, torch.arange(b).repeat_interleave(4).view(n, 1))
    weights = samples.get_weights(out[FieldHeadNames.DENSITY])
    rgb = (weights * out[FieldHeadNames.RGB]).sum(-2)
    return ((rgb - 0.5) ** 2).mean()


def _nonzero(p):
    return p.grad is not None and p.grad.abs().sum() > 0


def test_gradients_reach_every_part():
    torch.manual_seed(0)
    enc, cam, tr, up, field = _chain()
    with torch.no_grad():  # zero-initialised modulation would block the camera path at step 0
        for name, p in tr.named_parameters():
            if ".mod." in name:
                p.normal_(0.0, 0.05)
    _loss(enc, cam, tr, up, field).backward()
    assert all(_nonzero(p) for p in enc.parameters()), [n for n, p in enc.named_parameters() if not _nonzero(p)]
    assert _nonzero(cam.mlp[0].weight)
    assert _nonzero(tr.pos_embed)
    assert _nonzero(tr.layers[0].cross_kv.weight)
    assert _nonzero(up.deconv.weight)
    assert all(_nonzero(p) for p in field.mlp.parameters())


def test_zero_init_modulation_still_learns():
    """At zero init the camera embedder gets no gradient yet, but the modulation linears do, so it can start."""
    torch.manual_seed(0)
    enc, cam, tr, up, field = _chain()
    _loss(enc, cam, tr, up, field).backward()
    assert _nonzero(tr.layers[0].norm_self.mod[1].weight)
    assert _nonzero(tr.pos_embed)
