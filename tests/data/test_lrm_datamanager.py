"""LRMDataManager: batch layout, ray geometry, backgrounds, determinism, sharding, laziness, test mode."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from make_fixture import write_dataset, write_dataset_json, write_object
from PIL import Image

from lrm_nerfstudio.data import dataset_format
from lrm_nerfstudio.data.dataset_format import DatasetFormatError, load_rgba
from lrm_nerfstudio.data.lrm_datamanager import LRMDataManager, LRMDataManagerConfig
from lrm_nerfstudio.data.lrm_dataparser import LRMDataParserConfig
from lrm_nerfstudio.model.processor import ProcessorConfig

W = 64  # fixture image size
P = 16  # patch size in these tests


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("ds"), n_train=8, n_val=2, n_test=2, n_views=6, width=W, depth=True)


def make_dm(data: Path, test_mode: str = "val", **kwargs) -> LRMDataManager:
    cfg = {"objects_per_batch": 2, "target_views_per_object": 3, "patch_size": P, "render_resolution_range": (32, 64)}
    cfg.update({"num_workers": 0, "processor": ProcessorConfig(resolution=32), "eval_resolution": 32})
    cfg.update(kwargs)
    return LRMDataManagerConfig(data=data, **cfg).setup(test_mode=test_mode)


def test_batch_shapes(ds: Path):
    dm = make_dm(ds, load_depth=True, render_resolution_range=(W, W))  # no resize: depth edges match alpha
    rb, batch = dm.next_train(0)
    n = 2 * 3 * P * P
    assert rb.shape == (n,) and dm.get_train_rays_per_batch() == n
    assert rb.metadata["object_index"].shape == (n, 1) and rb.metadata["object_index"].dtype == torch.long
    assert torch.equal(rb.camera_indices, rb.metadata["object_index"])
    assert torch.equal(rb.metadata["object_index"][:, 0], torch.arange(2).repeat_interleave(3 * P * P))
    assert rb.metadata["background_color"].shape == (n, 3)
    # nerfstudio's directions_norm survives: the depth loss divides ray distance by it to compare with z-depth
    norm = rb.metadata["directions_norm"]
    assert norm.shape == (n, 1) and (norm >= 1 - 1e-6).all() and norm.max() > 1.001
    assert batch["image"].shape == (n, 3) and batch["alpha"].shape == (n, 1) and batch["depth"].shape == (n, 1)
    assert batch["source_images"].shape == (2, 3, 32, 32) and batch["source_cameras"].shape == (2, 16)
    assert batch["patch_hw"] == (P, P) and len(batch["object_ids"]) == 2
    assert all(oid.startswith("obj_train_") for oid in batch["object_ids"])
    # depth: 1.5 world units on the disc, 0 (no hit) off it
    d, a = batch["depth"][:, 0], batch["alpha"][:, 0]
    assert torch.allclose(d[a > 0.5], torch.tensor(1.5)) and (d[a < 0.5] == 0).all()


def _locate(patch: np.ndarray, views: list[np.ndarray]) -> tuple[int, int, int]:
    """(view, y0, x0) where `patch` is an exact crop."""
    for v, full in enumerate(views):
        win = np.lib.stride_tricks.sliding_window_view(full, patch.shape)[..., 0, :, :, :]
        err = np.abs(win - patch).max(axis=(-1, -2, -3))
        y0, x0 = np.unravel_index(np.argmin(err), err.shape)
        if err[y0, x0] < 1e-5:
            return v, int(y0), int(x0)
    raise AssertionError("patch is not a crop of any view")


def _views_on_white(obj) -> list[np.ndarray]:
    """Every view of `obj` composited on white, as the white-background batches hold them."""
    views = []
    for path in obj.image_paths:
        rgba = load_rgba(path)
        views.append(rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:]))
    return views


def test_layout_patches_are_crops_and_rays_match(ds: Path):
    """With no resizing ([64, 64] range), each [b, m] patch is a crop; its rays equal the full camera's rays."""
    dm = make_dm(ds, render_resolution_range=(W, W), background="white")
    rb, batch = dm.next_train(0)
    img = batch["image"].reshape(2, 3, P, P, 3).numpy()
    origins = rb.origins.reshape(2, 3, P, P, 3)
    dirs = rb.directions.reshape(2, 3, P, P, 3)
    for b, oid in enumerate(batch["object_ids"]):
        obj = dm.dataparser.load_object(oid)
        views = _views_on_white(obj)
        cams = dm.dataparser.object_cameras(obj)
        for m in range(3):
            v, y0, x0 = _locate(img[b, m], views)
            assert v != 0  # canonical source view is not a target
            full = cams.generate_rays(camera_indices=v)  # [H, W]
            torch.testing.assert_close(dirs[b, m], full.directions[y0 : y0 + P, x0 : x0 + P], atol=1e-5, rtol=0)
            torch.testing.assert_close(origins[b, m], full.origins[y0 : y0 + P, x0 : x0 + P], atol=1e-5, rtol=0)


