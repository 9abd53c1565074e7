"""LRMModel: outputs, gradients through the whole chain, the display triplane, and CPU-only autocast."""

import pytest
import torch
from conftest import tiny_trainer_config
from nerfstudio.cameras.rays import RayBundle

from lrm_nerfstudio.cameras import canonical_source_camera


@pytest.fixture()
def pipeline(procedural_dataset):
    torch.manual_seed(0)
    config = tiny_trainer_config(procedural_dataset)
    return config.pipeline.setup(device="cpu", test_mode="val")


def test_training_forward_and_gradients(pipeline):
    model = pipeline.model
    ray_bundle, batch = pipeline.datamanager.next_train(0)
    outputs = model(ray_bundle, batch["source_images"], batch["source_cameras"])
    n = len(ray_bundle)
    assert outputs["rgb"].shape == (n, 3) and outputs["accumulation"].shape == (n, 1)
    assert outputs["triplanes"].shape[:2] == (batch["source_images"].shape[0], 3)
    assert all(torch.isfinite(outputs[k]).all() for k in ("rgb", "accumulation", "depth", "expected_depth"))
    losses = model.get_loss_dict(outputs, batch)
    assert {"rgb_loss", "mask_loss", "tv_loss"} <= set(losses)
    sum(losses.values()).backward()
    for name, module in [
        ("encoder", model.encoder),
        ("transformer", model.transformer),
        ("upsampler", model.upsampler),
        ("field", model.field),
    ]:
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), f"no gradient reaches the {name}"
    assert model.transformer.pos_embed.grad.abs().sum() > 0
    groups = model.get_param_groups()
    assert set(groups) == {"encoder", "decoder"}
    assert len(groups["encoder"]) + len(groups["decoder"]) == len(list(model.parameters()))


def test_display_triplane_follows_source_and_weights(pipeline):
    model = pipeline.model
    bundle = RayBundle(
        origins=torch.tensor([[0.0, -2.0, 0.0]]),
        directions=torch.tensor([[0.0, 1.0, 0.0]]),
        pixel_area=torch.ones(1, 1),
        camera_indices=torch.zeros(1, 1, dtype=torch.long),
    )
    first = model(bundle)  # the pipeline already set the display object's source
    assert {"rgb", "accumulation", "depth", "normals"} <= set(first)
    assert 0 <= float(first["normals"].min()) and float(first["normals"].max()) <= 1
    cached = model.display_triplanes()
    assert model.display_triplanes() is cached, "re-predicted without a reason"

    with torch.no_grad():
        for p in model.field.parameters():
            p.add_(0.5)
        model.upsampler.deconv.bias.add_(1.0)
    assert model.display_triplanes() is cached, "must wait for display_refresh_steps"
    model._step += model.config.display_refresh_steps
    assert not torch.equal(model.display_triplanes(), cached), "stale triplane after the weights moved on"

    image = torch.rand(3, 32, 32)
    model.set_display_source(image, canonical_source_camera())
    expected = model.predict_triplanes(image[None], canonical_source_camera()[None])
    torch.testing.assert_close(model.display_triplanes(), expected)


def test_rgba_uses_accumulation(pipeline):
    outputs = {
        "rgb_premultiplied": torch.tensor([[0.2, 0.4, 0.0]]),
        "accumulation": torch.tensor([[0.5]]),
        "rgb": torch.tensor([[0.7, 0.9, 0.5]]),
    }
    rgba = pipeline.model.get_rgba_image(outputs)
    torch.testing.assert_close(rgba, torch.tensor([[0.4, 0.8, 0.0, 0.5]]))


def test_autocast_is_cuda_only(pipeline):
    model = pipeline.model
    assert model.config.amp_dtype == "bfloat16"
    planes = model.predict_triplanes(torch.rand(1, 3, 32, 32), canonical_source_camera()[None])
    assert planes.dtype == torch.float32
    assert not model._autocast(torch.device("cpu"))._enabled, "bf16 autocast on this CPU is very slow"


def test_lpips_module_not_in_checkpoint(pipeline):
    assert not any("perceptual" in key or "lpips" in key for key in pipeline.state_dict())


def test_initial_field_is_nearly_empty(pipeline):
    """lrm-tiny starts from an almost empty box (density bias -4), not a fog the mask loss must first erase."""
    lin = torch.linspace(-0.9, 0.9, 7)
    u, v = torch.meshgrid(lin, lin, indexing="ij")
    origins, directions = [], []
    for axis in range(3):  # 49 rays along each axis, each crossing the whole 2-unit box
        o = torch.zeros(49, 3)
        o[:, axis] = -2.0
        o[:, (axis + 1) % 3], o[:, (axis + 2) % 3] = u.flatten(), v.flatten()
        d = torch.zeros(49, 3)
        d[:, axis] = 1.0
        origins.append(o)
        directions.append(d)
    bundle = RayBundle(
        origins=torch.cat(origins),
        directions=torch.cat(directions),
        pixel_area=torch.ones(147, 1),
        camera_indices=torch.zeros(147, 1, dtype=torch.long),
    )
    with torch.no_grad():
        acc = pipeline.model(bundle)["accumulation"]  # the display object's predicted triplane
    # With the old bias (-1: density about 0.37 everywhere) these rays started about half opaque (max ~0.5).
    assert float(acc.max()) < 0.1, f"initial accumulation up to {float(acc.max()):.3f}: the box starts foggy"


