"""Atomic writes: files get the mode open() would give under the umask (0644 under 022), a failed write leaves the
old file and no temporary file, and every writer of shared files uses the helper."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch
import trimesh

from lrm_nerfstudio.io.atomic import atomic_path, atomic_write_bytes, atomic_write_text


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_mode_follows_the_umask(tmp_path, umask_022):
    assert _mode(atomic_write_text(tmp_path / "a.txt", "x")) == 0o644
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert _mode(plain) == 0o644  # what open() gives: the helper matches it
    os.umask(0o077)
    assert _mode(atomic_write_bytes(tmp_path / "b.bin", b"x")) == 0o600


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, umask_022):
    path = atomic_write_text(tmp_path / "f.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer died")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_shared_files_are_0644(tmp_path, umask_022):
    from lrm_nerfstudio.io.weights import WeightsSource
    from lrm_nerfstudio.mesh.marching_cubes import save_mesh
    from lrm_nerfstudio.mesh.turntable import write_turntable
    from lrm_nerfstudio.model.lrm_model import LRMModelConfig
    from lrm_nerfstudio.pretrained import Pretrained, save_pretrained
    from lrm_nerfstudio.splat.gaussians import Gaussians
    from lrm_nerfstudio.splat.ply import write_gaussians_ply

    source = WeightsSource("trained", 0, None)
    weights = save_pretrained(
        tmp_path / "w.safetensors",
        Pretrained(LRMModelConfig(), "lrm-tiny", source, {"x": torch.zeros(2)}),
    )
    n = 4
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1
    gaussians = Gaussians(torch.rand(n, 3), quats, torch.zeros(n, 3), torch.zeros(n), torch.rand(n, 1, 3),
                          torch.zeros(n, 3) + torch.tensor([0.0, 0.0, 1.0]))  # fmt: skip
    ply = write_gaussians_ply(tmp_path / "gaussians.ply", gaussians)
    gif = write_turntable([np.zeros((8, 8, 3), np.uint8)] * 2, tmp_path / "t.gif", fps=2)
    meshes = save_mesh(trimesh.creation.box(), tmp_path, "mesh").values()
    written = [weights, ply, gif, *meshes]
    assert {p.name: _mode(p) for p in written} == {p.name: 0o644 for p in written}