def _strided_location(patch: np.ndarray, views: list[np.ndarray], stride: int) -> tuple[int, int, int]:
    """(view, y0, x0) where `patch` is every `stride`-th pixel of a view from (y0, x0)."""
    p = patch.shape[0]
    for v, full in enumerate(views):
        for y0 in range(full.shape[0] - stride * (p - 1)):
            for x0 in range(full.shape[1] - stride * (p - 1)):
                grid = full[y0 : y0 + stride * (p - 1) + 1 : stride, x0 : x0 + stride * (p - 1) + 1 : stride]
                if np.abs(grid - patch).max() < 1e-5:
                    return v, y0, x0
    raise AssertionError("patch is not a strided grid of any view")


def test_strided_patches_are_the_views_own_pixels_and_rays_match(ds: Path):
    """patch_sampling stride: each patch holds every 4th pixel of a 64^2 view, unresized, from a random offset,
    and each of its rays is the full view's ray through that pixel's centre."""
    dm = make_dm(ds, patch_sampling="stride", background="white", load_depth=True)
    rb, batch = dm.next_train(0)
    img = batch["image"].reshape(2, 3, P, P, 3).numpy()
    depth = batch["depth"].reshape(2, 3, P, P)
    dirs = rb.directions.reshape(2, 3, P, P, 3)
    stride, offsets = W // P, set()
    for b, oid in enumerate(batch["object_ids"]):
        obj = dm.dataparser.load_object(oid)
        views = _views_on_white(obj)
        cams = dm.dataparser.object_cameras(obj)
        for m in range(3):
            v, y0, x0 = _strided_location(img[b, m], views, stride)
            offsets.add((y0, x0))
            full = cams.generate_rays(camera_indices=v)  # [H, W]
            want = full.directions[y0 : y0 + stride * (P - 1) + 1 : stride, x0 : x0 + stride * (P - 1) + 1 : stride]
            torch.testing.assert_close(dirs[b, m], want, atol=1e-5, rtol=0)
            assert set(np.unique(depth[b, m].numpy()).round(4)) <= {0.0, 1.5}  # the disc's depth or no hit
    assert len(offsets) > 1  # random offsets


def test_source_as_target_supervises_the_source_view_first(ds: Path):
    dm = make_dm(ds, source_as_target=True, render_resolution_range=(W, W), background="white")
    _, batch = dm.next_train(0)
    img = batch["image"].reshape(2, 3, P, P, 3).numpy()
    for b, oid in enumerate(batch["object_ids"]):
        obj = dm.dataparser.load_object(oid)
        views = _views_on_white(obj)
        located = [_locate(img[b, m], views)[0] for m in range(3)]
        assert located[0] == 0 and 0 not in located[1:], located
    with pytest.raises(ValueError, match="source_as_target needs target_views_per_object >= 2"):
        LRMDataManagerConfig(data=ds, source_as_target=True, target_views_per_object=1)


