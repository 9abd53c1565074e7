"""Source-image presets of imported models: TripoSR's grey background, OpenLRM's bicubic align_corners resize."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from make_fixture import write_dataset
from PIL import Image

from lrm_nerfstudio.data.image_preprocess import preprocess_image
from lrm_nerfstudio.data.lrm_datamanager import LRMDataManagerConfig


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("ds"), n_train=2, n_val=1, n_test=1, n_views=3, width=64)


def _dm(data: Path, **kwargs):
    cfg = {"objects_per_batch": 2, "target_views_per_object": 2, "patch_size": 16, "render_resolution_range": (32, 64)}
    cfg.update({"num_workers": 0, "source_resolution": 48, "eval_resolution": 32, "background": "white", **kwargs})
    return LRMDataManagerConfig(data=data, **cfg).setup(test_mode="val")


def test_source_background_and_resize_presets(ds: Path):
    _, grey = _dm(ds, source_background=(0.5, 0.5, 0.5)).next_train(0)
    assert torch.allclose(grey["source_images"][:, :, 0, 0], torch.tensor(0.5))  # sources on grey...
    off = grey["alpha"][:, 0] == 0
    assert torch.allclose(grey["image"][off], torch.tensor(1.0))  # ...targets keep the run's background

    dm = _dm(ds, source_resize="bicubic_align_corners")
    _, batch = dm.next_train(0)
    obj = dm.dataparser.load_object(batch["object_ids"][0])
    rgba = torch.from_numpy(dm.objects.load_view(obj, 0)).permute(2, 0, 1)
    rgb = rgba[:3] * rgba[3:] + (1 - rgba[3:])  # composited on white, then resized as OpenLRM does
    expected = F.interpolate(rgb[None], size=(48, 48), mode="bicubic", align_corners=True)[0].clamp(0, 1)
    torch.testing.assert_close(batch["source_images"][0], expected, atol=1e-5, rtol=0)


def test_photo_resize_bicubic_align_corners(tmp_path: Path):
    rgba = np.zeros((80, 80, 4), np.uint8)
    rgba[10:70, 8:68] = (200, 40, 90, 255)
    rgba[10:70, 8:68, 1] = np.arange(60, dtype=np.uint8)[None] * 4  # detail for the resamplers to differ on
    Image.fromarray(rgba, "RGBA").save(tmp_path / "p.png")
    bilinear = preprocess_image(tmp_path / "p.png", size=20).image
    bicubic = preprocess_image(tmp_path / "p.png", size=20, resize="bicubic_align_corners").image
    assert bicubic.shape == bilinear.shape == (3, 20, 20)
    assert float((bicubic - bilinear).abs().max()) > 1e-2  # a different resampling, not a relabel
    assert float(bicubic.min()) >= 0 and float(bicubic.max()) <= 1
