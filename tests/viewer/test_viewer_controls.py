"""The LRM viewer controls: what they list, what they switch, how they refuse bad uploads, and what they leave alone."""

import io

import numpy as np
import pytest
import torch
from conftest import tiny_trainer_config
from nerfstudio.viewer.utils import parse_object
from nerfstudio.viewer.viewer_elements import ViewerButton, ViewerCheckbox, ViewerDropdown, ViewerElement
from PIL import Image

from lrm_nerfstudio.lrm_config import lrm_method, lrm_tiny_method
from lrm_nerfstudio.model.reference import sphere_triplane
from lrm_nerfstudio.splat.refine import distillation_cameras
from lrm_nerfstudio.splat.render import gsplat_unavailable_reason
from lrm_nerfstudio.viewer_controls import LRMViewerControls, ViewerMarkdown, ViewerUpload


@pytest.fixture(scope="module")
def pipeline(procedural_dataset):
    torch.manual_seed(0)
    return tiny_trainer_config(procedural_dataset).pipeline.setup(device="cpu", test_mode="val")


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def object_png() -> bytes:
    """An RGBA disc of colour on transparency, 96 px."""
    yy, xx = np.mgrid[:96, :96]
    inside = (yy - 48) ** 2 + (xx - 40) ** 2 < 30**2
    rgba = np.zeros((96, 96, 4), np.uint8)
    rgba[inside] = (200, 60, 30, 255)
    return png_bytes(rgba)


def display_matches(pipeline, image, camera) -> None:
    """The model's display triplane is the prediction from (image, camera) under the current weights."""
    model = pipeline.model
    model.eval()
    with torch.no_grad():
        expected = model.predict_triplanes(image[None], camera[None])
        torch.testing.assert_close(model.display_triplanes(), expected)
    model.train()


def test_viewer_finds_the_controls_through_the_pipeline(pipeline):
    found = dict(parse_object(pipeline, ViewerElement, "Custom Elements"))
    controls = pipeline.viewer_controls
    assert isinstance(controls, LRMViewerControls)
    assert found["Custom Elements/viewer_controls/a_object"] is controls.a_object
    assert isinstance(controls.a_object, ViewerDropdown)
    assert isinstance(controls.b_source_image, ViewerMarkdown)
    assert isinstance(controls.c_refresh, ViewerButton)
    assert isinstance(controls.d_upload, ViewerUpload)
    assert isinstance(controls.f_splat_preview, ViewerCheckbox) and controls.f_splat_preview.default_value is False
    assert "data:image/png;base64," in controls.b_source_image.content
    assert not list(controls.parameters()) and not controls.state_dict()  # nothing added to checkpoints


def test_dropdown_lists_every_object_of_every_split(pipeline):
    objects = pipeline.datamanager.list_objects()
    expected = {f"{split}/{oid}" for split, ids in objects.items() for oid in ids}
    dropdown = pipeline.viewer_controls.a_object
    assert set(dropdown.options) == expected and len(dropdown.options) == 8
    assert {option.split("/")[0] for option in dropdown.options} == {"train", "val", "test"}
    assert dropdown.default_value == f"test/{pipeline.datamanager.display_ref}"


def test_dropdown_switches_the_display_to_that_object(pipeline):
    controls, dm = pipeline.viewer_controls, pipeline.datamanager
    train_id = dm.list_objects()["train"][2]
    before = pipeline.model.display_triplanes().clone()
    assert controls.select(f"train/{train_id}")
    assert dm.display_ref == train_id and dm.display_source[2] == train_id
    image, camera, _ = dm.get_display_source(train_id)
    display_matches(pipeline, image, camera)
    assert not torch.allclose(pipeline.model.display_triplanes(), before)
    assert train_id in controls.b_source_image.content and train_id in controls.status
    assert not controls.select("train/no-such-object") and "Unknown" in controls.status
    assert dm.display_ref == train_id


def test_refresh_repredicts_from_the_current_weights(pipeline):
    model = pipeline.model
    image, camera, _ = pipeline.datamanager.display_source
    stale = model.display_triplanes().clone()
    with torch.no_grad():
        model.upsampler.parameters().__next__().add_(0.5)  # stand-in for a training step
    pipeline.viewer_controls.refresh()
    display_matches(pipeline, image, camera)
    assert not torch.allclose(model.display_triplanes(), stale)