def test_centre_ray_points_along_minus_z(ds: Path):
    dm = make_dm(ds)
    obj = dm.dataparser.load_object("obj_train_003")
    for k in range(len(obj)):
        cam, _, _ = dm.full_view(obj, k, resolution=48)
        rb = cam.generate_rays(camera_indices=0, coords=torch.tensor([[cam.cy.item(), cam.cx.item()]]))
        c2w = torch.from_numpy(obj.c2w[k])
        torch.testing.assert_close(rb.directions[0], -c2w[:, 2], atol=1e-5, rtol=0)
        torch.testing.assert_close(rb.origins[0], c2w[:, 3], atol=1e-5, rtol=0)


def test_source_camera_vector(ds: Path):
    dm = make_dm(ds)
    _, batch = dm.next_train(0)
    obj = dm.dataparser.load_object(batch["object_ids"][0])
    cam = batch["source_cameras"][0]
    torch.testing.assert_close(cam[:12], torch.from_numpy(obj.c2w[0]).reshape(12))
    torch.testing.assert_close(cam[12:], torch.tensor([0.75, 0.75, 0.5, 0.5]))


@pytest.mark.parametrize("mode", ["white", "black", "random", "random_per_step"])
def test_backgrounds(ds: Path, mode: str):
    dm = make_dm(ds, background=mode, objects_per_batch=3)
    rb, batch = dm.next_train(5)
    bg = rb.metadata["background_color"].reshape(3, -1, 3)
    img, alpha = batch["image"].reshape(3, -1, 3), batch["alpha"].reshape(3, -1)
    for b in range(3):
        assert (bg[b] == bg[b, :1]).all()  # one colour per object
        off = alpha[b] == 0
        assert off.any()
        torch.testing.assert_close(img[b][off], bg[b, :1].expand(int(off.sum()), 3))
        # the source image of the same object shares the colour (its corner is off the disc)
        torch.testing.assert_close(batch["source_images"][b, :, 0, 0], bg[b, 0], atol=1e-6, rtol=0)
    if mode == "white":
        assert (bg == 1).all()
    elif mode == "black":
        assert (bg == 0).all()
    elif mode == "random":
        assert not torch.allclose(bg[0, 0], bg[1, 0])
    else:
        assert (bg == bg[0, 0]).all()


def _batches(dm: LRMDataManager, steps) -> list:
    return [dm.next_train(s) for s in steps]


def test_seeded_determinism(ds: Path):
    a = _batches(make_dm(ds, seed=3, background="random"), range(3))
    b = _batches(make_dm(ds, seed=3, background="random"), range(3))
    c = _batches(make_dm(ds, seed=4, background="random"), range(3))
    for (ra, ba), (rb_, bb) in zip(a, b):
        assert ba["object_ids"] == bb["object_ids"]
        assert torch.equal(ba["image"], bb["image"]) and torch.equal(ra.directions, rb_.directions)
    assert any(not torch.equal(x[1]["image"], y[1]["image"]) for x, y in zip(a, c))
    # global RNG state plays no part
    torch.manual_seed(123)
    np.random.seed(123)
    d = _batches(make_dm(ds, seed=3, background="random"), range(3))
    assert all(torch.equal(x[1]["image"], y[1]["image"]) for x, y in zip(a, d))


def test_epochs_without_replacement_and_ranks_disjoint(ds: Path):
    seen = {}
    for rank in (0, 1):
        dm = make_dm(ds, world_size=2, local_rank=rank) if False else None
        cfg = LRMDataManagerConfig(
            data=ds, objects_per_batch=2, target_views_per_object=1, patch_size=P, render_resolution_range=(32, 32)
        )
        cfg.num_workers = 0
        dm = cfg.setup(test_mode="val", world_size=2, local_rank=rank)
        epoch0 = [oid for s in range(2) for oid in dm.next_train(s)[1]["object_ids"]]
        assert len(set(epoch0)) == 4  # 8 objects / 2 ranks, no repeats within the epoch
        epoch1 = [oid for s in range(2, 4) for oid in dm.next_train(s)[1]["object_ids"]]
        assert len(set(epoch1)) == 4
        seen[rank] = (set(epoch0), set(epoch1))
    for e in (0, 1):
        assert not seen[0][e] & seen[1][e]
        assert len(seen[0][e] | seen[1][e]) == 8
    assert seen[0][0] != seen[0][1]  # reshuffled per epoch


