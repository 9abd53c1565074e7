"""Every inference entry point gives the triplane of `LRMModel.predict_triplanes`, pixel lift included: lrm-reconstruct,
lrm-eval, the demo's export (reconstruct_source), the viewer's upload and `from_pretrained`.

Each path runs with `predict_triplanes` recorded; the triplane a path writes or shows must be a recorded one, from a
model with the pixel lift on. A path with its own image-to-triplane code (the old `encode_decode`, which left the
pixel lift out) would record nothing, or a different triplane."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_trainer_config
from PIL import Image
from safetensors.torch import load_file

from lrm_nerfstudio.cameras import canonical_source_camera
from lrm_nerfstudio.io.weights import WeightsSource
from lrm_nerfstudio.model.build import new_model
from lrm_nerfstudio.model.lrm_model import LRMModel
from lrm_nerfstudio.pretrained import Pretrained, from_pretrained, save_pretrained

ORIGINAL = LRMModel.predict_triplanes


def _lifted(config):
    model = config.pipeline.model
    model.pixel_lift = replace(model.pixel_lift, enabled=True)
    return config


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    config = _lifted(tiny_trainer_config(Path("unused")))
    torch.manual_seed(0)
    model = new_model(config.pipeline.model)
    with torch.no_grad():  # a pixel lift that matters: its output layer starts at zero
        for p in model.pixel_lift.parameters():
            p.add_(0.05 * torch.randn_like(p))
    pretrained = Pretrained(config.pipeline.model, "lrm-tiny", WeightsSource("trained", 0, None), model.state_dict())
    return save_pretrained(tmp_path_factory.mktemp("lifted") / "lifted.safetensors", pretrained)


@pytest.fixture
def recorded(monkeypatch) -> list[tuple[LRMModel, torch.Tensor]]:
    calls: list[tuple[LRMModel, torch.Tensor]] = []

    def record(self, source_images, source_cameras, stage=None):
        out = ORIGINAL(self, source_images, source_cameras, stage)
        calls.append((self, out.detach().clone()))
        return out

    monkeypatch.setattr(LRMModel, "predict_triplanes", record)
    return calls


def _without_lift(model: LRMModel, images, cameras) -> torch.Tensor:
    lift, model.pixel_lift = model.pixel_lift, None
    try:
        with torch.no_grad():
            return ORIGINAL(model, images, cameras)
    finally:
        model.pixel_lift = lift


def _png(path: Path) -> Path:
    yy, xx = np.mgrid[:80, :80]
    rgba = np.zeros((80, 80, 4), np.uint8)
    rgba[(yy - 40) ** 2 + (xx - 36) ** 2 < 26**2] = (40, 160, 220, 255)
    Image.fromarray(rgba).save(path)
    return path


def test_from_pretrained_keeps_the_pixel_lift(weights):
    model = from_pretrained(weights, device="cpu")
    assert model.pixel_lift is not None
    images, cameras = (
        torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)),
        canonical_source_camera()[None],
    )
    with torch.no_grad():
        planes = model.predict_triplanes(images, cameras)
    assert not torch.allclose(planes, _without_lift(model, images, cameras))  # the lift changes the answer


def test_reconstruct_and_demo_export_write_predict_triplanes(weights, tmp_path, recorded):
    from lrm_nerfstudio.methods import load_model
    from lrm_nerfstudio.scripts.reconstruct import OutputOptions, ReconstructConfig, main, reconstruct_source

    options = OutputOptions(resolution=24, turntable_frames=0, formats=("ply",))
    out = tmp_path / "recon"
    assert (
        main(ReconstructConfig(images=[_png(tmp_path / "disc.png")], weights=weights, output_dir=out, output=options))
        == 0
    )
    (model, planes), *_ = recorded
    assert model.pixel_lift is not None
    assert torch.equal(load_file(out / "disc" / "triplane.safetensors")["triplane"], planes)

    recorded.clear()  # the demo's export: reconstruct_source on the pipeline's display source
    loaded = load_model(weights=weights, device="cpu")
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(3))
    reconstruct_source(loaded, image, canonical_source_camera(), "demo", tmp_path / "demo", options)
    (model, planes), *_ = recorded
    assert torch.equal(load_file(tmp_path / "demo" / "triplane.safetensors")["triplane"], planes)
    assert not torch.allclose(planes, _without_lift(model, image[None], canonical_source_camera()[None]))


def test_eval_scores_predict_triplanes(weights, procedural_dataset, tmp_path, recorded):
    from lrm_nerfstudio.scripts.eval import EvalConfig, main

    fast = {"mesh_resolution": 24, "views_per_object": 2, "num_samples": 500, "report_views": 1, "pictures": False}
    assert main(EvalConfig(weights=weights, data=procedural_dataset, output_dir=tmp_path, split="val", **fast)) == 0
    assert recorded and all(model.pixel_lift is not None for model, _ in recorded)


def test_viewer_upload_shows_predict_triplanes(procedural_dataset, recorded):
    pipeline = _lifted(tiny_trainer_config(procedural_dataset)).pipeline.setup(device="cpu", test_mode="val")
    buffer = io.BytesIO()
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[16:48, 20:44] = (220, 80, 40, 255)
    Image.fromarray(rgba).save(buffer, format="PNG")
    assert pipeline.viewer_controls.upload("cup.png", buffer.getvalue()), pipeline.viewer_controls.status
    recorded.clear()
    shown = pipeline.model.display_triplanes()
    image, camera, _ = pipeline.datamanager.display_source
    with torch.no_grad():
        expected = ORIGINAL(
            pipeline.model, image[None].to(pipeline.model.device), camera[None].to(pipeline.model.device)
        )
    assert pipeline.model.pixel_lift is not None and torch.equal(shown, expected)
