"""`lrm-render-meshes` reads nothing outside its input folder: a mesh symlinked from elsewhere is refused by name
(and the others are rendered), and a texture path that climbs out of the mesh's folder is never read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from lrm_nerfstudio.generate.render_meshes import RenderMeshesConfig, load_mesh, main
from lrm_nerfstudio.generate.renderer import UVTextureAlbedo


def test_mesh_symlinked_from_outside_is_refused(tmp_path: Path):
    src, elsewhere = tmp_path / "meshes", tmp_path / "private"
    src.mkdir()
    elsewhere.mkdir()
    trimesh.creation.box().export(src / "box.ply")
    trimesh.creation.icosphere(subdivisions=1).export(elsewhere / "secret.ply")
    (src / "link.ply").symlink_to(elsewhere / "secret.ply")
    summary = main(RenderMeshesConfig(input=src, output=tmp_path / "ds", num_views=2, resolution=16, workers=1,
                                      progress=False))  # fmt: skip
    assert summary["rendered"] == 1 and summary["bad"] == 1
    (reason,) = summary["bad_meshes"]
    assert reason.startswith(str(src / "link.ply")) and "outside the input folder" in reason
    assert not (tmp_path / "ds" / "link").exists()


def _quad(folder: Path, texture: str) -> Path:
    (folder / "quad.mtl").write_text(f"newmtl m\nKd 1 1 1\nmap_Kd {texture}\n")
    (folder / "quad.obj").write_text(
        "mtllib quad.mtl\nv -1 -1 0\nv 1 -1 0\nv 1 1 0\nv -1 1 0\nvt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\n"
        "usemtl m\nf 1/1 2/2 3/3\nf 1/1 3/3 4/4\n"
    )
    return folder / "quad.obj"


def _red_texture(albedo) -> bool:
    return isinstance(albedo, UVTextureAlbedo) and np.allclose(albedo.image.mean(axis=(0, 1)), (1, 0, 0), atol=0.05)


def test_texture_outside_the_mesh_folder_is_not_read(tmp_path: Path):
    src = tmp_path / "meshes"
    src.mkdir()
    red = np.full((4, 4, 3), (255, 0, 0), np.uint8)
    Image.fromarray(red).save(tmp_path / "secret.png")  # outside the input folder
    Image.fromarray(red).save(src / "inside.png")
    assert _red_texture(load_mesh(_quad(src, "inside.png"), (0.5, 0.5, 0.5))[2])  # the control: a texture is read
    assert not _red_texture(load_mesh(_quad(src, "../secret.png"), (0.5, 0.5, 0.5))[2])
    assert not _red_texture(load_mesh(_quad(src, str(tmp_path / "secret.png")), (0.5, 0.5, 0.5))[2])
