"""TriplaneField: sampling against a plain reference, object grouping, a known-answer sphere render, normals."""

import math

import pytest
import torch
from nerfstudio.cameras.rays import Frustums, RayBundle, RaySamples
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.model_components.ray_samplers import UniformSampler
from nerfstudio.model_components.renderers import AccumulationRenderer, DepthRenderer, RGBRenderer
from torch import nn

from lrm_nerfstudio.model.triplane_field import TriplaneFieldConfig, sample_triplanes


# ----------------------------------------------------------------------------------------------- reference
def bilinear_reference(plane: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain bilinear lookup of plane [C, H, W] at grid coords u (width) and v (height) in [-1, 1].

    align_corners=False: texel i covers [-1 + 2i/W, -1 + 2(i+1)/W] and its centre is at index i; zeros outside.
    """
    c, h, w = plane.shape
    x = ((u + 1) * w - 1) / 2
    y = ((v + 1) * h - 1) / 2
    x0, y0 = torch.floor(x), torch.floor(y)
    out = torch.zeros(c, u.shape[0], dtype=plane.dtype)
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            wgt = (1 - (x - xi).abs()) * (1 - (y - yi).abs())
            valid = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            xc = xi.clamp(0, w - 1).long()
            yc = yi.clamp(0, h - 1).long()
            out = out + plane[:, yc, xc] * (wgt * valid)
    return out.T  # [P, C]


def test_sample_triplanes_matches_reference_forward_and_grad():
    torch.manual_seed(0)
    planes = torch.randn(2, 3, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    points = (torch.rand(2, 50, 3, dtype=torch.float64) * 2.4 - 1.2).requires_grad_(True)  # some outside the box
    ours = sample_triplanes(points, planes)  # [B, P, 3, C]
    ref = torch.stack(
        [
            torch.stack(
                [
                    bilinear_reference(planes[b, 0], points[b, :, 0], points[b, :, 1]),  # XY by (x, y)
                    bilinear_reference(planes[b, 1], points[b, :, 0], points[b, :, 2]),  # XZ by (x, z)
                    bilinear_reference(planes[b, 2], points[b, :, 1], points[b, :, 2]),  # YZ by (y, z)
                ],
                dim=1,
            )
            for b in range(2)
        ]
    )
    torch.testing.assert_close(ours, ref)
    weights = torch.randn_like(ref)
    g_ours = torch.autograd.grad((ours * weights).sum(), [planes, points])
    g_ref = torch.autograd.grad((ref * weights).sum(), [planes, points])
    torch.testing.assert_close(g_ours[0], g_ref[0])
    torch.testing.assert_close(g_ours[1], g_ref[1])


# ----------------------------------------------------------------------------------------------- helpers
def ray_bundle(origins: torch.Tensor, direction=(0.0, 1.0, 0.0), near=0.5, far=3.5) -> RayBundle:
    n = origins.shape[0]
    d = torch.tensor(direction).expand(n, 3)
    return RayBundle(
        origins=origins,
        directions=d / d.norm(dim=-1, keepdim=True),
        pixel_area=torch.ones(n, 1),
        nears=torch.full((n, 1), near),
        fars=torch.full((n, 1), far),
    )


def point_samples(points: torch.Tensor) -> RaySamples:
    """Ray samples shaped [N, 1] located exactly at `points` [N, 3]."""
    zeros = torch.zeros_like(points[..., :1])
    frustums = Frustums(
        origins=points[:, None],
        directions=torch.ones_like(points)[:, None],
        starts=zeros[:, None],
        ends=zeros[:, None],
        pixel_area=torch.ones_like(zeros)[:, None],
    )
    return RaySamples(frustums=frustums)


def coordinate_triplane(res: int = 64) -> torch.Tensor:
    """A triplane whose features are the coordinates: concat aggregation gives [x, y, x, z, y, z]."""
    c = (2 * torch.arange(res, dtype=torch.float32) + 1) / res - 1  # texel centres (align_corners=False)
    width, height = c.view(1, res).expand(res, res), c.view(res, 1).expand(res, res)
    plane = torch.stack([width, height])  # channel 0 = width coordinate, channel 1 = height coordinate
    return plane.expand(1, 3, 2, res, res).clone()


class SphereMLP(nn.Module):
    """Stands in for the field's MLP: constant density `sigma` inside a sphere, colour `rgb` everywhere."""

    def __init__(self, centre, radius, sigma, bias, rgb=(0.2, 0.6, 0.9), smooth=False):
        super().__init__()
        self.centre, self.radius, self.sigma, self.bias, self.smooth = torch.tensor(centre), radius, sigma, bias, smooth
        self.rgb_logit = torch.logit(torch.tensor(rgb))

    def forward(self, f):
        xyz = torch.stack([f[..., 0], f[..., 4], f[..., 5]], dim=-1)  # x from XY, y and z from YZ
        r2 = ((xyz - self.centre) ** 2).sum(-1, keepdim=True)
        if self.smooth:  # density falls off outward: normals must point outward
            raw = 2.0 - 4.0 * r2
        else:
            inside = math.log(self.sigma) - self.bias
            raw = torch.where(r2 < self.radius**2, torch.full_like(r2, inside), torch.full_like(r2, -30.0))
        return torch.cat([raw, self.rgb_logit.expand(*raw.shape[:-1], 3)], dim=-1)


# ----------------------------------------------------------------------------------------------- field tests
def _field(**kw):
    return TriplaneFieldConfig(**{"triplane_dim": 4, **kw}).setup()


@pytest.mark.parametrize("aggregation", ["concat", "sum"])
@pytest.mark.parametrize("activation", ["trunc_exp", "softplus"])
def test_field_shapes_finite_and_gradients(aggregation, activation):
    torch.manual_seed(0)
    field = _field(aggregation=aggregation, density_activation=activation)
    planes = torch.randn(2, 3, 4, 8, 8, requires_grad=True)
    rb = ray_bundle(torch.randn(6, 3) * 0.2 + torch.tensor([0.0, -2.0, 0.0]))
    samples = UniformSampler(num_samples=16)(rb)
    index = torch.tensor([0, 0, 0, 1, 1, 1]).view(6, 1)
    out = field(samples, planes, index)
    assert out[FieldHeadNames.DENSITY].shape == (6, 16, 1)
    assert out[FieldHeadNames.RGB].shape == (6, 16, 3)
    assert all(torch.isfinite(v).all() for v in out.values())
    assert (out[FieldHeadNames.DENSITY] >= 0).all()
    (out[FieldHeadNames.DENSITY].sum() + out[FieldHeadNames.RGB].sum()).backward()
    assert planes.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in field.mlp.parameters())


