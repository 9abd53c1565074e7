"""LPIPS loads from the torch cache or turns itself off with one clear message; TV has a known answer."""

import torch
import torchvision

from lrm_nerfstudio.model.losses import PerceptualLoss, backbone_weights_path, triplane_tv_loss


def test_lpips_off_without_cached_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    loss = PerceptualLoss("vgg")
    out = capsys.readouterr().out
    assert not loss.available
    assert "LPIPS is off" in out and "vgg16-397923af.pth" in out and str(tmp_path) in out
    x = torch.rand(2, 3, 16, 16)
    assert loss(x, x) is None


def test_lpips_disabled_is_silent(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    loss = PerceptualLoss("vgg", enabled=False)
    assert not loss.available and capsys.readouterr().out == ""


def test_lpips_loads_backbone_from_torch_cache(tmp_path, monkeypatch):
    """The real loading path, with a randomly initialised SqueezeNet standing in for the ImageNet weights."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = backbone_weights_path("squeeze")
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    standin = torchvision.models.squeezenet1_1()
    torch.save(standin.state_dict(), path)

    loss = PerceptualLoss("squeeze")
    assert loss.available
    first_conv = loss.lpips.net.slice1[0].weight
    torch.testing.assert_close(first_conv, standin.features[0].weight)

    a = torch.rand(3, 3, 8, 8, requires_grad=True)  # below 16 px: upsampled before the backbone
    b = torch.rand(3, 3, 8, 8)
    assert float(loss(b, b)) == 0.0
    value = loss(a, b)
    assert value > 0
    value.backward()
    assert a.grad is not None and a.grad.abs().sum() > 0


def test_triplane_tv_known_answer():
    ramp = torch.arange(5, dtype=torch.float32) * 0.5  # neighbours along x differ by 0.5
    planes = ramp.view(1, 1, 1, 1, 5).expand(2, 3, 4, 5, 5).clone()
    torch.testing.assert_close(triplane_tv_loss(planes), torch.tensor(0.25))
    assert float(triplane_tv_loss(torch.ones(1, 3, 2, 4, 4))) == 0.0