def test_good_upload_switches_the_display(pipeline):
    controls, dm = pipeline.viewer_controls, pipeline.datamanager
    assert controls.upload("my cup.png", object_png()), controls.status
    assert dm.display_ref.endswith("my_cup.png") and dm.display_source[2].endswith("my_cup")
    assert controls.a_object.value == controls.a_object.default_value == "image/" + dm.display_ref.split("/")[-1]
    image, camera, _ = dm.display_source
    display_matches(pipeline, image, camera)
    assert "Showing upload" in controls.status


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("notes.txt", b"this is not an image", "not an image"),
        ("empty.png", b"", "empty upload"),
        ("clear.png", png_bytes(np.zeros((64, 64, 4), np.uint8)), "fully transparent"),
        ("huge.png", png_bytes(np.zeros((4097, 4097), np.uint8)), "over the limit"),
        ("cut.png", object_png()[:200], "unreadable"),
    ],
)
def test_bad_upload_reports_and_leaves_the_display_unchanged(pipeline, name, data, message):
    controls, dm = pipeline.viewer_controls, pipeline.datamanager
    assert controls.select(controls.a_object.options[0])
    ref, triplanes = dm.display_ref, pipeline.model.display_triplanes().clone()
    assert not controls.upload(name, data)
    assert message in controls.status and name in controls.status and "rejected" in controls.status
    assert dm.display_ref == ref
    torch.testing.assert_close(pipeline.model.display_triplanes(), triplanes)


def test_display_switches_leave_training_alone(procedural_dataset):
    """Same training batches and train/eval mode whether or not the viewer switched objects in between."""
    batches = []
    for switch in (False, True):
        pipeline = tiny_trainer_config(procedural_dataset).pipeline.setup(device="cpu", test_mode="val")
        pipeline.train()
        _, first = pipeline.datamanager.next_train(0)
        if switch:
            controls = pipeline.viewer_controls
            assert controls.select(controls.a_object.options[-1])
            assert controls.upload("disc.png", object_png())
            controls.refresh()
            assert pipeline.model.training
        _, second = pipeline.datamanager.next_train(1)
        batches.append((first, second))
    for key in ("image", "source_images", "source_cameras"):
        torch.testing.assert_close(batches[0][1][key], batches[1][1][key])
    assert batches[0][1]["object_ids"] == batches[1][1]["object_ids"]


def test_test_mode_pipeline_has_the_controls(procedural_dataset):
    """ns-viewer loads the pipeline in test mode: the dropdown still lists every object."""
    config = tiny_trainer_config(procedural_dataset)
    config.pipeline.model.field.density_bias = -1.0  # a visible random fog: the export guard refuses an empty one
    pipeline = config.pipeline.setup(device="cpu", test_mode="test")
    assert len(pipeline.viewer_controls.a_object.options) == 8
    val_id = pipeline.datamanager.list_objects()["val"][0]
    assert pipeline.viewer_controls.select(f"val/{val_id}")
    _, batch = pipeline.datamanager.next_train(0)  # exporters' rays follow the display object
    assert batch["object_ids"] == [val_id]


@pytest.mark.parametrize("method", [lrm_method, lrm_tiny_method])
def test_viewer_binds_localhost(method):
    assert method.config.vis == "viewer"
    assert method.config.viewer.websocket_host == "127.0.0.1"


GSPLAT_REASON = gsplat_unavailable_reason()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_gaussian_preview_says_it_needs_cuda_and_keeps_volume_rendering(pipeline):
    controls, model = pipeline.viewer_controls, pipeline.model
    box = controls.f_splat_preview
    assert box.disabled and "Needs CUDA" in box.hint
    assert not controls.set_splat_preview(True)
    assert "No Gaussian preview" in controls.status and "CUDA" in controls.status and not model.splat_preview
    camera = distillation_cameras(1, 16)
    model.eval()
    volume = model.get_outputs_for_camera(camera)
    model.splat_preview = True  # forced on where gsplat cannot run: the volume render, not an error
    try:
        fallback = model.get_outputs_for_camera(camera)
    finally:
        model.splat_preview = False
        model.train()
    assert fallback.keys() == volume.keys()
    torch.testing.assert_close(fallback["rgb"], volume["rgb"])
    assert controls.set_splat_preview(False) and "Volume rendering" in controls.status


@pytest.mark.skipif(GSPLAT_REASON is not None, reason=str(GSPLAT_REASON))
def test_gaussian_preview_renders_the_display_triplane_with_gsplat(procedural_dataset, monkeypatch):
    """On CUDA the ticked box makes the viewer's render gsplat's: the silhouette of the display triplane's sphere."""
    pipeline = tiny_trainer_config(procedural_dataset).pipeline.setup(device="cuda", test_mode="val")
    model = pipeline.model.eval()
    field, planes = sphere_triplane(torch.tensor([0.1, -0.2, 0.15]), 0.5)
    model.field = field.cuda()
    planes = planes.cuda()
    monkeypatch.setattr(model, "display_triplanes", lambda: planes)
    camera = distillation_cameras(1, 64)
    volume = model.get_outputs_for_camera(camera)
    assert pipeline.viewer_controls.set_splat_preview(True), pipeline.viewer_controls.status
    splat = model.get_outputs_for_camera(camera)
    assert "depth" not in splat and splat["rgb"].shape == volume["rgb"].shape == (64, 64, 3)
    seen, expected = splat["accumulation"][..., 0] > 0.5, volume["accumulation"][..., 0] > 0.5
    assert (seen & expected).sum() / (seen | expected).sum() > 0.9
    gaussians = model._preview[1]
    model.get_outputs_for_camera(camera)
    assert model._preview[1] is gaussians and 0 < len(gaussians) <= model.config.preview_num_gaussians  # made once