def test_outside_box_zero_density():
    field = _field(density_bias=5.0)
    planes = torch.randn(1, 3, 4, 8, 8)
    pts = torch.tensor([[[0.0, 0.0, 0.0], [1.2, 0.0, 0.0], [0.0, -1.01, 0.5], [0.3, 0.2, 3.0]]])
    density = field.density_at(pts, planes)
    assert density.shape == (1, 4, 1)
    assert density[0, 0, 0] > 0 and (density[0, 1:] == 0).all()
    rgb, density2 = field.rgb_density_at(pts, planes)
    assert rgb.shape == (1, 4, 3) and torch.equal(density, density2)


def test_grouped_fast_path_equals_general_path():
    torch.manual_seed(0)
    field = _field()
    planes = torch.randn(3, 3, 4, 8, 8)
    n, s = 12, 5
    samples = UniformSampler(num_samples=s)(ray_bundle(torch.randn(n, 3) * 0.3 + torch.tensor([0.0, -2.0, 0.0])))
    index = torch.arange(3).repeat_interleave(4).view(n, 1)  # object-major, equal counts: fast path
    fast = field(samples, planes, index)
    positions = samples.frustums.get_positions()
    general = field._decode_grouped(positions, planes, index.view(n))
    torch.testing.assert_close(fast[FieldHeadNames.RGB], general[1])
    # Per ray, one object at a time: the plainest possible evaluation.
    for i in range(n):
        rgb, dens = field.rgb_density_at(positions[i : i + 1], planes[index[i, 0] : index[i, 0] + 1])
        torch.testing.assert_close(fast[FieldHeadNames.RGB][i], rgb[0])
        torch.testing.assert_close(fast[FieldHeadNames.DENSITY][i], dens[0])
    # Shuffled rays and unequal counts take the general path and must agree ray by ray.
    perm = torch.randperm(n)
    shuffled = field(samples[perm], planes, index[perm])
    torch.testing.assert_close(shuffled[FieldHeadNames.DENSITY], fast[FieldHeadNames.DENSITY][perm])
    uneven = torch.tensor([0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2]).view(n, 1)
    out = field(samples, planes, uneven)
    for i in range(n):
        _, dens = field.rgb_density_at(positions[i : i + 1], planes[uneven[i, 0] : uneven[i, 0] + 1])
        torch.testing.assert_close(out[FieldHeadNames.DENSITY][i], dens[0])
    # None means all rays use object 0.
    torch.testing.assert_close(
        field(samples, planes[:1])[FieldHeadNames.DENSITY],
        field(samples, planes, torch.zeros_like(index))[FieldHeadNames.DENSITY],
    )
    with pytest.raises(ValueError):
        field(samples, planes, torch.full_like(index, 7)[perm])