def test_short_explicit_rays_get_fewer_samples_at_the_same_spacing(pipeline):
    """nerfstudio's texture rays (`ns-export poisson`) come with their own interval of about 2 % of the box."""
    model = pipeline.model
    coarse, importance = model.sampler_uniform.num_samples, model.sampler_pdf.num_samples
    one = lambda near, far: RayBundle(
        origins=torch.zeros(2, 3),
        directions=torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
        pixel_area=torch.ones(2, 1),
        camera_indices=torch.zeros(2, 1, dtype=torch.long),
        nears=torch.full((2, 1), near),
        fars=torch.tensor([[far], [far / 2]]),
    )
    assert model.samples_per_ray(one(0.0, 0.04)) == (4, 4)  # the floor: MIN_SAMPLES_PER_RAY
    across = float((model.scene_box.aabb[1] - model.scene_box.aabb[0]).min())
    half = model.samples_per_ray(one(0.0, across / 2))  # the longest ray of the chunk decides
    assert half == (max(4, -(-coarse // 2)), max(4, -(-importance // 2)))
    assert model.samples_per_ray(one(0.0, 3 * across)) == (coarse, importance)
    camera_rays = one(0.0, 0.04)
    camera_rays.nears = camera_rays.fars = None  # a camera's rays: the collider sets the box's interval
    assert model.samples_per_ray(camera_rays) == (coarse, importance)
    with torch.no_grad():
        out = model.get_outputs_for_camera_ray_bundle(one(0.0, 0.04).reshape((1, 2)))
    assert out["rgb"].shape == (1, 2, 3) and torch.isfinite(out["rgb"]).all()


class SphereField(torch.nn.Module):
    """A field with a known surface: density 50 sigmoid((0.5 - |p - c|) / 0.02), colour 0.5 + 0.5 p."""

    centre = torch.tensor([0.1, -0.05, 0.05])

    def density_at(self, points, triplanes=None):
        return 50.0 * torch.sigmoid((0.5 - (points - self.centre).norm(dim=-1, keepdim=True)) / 0.02)

    def forward(self, ray_samples, triplanes=None, object_index=None, compute_normals=False):
        from nerfstudio.field_components.field_heads import FieldHeadNames

        points = ray_samples.frustums.get_positions()
        return {FieldHeadNames.DENSITY: self.density_at(points), FieldHeadNames.RGB: 0.5 + 0.5 * points}


def test_display_rays_stop_at_the_surface_of_the_mesh_level(pipeline):
    """`ns-export`'s points: the depth is where the ray crosses the level that the project's marching cubes pick,
    the normal is the outward density gradient there, and rays that miss the surface are dropped (alpha 0)."""
    model = pipeline.model
    model.field = SphereField()
    level = model.display_surface_level()
    radius = 0.5 - 0.02 * torch.logit(torch.tensor(level / 50.0))  # where the density equals the level
    assert abs(float(radius) - 0.5) < 0.02  # the level of the steepest gradient: the sigmoid's middle
    lin = torch.linspace(-0.7, 0.7, 15)
    u, v = torch.meshgrid(lin, lin, indexing="ij")
    origins = torch.stack([torch.full_like(u, -2.0), u, v], -1).reshape(-1, 3)
    directions = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1, -0.05]]), dim=-1).expand_as(origins)
    bundle = RayBundle(origins=origins, directions=directions.contiguous(), pixel_area=torch.ones(len(origins), 1),
                       camera_indices=torch.zeros(len(origins), 1, dtype=torch.long))  # fmt: skip
    with torch.no_grad():
        out = model(bundle)
    alpha = model.get_rgba_image(out)[:, 3]
    hit = out["surface_hit"][:, 0]
    offset = origins - SphereField.centre
    along = (offset * directions).sum(-1)
    miss_distance = (offset - along[:, None] * directions).norm(dim=-1)  # closest approach to the centre
    assert bool(hit[miss_distance < radius - 0.02].all()) and not bool(hit[miss_distance > radius + 0.02].any())
    assert bool((alpha[~hit] == 0).all()) and torch.equal(alpha[hit], out["accumulation"][hit, 0])
    points = origins[hit] + directions[hit] * out["depth"][hit]
    distance = (points - SphereField.centre).norm(dim=-1)
    assert torch.allclose(distance, radius.expand_as(distance), atol=2e-3), (distance - radius).abs().max()
    front = (points - SphereField.centre) * directions[hit]  # the near side: the first crossing
    assert bool((front.sum(-1) < 0).all())
    normals = out["normals"][hit] * 2 - 1
    outward = torch.nn.functional.normalize(points - SphereField.centre, dim=-1)
    assert torch.allclose(normals, outward, atol=1e-3)
