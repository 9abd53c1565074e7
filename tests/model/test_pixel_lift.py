"""PixelLift: the source image lifted along the canonical camera's rays into the triplane."""

import pytest
import torch
from conftest import tiny_trainer_config

from lrm_nerfstudio.model.pixel_lift import PixelLiftConfig


def _lift(n: int = 8, c: int = 3, cond: int = 4):
    return PixelLiftConfig(enabled=True, cond_dim=cond, out_dim=c, resolution=n).setup()


def test_pixel_lift_puts_each_pixel_at_its_depth_slice():
    """Known answer: identity pixel features, no patch features, occupancy 1 in depth slice j alone. An image red
    on its left half and blue on its right lands in slice j only: XY row j and XZ hold red for x < 0 and blue for
    x > 0 (XZ as 1/n of it: one slice of n), YZ column j their mean; every other XY row and YZ column is empty."""
    n, j = 8, 3
    lift = _lift(n)
    with torch.no_grad():
        lift.pixel.weight.copy_(torch.eye(3))
        lift.pixel.bias.zero_()
        lift.pixel_occupancy.weight.zero_()
        lift.pixel_occupancy.bias.zero_()
        lift.patch.weight.zero_()
        lift.patch.bias.fill_(-40.0)
        lift.patch.bias[:3] = 0.0  # no patch features
        lift.patch.bias[3 + j] = 40.0
    image = torch.zeros(1, 3, 64, 64)
    image[0, 0, :, :32] = 1.0  # red left
    image[0, 2, :, 32:] = 1.0  # blue right
    planes = lift(image, torch.zeros(1, 1 + 16, 4))[0]  # [3, C, n, n]
    red, blue = torch.tensor([1.0, -1.0, -1.0]), torch.tensor([-1.0, -1.0, 1.0])  # pixels in [-1, 1]
    left, right = slice(0, n // 2 - 1), slice(n // 2 + 1, n)  # clear of the blurred seam
    xy, xz, yz = planes[0], planes[1], planes[2]
    torch.testing.assert_close(xy[:, j, left], red[:, None].expand(3, n // 2 - 1), atol=1e-4, rtol=0)
    torch.testing.assert_close(xy[:, j, right], blue[:, None].expand(3, n // 2 - 1), atol=1e-4, rtol=0)
    torch.testing.assert_close(xz[:, :, left], red[:, None, None].expand(3, n, n // 2 - 1) / n, atol=1e-4, rtol=0)
    torch.testing.assert_close(yz[:, :, j], ((red + blue) / 2)[:, None].expand(3, n), atol=1e-4, rtol=0)
    others = [k for k in range(n) if k != j]
    assert xy[:, others].abs().max() < 1e-6 and yz[:, :, others].abs().max() < 1e-6


def test_pixel_lift_needs_a_square_token_grid():
    with pytest.raises(ValueError, match="square grid of patch tokens, got 7 tokens"):
        _lift()(torch.rand(1, 3, 64, 64), torch.zeros(1, 7, 4))


def test_pixel_lift_in_the_model_is_trained_and_only_there_when_enabled(procedural_dataset):
    torch.manual_seed(0)
    plain = tiny_trainer_config(procedural_dataset).pipeline.setup(device="cpu", test_mode="val").model
    assert plain.pixel_lift is None and not any(k.startswith("pixel_lift.") for k in plain.state_dict())

    config = tiny_trainer_config(procedural_dataset)
    config.pipeline.model.pixel_lift.enabled = True
    pipeline = config.pipeline.setup(device="cpu", test_mode="val")
    model = pipeline.model
    assert model.pixel_lift.config.resolution == 16 and model.pixel_lift.config.out_dim == 8  # follows the planes
    ray_bundle, batch = pipeline.datamanager.next_train(0)
    outputs = model(ray_bundle, batch["source_images"], batch["source_cameras"])
    sum(model.get_loss_dict(outputs, batch).values()).backward()
    for name, p in model.pixel_lift.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches pixel_lift.{name}"
    decoder = {id(p) for p in model.get_param_groups()["decoder"]}
    assert all(id(p) in decoder for p in model.pixel_lift.parameters())