def test_known_answer_sphere_render():
    """Constant density sigma in a ball of radius r: a ray through the centre has accumulation 1 - exp(-2 sigma r)."""
    sigma, radius, centre = 2.0, 0.5, (0.2, -0.1, 0.3)
    field = _field(triplane_dim=2)
    field.mlp = SphereMLP(centre, radius, sigma, field.config.density_bias)
    planes = coordinate_triplane()
    c = torch.tensor(centre)
    origins = torch.stack([c + torch.tensor([0.0, -2.0, 0.0]), c + torch.tensor([0.6, -2.0, 0.0])])  # hit, miss
    samples = UniformSampler(num_samples=1024, train_stratified=False)(ray_bundle(origins))
    out = field(samples, planes)
    weights = samples.get_weights(out[FieldHeadNames.DENSITY])
    acc = AccumulationRenderer()(weights)
    depth = DepthRenderer(method="expected")(weights, samples)
    rgb = RGBRenderer(background_color=torch.zeros(3))(out[FieldHeadNames.RGB], weights)
    expected_acc = 1 - math.exp(-sigma * 2 * radius)
    # Ray enters the ball at t0 = 2 - r; the expected depth is t0 plus the mean of a truncated exponential.
    length = 2 * radius
    mean_in = 1 / sigma - length * math.exp(-sigma * length) / (1 - math.exp(-sigma * length))
    assert acc[0, 0].item() == pytest.approx(expected_acc, abs=5e-3)
    assert depth[0, 0].item() == pytest.approx(2 - radius + mean_in, abs=1e-2)
    torch.testing.assert_close(rgb[0], expected_acc * torch.tensor([0.2, 0.6, 0.9]), atol=5e-3, rtol=0)
    assert acc[1, 0].item() < 1e-6


@pytest.mark.parametrize("grad_mode", [True, False])
def test_normals_point_outward(grad_mode):
    torch.manual_seed(0)
    centre = torch.tensor([0.1, 0.2, -0.1])
    field = _field(triplane_dim=2)
    field.mlp = SphereMLP(centre.tolist(), 0.5, 1.0, field.config.density_bias, smooth=True)
    directions = torch.nn.functional.normalize(torch.randn(64, 3), dim=-1)
    points = centre + 0.5 * directions
    with torch.set_grad_enabled(grad_mode):
        out = field(point_samples(points), coordinate_triplane(), compute_normals=True)
    normals = out[FieldHeadNames.NORMALS][:, 0]
    assert normals.shape == (64, 3)
    assert ((normals * directions).sum(-1) > 0.9).all()
    assert not normals.requires_grad
    assert out[FieldHeadNames.DENSITY].requires_grad is False or grad_mode


