"""LRMPipeline: the non-finite-loss guard, held-out evaluation, and learning on one object."""

import pytest
import torch
from conftest import tiny_trainer_config

from lrm_nerfstudio.generate.generate import GenerateConfig
from lrm_nerfstudio.generate.generate import main as generate
from lrm_nerfstudio.lrm_pipeline import NonFiniteLossError


def test_non_finite_loss_stops_before_the_step(procedural_dataset):
    pipeline = tiny_trainer_config(procedural_dataset).pipeline.setup(device="cpu", test_mode="val")
    with torch.no_grad():
        pipeline.model.field.mlp[0].weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"Non-finite training loss at step 3: .*rgb_loss.*checkpoint"):
        pipeline.get_train_loss_dict(3)


def test_average_eval_metrics_against_background_baseline(procedural_dataset):
    pipeline = tiny_trainer_config(procedural_dataset).pipeline.setup(device="cpu", test_mode="val")
    metrics = pipeline.get_average_eval_image_metrics(get_std=True)
    assert metrics["num_objects"] == 1 and metrics["num_views"] >= 1  # the one test object
    for key in ("psnr", "ssim", "background_psnr", "psnr_std"):
        assert torch.isfinite(torch.tensor(metrics[key])), key
    assert "lpips" not in metrics  # LPIPS is off in the tiny test config
    assert 0.0 <= metrics["mask_iou"] < 1.0  # an untrained model's empty box misses the object's silhouette
    _, images = pipeline.get_eval_image_metrics_and_images(0)
    assert images["img"].shape[1] == 2 * images["img"].shape[0]  # ground truth | prediction


def test_overfits_one_object(tmp_path):
    """Seeded: the colour loss on a single object falls by a large factor in a fixed number of steps."""
    data = tmp_path / "one"
    generate(GenerateConfig(output=data, num_objects=1, num_views=8, resolution=64, seed=3, workers=1))
    torch.manual_seed(0)
    config = tiny_trainer_config(data)
    config.pipeline.datamanager.objects_per_batch = 1
    config.pipeline.datamanager.target_views_per_object = 4
    pipeline = config.pipeline.setup(device="cpu", test_mode="val")
    params = list(pipeline.model.parameters())
    # lrm-tiny's own decoder rate (1e-3). At 3e-3 the image lift's projection overshoots: 1.9x instead of 3.6x.
    optimizer = torch.optim.Adam(params, lr=config.optimizers["decoder"]["optimizer"].lr)
    losses = []
    for step in range(150):
        _, loss_dict, _ = pipeline.get_train_loss_dict(step)
        loss = sum(loss_dict.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss_dict["rgb_loss"]))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    print(f"rgb loss {first:.4f} -> {last:.4f}")
    # The trajectory is chaotic in the samplers' jitter: with step 0's jitter drawn before / after the batch is
    # fetched (training/determinism.py) it fell 4.6x / 3.7x (lr 3e-3, before the image lift); with the lift at lr
    # 1e-3 it falls 3.6x, and 3.5x with lrm-tiny's density bias -4 (an empty box at the start). 3x still fails a
    # model that does not learn.
    assert last < first / 3, f"rgb loss only fell from {first:.4f} to {last:.4f}"
