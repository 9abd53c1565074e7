"""Test-mode (ns-export) rays: distinct jittered rays of an orbit of cameras around the display object, aimed at
the cells the opacity probe found opaque."""

from __future__ import annotations

import torch

from lrm_nerfstudio.data.lrm_datamanager import LRMDataManagerConfig


def export_dm(data):
    return LRMDataManagerConfig(data=data, num_workers=0, eval_resolution=32).setup(test_mode="test")


def test_export_rays_are_distinct_and_orbit_the_object(procedural_dataset):
    dm = export_dm(procedural_dataset)
    dm.train_pixel_sampler.num_rays_per_batch = 20_000  # what ns-export sets
    bundle, batch = dm.next_train(0)
    rays = torch.cat([bundle.origins, bundle.directions], -1)
    assert len(torch.unique(rays, dim=0)) == 20_000  # the old rays: 6 views x 32^2 pixels, mostly repeats
    torch.testing.assert_close(bundle.origins.norm(dim=-1), torch.full((20_000,), 2.0))
    eyes = torch.unique(bundle.origins.round(decimals=4), dim=0)
    assert len(eyes) == dm.config.export_orbit_cameras
    assert eyes[:, 2].min() < -1.9 and eyes[:, 2].max() > 1.9  # seen from below and above too
    # every ray heads into the scene box around the object
    closest = bundle.origins - (bundle.origins * bundle.directions).sum(-1, keepdim=True) * bundle.directions
    assert closest.norm(dim=-1).max() < 1.8
    assert batch["object_ids"] == [dm.display_source[2]] and (bundle.metadata["object_index"] == 0).all()
    again, _ = dm.next_train(1)
    assert not torch.equal(again.directions, bundle.directions)  # each batch new positions


def _pixel(cameras, index: int, directions: torch.Tensor) -> torch.Tensor:
    """(x, y) image positions of world directions seen from camera `index` (OpenGL camera, y down in the image)."""
    local = directions @ cameras.camera_to_worlds[index, :, :3]
    depth = -local[:, 2]
    x = cameras.cx[index] + cameras.fx[index] * local[:, 0] / depth
    y = cameras.cy[index] - cameras.fy[index] * local[:, 1] / depth
    return torch.stack([x, y], -1)


def test_export_rays_aim_at_the_opaque_probe_cells(procedural_dataset):
    dm = export_dm(procedural_dataset)
    probe = dm.display_probe_rays()
    cameras = dm.export_cameras()
    side = int(cameras.width[0])
    stride = side // round((len(probe) / len(cameras)) ** 0.5)
    assert len(probe) <= dm.config.opacity_probe_rays * 2
    alpha = torch.zeros(len(cameras), side // stride, side // stride)
    alpha[3, 1, 2] = 0.9  # one opaque cell: camera 3, cell row 1, column 2
    alpha[5, 0, 0] = 0.4  # not opaque enough for nerfstudio's point cloud (alpha > 0.5)
    dm.set_export_opacity(alpha.reshape(-1))
    bundle = dm.export_rays(2000)
    torch.testing.assert_close(bundle.origins, cameras.camera_to_worlds[3, :, 3].expand(2000, 3))
    xy = _pixel(cameras, 3, bundle.directions)
    assert (xy[:, 0] >= 2 * stride - 1e-3).all() and (xy[:, 0] <= 3 * stride + 1e-3).all()
    assert (xy[:, 1] >= 1 * stride - 1e-3).all() and (xy[:, 1] <= 2 * stride + 1e-3).all()
    assert xy[:, 0].std() > stride / 4 and xy[:, 1].std() > stride / 4  # spread over the cell, sub-pixel

    dm.set_display_object(dm.display_source[2])  # a new display object forgets the cells and restarts the seed
    first = dm.export_rays(100)
    assert len(torch.unique(first.origins.round(decimals=4), dim=0)) > 50
    dm.set_display_object(dm.display_source[2])
    torch.testing.assert_close(dm.export_rays(100).directions, first.directions)
