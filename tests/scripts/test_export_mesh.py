"""`lrm-export-mesh`: a training run's display object as a textured mesh, ns-export style; bad input exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import trimesh
import yaml
from lrm_run_helpers import run_tool, save_tiny_run, tool
from PIL import Image

from lrm_nerfstudio.scripts.export_mesh import ExportMeshConfig, main


@pytest.fixture(scope="module")
def tiny_run(procedural_dataset, tmp_path_factory) -> Path:
    return save_tiny_run(procedural_dataset, tmp_path_factory.mktemp("run"))


def test_exports_the_display_object_textured(tiny_run, procedural_dataset, tmp_path, capsys):
    splits = json.loads((procedural_dataset / "dataset.json").read_text())["splits"]
    out = tmp_path / "exports"
    config = ExportMeshConfig(load_config=tiny_run, output_dir=out, resolution=40, texture_resolution=64,
                              target_faces=2000)  # fmt: skip
    assert main(config) == 0
    printed = capsys.readouterr().out.replace("\n", "")
    assert splits["test"][0] in printed and "unwrap" in printed and "bake" in printed
    assert {p.name for p in out.iterdir()} == {"mesh.glb", "mesh.obj", "mesh.mtl", "mesh.png", "mesh.ply"}
    texture = np.asarray(Image.open(out / "mesh.png"))
    glb = trimesh.load(out / "mesh.glb", force="mesh")
    assert 0 < len(glb.faces) <= 2000 and glb.visual.kind == "texture"
    np.testing.assert_array_equal(np.asarray(glb.visual.material.baseColorTexture.convert("RGB")), texture)
    assert trimesh.load(out / "mesh.ply", force="mesh").visual.kind == "vertex"


def test_vertex_colours_only(tiny_run, tmp_path):
    out = tmp_path / "plain"
    config = ExportMeshConfig(load_config=tiny_run, output_dir=out, resolution=32, texture_resolution=0,
                              formats=("glb",))  # fmt: skip
    assert main(config) == 0
    assert [p.name for p in out.iterdir()] == ["mesh.glb"]
    assert trimesh.load(out / "mesh.glb", force="mesh").visual.kind == "vertex"


def test_bad_inputs(tiny_run, tmp_path, capsys):
    foreign = tmp_path / "foreign.yml"
    foreign.write_text(yaml.dump({"method_name": "nerfacto"}))
    assert main(ExportMeshConfig(load_config=foreign, output_dir=tmp_path / "o")) == 2
    assert str(foreign) in capsys.readouterr().out.replace("\n", "")
    for options, message in [
        ({"texture_resolution": 10_000}, "--texture-resolution must be 0 (vertex colours only) or 1..8192"),
        ({"target_faces": 0}, "--target-faces must be > 0"),
        ({"output_stem": "../up"}, "--output-stem must be a plain file name"),
    ]:
        assert main(ExportMeshConfig(load_config=tiny_run, output_dir=tmp_path / "o", **options)) == 2
        assert message in capsys.readouterr().out.replace("\n", "")
    assert not (tmp_path / "o").exists()


def test_console_script_flags(tmp_path):
    result = run_tool([tool("lrm-export-mesh"), "--help"])
    for flag in ("--load-config", "--texture-resolution", "--target-faces", "--min-component-fraction"):
        assert flag in result.stdout
