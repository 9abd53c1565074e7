import numpy as np
import torch

from lrm_nerfstudio.cameras import camera_vector, canonical_c2w, canonical_source_camera, look_at, spherical_eye


def test_look_at_points_minus_z_at_target():
    eye = np.array([1.0, -2.0, 0.5])
    c2w = look_at(eye)
    forward = -c2w[:, 2]
    np.testing.assert_allclose(forward, -eye / np.linalg.norm(eye), atol=1e-12)
    np.testing.assert_allclose(c2w[:, :3].T @ c2w[:, :3], np.eye(3), atol=1e-12)
    assert np.linalg.det(c2w[:, :3]) > 0
    assert c2w[2, 1] > 0, "camera up should point to world +Z"


def test_canonical_camera_on_minus_y():
    c2w = canonical_c2w()
    np.testing.assert_allclose(c2w[:, 3], [0.0, -2.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(spherical_eye(2.0, 90.0, 0.0), [2.0, 0.0, 0.0], atol=1e-12)
    vec = canonical_source_camera()
    assert vec.shape == (16,)
    np.testing.assert_allclose(vec[12:].numpy(), [0.75, 0.75, 0.5, 0.5])


def test_camera_vector_batched():
    c2w = torch.randn(2, 5, 3, 4)
    f = torch.full((2, 5), 64.0)
    w = torch.full((2, 5), 128.0)
    vec = camera_vector(c2w, f, f, w / 2, w / 2, w, w)
    assert vec.shape == (2, 5, 16)
    torch.testing.assert_close(vec[..., :12], c2w.reshape(2, 5, 12))
    torch.testing.assert_close(vec[..., 12:], torch.tensor([0.5, 0.5, 0.5, 0.5]).expand(2, 5, 4))
