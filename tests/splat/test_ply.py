"""The 3DGS PLY: layout (names, order, dtypes, binary little-endian), round trip, ranges, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from lrm_nerfstudio.splat.gaussians import EmptyReconstructionError, Gaussians, quats_from_normals
from lrm_nerfstudio.splat.ply import ply_property_names, read_gaussians_ply, write_gaussians_ply

INRIA_DEGREE_0 = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                  "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]  # fmt: skip
"""The vertex properties of a degree-0 3DGS PLY, in the order the reference implementation writes them."""


def random_gaussians(n: int, degree: int, seed: int = 0) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    normals = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=-1)
    return Gaussians(
        means=torch.rand(n, 3, generator=gen) * 2 - 1,
        quats=quats_from_normals(normals),
        log_scales=torch.log(0.01 + 0.05 * torch.rand(n, 3, generator=gen)),
        opacity_logits=torch.randn(n, generator=gen),
        sh=torch.randn(n, (degree + 1) ** 2, 3, generator=gen),
        normals=normals,
    )


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_layout_and_round_trip(tmp_path, degree):
    g = random_gaussians(257, degree)
    path = write_gaussians_ply(tmp_path / "gaussians.ply", g)
    header = path.read_bytes()[:2000].split(b"end_header")[0].decode()
    assert "format binary_little_endian 1.0" in header and "element vertex 257" in header

    ply = PlyData.read(str(path))
    vertex = ply["vertex"]
    names = [p.name for p in vertex.properties]
    rest = 3 * ((degree + 1) ** 2 - 1)
    assert names == ply_property_names(degree)
    assert names[:9] == INRIA_DEGREE_0[:9] and names[9 + rest :] == INRIA_DEGREE_0[9:]
    assert names[9 : 9 + rest] == [f"f_rest_{i}" for i in range(rest)]
    assert all(vertex.data.dtype[name] == np.dtype("<f4") for name in names)
    assert len(ply.elements) == 1

    # valid ranges as a viewer reads them
    quats = np.stack([vertex[f"rot_{i}"] for i in range(4)], axis=1)
    np.testing.assert_allclose(np.linalg.norm(quats, axis=1), 1.0, atol=1e-6)
    opacity = 1 / (1 + np.exp(-vertex["opacity"]))
    assert ((opacity > 0) & (opacity < 1)).all()
    assert (np.exp(np.stack([vertex[f"scale_{i}"] for i in range(3)])) > 0).all()
    # f_rest is channel-major (Inria): f_rest_0 .. f_rest_{K-2} are the red channel's higher bands
    if degree > 0:
        np.testing.assert_allclose(vertex["f_rest_0"], g.sh[:, 1, 0].numpy())
        np.testing.assert_allclose(vertex[f"f_rest_{(degree + 1) ** 2 - 1}"], g.sh[:, 1, 1].numpy())

    back = read_gaussians_ply(path)
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh", "normals"):
        torch.testing.assert_close(getattr(back, name), getattr(g, name), msg=name)


def test_non_finite_gaussians_are_dropped_and_none_is_refused(tmp_path):
    g = random_gaussians(10, 0)
    g.means[3, 1] = float("nan")
    g.opacity_logits[7] = float("inf")
    assert len(read_gaussians_ply(write_gaussians_ply(tmp_path / "a.ply", g))) == 8
    empty = g.select(torch.zeros(10, dtype=torch.bool))
    with pytest.raises(EmptyReconstructionError, match="empty reconstruction"):
        write_gaussians_ply(tmp_path / "b.ply", empty)
    assert not (tmp_path / "b.ply").exists() and not list(tmp_path.glob(".b.ply*"))


def test_bad_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        read_gaussians_ply(tmp_path / "missing.ply")
    junk = tmp_path / "junk.ply"
    junk.write_bytes(b"not a ply at all")
    with pytest.raises(ValueError, match=r"junk\.ply: not a readable PLY"):
        read_gaussians_ply(junk)
    points = tmp_path / "points.ply"
    xyz = np.zeros(4, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4")])
    PlyData([PlyElement.describe(xyz, "vertex")]).write(str(points))  # a point cloud, not Gaussians
    with pytest.raises(ValueError, match=r"points\.ply: not a 3DGS PLY, missing properties f_dc_0"):
        read_gaussians_ply(points)
