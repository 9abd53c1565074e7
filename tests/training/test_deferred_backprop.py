"""Deferred back-propagation gives the gradients of direct back-propagation, LPIPS, mask, depth and TV included."""

import pytest
import torch
import torchvision
from conftest import assert_same_grads, tiny_trainer_config

from lrm_nerfstudio.model.losses import backbone_weights_path
from lrm_nerfstudio.training.deferred import deferred_backward, render_in_chunks


@pytest.fixture()
def lpips_standin(tmp_path, monkeypatch):
    """A random SqueezeNet in a private torch cache stands in for the ImageNet LPIPS backbone."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = backbone_weights_path("squeeze")
    path.parent.mkdir(parents=True)
    torch.manual_seed(1)
    torch.save(torchvision.models.squeezenet1_1().state_dict(), path)


def make_pipeline(data, deferred: bool = False):
    torch.manual_seed(0)  # same weights for every pipeline of a test
    config = tiny_trainer_config(data)
    config.pipeline.datamanager.load_depth = True
    model = config.pipeline.model
    model.use_lpips, model.perceptual_net = True, "squeeze"
    model.depth_loss_mult, model.tv_loss_mult = 0.1, 0.05  # every loss term on, TV large enough to matter
    config.pipeline.deferred_backprop, config.pipeline.deferred_chunk_rays = deferred, 300  # chunks of 1024 rays
    pipeline = config.pipeline.setup(device="cpu", test_mode="val")
    assert pipeline.model.perceptual_loss.available
    return pipeline


def grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_deferred_equals_direct_with_stratified_jitter(procedural_dataset, lpips_standin):
    """Jitter on: the graph-free render and the re-render replay the same samples (seeded per chunk)."""
    pipeline = make_pipeline(procedural_dataset)
    model = pipeline.model
    ray_bundle, batch = pipeline.datamanager.next_train(0)
    src, cam = batch["source_images"], batch["source_cameras"]
    assert model.sampler_uniform.training and model.sampler_uniform.train_stratified

    _, deferred_losses = deferred_backward(model, ray_bundle, batch, src, cam, chunk_rays=300, seed=7)
    deferred = grads(model)
    model.zero_grad(set_to_none=True)

    triplanes = model.predict_triplanes(src, cam)  # direct: one graph over every chunk
    pieces = render_in_chunks(model, ray_bundle, triplanes, chunk_rays=300, seed=7)
    outputs = {key: torch.cat([p[key] for p in pieces]) for key in pieces[0]}
    outputs["triplanes"] = triplanes
    outputs["directions_norm"] = ray_bundle.metadata["directions_norm"]
    direct_losses = model.get_loss_dict(outputs, batch)
    sum(direct_losses.values()).backward()

    assert set(direct_losses) == {"rgb_loss", "lpips_loss", "mask_loss", "depth_loss", "tv_loss"}
    for name, value in direct_losses.items():
        torch.testing.assert_close(deferred_losses[name], value.detach(), msg=name)
    assert_same_grads(deferred, grads(model))


def test_pipeline_step_deferred_equals_direct(procedural_dataset, lpips_standin):
    """Through get_train_loss_dict + the trainer's backward: no doubled or missing gradient."""
    results = []
    for deferred in (False, True):
        pipeline = make_pipeline(procedural_dataset, deferred=deferred)
        for sampler in (pipeline.model.sampler_uniform, pipeline.model.sampler_pdf):
            sampler.train_stratified = False  # the direct path draws its jitter differently
        pipeline.model.zero_grad(set_to_none=True)
        _, loss_dict, _ = pipeline.get_train_loss_dict(5)
        sum(loss_dict.values()).backward()  # as nerfstudio's trainer does
        results.append(({k: float(v) for k, v in loss_dict.items()}, grads(pipeline.model)))
    (direct_losses, direct), (deferred_losses, deferred) = results
    assert deferred_losses == pytest.approx(direct_losses, rel=1e-5)
    assert_same_grads(deferred, direct)
