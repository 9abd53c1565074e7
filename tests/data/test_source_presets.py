"""The model's processor is its input contract: the released models' presets, and one preparation of a source image
for training, evaluation, `lrm-reconstruct` and viewer uploads."""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from make_fixture import write_dataset
from PIL import Image

from lrm_nerfstudio.convert import openlrm, triposr
from lrm_nerfstudio.data.image_preprocess import preprocess_image, preprocess_image_bytes
from lrm_nerfstudio.data.lrm_datamanager import LRMDataManagerConfig
from lrm_nerfstudio.model.processor import ProcessorConfig

TRIPOSR = ProcessorConfig(
    resolution=512, background=(0.5, 0.5, 0.5), resize="bilinear_antialias", foreground_ratio=0.85
)
OPENLRM_BASE = ProcessorConfig(
    resolution=336, background=(1.0, 1.0, 1.0), resize="bicubic_align_corners", foreground_ratio=0.8
)


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("ds"), n_train=2, n_val=1, n_test=1, n_views=3, width=64)


def _dm(data: Path, processor: ProcessorConfig, test_mode: str = "val"):
    cfg = {"objects_per_batch": 2, "target_views_per_object": 2, "patch_size": 16, "render_resolution_range": (32, 64)}
    cfg.update({"num_workers": 0, "eval_resolution": 32, "background": "white", "processor": processor})
    return LRMDataManagerConfig(data=data, **cfg).setup(test_mode=test_mode)


def test_released_presets_are_processor_configs_with_their_known_values():
    from lrm_nerfstudio.lrm_config import lrm_openlrm_method, lrm_triposr_method

    assert triposr.processor(triposr.RELEASED_CONFIG) == TRIPOSR
    assert openlrm.processor(openlrm.RELEASED_CONFIGS["base"]) == OPENLRM_BASE
    assert openlrm.processor(openlrm.RELEASED_CONFIGS["small"]).resolution == 224
    assert openlrm.processor(openlrm.RELEASED_CONFIGS["large"]).resolution == 448
    for method, want in ((lrm_triposr_method, TRIPOSR), (lrm_openlrm_method, OPENLRM_BASE)):
        processor = method.config.pipeline.model.processor  # the model config carries it (and its weights file)
        assert isinstance(processor, ProcessorConfig) and processor == want


def test_sources_follow_the_processor_background_and_resize(ds: Path):
    grey = ProcessorConfig(resolution=48, background=(0.5, 0.5, 0.5))
    _, batch = _dm(ds, grey).next_train(0)
    assert torch.allclose(batch["source_images"][:, :, 0, 0], torch.tensor(0.5))  # sources on grey...
    off = batch["alpha"][:, 0] == 0
    assert torch.allclose(batch["image"][off], torch.tensor(1.0))  # ...targets keep the run's background

    dm = _dm(ds, ProcessorConfig(resolution=48, resize="bicubic_align_corners"))
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


class _Prepared(Exception):
    """Raised where lrm-reconstruct hands the prepared image to the model."""


def _centred_photo() -> np.ndarray:
    """64² RGBA, a textured 48² object in the middle: recentring at foreground ratio 0.75 keeps it as it is, so a
    photo of it and a dataset view of it must give the same source image."""
    rgba = np.zeros((64, 64, 4), np.uint8)
    ys, xs = np.mgrid[0:48, 0:48]
    rgba[8:56, 8:56, 0] = 40 + 4 * xs
    rgba[8:56, 8:56, 1] = 230 - 3 * ys
    rgba[8:56, 8:56, 2] = (xs * ys) % 200
    rgba[8:56, 8:56, 3] = 255
    rgba[20:30, 20:30, 3] = 128  # a half-transparent patch: compositing must agree too
    return rgba


@pytest.mark.parametrize(
    "processor",
    [
        ProcessorConfig(resolution=24, background=(0.5, 0.5, 0.5), resize="bilinear_antialias", foreground_ratio=0.75),
        ProcessorConfig(
            resolution=24, background=(1.0, 1.0, 1.0), resize="bicubic_align_corners", foreground_ratio=0.75
        ),
    ],
    ids=["triposr-like", "openlrm-like"],
)
def test_training_eval_reconstruct_and_upload_prepare_one_image_identically(
    tmp_path: Path, monkeypatch, processor: ProcessorConfig
):
    from lrm_nerfstudio import reconstruction as reconstruct
    from lrm_nerfstudio.lrm_config import lrm_tiny_method
    from lrm_nerfstudio.methods import LoadedModel
    from lrm_nerfstudio.model.build import new_model
    from lrm_nerfstudio.scripts import eval as eval_script

    photo = tmp_path / "photo.png"
    Image.fromarray(_centred_photo(), "RGBA").save(photo)
    data = write_dataset(tmp_path / "ds", n_train=1, n_val=1, n_test=1, n_views=2, width=64)
    for view0 in data.glob("*/*/000.png"):  # every object's source view is the photo
        Image.fromarray(_centred_photo(), "RGBA").save(view0)

    config = deepcopy(lrm_tiny_method.config)
    config.pipeline.model.processor = processor
    config.pipeline.datamanager.num_workers = 0
    loaded = LoadedModel(config, new_model(config.pipeline.model), 1, None, tmp_path / "tiny.safetensors")
    white = np.ones(3, np.float32)

    # training: a pipeline gives its datamanager the model's processor
    dm = _dm(data, processor)
    oid = dm.dataparser.object_ids("train")[0]
    training, _ = dm.objects.source(dm.dataparser.load_object(oid), 0, white)
    # evaluation (lrm-eval): the run's datamanager on the data, with the model's processor
    eval_dm, _ = eval_script.open_dataset(loaded, eval_script.EvalConfig(data=data, split="train"))
    evaluation, _ = eval_dm.objects.source(eval_dm.dataparser.load_object(oid), 0, white)

    # lrm-reconstruct: the photo, prepared before the model runs
    seen = {}

    def capture(_loaded, image, *args, **kwargs):
        seen["image"] = image
        raise _Prepared

    monkeypatch.setattr(reconstruct, "reconstruct_source", capture)
    ckpt = tmp_path / "run" / "step-000000001.ckpt"
    with pytest.raises(_Prepared):  # stops before the model runs
        reconstruct.reconstruct_file(loaded, photo, tmp_path / "out", reconstruct.OutputOptions(), ckpt)
    # viewer upload: checked in memory, then shown through the datamanager's photo path
    upload = preprocess_image_bytes(photo.read_bytes(), "photo.png", processor=loaded.model.config.processor).image
    shown, _, _ = dm.get_display_source(str(photo))

    assert training.shape == (3, 24, 24)
    assert float((training - processor.background[0]).abs().amax()) > 0.1  # an object, not just background
    for name, image in (("eval", evaluation), ("reconstruct", seen["image"]), ("upload", upload), ("viewer", shown)):
        torch.testing.assert_close(image.float(), training, atol=1e-6, rtol=0, msg=f"{name} differs from training")