def test_resume_from_state_dict(ds: Path):
    dm = make_dm(ds, seed=7)
    _batches(dm, range(3))
    state = dm.state_dict()
    assert state["_extra_state"]["train"] == [0, 6]  # epoch 0, 3 steps x 2 objects consumed
    nxt = dm.next_train(3)
    dm2 = make_dm(ds, seed=7)
    dm2.load_state_dict(state)
    nxt2 = dm2.next_train(3)
    assert nxt[1]["object_ids"] == nxt2[1]["object_ids"]
    assert torch.equal(nxt[1]["image"], nxt2[1]["image"])


def test_workers_give_same_batches(ds: Path):
    a = _batches(make_dm(ds, num_workers=0), range(2))
    b = _batches(make_dm(ds, num_workers=1), range(2))
    for x, y in zip(a, b):
        assert x[1]["object_ids"] == y[1]["object_ids"] and torch.equal(x[1]["image"], y[1]["image"])


def test_no_image_cache(ds: Path, monkeypatch):
    opens = []
    real_open = Image.open
    monkeypatch.setattr(dataset_format.Image, "open", lambda *a, **k: opens.append(a[0]) or real_open(*a, **k))
    dm = make_dm(ds, max_display_views=4, dataparser=LRMDataParserConfig(eager_validation_max_objects=0))
    assert len(opens) <= 4 + 1  # display views (+ its source); no other object is opened at setup
    opens.clear()
    _batches(dm, range(3))
    assert len(opens) == 3 * 2 * (1 + 3)  # per step: B objects x (source + M targets), decoded on demand
    held = [k for k, v in vars(dm.objects).items() if isinstance(v, (torch.Tensor, np.ndarray, list, dict))]
    assert held == []
    assert len(dm.dataparser._cache) <= dm.dataparser.config.object_cache_size


def test_lazy_100k_listing(tmp_path: Path, monkeypatch):
    n = 100_000
    write_object(tmp_path, "real", n_views=3, width=16)
    write_dataset_json(tmp_path, {"train": [f"stub_{i:06d}" for i in range(n)], "test": ["real"]})
    reads, opens = [], []
    real_read, real_open = dataset_format.read_object, Image.open
    monkeypatch.setattr(dataset_format.Image, "open", lambda *a, **k: opens.append(a[0]) or real_open(*a, **k))
    import lrm_nerfstudio.data.lrm_dataparser as lp

    monkeypatch.setattr(lp, "read_object", lambda *a, **k: reads.append(a[0]) or real_read(*a, **k))
    dm = make_dm(tmp_path)
    assert not dm.dataparser.eager
    assert reads == [tmp_path / "real"]  # only the display object's transforms.json
    assert len(opens) <= 3 + 1
    assert len(dm.list_objects()["train"]) == n
    # a stub is met lazily: clear error naming the file
    with pytest.raises(DatasetFormatError, match=r"^" + re.escape(str(tmp_path)) + r"/stub_\d+: object folder"):
        dm.next_train(0)


