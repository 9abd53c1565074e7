import numpy as np
import pytest
import torch

from lrm_nerfstudio.mesh.turntable import ffmpeg_available, turntable_cameras, write_turntable


def test_every_camera_looks_at_the_origin():
    res = 32
    cams = turntable_cameras(8, distance=2.0, elevation_deg=20.0, resolution=res)
    assert cams.shape == (8,)
    assert torch.allclose(cams.fx, torch.full_like(cams.fx, 0.75 * res))
    centre = torch.tensor([[res / 2, res / 2]], dtype=torch.float32)
    for i in range(8):
        rays = cams.generate_rays(camera_indices=i, coords=centre)
        o, d = rays.origins[0].double(), rays.directions[0].double()
        closest = o - (o @ d) * d
        assert closest.norm() < 1e-5
        assert o.norm().item() == pytest.approx(2.0, abs=1e-5)
        assert o[2] > 0  # elevated above the XY plane
    # Evenly spread in azimuth: the ring's centre of mass is on the Z axis.
    positions = cams.camera_to_worlds[:, :, 3]
    assert positions[:, :2].mean(0).abs().max() < 1e-5


def frames(n=5, h=24, w=32):
    return [np.full((h, w, 3), i / (n - 1), np.float32) for i in range(n)]


def test_gif_round_trip(tmp_path):
    import imageio.v3 as iio

    path = write_turntable(frames(), tmp_path / "spin.gif", fps=10)
    assert path == tmp_path / "spin.gif"
    back = iio.imread(path, index=None)
    assert back.shape[0] == 5 and back.shape[1:3] == (24, 32)
    assert [p.name for p in tmp_path.iterdir()] == ["spin.gif"]


def test_mp4_request(tmp_path):
    if ffmpeg_available():
        path = write_turntable(frames(), tmp_path / "spin.mp4", fps=10)
        assert path.suffix == ".mp4" and path.stat().st_size > 0
    else:
        with pytest.warns(UserWarning, match="imageio-ffmpeg"):
            path = write_turntable(frames(), tmp_path / "spin.mp4", fps=10)
        assert path == tmp_path / "spin.gif" and path.exists()


def test_bad_frames_raise(tmp_path):
    with pytest.raises(ValueError, match="no frames"):
        write_turntable([], tmp_path / "x.gif")
    with pytest.raises(ValueError, match="frame 1"):
        write_turntable([np.zeros((4, 4, 3)), np.zeros((5, 4, 3))], tmp_path / "x.gif")