def test_normals_with_trained_field_under_no_grad():
    torch.manual_seed(0)
    field = _field()
    planes = torch.randn(1, 3, 4, 8, 8, requires_grad=True)
    samples = UniformSampler(num_samples=8)(ray_bundle(torch.randn(4, 3) * 0.2 + torch.tensor([0.0, -2.0, 0.0])))
    with torch.no_grad():
        out = field(samples, planes, compute_normals=True)
    n = out[FieldHeadNames.NORMALS]
    assert n.shape == (4, 8, 3) and torch.isfinite(n).all()
    torch.testing.assert_close(n.norm(dim=-1), torch.ones(4, 8))
    assert not out[FieldHeadNames.DENSITY].requires_grad


def test_inference_mlp_fast_path_equals_the_module():
    """Without autograd the MLP runs its SiLUs in place: the same values as `field.mlp`, the caller's features
    untouched; with autograd it is `field.mlp` itself, so training gradients are unchanged."""
    torch.manual_seed(0)
    field = TriplaneFieldConfig(triplane_dim=8, hidden_dim=16, num_hidden_layers=3).setup()
    feats = torch.randn(2, 50, 24)
    before = feats.clone()
    with torch.no_grad():
        fast = field.run_mlp(feats)
        reference = field.mlp(feats)
    torch.testing.assert_close(fast, reference, rtol=0, atol=0)
    torch.testing.assert_close(feats, before, rtol=0, atol=0)
    leaf = feats.clone().requires_grad_(True)
    out = field.run_mlp(leaf)
    assert out.grad_fn is not None
    torch.testing.assert_close(out, reference, rtol=0, atol=0)
    grads = torch.autograd.grad(out.sum(), [leaf, *field.mlp.parameters()])
    want = torch.autograd.grad(field.mlp(leaf).sum(), [leaf, *field.mlp.parameters()])
    for g, w in zip(grads, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


@pytest.mark.parametrize("threads", [1, 2])
def test_inference_in_chunks_equals_one_batch(monkeypatch, threads):
    """Without autograd, a CPU query goes piece by piece (on query_pool's threads when torch has two): same values."""
    from lrm_nerfstudio.model import triplane_field as tf

    torch.manual_seed(0)
    field = TriplaneFieldConfig(triplane_dim=8, hidden_dim=16, num_hidden_layers=2).setup()
    planes = torch.randn(2, 3, 8, 16, 16)
    monkeypatch.setattr(tf, "QUERY_CHUNK", 2000)  # 1000 points of each of the 2 objects a piece
    points = torch.rand(2, 3 * 1000 + 5, 3) * 2.2 - 1.1
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            rgb, density = field.rgb_density_at(points, planes)
        assert torch.get_num_threads() == threads  # the pool leaves the caller's thread count alone
    finally:
        torch.set_num_threads(before)
    rgb_ref, density_ref = field.rgb_density_at(points, planes)  # autograd on: one piece
    assert density_ref.requires_grad and not density.requires_grad
    torch.testing.assert_close(rgb, rgb_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(density, density_ref, rtol=1e-6, atol=1e-6)


def test_query_pool_threads_run_single_threaded_and_leave_others_alone():
    import threading

    from lrm_nerfstudio.model.triplane_field import query_pool

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        pool = query_pool()
        assert pool is not None and query_pool() is pool  # made once
        assert list(pool.map(lambda _: torch.get_num_threads(), range(4))) == [1, 1, 1, 1]
        assert torch.get_num_threads() == 2
        seen = []
        thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        thread.start()
        thread.join()
        assert seen == [2]  # a thread started later gets the process default, not the workers' 1
        torch.set_num_threads(1)
        assert query_pool() is None
    finally:
        torch.set_num_threads(before)


def test_query_pool_is_made_again_in_another_process(monkeypatch):
    """Threads do not survive fork: a process whose id differs from the pool's maker gets a pool of its own."""
    import os

    from lrm_nerfstudio.model import triplane_field as tf

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setattr(tf, "_POOL", tf._POOL)  # afterwards this process keeps its own pool
    try:
        parent = tf.query_pool()
        pid = os.getpid()
        monkeypatch.setattr(tf.os, "getpid", lambda: pid + 1)
        child = tf.query_pool()
        assert child is not None and child is not parent and tf.query_pool() is child
        assert list(child.map(lambda _: torch.get_num_threads(), range(2))) == [1, 1]
    finally:
        torch.set_num_threads(before)