def test_lazy_bad_object_error_and_skip(tmp_path: Path):
    write_dataset(tmp_path, n_train=4, n_val=0, n_test=1, n_views=4, width=32)
    bad = tmp_path / "obj_train_002" / "images" / "003.png"
    bad.write_bytes(b"garbage")
    for parser in (
        LRMDataParserConfig(eager_validation_max_objects=0, skip_bad_objects=False),
        LRMDataParserConfig(eager_validation_max_objects=0),
    ):  # 1 of 4 train objects: more than 1 % bad
        dm = make_dm(tmp_path, render_resolution_range=(32, 32), target_views_per_object=3, objects_per_batch=4,
                     dataparser=parser)  # fmt: skip
        with (
            pytest.raises(DatasetFormatError, match="^" + re.escape(str(bad)) + ": cannot decode"),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            for s in range(4):
                dm.next_train(s)
    dm = make_dm(tmp_path, render_resolution_range=(32, 32), target_views_per_object=3, objects_per_batch=4,
                 dataparser=LRMDataParserConfig(eager_validation_max_objects=0, max_bad_fraction=0.5))  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = _batches(dm, range(4))
    assert all(len(batch["object_ids"]) == 4 for _, batch in batches)
    reports = [str(w.message) for w in caught if "skipping bad object" in str(w.message)]
    assert reports == [f"skipping bad object 'obj_train_002': {bad}: " + reports[0].split(f"{bad}: ", 1)[1]]  # once
    assert dm.dataparser.tracker.bad.keys() == {"obj_train_002"}


def test_test_mode_rays_of_display_object(ds: Path):
    dm = make_dm(ds, test_mode="test")
    dm.train_pixel_sampler.num_rays_per_batch = 100  # what ns-export does
    rb, batch = dm.next_train(0)
    assert rb.shape == (100,)
    assert (rb.metadata["object_index"] == 0).all() and (rb.camera_indices == 0).all()
    assert batch["object_ids"] == ["obj_test_000"] and batch["source_images"].shape == (1, 3, 32, 32)
    # rays come from the export orbit around the display object (tests/export/test_export_rays.py)
    torch.testing.assert_close(rb.origins.norm(dim=-1), torch.full((100,), 2.0))
    assert len(dm.train_dataset) == 6 and dm.train_dataset.scene_box.aabb.abs().max() == 1
    assert dm.train_dataset[0]["image"].shape == (32, 32, 3)
    dm.set_display_object("obj_train_001")
    rb, batch = dm.next_train(1)
    assert batch["object_ids"] == ["obj_train_001"] and rb.shape == (100,)


def test_single_image_inference(tmp_path: Path):
    img = tmp_path / "photo.png"
    Image.fromarray(np.full((40, 40, 4), 200, np.uint8)).save(img)
    dm = make_dm(img, test_mode="inference")
    dm.train_pixel_sampler.num_rays_per_batch = 64
    rb, batch = dm.next_train(0)
    assert rb.shape == (64,) and batch["object_ids"] == ["photo"]
    torch.testing.assert_close(rb.origins.norm(dim=-1), torch.full((64,), 2.0))
    image, cam, name = dm.get_display_source(str(img))
    assert image.shape == (3, 32, 32) and cam.shape == (16,) and name == "photo"
    train_dm = make_dm(img)
    with pytest.raises(DatasetFormatError, match=re.escape(str(img)) + ": a single image is inference only"):
        train_dm.next_train(0)


def test_eval(ds: Path):
    dm = make_dm(ds, eval_resolution=48)
    rb, batch = dm.next_eval(10)
    assert rb.shape == (2 * 3 * P * P,) and all(o.startswith("obj_val_") for o in batch["object_ids"])
    cam, batch = dm.next_eval_image(0)
    assert cam.shape == (1,) and int(cam.width) == 48 and batch["image"].shape == (48, 48, 3)
    assert batch["alpha"].shape == (48, 48, 1) and batch["source_images"].shape == (1, 3, 32, 32)
    assert batch["source_cameras"].shape == (1, 16) and batch["object_ids"][0].startswith("obj_val_")
    views = list(dm.iter_eval_views("test", max_objects=1, views_per_object=2))
    assert len(views) == 2 and all(b["object_ids"] == ["obj_test_000"] for _, b in views)


def test_display_source(ds: Path):
    dm = make_dm(ds)
    image, cam, name = dm.get_display_source("obj_val_001")
    assert image.shape == (3, 32, 32) and cam.shape == (16,) and name == "obj_val_001"
    with pytest.raises(DatasetFormatError, match="^nothing_here: neither an object id"):
        dm.get_display_source("nothing_here")
    assert dm.list_objects()["val"] == ["obj_val_000", "obj_val_001"]


def test_dataset_json_listing_written_by_fixture_is_valid(ds: Path):
    assert json.loads((ds / "dataset.json").read_text())["format"] == "lrm-multiview"
